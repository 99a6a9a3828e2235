"""AdamW, global gradient-norm clipping and the cosine learning-rate schedule.

The update is PyTorch's ``torch.optim.AdamW`` (Loshchilov & Hutter, "Decoupled
Weight Decay Regularization", Algorithm 2), step for step, so a run here can be
compared with a PyTorch run number by number. Parameters are updated in place,
in their own dtype: every scalar is a Python float, which NumPy 2 treats as
"weak" and so never upcasts a float32 array to float64.
"""

import math

import numpy as np

from dpo_np import backend, checks


def _check_hparams(lr, betas, eps, weight_decay):
    """The four AdamW settings, checked: lr ≥ 0, β₁ and β₂ in [0, 1), ε > 0 (ε = 0 divides 0 by 0
    wherever a gradient has always been 0), λ ≥ 0."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
    b1, b2 = (checks.number(b, f"betas[{i}]", 0.0, 1.0, high_open=True) for i, b in enumerate((b1, b2)))
    return (checks.number(lr, "lr", low=0.0), (b1, b2), checks.positive(eps, "eps"),
            checks.number(weight_decay, "weight_decay", low=0.0))


def _check_grads(params, grads, argname="grads"):
    """Same names as ``params``, same shapes: anything else is a bug upstream."""
    mismatch = checks.name_mismatch(params, grads)
    if mismatch:
        raise ValueError(f"{argname} must have exactly the parameter names; {mismatch}")
    for k, p in params.items():
        if tuple(grads[k].shape) != tuple(p.shape):
            raise ValueError(f"{argname}[{k!r}] has shape {tuple(grads[k].shape)}, "
                             f"but the parameter has shape {tuple(p.shape)}")


class AdamW:
    """Adam with decoupled weight decay, PyTorch's ``AdamW`` update.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p  ← p − lr·λ·p                          (decoupled decay; only names in ``decay``)
        m  ← β₁ m + (1 − β₁) g
        v  ← β₂ v + (1 − β₂) g²
        m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)  (bias correction: m, v start at 0)
        p  ← p − lr · m̂ / (√v̂ + ε)

    ``params`` is a dict name -> array, updated in place. ``decay`` chooses
    which names get weight decay: a collection of names, a predicate
    ``decay(name, array) -> bool``, or None for the GPT-2/nanoGPT rule
    "matrices decay, biases and LayerNorm gains do not" (ndim >= 2).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None):
        if not isinstance(params, dict) or not params:
            raise ValueError("params must be a non-empty dict name -> array")
        for k, p in params.items():
            if not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"params[{k!r}] must be a floating array, got dtype {p.dtype}")
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = _check_hparams(lr, betas, eps, weight_decay)
        if decay is None:
            self.decay = {k for k, p in params.items() if p.ndim >= 2}
        elif callable(decay):
            self.decay = {k for k, p in params.items() if decay(k, p)}
        else:
            self.decay = set(decay)
            unknown = sorted(self.decay - set(params))
            if unknown:
                raise ValueError(f"decay names parameters that do not exist: {unknown}")
        xp = backend.xp()
        self.t = 0
        self.m = {k: xp.zeros_like(p) for k, p in params.items()}    # first moment, Adam's m
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}    # second moment, Adam's v

    def step(self, grads, lr=None):
        """One AdamW update of every parameter from ``grads`` (same names and shapes).

        ``lr`` overrides the learning rate for this step and the following ones
        (what a schedule does: ``opt.step(grads, lr=cosine_schedule(it, ...))``).
        """
        _check_grads(self.params, grads)
        if lr is not None:
            self.lr = checks.number(lr, "lr", low=0.0)
        xp = backend.xp()
        self.t += 1
        b1, b2 = self.betas
        bias1 = 1.0 - b1 ** self.t
        bias2 = 1.0 - b2 ** self.t
        step_size = self.lr / bias1              # lr · m̂/m
        sqrt_bias2 = math.sqrt(bias2)            # √v̂ = √v / √(1 − β₂ᵗ)
        for k, p in self.params.items():
            g = grads[k]
            if g.dtype != p.dtype:
                g = g.astype(p.dtype)
            if k in self.decay and self.weight_decay != 0.0:
                p *= 1.0 - self.lr * self.weight_decay
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            denom = xp.sqrt(v)
            denom /= sqrt_bias2
            denom += self.eps
            update = m / denom
            update *= step_size
            p -= update

    def state_dict(self):
        """Host copies of everything a resumed run needs: a flat dict of NumPy
        arrays (``exp_avg/<name>``, ``exp_avg_sq/<name>``, ``step``, the
        hyper-parameters and the decayed names), ready for ``np.savez``."""
        state = {"step": np.array(self.t, dtype=np.int64),
                 "lr": np.array(self.lr, dtype=np.float64),
                 "betas": np.array(self.betas, dtype=np.float64),
                 "eps": np.array(self.eps, dtype=np.float64),
                 "weight_decay": np.array(self.weight_decay, dtype=np.float64),
                 "decay": np.array(sorted(self.decay), dtype=str).reshape(-1)}
        for k in self.params:
            state[f"exp_avg/{k}"] = np.array(backend.to_numpy(self.m[k]), copy=True)
            state[f"exp_avg_sq/{k}"] = np.array(backend.to_numpy(self.v[k]), copy=True)
        return state

    def load_state_dict(self, state):
        """Restore ``state_dict()``'s output: the next ``step`` then gives exactly
        the update the saved optimizer would have given."""
        required = ("step", "lr", "betas", "eps", "weight_decay", "decay")
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"optimizer state is missing {missing}")
        m = {k[len("exp_avg/"):]: a for k, a in state.items() if k.startswith("exp_avg/")}
        v = {k[len("exp_avg_sq/"):]: a for k, a in state.items() if k.startswith("exp_avg_sq/")}
        _check_grads(self.params, m, argname="optimizer state 'exp_avg'")
        _check_grads(self.params, v, argname="optimizer state 'exp_avg_sq'")
        step = int(np.asarray(state["step"]))
        if step < 0:
            raise ValueError(f"optimizer state 'step' must be >= 0, got {step}")
        lr, betas, eps, wd = _check_hparams(float(np.asarray(state["lr"])), tuple(np.asarray(state["betas"]).tolist()),
                                            float(np.asarray(state["eps"])),
                                            float(np.asarray(state["weight_decay"])))
        decay = {str(name) for name in np.asarray(state["decay"]).reshape(-1)}
        unknown = sorted(decay - set(self.params))
        if unknown:
            raise ValueError(f"optimizer state 'decay' names parameters that do not exist: {unknown}")
        for k, p in self.params.items():
            for name, buf, src in (("exp_avg", self.m[k], m[k]), ("exp_avg_sq", self.v[k], v[k])):
                src = np.asarray(backend.to_numpy(src))
                if not np.all(np.isfinite(src)):
                    raise ValueError(f"optimizer state '{name}/{k}' contains NaN or inf")
                buf[...] = backend.asarray(src, dtype=p.dtype)
        self.t, self.lr, self.betas, self.eps, self.weight_decay, self.decay = step, lr, betas, eps, wd, decay


