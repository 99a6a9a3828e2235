"""A tiny reverse-mode autograd over backend arrays: micrograd lifted to tensors.

A ``Tensor`` holds ``data`` (a NumPy or CuPy array), ``grad`` and, when it was
made by an operation on tensors that need gradients, its parents and a
vector–Jacobian product ``vjp(g) -> (g_parent, ...)``. ``backward()`` walks a
topological order of the graph once, from the output to the leaves, and adds
each parent's share. Every primitive's VJP is written right after its forward,
a line or two each, with broadcasting undone in one place (``unbroadcast``).

The formula side of the notes runs on this engine: log-softmax and gather for
sequence log-probabilities, log-sigmoid for the Bradley–Terry and DPO losses,
softmax policies over enumerated responses. The transformer does not: its
gradients are written out by hand in ``model.py`` and checked against this.

Numerical care: ``log_softmax`` and ``logsumexp`` shift by the maximum;
``logsigmoid``/``softplus`` use ``logaddexp``; ``sigmoid`` never exponentiates a
positive number. All stay finite for inputs of ±1e4 in float32 and float64.

Dtypes: every binary op (+, −, ·, /, **, @, maximum, where) promotes as NumPy 2 does (NEP 50): a
Python number adapts to the Tensor (float32 · 0.5 stays float32; an integer Tensor · 0.5 is
float64, not 0), a NumPy scalar or array brings its own dtype; exp, log, tanh, σ, log σ and
softplus of an integer Tensor are floating, as NumPy's ufuncs are. Integer Tensors are constants:
``requires_grad=True`` needs floating data (TypeError otherwise), and a leaf's gradient always
has the leaf's dtype, whatever it met on the way (a float32 leaf · float64 gives a float32 grad).
"""

import contextlib

import numpy as np

from . import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block operations build no graph (as for a frozen reference model)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


def _as_array(x, dtype=None):
    xp = backend.xp()
    if isinstance(x, xp.ndarray) and (dtype is None or x.dtype == dtype):
        return x
    a = xp.asarray(x, dtype=dtype)
    if dtype is None and a.dtype.kind in "iub" and not isinstance(x, (xp.ndarray, np.ndarray)):
        # a bare Python number joins float arithmetic as a float
        a = a.astype(backend.default_dtype())
    return a


class Tensor:
    # Make ``ndarray <op> Tensor`` call Tensor's reflected operator instead of
    # letting NumPy broadcast over the Tensor as an object.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False):
        self.data = _as_array(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            # an integer cannot move by a small step, so d/dx has no meaning for it (as in PyTorch)
            raise TypeError(f"requires_grad=True needs floating data, got dtype {self.data.dtype}; "
                            f"pass x.astype(np.float64) (integer tensors are constants)")
        self._parents = ()
        self._vjp = None

    # -- information -----------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{flag})"

    def item(self):
        return self.data.item()

    def numpy(self):
        return backend.to_numpy(self.data)

    def detach(self):
        """The same values, cut from the graph."""
        return Tensor(self.data)

    # -- backward --------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the upstream gradient; it may be omitted only for a scalar.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() without grad needs a scalar, got shape {self.shape}")
            grad = backend.xp().ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}")

        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:   # a leaf: accumulate across backward() calls
                # a copy, so no two leaves (nor the caller's upstream array) share one buffer
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node._parents, node._vjp(g)):
                if pg is None or not parent.requires_grad:
                    continue
                if pg.dtype != parent.dtype:    # a float32 leaf that met float64 gets a float32 gradient
                    pg = pg.astype(parent.dtype)
                # never add in place: pg may be the very array another node holds
                grads[id(parent)] = pg if id(parent) not in grads else grads[id(parent)] + pg

    # -- operators -------------------------------------------------------
    def __add__(self, other): return add(self, other)
    def __radd__(self, other): return add(other, self)
    def __sub__(self, other): return sub(self, other)
    def __rsub__(self, other): return sub(other, self)
    def __mul__(self, other): return mul(self, other)
    def __rmul__(self, other): return mul(other, self)
    def __truediv__(self, other): return div(self, other)
    def __rtruediv__(self, other): return div(other, self)
    def __matmul__(self, other): return matmul(self, other)
    def __rmatmul__(self, other): return matmul(other, self)
    def __pow__(self, exponent): return power(self, exponent)
    def __neg__(self): return neg(self)
    def __getitem__(self, index): return getitem(self, index)

    def exp(self): return exp(self)
    def log(self): return log(self)
    def tanh(self): return tanh(self)
    def sqrt(self): return power(self, 0.5)
    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def transpose(self, *axes):
        return transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))

    T = property(lambda self: transpose(self, None))


