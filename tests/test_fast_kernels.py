"""The fast layers of model.py held to the one-line formulas they implement.

GELU, LayerNorm and attention work in place, in fewer passes, with mat-vecs for row sums and
without the copies of a direct transcription. Each is checked here against the plain formula
quoted in its docstring or in its "in the forward pass this was" comment, written out directly
(values and gradients, float64), and against float64 central differences; float32 against the
float64 formula within float32's precision.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import model as M
from dpo_np.gradcheck import central_difference, relative_error

S, C = math.sqrt(2.0 / math.pi), 0.044715


def _numeric(forward, x, dout):
    return central_difference(lambda a: float((forward(*a) * dout).sum()), [x], 0, 1e-5)


# -- GELU ---------------------------------------------------------------------------------------

def plain_gelu(x):
    """The docstring's line: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return 0.5 * x * (1.0 + np.tanh(S * (x + C * x ** 3)))


def plain_gelu_grad(x):
    """The comment's line: 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)."""
    t = np.tanh(S * (x + C * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t ** 2) * S * (1.0 + 3.0 * C * x ** 2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 3.0, 30.0]))
def test_gelu_is_the_one_line_formula_in_value_and_gradient(seed, scale):
    r = np.random.default_rng(seed)
    x = r.normal(size=(3, 5, 8)) * scale            # the tanh's linear, curved and saturated parts
    dout = r.normal(size=x.shape)
    out, cache = M.gelu_forward(x)
    np.testing.assert_allclose(out, plain_gelu(x), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(M.gelu_backward(dout, cache), dout * plain_gelu_grad(x), rtol=1e-13, atol=1e-15)
    assert x.shape == out.shape and np.all(np.isfinite(out))


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


def test_gelu_in_float32_follows_the_float64_formula_even_far_out():
    x = np.concatenate([np.linspace(-12, 12, 241), [-1e4, -300.0, 300.0, 1e4, 3e12, -3e12]])
    out, cache = M.gelu_forward(x.astype(np.float32))
    dx = M.gelu_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == np.float32 and np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(out, plain_gelu(x), rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(dx, plain_gelu_grad(x), rtol=2e-6, atol=2e-6)


# -- LayerNorm ----------------------------------------------------------------------------------

def plain_layernorm(x, w, b):
    """(x − μ) / sqrt(σ² + ε) · w + b over the last axis, biased variance."""
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + M.LN_EPS) * w + b


def plain_layernorm_grads(x, w, dout):
    """The comment's lines: dx = rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)), dw, db."""
    rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True) + M.LN_EPS)
    xhat = (x - x.mean(-1, keepdims=True)) * rstd
    dxhat = dout * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return dx, (dout * xhat).sum(axes), dout.sum(axes)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), offset=st.sampled_from([0.0, 5.0, 1e3]), scale=st.sampled_from([1e-2, 1.0, 10.0]))
def test_layernorm_is_the_one_line_formula_in_value_and_gradient(seed, offset, scale):
    r = np.random.default_rng(seed)
    x = offset + scale * r.normal(size=(2, 4, 16))  # a large common offset: the mean must not lose x − μ
    w, b, dout = r.normal(size=16), r.normal(size=16), r.normal(size=x.shape)
    out, cache = M.layernorm_forward(x, w, b)
    np.testing.assert_allclose(out, plain_layernorm(x, w, b), rtol=1e-10, atol=1e-10)
    for ours, plain in zip(M.layernorm_backward(dout, cache), plain_layernorm_grads(x, w, dout)):
        np.testing.assert_allclose(ours, plain, rtol=1e-9, atol=1e-9 / scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_forward_is_its_line_to_the_last_bit(dtype):
    """The forward runs the docstring's operations in their order, so its rounding is the plain
    line's: a check that differentiates through it (the reward model's ln_f.bias, whose true
    gradient is 0, meets central differences only because both sides round alike) keeps holding."""
    r = np.random.default_rng(6)
    x = (r.normal(size=(4, 9, 16)) * 3 + 1).astype(dtype)
    w, b = r.normal(size=16).astype(dtype), r.normal(size=16).astype(dtype)
    xc = x - x.mean(axis=-1, keepdims=True)
    xhat = xc * (1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + M.LN_EPS))
    out, (cached_xhat, _, _) = M.layernorm_forward(x, w, b)
    assert np.array_equal(out, xhat * w + b) and np.array_equal(cached_xhat, xhat)


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

