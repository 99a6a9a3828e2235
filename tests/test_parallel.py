"""parallel.over_rows: threads change where rows are computed, never what is computed.

Every layer that hands its rows to threads gives, bit for bit, the numbers of one call on the
whole arrays (float32 and float64, with and without padding, through a key/value cache); and the
whole model's logits and gradients too. Off NumPy it is one call.
"""

import numpy as np
import pytest

from dpo_np import backend, parallel
from dpo_np import model as M
from dpo_np.model import GPT, GPTConfig


@pytest.fixture
def threads(monkeypatch):
    """Run with n threads and no size threshold (so even test-sized arrays are split)."""
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    previous = parallel.threads()

    def use(n):
        parallel.set_threads(n)
    yield use
    parallel.set_threads(previous)


def _both(threads, fn, n=3):
    threads(1)
    one = fn()
    threads(n)
    return one, fn()


def _equal(a, b):
    if isinstance(a, (tuple, list)):
        return all(_equal(x, y) for x, y in zip(a, b))
    return not isinstance(a, np.ndarray) or (a.dtype == b.dtype and np.array_equal(a, b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_threaded_layer_gives_exactly_the_one_call_numbers(threads, dtype):
    r = np.random.default_rng(0)
    B, T, C, nh = 5, 7, 12, 3
    mask = (np.arange(T)[None, :] < np.array([7, 3, 1, 0, 5])[:, None]).astype(np.int64)
    x = r.normal(size=(B, T, 4 * C)).astype(dtype)
    w, b = r.normal(size=4 * C).astype(dtype), r.normal(size=4 * C).astype(dtype)
    qkv = r.normal(size=(B, T, 3 * C)).astype(dtype)
    d4, d1 = r.normal(size=(B, T, 4 * C)).astype(dtype), r.normal(size=(B, T, C)).astype(dtype)

    def layers():
        g, gc = M.gelu_forward(x)
        ln, lc = M.layernorm_forward(x, w, b)
        outs = [g, M.gelu_backward(d4, gc), ln, *M.layernorm_backward(d4, lc)]
        for m in (None, mask):
            a, ac = M.attention_forward(qkv, nh, m)
            outs += [a, ac[3], M.attention_backward(d1, ac)]
        return outs

    one, many = _both(threads, layers)
    assert _equal(one, many)


def test_the_model_gives_the_same_logits_gradients_and_cached_decoding_with_threads(threads):
    model = GPT(GPTConfig(vocab_size=19, block_size=10, n_layer=2, n_head=2, n_embd=8), seed=1, dtype=np.float64)
    r = np.random.default_rng(1)
    idx = r.integers(0, 19, size=(4, 10))
    mask = (np.arange(10)[None, :] < np.array([10, 6, 2, 8])[:, None]).astype(np.int64)
    dlogits = r.normal(size=(4, 10, 19))

    def run():
        model.zero_grad()
        logits = model.forward(idx, mask)
        model.backward(dlogits)
        first, past = model.decode(idx[:, :6])
        rest, _ = model.decode(idx[:, 6:], past)
        return [logits, first, rest, *[g.copy() for g in model.grads.values()]]

    one, many = _both(threads, run, n=2)
    assert _equal(one, many)


def test_over_rows_cuts_every_array_with_the_rows_and_passes_the_rest_whole(threads):
    threads(3)
    seen = []
    out = np.zeros((7, 2))

    def fn(rows, broadcast, number, out):
        seen.append((rows.shape[0], broadcast.shape, number))
        out[...] = rows * number + broadcast

    rows = np.arange(14.0).reshape(7, 2)
    parallel.over_rows(fn, rows, np.ones((1, 2)), 10.0, out)
    assert sorted(n for n, _, _ in seen) == [2, 2, 3] and all(s == (1, 2) and k == 10.0 for _, s, k in seen)
    np.testing.assert_array_equal(out, rows * 10 + 1)


def test_one_call_below_the_threshold_with_one_thread_and_off_numpy(monkeypatch):
    calls = []
    a = np.zeros((8, 4))
    parallel.over_rows(lambda x: calls.append(x.shape), a)            # 32 elements: under MIN_ELEMENTS
    previous = parallel.set_threads(1)
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    parallel.over_rows(lambda x: calls.append(x.shape), a)
    parallel.set_threads(4)
    try:
        backend.set_backend("strict")
        s = backend.asarray(a)
        parallel.over_rows(lambda x: calls.append(x.shape), s)         # a device array: one call
    finally:
        backend.set_backend("numpy")
        parallel.set_threads(previous)
    assert calls == [(8, 4)] * 3


def test_the_thread_count_is_checked_where_it_enters(monkeypatch):
    with pytest.raises(ValueError, match="n must be >= 1"):
        parallel.set_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        parallel.set_threads(2.0)
    monkeypatch.setenv("DPO_NP_THREADS", "two")
    with pytest.raises(ValueError, match="DPO_NP_THREADS must be a positive integer, got 'two'"):
        parallel._default_threads()
    monkeypatch.setenv("DPO_NP_THREADS", "3")
    assert parallel._default_threads() == 3
    monkeypatch.delenv("DPO_NP_THREADS")
    assert parallel._default_threads() == 1                  # off until measured to pay