def tensor(x):
    """``x`` if it is already a Tensor, else a constant Tensor holding it."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _topological_order(root):
    """Nodes that need gradients, each after all its parents (iterative DFS: deep graphs are fine)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in visited)
    return order


def _make(data, parents, vjp):
    """The output of an op: joined to the graph only if some parent needs a gradient."""
    out = Tensor(backend.xp().asarray(data))    # an op's NumPy-scalar result keeps NumPy's dtype
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = parents
        out._vjp = vjp
    return out


def _binary(a, b, true_division=False):
    """Two operands as Tensors whose ``a.data <op> b.data`` promotes exactly as NumPy's would.

    NumPy 2's rules (NEP 50): a Python number is "weak", it adapts to the array (float32 · 0.5 stays
    float32, int64 · 0.5 becomes float64, never 0.5 cast to 0); a NumPy scalar, a 0-d array, a list
    or an array is "strong", its dtype counts (float32 · np.float64(2) is float64). ``true_division``:
    the result is floating whatever the operands (int / 2 is float64, uint8 / 300 fits).
    """
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):      # two constants: one leads
        a, b = (a, tensor(b)) if _is_python_number(a) else (tensor(a), b)
    if isinstance(a, Tensor) and not isinstance(b, Tensor):
        return a, _constant(b, a.dtype, true_division)
    if isinstance(b, Tensor) and not isinstance(a, Tensor):
        return _constant(a, b.dtype, true_division), b
    return a, b


def _is_python_number(x):
    return type(x) in (bool, int, float, complex)     # np.float64 subclasses float, so not isinstance


def _constant(x, other_dtype, true_division=False):
    """A non-Tensor operand as a constant Tensor (see ``_binary``)."""
    if _is_python_number(x):
        # the dtype of the result, so the number is never cast into a narrower kind
        floating = (1.0,) if true_division else ()
        return Tensor(backend.xp().asarray(x, dtype=np.result_type(other_dtype, x, *floating)))
    return Tensor(backend.xp().asarray(x))


def _is_scalar(x):
    return isinstance(x, (int, float)) or (hasattr(x, "ndim") and x.ndim == 0)


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting stretched, so it has ``shape``."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g


# -- elementwise arithmetic --------------------------------------------------

def add(a, b):
    a, b = _binary(a, b)
    return _make(a.data + b.data, (a, b),
                 lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)))


def sub(a, b):
    a, b = _binary(a, b)
    return _make(a.data - b.data, (a, b),
                 lambda g: (unbroadcast(g, a.shape), unbroadcast(-g, b.shape)))


def astype(x, dtype):
    """x in ``dtype``, its gradient back in x's dtype: for a float64 detour where float32 would
    round away what matters (``rlhf``'s log-space normalizations)."""
    x = tensor(x)
    if x.dtype == dtype:
        return x
    return _make(x.data.astype(dtype), (x,), lambda g: (g.astype(x.dtype),))


def neg(x):
    """−x, in x's own dtype (an integer stays an integer, as in NumPy)."""
    x = tensor(x)
    return _make(-x.data, (x,), lambda g: (-g,))


def mul(a, b):
    a, b = _binary(a, b)
    return _make(a.data * b.data, (a, b),
                 lambda g: (unbroadcast(g * b.data, a.shape), unbroadcast(g * a.data, b.shape)))


def div(a, b):
    a, b = _binary(a, b, true_division=True)
    out = a.data / b.data
    return _make(out, (a, b),
                 lambda g: (unbroadcast(g / b.data, a.shape), unbroadcast(-g * out / b.data, b.shape)))


def power(a, exponent):
    """a ** p for a constant scalar p, promoted by NumPy itself: a Python p is weak (int ** 2 stays
    int, int ** 0.5 is float64, float32 ** 0.5 stays float32), a NumPy p strong."""
    if isinstance(exponent, Tensor) or not _is_scalar(exponent):
        raise TypeError(f"exponent must be a constant scalar, got {type(exponent).__name__}")
    a = tensor(a)
    p = exponent if _is_python_number(exponent) else backend.xp().asarray(exponent)
    return _make(a.data ** p, (a,), lambda g: (g * p * a.data ** (p - 1),))