def _heads(qkv, nh):
    B, T, C3 = qkv.shape
    return qkv.reshape(B, T, 3, nh, C3 // 3 // nh).transpose(2, 0, 3, 1, 4)          # q, k, v (B, nh, T, hs)


def plain_attention(qkv, nh, mask):
    """y = softmax(where(allowed, q kᵀ/√hs, −big)) v, heads side by side; and att."""
    q, k, v = _heads(qkv, nh)
    B, _, T, hs = q.shape
    s = np.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(hs)
    allowed = M.attention_allowed(T, mask)
    s = np.where(allowed, s, np.finfo(s.dtype).min / 2)
    att = np.exp(s - s.max(-1, keepdims=True))
    att = att / att.sum(-1, keepdims=True)
    y = np.einsum("bhts,bhsd->bhtd", att, v)
    return y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs), att


def plain_attention_grad(qkv, nh, mask, dout):
    """The comment's lines, each written out: datt = dy vᵀ, dv = attᵀ dy, ds = att·(datt − Σ datt·att),
    dq = ds k·scale, dk = dsᵀ q·scale, back into c_attn's layout."""
    q, k, v = _heads(qkv, nh)
    B, _, T, hs = q.shape
    _, att = plain_attention(qkv, nh, mask)
    dy = dout.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    datt = np.einsum("bhtd,bhsd->bhts", dy, v)
    dv = np.einsum("bhts,bhtd->bhsd", att, dy)
    ds = att * (datt - (datt * att).sum(-1, keepdims=True))
    dq = np.einsum("bhts,bhsd->bhtd", ds, k) / math.sqrt(hs)
    dk = np.einsum("bhts,bhtd->bhsd", ds, q) / math.sqrt(hs)
    return np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs)


@pytest.mark.parametrize("lengths", [None, (6, 4, 1, 0)], ids=["causal", "causal+padding"])
def test_attention_is_the_one_line_formula_in_value_and_gradient(lengths):
    r = np.random.default_rng(3)
    B, T, C_, nh = 4, 6, 12, 3
    mask = None if lengths is None else (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    qkv = r.normal(size=(B, T, 3 * C_)) * 2
    dout = r.normal(size=(B, T, C_))
    qkv0, dout0 = qkv.copy(), dout.copy()
    out, cache = M.attention_forward(qkv, nh, mask)
    y, att = plain_attention(qkv, nh, mask)
    np.testing.assert_allclose(out, y, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cache[3], att, rtol=1e-13, atol=1e-15)
    dqkv = M.attention_backward(dout, cache)
    np.testing.assert_allclose(dqkv, plain_attention_grad(qkv, nh, mask, dout), rtol=1e-11, atol=1e-13)
    num = _numeric(lambda a: M.attention_forward(a, nh, mask)[0], qkv, dout)
    assert relative_error(dqkv, num) < 1e-8
    assert np.array_equal(qkv, qkv0) and np.array_equal(dout, dout0)
    assert np.array_equal(M.attention_backward(dout, cache), dqkv)


def test_row_sums_are_the_sums_over_the_last_axis():
    a = np.random.default_rng(4).normal(size=(2, 3, 5, 7))
    np.testing.assert_allclose(M._row_sums(a), a.sum(-1, keepdims=True), rtol=1e-14, atol=1e-14)
    assert M._row_sums(a.astype(np.float32)).dtype == np.float32


def test_column_sums_are_the_sums_over_the_rows():
    a = np.random.default_rng(5).normal(size=(37, 6))
    np.testing.assert_allclose(M._column_sums(a), a.sum(axis=0), rtol=1e-13, atol=1e-13)
    assert M._column_sums(a.astype(np.float32)).shape == (6,)
