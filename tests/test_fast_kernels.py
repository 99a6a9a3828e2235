"""The fast layers of model.py held to the one-line formulas they implement, to the last bit.

GELU, LayerNorm and attention write into a few preallocated arrays (and, with ``DPO_NP_THREADS``,
on blocks of rows) instead of making a new array per operation, and attention writes its outputs
straight into their final layout instead of copying them there. They run the same operations in
the same order as the formula written out in one line (the docstring's, or the "in the forward
pass this was" comment's), so here each is compared with that line, written plainly, for exact
equality (float32 and float64, values and gradients), and with float64 central differences.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import model as M
from dpo_np.gradcheck import central_difference, relative_error

S, C = M.GELU_SCALE, M.GELU_COEF
DTYPES = [np.float32, np.float64]


def _numeric(forward, x, dout):
    return central_difference(lambda a: float((forward(*a) * dout).sum()), [x], 0, 1e-5)


# -- GELU ---------------------------------------------------------------------------------------

def plain_gelu(x):
    """The docstring's line: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); and t."""
    t = np.tanh(S * (x + C * x * x * x))
    return 0.5 * x * (1.0 + t), t


def plain_gelu_backward(dout, x, t):
    """The comment's line: dout·(0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²))."""
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * S * (1.0 + 3.0 * C * x * x))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 3.0, 30.0]), dtype=st.sampled_from(DTYPES))
def test_gelu_is_its_one_line_formula_to_the_last_bit(seed, scale, dtype):
    r = np.random.default_rng(seed)
    x = (r.normal(size=(3, 5, 8)) * scale).astype(dtype)    # the tanh's linear, curved and saturated parts
    dout = r.normal(size=x.shape).astype(dtype)
    out, (_, t) = M.gelu_forward(x)
    plain_out, plain_t = plain_gelu(x)
    assert out.dtype == dtype and np.array_equal(out, plain_out) and np.array_equal(t, plain_t)
    assert np.array_equal(M.gelu_backward(dout, (x, t)), plain_gelu_backward(dout, x, plain_t))


def test_gelu_far_out_is_finite_and_still_the_line():
    x = np.array([-1e4, -300.0, -12.0, 12.0, 300.0, 1e4, 3e12, -3e12], dtype=np.float32)
    out, (_, t) = M.gelu_forward(x)
    dx = M.gelu_backward(np.ones_like(x), (x, t))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    assert np.array_equal(out, plain_gelu(x)[0]) and np.array_equal(dx, plain_gelu_backward(np.ones_like(x), x, t))


def test_gelu_gradient_matches_central_differences_and_leaves_its_inputs_alone():
    r = np.random.default_rng(1)
    x = r.normal(size=(4, 6)) * 2.5
    dout = r.normal(size=x.shape)
    x0, dout0 = x.copy(), dout.copy()
    out, cache = M.gelu_forward(x)
    dx = M.gelu_backward(dout, cache)
    assert relative_error(dx, _numeric(lambda a: M.gelu_forward(a)[0], x, dout)) < 1e-8
    assert np.array_equal(x, x0) and np.array_equal(dout, dout0)     # in place only on its own arrays
    assert np.array_equal(M.gelu_backward(dout, cache), dx)          # the cache survives a backward


# -- LayerNorm ----------------------------------------------------------------------------------

def plain_layernorm(x, w, b):
    """The docstring's line, as the forward computes it: xhat = (x − μ)·rstd, out = xhat·w + b."""
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + M.LN_EPS)
    xhat = xc * rstd
    return xhat * w + b, xhat, rstd


def plain_layernorm_backward(dout, xhat, w, rstd):
    """The comment's lines: dx = rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)), dw, db."""
    dxhat = dout * w
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    flat = lambda a: a.reshape(-1, a.shape[-1])                       # noqa: E731
    return dx, (flat(dout) * flat(xhat)).sum(axis=0), flat(dout).sum(axis=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), offset=st.sampled_from([0.0, 5.0, 1e3]), scale=st.sampled_from([1e-2, 1.0, 10.0]),
       dtype=st.sampled_from(DTYPES))