def exp(x):
    x = tensor(x)
    out = backend.xp().exp(x.data)
    return _make(out, (x,), lambda g: (g * out,))


def log(x):
    x = tensor(x)
    return _make(backend.xp().log(x.data), (x,), lambda g: (g / x.data,))


def tanh(x):
    x = tensor(x)
    out = backend.xp().tanh(x.data)
    return _make(out, (x,), lambda g: (g * (1.0 - out * out),))


def relu(x):
    x = tensor(x)
    return _make(backend.xp().maximum(x.data, 0), (x,), lambda g: (g * (x.data > 0),))


def _floating(dtype):
    """The dtype NumPy's float ufuncs (exp, log, tanh) give for ``dtype``: itself if floating, else
    the smallest float that holds it (int64 → float64, int16 → float32, bool → float16)."""
    return np.result_type(dtype, np.float16)


def _as_floating(a):
    # before any arithmetic: −x of an unsigned or bool array would wrap around or fail
    return a.astype(_floating(a.dtype), copy=False)


def _sigmoid(z):
    # exp(-|z|) never overflows; the two branches are the same function
    xp = backend.xp()
    z = _as_floating(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def sigmoid(x):
    """σ(x) = 1 / (1 + e^{-x})."""
    x = tensor(x)
    s = _sigmoid(x.data)
    # σ' = σ(x)·σ(−x): unlike σ(1 − σ), it keeps its precision where σ rounds to 1
    return _make(s, (x,), lambda g: (g * s * _sigmoid(-x.data),))


def logsigmoid(x):
    """log σ(x) = −log(1 + e^{−x}), computed as −logaddexp(0, −x); d/dx = σ(−x)."""
    x = tensor(x)
    z = _as_floating(x.data)
    return _make(-backend.xp().logaddexp(0, -z), (x,), lambda g: (g * _sigmoid(-z),))


def softplus(x):
    """log(1 + e^x) = logaddexp(0, x); d/dx = σ(x)."""
    x = tensor(x)
    z = _as_floating(x.data)
    return _make(backend.xp().logaddexp(0, z), (x,), lambda g: (g * _sigmoid(z),))


def log1mexp(x):
    """log(1 − e^x) for x < 0, without cancellation (Mächler 2012, "Accurately computing log(1 − exp(−|a|))"):
    log(−expm1(x)) above −log 2, log1p(−e^x) below it; d/dx = e^x/expm1(x). At x ≥ 0 it is −inf or NaN:
    a caller checks its input first (ORPO's odds of an average log-probability)."""
    x = tensor(x)
    xp = backend.xp()
    z = _as_floating(x.data)
    with np.errstate(divide="ignore", invalid="ignore"):      # the branch ``where`` discards may warn
        out = xp.where(z > -np.log(2.0), xp.log(-xp.expm1(z)), xp.log1p(-xp.exp(z)))
    return _make(out, (x,), lambda g: (g * xp.exp(z) / xp.expm1(z),))


def maximum(a, b):
    """Elementwise max; at a tie the gradient is split evenly (a valid subgradient)."""
    a, b = _binary(a, b)
    xp = backend.xp()
    out = xp.maximum(a.data, b.data)
    share_a = ((a.data > b.data) + 0.5 * (a.data == b.data)).astype(out.dtype)   # int a, float b: 0.5 kept
    return _make(out, (a, b),
                 lambda g: (unbroadcast(g * share_a, a.shape), unbroadcast(g * (1.0 - share_a), b.shape)))


def where(cond, a, b):
    """``a`` where ``cond`` holds, else ``b``; ``cond`` is a constant boolean array."""
    a, b = _binary(a, b)
    xp = backend.xp()
    cond = _as_array(cond.data if isinstance(cond, Tensor) else cond).astype(bool)
    return _make(xp.where(cond, a.data, b.data), (a, b),
                 lambda g: (unbroadcast(xp.where(cond, g, 0), a.shape),
                            unbroadcast(xp.where(cond, 0, g), b.shape)))


# -- matrix product ------------------------------------------------------------

def matmul(a, b):
    """a @ b with NumPy's rules (1-D operands, batch broadcasting)."""
    a, b = _binary(a, b)
    xp = backend.xp()

    def vjp(g):
        # promote 1-D operands to matrices so one pair of formulas serves all cases
        A = a.data[None, :] if a.ndim == 1 else a.data
        B = b.data[:, None] if b.ndim == 1 else b.data
        G = g[..., None] if b.ndim == 1 else g
        G = xp.expand_dims(G, -2) if a.ndim == 1 else G
        gA = G @ xp.swapaxes(B, -1, -2)          # dL/dA = G Bᵀ
        gB = xp.swapaxes(A, -1, -2) @ G          # dL/dB = Aᵀ G
        if a.ndim == 1:
            gA = gA[..., 0, :]
        if b.ndim == 1:
            gB = gB[..., :, 0]
        return unbroadcast(gA, a.shape), unbroadcast(gB, b.shape)

    return _make(a.data @ b.data, (a, b), vjp)


# -- reductions and shape ------------------------------------------------------

def _axes(axis, ndim):
    return tuple(range(ndim)) if axis is None else tuple(sorted(ax % ndim for ax in np.atleast_1d(axis)))


def _expand(g, ndim, axis, keepdims):
    """Put back the reduced axes of ``g`` (size 1) so it broadcasts against the input."""
    if keepdims or axis is None:      # a 0-d result broadcasts as it is
        return g
    return backend.xp().expand_dims(g, _axes(axis, ndim))


def sum(x, axis=None, keepdims=False):
    x = tensor(x)
    xp = backend.xp()
    return _make(x.data.sum(axis=axis, keepdims=keepdims), (x,),
                 lambda g: (xp.broadcast_to(_expand(g, x.ndim, axis, keepdims), x.shape),))


def mean(x, axis=None, keepdims=False):
    x = tensor(x)
    n = int(np.prod([x.shape[ax] for ax in _axes(axis, x.ndim)]))
    return sum(x, axis, keepdims) * (1.0 / n)


def max(x, axis=None, keepdims=False):
    """Largest value along ``axis``; the gradient goes to the arg-max (split between ties)."""
    x = tensor(x)
    out = x.data.max(axis=axis, keepdims=keepdims)

    def vjp(g):
        hit = x.data == _expand(out, x.ndim, axis, keepdims)
        share = (hit / hit.sum(axis=axis, keepdims=True)).astype(x.dtype)
        return (_expand(g, x.ndim, axis, keepdims) * share,)

    return _make(out, (x,), vjp)


def reshape(x, shape):
    x = tensor(x)
    return _make(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),))


