"""Sequence log-probabilities: the notes' code, the autograd path and the hand-written backward agree."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpo_np.autograd import Tensor
from dpo_np.gradcheck import central_difference, gradcheck, relative_error
from dpo_np.logprobs import (batch_logps_backward, batch_logps_forward, get_batch_logps,
                             get_per_token_logps, response_mask, row_scale, token_logps_forward)

TOL = 1e-6
SETTINGS = settings(max_examples=30, deadline=None)
PAD = -100


def notes_get_batch_logps(logits, labels, average_log_prob=False, label_pad_token_id=-100,
                          is_encoder_decoder=False):
    """The notes' PyTorch ``get_batch_logps``, line by line in NumPy (float64)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError("Logits (batch and sequence length dim) and labels must have the same shape.")
    if not is_encoder_decoder:
        labels = labels[:, 1:].copy()                    # labels[:, 1:].clone()
        logits = logits[:, :-1, :]
    else:
        labels = labels.copy()                           # (the notes write into the caller's labels here)
    loss_mask = labels != label_pad_token_id
    labels[labels == label_pad_token_id] = 0             # dummy token
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    per_token_logps = np.take_along_axis(log_softmax, labels[:, :, None], axis=2).squeeze(2)
    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token_logps * loss_mask).sum(-1)


def random_batch(rng, B, T, V, pad_fraction=0.3, scale=2.0, empty_row=False):
    logits = rng.standard_normal((B, T, V)) * scale
    labels = rng.integers(0, V, size=(B, T))
    labels[rng.random((B, T)) < pad_fraction] = PAD
    if empty_row:
        labels[-1] = PAD
    return logits, labels


