"""The language model π_θ: GPT-2's architecture at toy size, with every gradient written out.

The notes open with what a language model computes: for a prefix of tokens, one probability
per vocabulary entry for the next token, π_θ(y_t | x, y_<t) ("Short intro to language models").
This file computes the logits behind those probabilities, and their gradients, by hand.

The layout follows llm.c's ``train_gpt2.c``: each layer is a ``*_forward(...) -> (out, cache)``
beside its ``*_backward(dout, cache) -> grads``; the math of each backward is written above it,
quoting the forward line it differentiates; the model's backward calls the layer backwards in
exactly the reverse order of its forward. No autograd here, so every gradient can be read.

Parameters live in one flat dict, ``model.params``, under the names of a GPT-2 checkpoint
without the ``transformer.`` prefix, in GPT-2's Conv1D layout (``y = x @ W + b``), so a real
GPT-2 state dict maps onto it one-to-one. The dict is the single source of truth: every forward
reads ``self.params[name]`` when it runs, and the compute dtype follows the parameters.

Letters: B batch, T time, C channels (n_embd), V vocabulary, nh heads, hs = C // nh head size.
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from dpo_np import backend, checks, parallel

LN_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)   # a Python float: NumPy float64 scalars would upcast float32
GELU_COEF = 0.044715


# ----------------------------------------------------------------------------------------------
# configuration

@dataclass
class GPTConfig:
    """The five numbers that fix the architecture (nanoGPT's GPTConfig)."""
    vocab_size: int = 96
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, checks.integer(getattr(self, f.name), f"GPTConfig.{f.name}", low=1))
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown keys {unknown}; expected {sorted(names)}")
        return cls(**{k: d[k] for k in names if k in d})


# ----------------------------------------------------------------------------------------------
# layers: each forward beside its backward

def _flat(a):
    """(..., n) -> (N, n) view, so every linear layer is one 2-D GEMM."""
    return a.reshape(-1, a.shape[-1])


def embedding_forward(idx, wte, wpe):
    """x[b, t] = wte[idx[b, t]] + wpe[t]: token embedding plus learned position embedding."""
    T = idx.shape[1]
    out = wte[idx] + wpe[:T]           # (B, T, C)
    return out, (idx, wte.shape[0], T)


# in the forward pass this was: out[b, t] = wte[idx[b, t]] + wpe[t]
# each row of wte receives the sum of dout over the positions where its token appears
# (a scatter-add: a token used twice gets both gradients), and wpe[t] the sum over the batch.
def embedding_backward(dout, cache):
    idx, V, T = cache
    xp = backend.xp()
    C = dout.shape[-1]
    dwte = xp.zeros((V, C), dtype=dout.dtype)
    backend.scatter_add(dwte, idx.reshape(-1), _flat(dout))
    dwpe = dout.sum(axis=0)            # (T, C): rows >= T of wpe got no gradient
    return dwte, dwpe


def layernorm_forward(x, w, b):
    """out = (x − μ) / sqrt(σ² + ε) · w + b over the last axis (ε = 1e-5, biased variance)."""
    xp = backend.xp()
    out, xhat = xp.empty(x.shape, dtype=x.dtype), xp.empty(x.shape, dtype=x.dtype)
    rstd = xp.empty((*x.shape[:-1], 1), dtype=x.dtype)
    parallel.over_rows(_layernorm_rows, _flat(x), w, b, _flat(out), _flat(xhat), _flat(rstd))
    return out, (xhat, w, rstd)


def _layernorm_rows(x, w, b, out, xhat, rstd):
    """The forward on rows of (N, C), into ``out``, ``xhat`` and ``rstd``: the operations of the
    docstring's line in its order, so the same numbers to the last bit, without its temporaries."""
    xp = backend.xp()
    xp.subtract(x, x.mean(axis=-1, keepdims=True), out=xhat)  # x − μ
    xp.multiply(xhat, xhat, out=out)                           # (x − μ)², in out until out is due
    rstd[...] = out.mean(axis=-1, keepdims=True)               # σ²
    rstd += LN_EPS
    xp.sqrt(rstd, out=rstd)
    xp.divide(1.0, rstd, out=rstd)                             # 1 / sqrt(σ² + ε)
    xhat *= rstd                                               # reused by the backward
    xp.multiply(xhat, w, out=out)
    out += b