def transpose(x, axes=None):
    x = tensor(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(ax % x.ndim for ax in axes)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return _make(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),))


def getitem(x, index):
    """``x[index]`` for basic and advanced indices; repeated indices accumulate."""
    x = tensor(x)
    if isinstance(index, Tensor):
        index = index.data
    # host index arrays (episodes sampled on the host) move to the device once, for the gather and its scatter
    index = tuple(backend.asarray(i) if isinstance(i, np.ndarray) else i for i in index) \
        if isinstance(index, tuple) else backend.asarray(index) if isinstance(index, np.ndarray) else index

    def vjp(g):
        gx = backend.xp().zeros_like(x.data)
        if _is_basic_index(index):      # a view: each entry picked at most once, plain assignment
            gx[index] = g
            return (gx,)
        return (backend.scatter_add(gx, index, g),)

    return _make(x.data[index], (x,), vjp)


def _is_basic_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (slice, int, np.integer)) for p in parts)


def concatenate(tensors, axis=0):
    tensors = [tensor(t) for t in tensors]
    xp = backend.xp()
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return _make(xp.concatenate([t.data for t in tensors], axis=axis), tuple(tensors),
                 lambda g: tuple(xp.split(g, bounds.tolist(), axis=axis)))


def stack(tensors, axis=0):
    tensors = [tensor(t) for t in tensors]
    xp = backend.xp()
    return _make(xp.stack([t.data for t in tensors], axis=axis), tuple(tensors),
                 lambda g: tuple(xp.moveaxis(g, axis, 0)))


def gather(x, index, axis=-1):
    """out[..., j, ...] = x[..., index[..., j, ...], ...] along ``axis`` (torch.gather, take_along_axis)."""
    x = tensor(x)
    xp = backend.xp()
    index = _as_array(index.data if isinstance(index, Tensor) else index)
    if index.dtype.kind not in "iu":
        raise TypeError(f"index must hold integers, got dtype {index.dtype}")
    axis = axis % x.ndim

    def vjp(g):
        # the same index may be gathered twice, so scatter with accumulation
        where_ = list(xp.indices(index.shape, sparse=True))
        where_[axis] = index
        return (backend.scatter_add(xp.zeros_like(x.data), tuple(where_), g),)

    return _make(xp.take_along_axis(x.data, index, axis=axis), (x,), vjp)