def global_grad_norm(grads):
    """‖g‖ of every gradient concatenated, accumulated in float64 on the device, term after term
    (so the result does not depend on the array library's reduction order); one host transfer."""
    xp = backend.xp()
    sq = sum(xp.sum(xp.square(g), dtype=xp.float64) for g in grads.values())
    return math.sqrt(float(backend.to_numpy(sq)))


def clip_grad_norm(grads, max_norm, error_if_nonfinite=True):
    """Scale every gradient by min(1, max_norm / ‖g‖), where ‖g‖ is the L2 norm
    of all gradients concatenated; returns ‖g‖ (before clipping) as a float.

    Same rule as ``torch.nn.utils.clip_grad_norm_`` (including its 1e-6 in the
    denominator). A NaN or infinite norm raises ``ValueError`` naming the
    offending gradients instead of silently poisoning the update; pass
    ``error_if_nonfinite=False`` to get the norm back and decide yourself.
    """
    max_norm = checks.positive(max_norm, "max_norm")
    xp = backend.xp()
    total_norm = global_grad_norm(grads)
    if not math.isfinite(total_norm):
        if error_if_nonfinite:
            bad = [k for k, g in grads.items() if not bool(xp.all(xp.isfinite(g)))]
            raise ValueError(f"grads: the total gradient norm is {total_norm}; "
                             f"non-finite values in {bad[:5]}{'...' if len(bad) > 5 else ''}")
        return total_norm
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for g in grads.values():
            g *= clip_coef
    return total_norm


def cosine_schedule(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """The learning rate at ``step`` (0-based): linear warmup, then cosine decay.

        step < warmup:          max_lr · (step + 1) / warmup
        warmup <= step < total: min_lr + ½ (1 + cos(π · (step − warmup)/(total − warmup))) (max_lr − min_lr)
        step >= total:          min_lr

    The warmup reaches max_lr at its last step and never returns 0 (a zero
    learning rate would waste the first step); the decay starts at max_lr on
    step ``warmup_steps`` and lands on min_lr at ``total_steps`` (nanoGPT's
    ``get_lr``, with the GPT-3 paper's cosine-to-floor shape).
    """
    step = checks.integer(step, "step", low=0)
    warmup_steps = checks.integer(warmup_steps, "warmup_steps", low=0)
    total_steps = checks.integer(total_steps, "total_steps", low=warmup_steps)
    max_lr, min_lr = checks.number(max_lr, "max_lr", low=0.0), checks.number(min_lr, "min_lr", low=0.0)
    if min_lr > max_lr:
        raise ValueError(f"min_lr must be <= max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