# in the forward pass this was: xhat = (x - mean) * rstd;  out = xhat * w + b
# dw = Σ dout·xhat,  db = Σ dout  (sums over every position);  dxhat = dout·w.
# xhat depends on x directly and through mean and rstd:
#   dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
# (the two means are the mean's and the variance's paths back to every x in the row).
def layernorm_backward(dout, cache):
    xhat, w, rstd = cache
    xp = backend.xp()
    dx, scratch = xp.empty(dout.shape, dtype=dout.dtype), xp.empty(dout.shape, dtype=dout.dtype)
    parallel.over_rows(_layernorm_backward_rows, _flat(dout), _flat(xhat), w, _flat(rstd), _flat(dx), _flat(scratch))
    xp.multiply(_flat(dout), _flat(xhat), out=_flat(scratch))
    dw = _flat(scratch).sum(axis=0)
    db = _flat(dout).sum(axis=0)
    return dx, dw, db


def _layernorm_backward_rows(dout, xhat, w, rstd, dx, scratch):
    xp = backend.xp()
    xp.multiply(dout, w, out=dx)                               # dxhat
    mean_dxhat = dx.mean(axis=-1, keepdims=True)
    xp.multiply(dx, xhat, out=scratch)
    mean_dxhat_xhat = scratch.mean(axis=-1, keepdims=True)
    dx -= mean_dxhat
    xp.multiply(xhat, mean_dxhat_xhat, out=scratch)
    dx -= scratch
    dx *= rstd


def linear_forward(x, w, b):
    """out = x @ W + b (GPT-2's Conv1D layout: W is (in, out)); x of any leading shape."""
    out = _flat(x) @ w                 # (N, out): one 2-D GEMM, faster than a batched matmul
    out += b
    return out.reshape(*x.shape[:-1], w.shape[1]), (x, w)


# in the forward pass this was: out = x @ W + b
# dx = dout @ Wᵀ,  dW = xᵀ @ dout (summed over every position),  db = Σ dout
def linear_backward(dout, cache):
    x, w = cache
    d2 = _flat(dout)                   # (N, out)
    dx = (d2 @ w.T).reshape(x.shape)
    dw = _flat(x).T @ d2               # (in, out)
    db = d2.sum(axis=0)
    return dx, dw, db


def gelu_forward(x):
    """GELU, tanh approximation as in GPT-2: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    x is the model's largest activation, (B, T, 4C): written as one expression, the line above
    makes a new array per operation; here the same operations, in the same order (so the same
    numbers, to the last bit), write into three arrays, on blocks of rows (``parallel.over_rows``).
    """
    xp = backend.xp()
    out, t, scratch = (xp.empty(x.shape, dtype=x.dtype) for _ in range(3))
    parallel.over_rows(_gelu_rows, _flat(x), _flat(out), _flat(t), _flat(scratch))
    return out, (x, t)


def _gelu_rows(x, out, t, scratch):
    xp = backend.xp()
    xp.multiply(x, GELU_COEF, out=t)
    t *= x
    t *= x
    t += x
    t *= GELU_SCALE                    # √(2/π)·(x + 0.044715·x³)
    xp.tanh(t, out=t)
    xp.add(t, 1.0, out=scratch)        # 1 + t
    xp.multiply(x, 0.5, out=out)
    out *= scratch                     # 0.5·x·(1 + t)


# in the forward pass this was: out = 0.5·x·(1 + t),  t = tanh(√(2/π)·(x + 0.044715·x³))
# dout/dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)       (tanh' = 1 − tanh²)
# the line's operations in its order, into three arrays instead of one per operation
def gelu_backward(dout, cache):
    x, t = cache
    xp = backend.xp()
    dx, a, b = (xp.empty(x.shape, dtype=x.dtype) for _ in range(3))
    parallel.over_rows(_gelu_backward_rows, _flat(dout), _flat(x), _flat(t), _flat(dx), _flat(a), _flat(b))
    return dx


