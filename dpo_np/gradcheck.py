"""Gradient checking: the autograd (or a hand-written backward) against central differences.

The relative error of an analytic gradient ``a`` against a numerical one ``n`` is

    max |a − n| / max(1e-8, max|a| + max|n|)

which is near machine precision (~1e-10 in float64 with h = 1e-5) when the
backward is right and of order one when it is wrong. A non-scalar output is
first projected on a *random* upstream gradient: with an all-ones upstream the
softmax backward ``p·(g − Σ g p)`` is exactly zero, so such a check would pass
while testing nothing.
"""

import numpy as np

from . import backend
from .autograd import Tensor


def relative_error(analytic, numeric):
    a, n = backend.to_numpy(analytic), backend.to_numpy(numeric)
    return float(np.max(np.abs(a - n), initial=0.0) /
                 max(1e-8, np.max(np.abs(a), initial=0.0) + np.max(np.abs(n), initial=0.0)))


def central_difference(f, inputs, i, eps=1e-5, coords=None):
    """∂f/∂inputs[i] by (f(x + h) − f(x − h)) / 2h, one coordinate at a time (float64).

    ``f`` maps a list of arrays to a scalar; ``coords`` (flat indices) limits the
    work to a subset of a large input.
    """
    x = inputs[i]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)            # a view: editing it edits inputs[i]
    for k in (range(flat.size) if coords is None else coords):
        saved = flat[k].item()
        flat[k] = saved + eps
        up = float(f(inputs))
        flat[k] = saved - eps
        down = float(f(inputs))
        flat[k] = saved
        grad.reshape(-1)[k] = (up - down) / (2 * eps)
    return grad


def gradcheck(f, inputs, eps=1e-5, seed=0):
    """Max relative error of the autograd's gradient of ``f`` for each input.

    ``f`` maps Tensors to a Tensor; ``inputs`` are arrays, converted to float64.
    Returns a list with one relative error per input.
    """
    xp = backend.xp()
    inputs = [xp.array(backend.to_numpy(x), dtype=np.float64) for x in inputs]
    probe = f(*[Tensor(x) for x in inputs])
    probe = probe if isinstance(probe, Tensor) else Tensor(probe)
    upstream = xp.asarray(backend.rng(seed).standard_normal(probe.shape))

    def scalar(arrays):
        out = f(*[Tensor(a) for a in arrays])
        return (out.data * upstream).sum()

    leaves = [Tensor(x, requires_grad=True) for x in inputs]
    f(*leaves).backward(upstream)
    errors = []
    for i, leaf in enumerate(leaves):
        analytic = leaf.grad if leaf.grad is not None else xp.zeros_like(inputs[i])
        errors.append(relative_error(analytic, central_difference(scalar, inputs, i, eps)))
    return errors


def parameter_gradient_errors(params, grads, loss, eps=1e-5, skip=()):
    """{name: relative error} of a model's gradients against central differences of ``loss()``.

    ``params`` are edited in place (and restored) one coordinate at a time, so ``loss``
    takes no argument and reads them as the model does; ``grads`` hold the analytic
    dL/dparam computed before. Names in ``skip`` are left out. Every coordinate is
    visited: use on tiny float64 models.
    """
    errors = {}
    for name, p in params.items():
        if name in skip:
            continue
        numeric = central_difference(lambda _: loss(), [p], 0, eps)
        errors[name] = relative_error(grads[name], numeric)
    return errors