def test_layernorm_is_its_one_line_formula_to_the_last_bit(seed, offset, scale, dtype):
    r = np.random.default_rng(seed)
    x = (offset + scale * r.normal(size=(2, 4, 16))).astype(dtype)
    w, b, dout = (r.normal(size=s).astype(dtype) for s in (16, 16, x.shape))
    out, cache = M.layernorm_forward(x, w, b)
    plain_out, xhat, rstd = plain_layernorm(x, w, b)
    assert out.dtype == dtype and np.array_equal(out, plain_out)
    assert np.array_equal(cache[0], xhat) and np.array_equal(cache[2], rstd)
    for ours, plain in zip(M.layernorm_backward(dout, cache), plain_layernorm_backward(dout, xhat, w, rstd)):
        assert np.array_equal(ours, plain)


def test_layernorm_gradient_matches_central_differences_and_leaves_its_inputs_alone():
    r = np.random.default_rng(2)
    x, w, b = r.normal(size=(3, 7)) * 2 + 0.5, r.normal(size=7), r.normal(size=7)
    dout = r.normal(size=x.shape)
    x0, dout0 = x.copy(), dout.copy()
    out, cache = M.layernorm_forward(x, w, b)
    dx, _, _ = M.layernorm_backward(dout, cache)
    assert relative_error(dx, _numeric(lambda a: M.layernorm_forward(a, w, b)[0], x, dout)) < 1e-8
    assert np.array_equal(x, x0) and np.array_equal(dout, dout0)
    assert np.array_equal(M.layernorm_backward(dout, cache)[0], dx)


# -- attention ----------------------------------------------------------------------------------

def plain_attention(qkv, nh, mask):
    """y = softmax(where(allowed, q kᵀ/√hs, −big)) v, one line at a time, heads side by side; and att."""
    B, T, C3 = qkv.shape
    hs = C3 // 3 // nh
    q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
    att = q @ k.transpose(0, 1, 3, 2)
    att *= 1.0 / math.sqrt(hs)
    att = np.where(M.attention_allowed(T, mask), att, np.finfo(att.dtype).min / 2)
    att = np.exp(att - att.max(axis=-1, keepdims=True))
    att = att / att.sum(axis=-1, keepdims=True)
    return (att @ v).transpose(0, 2, 1, 3).reshape(B, T, nh * hs), att


def plain_attention_backward(dout, qkv, nh, att, y):
    """The comment's lines: dv = attᵀ dy, datt = dy vᵀ, ds = att·(datt − dy·y), dq = ds k·scale,
    dk = dsᵀ q·scale, stacked back into c_attn's layout."""
    B, T, C3 = qkv.shape
    hs = C3 // 3 // nh
    q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
    dyh = dout.reshape(B, T, nh, hs)
    dy = dyh.transpose(0, 2, 1, 3)
    dv = att.transpose(0, 1, 3, 2) @ dy
    datt = dy @ v.transpose(0, 1, 3, 2)
    datt -= (dyh * y.reshape(B, T, nh, hs)).sum(axis=-1).transpose(0, 2, 1)[..., None]
    datt *= att
    datt *= 1.0 / math.sqrt(hs)
    dq, dk = datt @ k, datt.transpose(0, 1, 3, 2) @ q
    return np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [None, (6, 4, 1, 0)], ids=["causal", "causal+padding"])
def test_attention_is_its_one_line_formula_to_the_last_bit(lengths, dtype):
    r = np.random.default_rng(3)
    B, T, C_, nh = 4, 6, 12, 3
    mask = None if lengths is None else (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    qkv = (r.normal(size=(B, T, 3 * C_)) * 2).astype(dtype)
    dout = r.normal(size=(B, T, C_)).astype(dtype)
    qkv0, dout0 = qkv.copy(), dout.copy()
    out, cache = M.attention_forward(qkv, nh, mask)
    y, att = plain_attention(qkv, nh, mask)
    assert out.dtype == dtype and np.array_equal(out, y) and np.array_equal(cache[3], att)
    dqkv = M.attention_backward(dout, cache)
    assert np.array_equal(dqkv, plain_attention_backward(dout, qkv, nh, att, y))
    assert np.array_equal(qkv, qkv0) and np.array_equal(dout, dout0)
    assert np.array_equal(M.attention_backward(dout, cache), dqkv)


def test_attention_gradient_matches_central_differences_with_padding():
    r = np.random.default_rng(4)
    mask = (np.arange(5)[None, :] < np.array([5, 2, 0])[:, None]).astype(np.int64)
    qkv, dout = r.normal(size=(3, 5, 12)), r.normal(size=(3, 5, 4))
    dqkv = M.attention_backward(dout, M.attention_forward(qkv, 2, mask)[1])
    assert relative_error(dqkv, _numeric(lambda a: M.attention_forward(a, 2, mask)[0], qkv, dout)) < 1e-8