def _gelu_backward_rows(dout, x, t, dx, a, b):
    xp = backend.xp()
    xp.multiply(t, t, out=a)
    xp.subtract(1.0, a, out=a)         # 1 − t²
    xp.multiply(x, 0.5, out=b)
    b *= a
    b *= GELU_SCALE                    # 0.5·x·(1 − t²)·√(2/π)
    xp.multiply(x, 3.0 * GELU_COEF, out=a)
    a *= x
    a += 1.0                           # 1 + 3·0.044715·x²
    b *= a
    xp.add(t, 1.0, out=dx)
    dx *= 0.5                          # 0.5·(1 + t)
    dx += b
    dx *= dout


def attention_allowed(T, attention_mask=None, n_past=0):
    """Which keys each query may attend to: (B or 1, 1, T, n_past + T) bool.

    Causal (key s ≤ query t, counting the ``n_past`` earlier tokens of a key/value cache) and,
    with a right-padding ``attention_mask`` (B, T) of 0/1, only real keys. A query always sees
    itself, so no row is ever fully masked (a padded query of an empty row would otherwise softmax
    over nothing).
    """
    xp = backend.xp()
    causal = xp.tril(xp.ones((T, n_past + T), dtype=bool), k=n_past)
    if attention_mask is None:
        return causal[None, None]
    keys = attention_mask.astype(bool)[:, None, None, :]          # (B, 1, 1, T)
    return causal & (keys | xp.eye(T, dtype=bool))


def attention_forward(qkv, n_head, attention_mask=None, past=None):
    """Causal multi-head self-attention, all heads at once: y = softmax(where(allowed, q kᵀ/√hs, −big)) v.

    qkv is c_attn's output (B, T, 3C); returns y with the heads side by side, (B, T, C). Scores a
    query may not see are set to a large finite negative (the dtype's min / 2) with a ``where``,
    never −inf (0·inf and a row of −inf are NaN), so their probabilities underflow to exactly 0.
    ``past`` (generation only): the keys and values (B, nh, n_past, hs) of the tokens before these;
    the cache then holds the keys and values of all n_past + T tokens.
    """
    xp = backend.xp()
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    # a view, no copy: each (T, hs) slice is BLAS-ready with row stride 3C
    q, k, v = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)   # each (B, nh, T, hs)
    n_past = 0
    if past is not None:
        n_past = past[0].shape[2]
        k, v = xp.concatenate([past[0], k], axis=2), xp.concatenate([past[1], v], axis=2)
    scale = 1.0 / math.sqrt(hs)
    allowed = attention_allowed(T, attention_mask, n_past)
    att = xp.empty((B, n_head, T, n_past + T), dtype=qkv.dtype)
    out = xp.empty((B, T, n_head, hs), dtype=qkv.dtype)
    # y = att @ v lands in each head's columns of out (B, T, C), the heads side by side again
    parallel.over_rows(_attention_rows, q, k, v, allowed, scale, att, out.transpose(0, 2, 1, 3))
    out = out.reshape(B, T, C)
    return out, (q, k, v, att, out, scale)


def _attention_rows(q, k, v, allowed, scale, att, y):
    """The forward on a block of the batch, into ``att`` (B, nh, T, T') and ``y`` (B, nh, T, hs)."""
    xp = backend.xp()
    xp.matmul(q, k.transpose(0, 1, 3, 2), out=att)             # s = q @ kᵀ
    att *= scale
    xp.copyto(att, np.finfo(att.dtype).min / 2, where=~allowed)
    att -= att.max(axis=-1, keepdims=True)                     # stable softmax, in place: att is the
    xp.exp(att, out=att)                                       # largest activation of the model
    att /= att.sum(axis=-1, keepdims=True)
    xp.matmul(att, v, out=y)