@st.composite
def batches(draw):
    B, T, V = draw(st.integers(1, 4)), draw(st.integers(1, 7)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return random_batch(rng, B, T, V, pad_fraction=draw(st.floats(0.0, 1.0)))


# -- the forward equals the notes' code -------------------------------------------------------

@SETTINGS
@given(batch=batches(), average=st.booleans(), encoder_decoder=st.booleans())
def test_batch_logps_equal_the_notes_code(batch, average, encoder_decoder):
    logits, labels = batch
    kept = labels.copy()
    with np.errstate(invalid="ignore", divide="ignore"):      # the notes' mean is 0/0 on empty rows
        expected = notes_get_batch_logps(logits, labels, average, PAD, encoder_decoder)
    used = labels if encoder_decoder else labels[:, 1:]
    empty = (used == PAD).all(axis=-1)
    expected = np.where(empty, 0.0, expected)                 # ours: an empty row is 0.0, not NaN
    for got in (get_batch_logps(logits, labels, average, PAD, encoder_decoder),
                get_batch_logps(Tensor(logits), labels, average, PAD, encoder_decoder).data,
                batch_logps_forward(logits, labels, average, PAD, encoder_decoder)[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(labels, kept)               # the caller's labels are never written


def test_per_token_logps_are_the_shared_first_half():
    logits, labels = random_batch(np.random.default_rng(0), 3, 6, 5)
    per_token, mask = get_per_token_logps(logits, labels)
    assert per_token.shape == mask.shape == (3, 5)
    np.testing.assert_array_equal(mask, labels[:, 1:] != PAD)
    np.testing.assert_allclose((per_token * mask).sum(-1), get_batch_logps(logits, labels), rtol=1e-12)
    t_per_token, t_mask = get_per_token_logps(Tensor(logits), labels)
    assert isinstance(t_per_token, Tensor)
    np.testing.assert_allclose(t_per_token.data, per_token, rtol=1e-12)
    np.testing.assert_array_equal(t_mask, mask)


def test_sum_of_token_logps_is_the_log_of_the_product_of_next_token_probabilities():
    """log π(y|x) = log Π_t p(y_t | y_<t): the product computed naively in float64, token by token."""
    rng = np.random.default_rng(1)
    logits, labels = random_batch(rng, 3, 8, 6, scale=0.5)
    labels[:, :3] = PAD                                       # a "prompt" the loss ignores
    got = get_batch_logps(logits, labels)
    for b in range(3):
        product = 1.0
        for t in range(1, 8):
            if labels[b, t] != PAD:
                p = np.exp(logits[b, t - 1]) / np.exp(logits[b, t - 1]).sum()
                product *= p[labels[b, t]]
        np.testing.assert_allclose(got[b], np.log(product), rtol=1e-12)


def test_an_empty_row_gives_zero_sum_and_zero_mean_without_warnings():
    logits, labels = random_batch(np.random.default_rng(2), 3, 5, 4, empty_row=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for average in (False, True):
            assert get_batch_logps(logits, labels, average)[-1] == 0.0
            assert get_batch_logps(Tensor(logits), labels, average).data[-1] == 0.0
            logps, cache = batch_logps_forward(logits, labels, average)
            assert logps[-1] == 0.0
            dlogits = batch_logps_backward(np.ones(3), cache)
            assert np.all(dlogits[-1] == 0.0)


# -- the hand-written backward -----------------------------------------------------------------------

@pytest.mark.parametrize("encoder_decoder", [False, True])
@pytest.mark.parametrize("average", [False, True])
def test_handwritten_backward_matches_autograd_and_central_differences(average, encoder_decoder):
    rng = np.random.default_rng(3 + 2 * average + encoder_decoder)
    B, T, V = 4, 6, 5
    logits, labels = random_batch(rng, B, T, V, empty_row=True)
    dlogps = rng.standard_normal(B)                            # a random upstream gradient

    logps, cache = batch_logps_forward(logits, labels, average, is_encoder_decoder=encoder_decoder)
    dlogits = batch_logps_backward(dlogps, cache)
    assert dlogits.shape == logits.shape

    leaf = Tensor(logits, requires_grad=True)
    get_batch_logps(leaf, labels, average, is_encoder_decoder=encoder_decoder).backward(dlogps)
    assert relative_error(dlogits, leaf.grad) < 1e-12

    def scalar(arrays):
        return float((batch_logps_forward(arrays[0], labels, average,
                                          is_encoder_decoder=encoder_decoder)[0] * dlogps).sum())

    numeric = central_difference(scalar, [logits.copy()], 0)
    assert relative_error(dlogits, numeric) < TOL
    if not encoder_decoder:
        assert np.all(dlogits[:, -1] == 0.0)                   # the last logits score no label
    assert np.all(dlogits[-1] == 0.0)                          # the empty row


def test_autograd_path_matches_central_differences():
    logits, labels = random_batch(np.random.default_rng(4), 3, 5, 4)
    for average in (False, True):
        errors = gradcheck(lambda z: get_batch_logps(z, labels, average), [logits])
        assert max(errors) < TOL, errors


def test_backward_is_the_masked_onehot_minus_softmax():
    """dlogits[b, t] = dlogps_b · m_bt · s_b · (onehot(y_{t+1}) − softmax(z_t)), written out directly."""
    rng = np.random.default_rng(5)
    logits, labels = random_batch(rng, 3, 6, 7, empty_row=True)
    dlogps = rng.standard_normal(3)
    for average in (False, True):
        expected = np.zeros_like(logits)
        for b in range(3):
            used = labels[b, 1:] != PAD
            s = 1.0 / used.sum() if average and used.any() else 1.0
            for t in range(5):
                if used[t]:
                    p = np.exp(logits[b, t] - logits[b, t].max())
                    p /= p.sum()
                    expected[b, t] = dlogps[b] * s * (np.eye(7)[labels[b, t + 1]] - p)
        _, cache = batch_logps_forward(logits, labels, average)
        np.testing.assert_allclose(batch_logps_backward(dlogps, cache), expected, rtol=1e-12, atol=1e-15)


def test_float32_stays_float32_and_the_cache_holds_no_vocab_sized_copy():
    logits, labels = random_batch(np.random.default_rng(6), 2, 5, 11)
    logits = logits.astype(np.float32)
    logps, cache = batch_logps_forward(logits, labels, average_log_prob=True)
    assert logps.dtype == np.float32
    assert cache[0] is logits                                   # a reference, not a copy
    others = [a for a in cache[1:] if isinstance(a, np.ndarray)]
    assert all(a.size < logits.size for a in others)            # only (B, T') arrays besides it
    assert batch_logps_backward(np.ones(2, np.float32), cache).dtype == np.float32
    assert get_batch_logps(logits, labels).dtype == np.float32
    assert get_batch_logps(Tensor(logits), labels).dtype == np.float32


# -- numerical range ---------------------------------------------------------------------------------

@pytest.mark.parametrize("average", [False, True])
def test_float32_logits_of_1e4_are_finite_and_match_float64(average):
    rng = np.random.default_rng(7)
    logits, labels = random_batch(rng, 3, 6, 9, empty_row=True)
    logits = (np.sign(logits) * 1e4 * rng.random(logits.shape)).astype(np.float32)
    logits[0, 0, :] = 1e4                                       # ties at the maximum
    logits[1, 2, :] = -1e4
    exact64, cache64 = batch_logps_forward(logits.astype(np.float64), labels, average)
    for got in (get_batch_logps(logits, labels, average),
                get_batch_logps(Tensor(logits), labels, average).data):
        assert got.dtype == np.float32 and np.isfinite(got).all()
        # float32 spacing at 1e4 is ~1e-3: compare relative to the magnitude of the logits
        np.testing.assert_allclose(got, exact64, rtol=0, atol=1e4 * 6 * 2e-7)
    logps, cache = batch_logps_forward(logits, labels, average)
    dlogps = rng.standard_normal(3).astype(np.float32)
    dlogits = batch_logps_backward(dlogps, cache)
    assert np.isfinite(dlogits).all()
    np.testing.assert_allclose(dlogits, batch_logps_backward(dlogps.astype(np.float64), cache64),
                               rtol=0, atol=1e-5)


# -- errors --------------------------------------------------------------------------------------------

def test_shape_mismatch_shows_both_shapes():
    logits, labels = random_batch(np.random.default_rng(8), 2, 5, 4)
    with pytest.raises(ValueError, match=r"logits has shape \(2, 5, 4\), labels has shape \(2, 4\)"):
        get_batch_logps(logits, labels[:, :4])
    with pytest.raises(ValueError, match=r"logits has shape"):
        batch_logps_forward(logits, labels[:1])
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\)"):
        get_batch_logps(logits[0], labels[0])


def test_label_type_and_range_errors():
    logits, labels = random_batch(np.random.default_rng(9), 2, 5, 4)
    with pytest.raises(TypeError, match="labels must hold integer"):
        get_batch_logps(logits, labels.astype(np.float64))
    for bad in (4, -1):
        wrong = labels.copy()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=rf"id {bad} at \(row 1, position 3\), outside \[0, 4\)"):
            get_batch_logps(logits, wrong)
        with pytest.raises(ValueError, match="outside"):
            batch_logps_forward(logits, wrong)
    padded_with_zero = np.where(labels == PAD, 1, labels)
    padded_with_zero[:, :2] = 0                                  # a pad id that is a real token id
    np.testing.assert_allclose(get_batch_logps(logits, padded_with_zero, label_pad_token_id=0),
                               notes_get_batch_logps(logits, padded_with_zero, label_pad_token_id=0))


def test_backward_argument_errors():
    logits, labels = random_batch(np.random.default_rng(10), 2, 5, 4)
    _, cache = batch_logps_forward(logits, labels)
    with pytest.raises(ValueError, match=r"dlogps must have shape \(2,\)"):
        batch_logps_backward(np.ones(3), cache)
    with pytest.raises(TypeError, match="get_batch_logps"):
        batch_logps_forward(Tensor(logits), labels)
    with pytest.raises(TypeError, match="floating"):
        batch_logps_forward(np.ones((2, 5, 4), dtype=np.int64), labels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused_naming_logits_and_where(bad):
    # a diverged model must not turn into NaN log-probabilities downstream
    logits, labels = random_batch(np.random.default_rng(11), 3, 5, 4)
    logits[2, 3, 1] = bad
    for call in (lambda: get_batch_logps(logits, labels), lambda: get_batch_logps(Tensor(logits), labels),
                 lambda: get_per_token_logps(logits, labels), lambda: batch_logps_forward(logits, labels)):
        with pytest.raises(ValueError, match=r"logits .*non-finite.*\(row 2, position 3\)"):
            call()


# -- the shared pieces other modules reuse ----------------------------------------------------------

@pytest.mark.parametrize("encoder_decoder", [False, True])
def test_response_mask_and_row_scale_are_the_mask_and_mean_weights_of_get_batch_logps(encoder_decoder):
    logits, labels = random_batch(np.random.default_rng(12), 4, 6, 5, empty_row=True)
    mask = response_mask(labels, PAD, encoder_decoder)
    expected = (labels if encoder_decoder else labels[:, 1:]) != PAD
    assert mask.shape == expected.shape and np.array_equal(mask, expected)
    scale = row_scale(mask, np.float64)
    n = expected.sum(axis=1)
    assert scale[-1] == 0.0 and np.all(scale[:-1] == 1.0 / n[:-1])         # empty row: 0, not 1/0
    sums = get_batch_logps(logits, labels, False, PAD, encoder_decoder)
    means = get_batch_logps(logits, labels, True, PAD, encoder_decoder)
    np.testing.assert_allclose(means, sums * scale, rtol=1e-13)


# ---- huge logits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, value", [(np.float16, 1e4), (np.float32, 3e38), (np.float64, 1e308),
                                          (np.float32, -3e38)])
def test_uniform_huge_logits_give_minus_log_v_per_token_not_zero(dtype, value):
    """log softmax of V equal logits is −log V whatever their size: m + log V rounds to m where |m| dwarfs
    log V (float16 1e4, float32 3e38), so the log-softmax must be (z − m) − log Σ e^{z − m}, never z − lse."""
    V, T = 5, 4
    logits = np.full((2, T, V), value, dtype=dtype)
    labels = np.array([[-100, 1, 2, 3], [-100, -100, 4, 0]])
    want = -np.log(V) * np.array([3, 2])
    for got in (get_batch_logps(logits, labels), get_batch_logps(Tensor(logits), labels).data,
                batch_logps_forward(logits, labels)[0]):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-3 if dtype == np.float16 else 1e-6)
    per_token, mask, cache = token_logps_forward(logits, labels)
    np.testing.assert_allclose(np.asarray(per_token, np.float64)[mask], -np.log(V), rtol=2e-3)
    # the backward reads the same two parts: dL/dz = w (onehot − 1/V), finite, not w (onehot − 1)
    grad = np.asarray(batch_logps_backward(np.ones(2, dtype), batch_logps_forward(logits, labels)[1]), np.float64)
    expected = np.zeros((2, T, V))
    for b in range(2):
        for t in range(T - 1):
            if labels[b, t + 1] != -100:
                expected[b, t] = -1.0 / V
                expected[b, t, labels[b, t + 1]] += 1.0
    np.testing.assert_allclose(grad, expected, atol=2e-3)