def sort(x, axis=-1):
    """Sorted values; the gradient flows back through the sorting permutation."""
    x = tensor(x)
    xp = backend.xp()
    order = xp.argsort(x.data, axis=axis, kind="stable")

    def vjp(g):
        gx = xp.empty_like(g)
        xp.put_along_axis(gx, order, g, axis=axis)   # a permutation: no collisions
        return (gx,)

    return _make(xp.take_along_axis(x.data, order, axis=axis), (x,), vjp)


# -- the log-space primitives of the notes ----------------------------------------

def shifted_logsumexp(a, axis=-1):
    """``(m, s)`` with log Σ_i e^{a_i} = m + s, both kept along ``axis``: m the maximum (0 for a row of
    all −inf), s = log Σ_i e^{a_i − m} ∈ [0, log n]. The one log-sum-exp of the package.

    The two parts stay apart for ``softmax_offsets``. A row of all −inf gives −inf, not NaN;
    e^{a − m} is taken in place, so the only temporary of ``a``'s size is one. A host array is
    summed on the host (generation samples there).
    """
    xp = backend.array_module(a)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    m = a.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)          # a row of all −inf stays −inf, not NaN
    e = a - m
    xp.exp(e, out=e)
    with np.errstate(divide="ignore"):          # log 0 = −inf is the right answer there
        return m, xp.log(e.sum(axis=axis, keepdims=True))


def logsumexp_array(a, axis=-1, keepdims=False):
    """log Σ_i e^{a_i} of a plain array, shifted by the maximum (``shifted_logsumexp``). The Tensor
    ops below (``logsumexp``, ``log_softmax``, ``softmax``) are built on it, and modules that work
    on plain arrays (generation, WPO's weights) call it directly."""
    m, s = shifted_logsumexp(a, axis)
    out = m + s
    return out if keepdims else out.squeeze(axis)


def softmax_offsets(m, s):
    """``(c, r)`` with log softmax(a) = (a − c) − r, from ``shifted_logsumexp``'s m and s.

    a − (m + s) is the usual form, and every number the package has stored was computed with it; but
    it loses s wherever |m| dwarfs it: float16 logits of 1e4 have m + log 5 == m, so each log-probability
    of a uniform row would come out 0 instead of −log 5 (float32 logits of 3e38 alike). There, from
    |m| ≥ 2^(p/2) with p the dtype's mantissa bits (float16 32, float32 2048, float64 6.7e7, where the
    usual form's error reaches √ε), (a − m) − s is used, which keeps s whole. Below, both forms agree
    to rounding, and c = m + s, r = 0 gives the usual form's numbers to the bit."""
    xp = backend.array_module(m)
    big = xp.abs(m) >= 2.0 ** (np.finfo(m.dtype).nmant // 2)
    return xp.where(big, m, m + s), xp.where(big, s, xp.zeros_like(s))


def log_softmax_array(a, axis=-1):
    """log softmax(a) of a plain array, (a − c) − r (``softmax_offsets``): exact where the logits are
    huge and nearly equal, never NaN."""
    c, r = softmax_offsets(*shifted_logsumexp(a, axis))
    return (a - c) - r


def logsumexp(x, axis=-1, keepdims=False):
    """log Σ_i e^{x_i}, shifted by the maximum; d/dx_i = softmax(x)_i."""
    x = tensor(x)
    xp = backend.xp()
    out = logsumexp_array(x.data, axis, keepdims)

    def vjp(g):
        lse = out if keepdims else xp.expand_dims(out, axis)
        gk = g if keepdims else xp.expand_dims(g, axis)
        return (gk * xp.exp(x.data - lse),)

    return _make(out, (x,), vjp)


def log_softmax(x, axis=-1):
    """log p_i = x_i − log Σ_j e^{x_j}; VJP: g − p · Σ_j g_j (notes: next-token log-probabilities)."""
    x = tensor(x)
    xp = backend.xp()
    out = log_softmax_array(x.data, axis)
    return _make(out, (x,), lambda g: (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),))


def softmax(x, axis=-1):
    """p_i = e^{x_i} / Σ_j e^{x_j}; VJP: p · (g − Σ_j g_j p_j)."""
    x = tensor(x)
    xp = backend.xp()
    p = xp.exp(log_softmax_array(x.data, axis))
    return _make(p, (x,), lambda g: (p * (g - (g * p).sum(axis=axis, keepdims=True)),))