# in the forward pass this was:
#   s = q @ kᵀ · scale;  att = softmax(where(allowed, s, −big));  y = att @ v
# y = att @ v:        datt = dy @ vᵀ,  dv = attᵀ @ dy
# softmax:            ds = att · (datt − Σ_j datt_j·att_j)   (row-wise)
#   and Σ_j datt_ij·att_ij = Σ_j (dy_i·v_j)·att_ij = dy_i·y_i, a (B, nh, T) dot product instead of a
#   (B, nh, T, T) one. Masked entries have att exactly 0, so ds is 0 there: the mask from the
#   forward travels in att, nothing is recomputed.
# s = q @ kᵀ · scale: dq = ds @ k · scale,  dk = dsᵀ @ q · scale
# dq, dk, dv are written straight into their columns of dqkv, c_attn's layout (B, T, 3C): the
# inverse of the forward's split into q, k, v, without a copy.
def attention_backward(dout, cache):
    q, k, v, att, out, scale = cache
    xp = backend.xp()
    B, nh, T, hs = q.shape
    dqkv = xp.empty((B, T, 3, nh, hs), dtype=dout.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                 # views, each (B, nh, T, hs)
    dyh = dout.reshape(B, T, nh, hs)
    parallel.over_rows(_attention_backward_rows, dyh, out.reshape(B, T, nh, hs), q, k, v, att, scale,
                       xp.empty(att.shape, dtype=att.dtype), xp.empty(dyh.shape, dtype=dyh.dtype), dq, dk, dv)
    return dqkv.reshape(B, T, 3 * nh * hs)


def _attention_backward_rows(dyh, yh, q, k, v, att, scale, datt, scratch, dq, dk, dv):
    """The backward on a block of the batch; dy and y with the heads side by side, (B, T, nh, hs)."""
    xp = backend.xp()
    dy = dyh.transpose(0, 2, 1, 3)                             # (B, nh, T, hs) view
    xp.matmul(att.transpose(0, 1, 3, 2), dy, out=dv)           # dv = attᵀ @ dy
    xp.matmul(dy, v.transpose(0, 1, 3, 2), out=datt)           # datt = dy @ vᵀ
    dy_dot_y = xp.multiply(dyh, yh, out=scratch).sum(axis=-1)  # (B, T, nh)
    datt -= dy_dot_y.transpose(0, 2, 1)[..., None]
    datt *= att
    datt *= scale                                              # ds · scale
    xp.matmul(datt, k, out=dq)                                 # dq = ds @ k · scale
    xp.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)           # dk = dsᵀ @ q · scale


def lm_head_forward(h, wte):
    """logits = h @ wteᵀ: the head shares (ties) its weight with the token embedding, as GPT-2."""
    logits = _flat(h) @ wte.T          # (B·T, V)
    return logits.reshape(*h.shape[:-1], wte.shape[0]), (h, wte)


# in the forward pass this was: logits = h @ wteᵀ
# dh = dlogits @ wte,  dwte = dlogitsᵀ @ h  (added to the embedding's own dwte by the caller)
def lm_head_backward(dlogits, cache):
    h, wte = cache
    d2 = _flat(dlogits)                # (B·T, V)
    dh = (d2 @ wte).reshape(h.shape)
    dwte = d2.T @ _flat(h)             # (V, C)
    return dh, dwte


# ----------------------------------------------------------------------------------------------
# one transformer block (pre-LayerNorm, as GPT-2): x + attn(ln_1(x)), then + mlp(ln_2(·))

def block_forward(x, p, prefix, n_head, attention_mask=None, past=None):
    """x2 = x + c_proj(attn(c_attn(ln_1(x))));  out = x2 + c_proj(gelu(c_fc(ln_2(x2))))."""
    ln1, ln1_c = layernorm_forward(x, p[prefix + "ln_1.weight"], p[prefix + "ln_1.bias"])
    qkv, qkv_c = linear_forward(ln1, p[prefix + "attn.c_attn.weight"], p[prefix + "attn.c_attn.bias"])
    atty, att_c = attention_forward(qkv, n_head, attention_mask, past)
    attp, attp_c = linear_forward(atty, p[prefix + "attn.c_proj.weight"], p[prefix + "attn.c_proj.bias"])
    x2 = x + attp                      # residual
    ln2, ln2_c = layernorm_forward(x2, p[prefix + "ln_2.weight"], p[prefix + "ln_2.bias"])
    fc, fc_c = linear_forward(ln2, p[prefix + "mlp.c_fc.weight"], p[prefix + "mlp.c_fc.bias"])
    gl, gl_c = gelu_forward(fc)
    mlp, mlp_c = linear_forward(gl, p[prefix + "mlp.c_proj.weight"], p[prefix + "mlp.c_proj.bias"])
    out = x2 + mlp                     # residual
    return out, (prefix, ln1_c, qkv_c, att_c, attp_c, ln2_c, fc_c, gl_c, mlp_c)


# the reverse of block_forward, line by line; a residual x + f(x) passes dout to both branches,
# so the branch's dx is added to dout.
def block_backward(dout, cache, grads):
    prefix, ln1_c, qkv_c, att_c, attp_c, ln2_c, fc_c, gl_c, mlp_c = cache

    def acc(name, d):
        grads[prefix + name] += d

    dgl, dw, db = linear_backward(dout, mlp_c)
    acc("mlp.c_proj.weight", dw); acc("mlp.c_proj.bias", db)
    dfc = gelu_backward(dgl, gl_c)
    dln2, dw, db = linear_backward(dfc, fc_c)
    acc("mlp.c_fc.weight", dw); acc("mlp.c_fc.bias", db)
    dx2, dw, db = layernorm_backward(dln2, ln2_c)
    acc("ln_2.weight", dw); acc("ln_2.bias", db)
    dx2 += dout                        # residual: out = x2 + mlp
    datty, dw, db = linear_backward(dx2, attp_c)
    acc("attn.c_proj.weight", dw); acc("attn.c_proj.bias", db)
    dqkv = attention_backward(datty, att_c)
    dln1, dw, db = linear_backward(dqkv, qkv_c)
    acc("attn.c_attn.weight", dw); acc("attn.c_attn.bias", db)
    dx, dw, db = layernorm_backward(dln1, ln1_c)
    acc("ln_1.weight", dw); acc("ln_1.bias", db)
    dx += dx2                          # residual: x2 = x + attp
    return dx


# ----------------------------------------------------------------------------------------------
# the model

def param_shapes(config):
    """Every parameter's name (GPT-2 checkpoint names without ``transformer.``) and shape, in order."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(config.n_layer):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def training_bytes(config, batch_size, dtype=np.float32):
    """About how many bytes training this GPT takes, before any is allocated: the parameters, their
    gradients and AdamW's two moments (4 copies), and one batch's activations, which the backward
    keeps (per layer about 16·C per position and an attention map per head; the logits, V per
    position, several times over). An estimate for refusing what cannot fit, not a measurement."""
    size = np.dtype(dtype).itemsize
    n_params = sum(int(np.prod(shape)) for shape in param_shapes(config).values())
    T, C, V = config.block_size, config.n_embd, config.vocab_size
    per_position = config.n_layer * (16 * C + 2 * config.n_head * T) + 4 * V
    return size * (4 * n_params + 2 * batch_size * T * per_position)


def init_params(config, seed=0, dtype=None):
    """GPT-2's initialisation: weights N(0, 0.02), residual projections (c_proj) N(0, 0.02/√(2·n_layer)),
    biases 0, LayerNorm weight 1 and bias 0. Drawn on the host from ``backend.rng(seed)`` in float64, then
    cast, so float32 and float64 models of one seed hold the same numbers."""
    dtype = backend.default_dtype() if dtype is None else dtype
    rng = backend.rng(seed)
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            a = np.zeros(shape)
        elif ".ln_" in name or name.startswith("ln_"):
            a = np.ones(shape)
        else:
            a = rng.normal(0.0, proj_std if name.endswith("c_proj.weight") else 0.02, size=shape)
        params[name] = backend.asarray(a, dtype)
    return params


class GPT:
    """GPT-2 with manual backprop. ``forward`` -> logits; ``backward(dlogits)`` accumulates ``grads``.

    ``GPT(config, seed=0, dtype=None)``: parameters drawn with GPT-2's initialisation from ``seed``,
    in ``dtype`` (None: ``backend.default_dtype()``, float32).

    ``forward_body``/``backward_body`` stop at the final LayerNorm (B, T, C), for a reward model's
    own head; ``forward`` = body + tied LM head, ``backward`` = head backward + ``backward_body``.
    """

    param_shapes = staticmethod(param_shapes)

    def __init__(self, config, seed=0, dtype=None):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.params = init_params(config, seed, dtype)
        self.grads = None              # created by the first backward or zero_grad()
        self._body_cache = None
        self._head_cache = None

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def dtype(self):
        return self.params["wte.weight"].dtype

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self):
        """Zero the gradient buffers (made to match the current params: names, shapes, dtypes)."""
        xp = backend.xp()
        if not self._grads_match():
            self.grads = {k: xp.zeros(p.shape, dtype=p.dtype) for k, p in self.params.items()}
        else:
            for g in self.grads.values():
                g.fill(0)

    def _grads_match(self):
        return (self.grads is not None and self.grads.keys() == self.params.keys()
                and all(self.grads[k].shape == p.shape and self.grads[k].dtype == p.dtype
                        for k, p in self.params.items()))

    # -- input checks --------------------------------------------------------------------------

    def _check_idx(self, idx):
        xp = backend.xp()
        idx = xp.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"idx must be 2-D (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"idx must be non-empty, got shape {tuple(idx.shape)}")
        if T > self.config.block_size:
            raise ValueError(f"idx has T={T} tokens, more than block_size={self.config.block_size}")
        lo, hi = backend.to_numpy(xp.stack([idx.min(), idx.max()])).tolist()   # one host transfer
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            raise ValueError(f"idx holds token ids in [{lo}, {hi}], outside [0, vocab_size={V})")
        return idx

    @staticmethod
    def _check_mask(attention_mask, shape):
        if attention_mask is None:
            return None
        xp = backend.xp()
        m = xp.asarray(attention_mask)
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"attention_mask has shape {tuple(m.shape)}, expected idx's shape {tuple(shape)}")
        if m.dtype.kind not in "biuf":
            raise TypeError(f"attention_mask must be 0/1 numbers or bools, got dtype {m.dtype}")
        binary = ((m == 0) | (m == 1)).all()
        m = m.astype(bool)
        # right padding (1…1 0…0 per row) is what makes a real token's logits equal an unpadded run:
        # positions are absolute, so a left-padded row would shift them
        left_padded = (m[:, 1:] & ~m[:, :-1]).any()
        binary, left_padded = backend.to_numpy(xp.stack([binary, left_padded])).tolist()   # one transfer
        if not binary:
            raise ValueError("attention_mask must hold only 0 and 1")
        if left_padded:
            raise ValueError("attention_mask must be right-padded: in each row, 1s then 0s")
        return m

    # -- forward -------------------------------------------------------------------------------

    def forward_body(self, idx, attention_mask=None, cache=True):
        """h = ln_f(blocks(wte[idx] + wpe)): (B, T, C), the last hidden states.

        ``attention_mask`` (B, T) of 0/1 marks real tokens of a right-padded batch; padded keys are
        hidden from every query, so each real token gets exactly its unpadded row's result.
        ``cache=False`` keeps no activations (a reference model, generation): no backward after it.
        """
        idx = self._check_idx(idx)
        mask = self._check_mask(attention_mask, idx.shape)
        p, cfg = self.params, self.config
        self._body_cache = self._head_cache = None
        x, emb_c = embedding_forward(idx, p["wte.weight"], p["wpe.weight"])
        block_caches = []
        for i in range(cfg.n_layer):
            x, c = block_forward(x, p, f"h.{i}.", cfg.n_head, mask)
            if cache:
                block_caches.append(c)
        h, lnf_c = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        if cache:
            self._body_cache = (emb_c, block_caches, lnf_c, h.shape, h.dtype)
        return h

    def forward(self, idx, attention_mask=None, cache=True):
        """logits (B, T, V) of π_θ(· | x, y_<t) at every position: body, then the tied head."""
        h = self.forward_body(idx, attention_mask, cache)
        logits, head_c = lm_head_forward(h, self.params["wte.weight"])
        if cache:
            self._head_cache = (head_c, logits.shape, logits.dtype)
        return logits

    __call__ = forward

    def decode(self, idx, past=None):
        """Logits (B, T, V) of the tokens ``idx`` (B, T) that follow the ones ``past`` holds, and the
        new ``past``: inference with a key/value cache, for generation.

        ``past`` is None (``idx`` is the whole prefix) or the list of per-layer (keys, values)
        returned by the previous call, so each new token costs one position, not the whole prefix
        again. The logits are those ``forward`` gives the same positions of the whole sequence.
        No activations are kept for a backward.
        """
        idx = self._check_idx(idx)
        p, cfg = self.params, self.config
        n_past = 0 if past is None else past[0][0].shape[2]
        if n_past + idx.shape[1] > cfg.block_size:
            raise ValueError(f"{n_past} cached + {idx.shape[1]} new tokens exceed block_size={cfg.block_size}; "
                             f"crop the sequence and decode it again from the start")
        x = p["wte.weight"][idx] + p["wpe.weight"][n_past:n_past + idx.shape[1]]
        new_past = []
        for i in range(cfg.n_layer):
            x, c = block_forward(x, p, f"h.{i}.", cfg.n_head, past=None if past is None else past[i])
            _, k, v, *_ = c[3]                          # the attention's cache: keys and values so far
            new_past.append((k, v))
        h, _ = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        return lm_head_forward(h, p["wte.weight"])[0], new_past

    # -- backward ------------------------------------------------------------------------------

    @staticmethod
    def _check_upstream(name, d, shape, dtype):
        if not hasattr(d, "shape") or not hasattr(d, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(d).__name__}")
        if tuple(d.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(d.shape)}, expected {tuple(shape)} "
                             f"(the output of the last cached forward)")
        if d.dtype != dtype:
            raise TypeError(f"{name} has dtype {d.dtype}, expected {dtype} (the forward's dtype)")

    def backward(self, dlogits):
        """Accumulate dL/dθ into ``self.grads`` from dL/dlogits (B, T, V) of the last ``forward``.

        The LM head's dwte and the embedding's dwte land in the same buffer, so the tied weight
        gets both contributions.
        """
        if self._head_cache is None:
            raise ValueError("backward needs the cache of a forward(idx, cache=True) first "
                             "(forward with cache=False keeps nothing; forward_body alone has no head)")
        head_c, shape, dtype = self._head_cache
        self._check_upstream("dlogits", dlogits, shape, dtype)
        if not self._grads_match():
            self.zero_grad()
        dh, dwte = lm_head_backward(dlogits, head_c)
        self.grads["wte.weight"] += dwte
        self.backward_body(dh)

    def backward_body(self, dh):
        """Accumulate dL/dθ into ``self.grads`` from dL/dh (B, T, C) of the last ``forward_body``."""
        if self._body_cache is None:
            raise ValueError("backward_body needs the cache of a forward_body/forward(idx, cache=True) first")
        emb_c, block_caches, lnf_c, shape, dtype = self._body_cache
        self._check_upstream("dh", dh, shape, dtype)
        if not self._grads_match():
            self.zero_grad()
        g = self.grads
        dx, dw, db = layernorm_backward(dh, lnf_c)
        g["ln_f.weight"] += dw
        g["ln_f.bias"] += db
        for c in reversed(block_caches):
            dx = block_backward(dx, c, g)
        dwte, dwpe = embedding_backward(dx, emb_c)
        g["wte.weight"] += dwte
        g["wpe.weight"][: dwpe.shape[0]] += dwpe

    # -- GPT-2 directories (dpo_np/pretrained.py) --------------------------------------------

    @classmethod
    def from_pretrained(cls, directory, dtype=None):
        """A Hugging Face GPT-2 directory (config.json, model.safetensors) as a GPT: ``pretrained.load_pretrained``."""
        from dpo_np.pretrained import load_pretrained
        return load_pretrained(directory, dtype=dtype)

    def save_pretrained(self, directory, tokenizer=None):
        """Write a directory transformers' GPT2LMHeadModel loads with the same logits: ``pretrained.save_pretrained``."""
        from dpo_np.pretrained import save_pretrained
        return save_pretrained(self, directory, tokenizer=tokenizer)
