"""Generation: greedy is the argmax, top-k/top-p sample only where they say, sampled
frequencies follow the renormalised distribution, beam search finds what brute force finds,
and the context never exceeds block_size."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np.generate import _sample, beam_search, generate, log_softmax, next_token_distribution
from dpo_np.model import GPT, GPTConfig


class BigramModel:
    """π(y_t | y_<t) = softmax(table[y_{t-1}]): every probability is known in closed form."""

    def __init__(self, table, block_size=16):
        self.table = np.asarray(table, dtype=np.float64)              # (V, V) logits
        self.config = SimpleNamespace(vocab_size=self.table.shape[0], block_size=block_size)
        self.params = {"table": self.table}
        self.calls = []                                               # shapes fed to forward

    def forward(self, idx, attention_mask=None, cache=True):
        idx = np.asarray(idx)
        assert idx.shape[1] <= self.config.block_size, "fed more than block_size tokens"
        self.calls.append(idx.shape)
        return self.table[idx]                                        # (B, T, V)


class WindowSumModel:
    """Puts almost all mass on (sum of the tokens it is shown) mod V: the output reveals
    exactly which tokens were in the window."""

    def __init__(self, vocab_size=7, block_size=4):
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size)
        self.params = {}

    def forward(self, idx, attention_mask=None, cache=True):
        idx = np.asarray(idx)
        assert idx.shape[1] <= self.config.block_size
        V = self.config.vocab_size
        target = np.cumsum(idx, axis=1) % V                           # (B, T)
        return 30.0 * np.eye(V)[target]                               # (B, T, V)


def _seq_logprob(model, prompt, seq):
    """log π(seq | prompt) for a BigramModel, summed token by token."""
    lp, prev = 0.0, prompt[-1]
    for tok in seq:
        lp += log_softmax(model.table[prev])[tok]
        prev = tok
    return lp


# ---- greedy, temperature -------------------------------------------------------------------

def test_greedy_follows_the_argmax_of_the_table():
    table = np.array([[0.0, 3.0, 1.0, 2.0],     # from 0 the argmax is 1
                      [0.0, 0.0, 0.0, 5.0],     # from 1 -> 3
                      [9.0, 0.0, 0.0, 0.0],     # from 2 -> 0
                      [0.0, 0.0, 4.0, 0.0]])    # from 3 -> 2
    out = generate(BigramModel(table), [0], 6, do_sample=False)
    assert out == [0, 1, 3, 2, 0, 1, 3]
    batch = generate(BigramModel(table), np.array([[2], [3]]), 3, temperature=0)
    assert batch == [[2, 0, 1, 3], [3, 2, 0, 1]]


def test_vanishing_temperature_equals_greedy_and_never_gives_nan():
    table = np.random.default_rng(0).normal(size=(6, 6)) * 3
    model = BigramModel(table, block_size=64)
    greedy = generate(model, [0, 1], 20, do_sample=False)
    for t in (1e-6, 1e-30, 1e-300):
        assert generate(model, [0, 1], 20, temperature=t, seed=3) == greedy
        p = next_token_distribution(model, [0, 1], temperature=t)
        assert np.all(np.isfinite(p)) and p.argmax() == table[1].argmax() and p.max() == 1.0


def test_next_token_distribution_is_the_tempered_softmax():
    table = np.random.default_rng(1).normal(size=(5, 5))
    model = BigramModel(table)
    p = next_token_distribution(model, [3, 2])
    q = np.exp(table[2]) / np.exp(table[2]).sum()
    np.testing.assert_allclose(p, q, rtol=1e-14)
    # temperature T gives p_T ∝ p^(1/T)
    p_half = next_token_distribution(model, [3, 2], temperature=0.5)
    np.testing.assert_allclose(p_half, q ** 2 / (q ** 2).sum(), rtol=1e-12)
    batch = next_token_distribution(model, np.array([[0], [2]]))
    assert batch.shape == (2, 5) and np.allclose(batch[1], q)
    np.testing.assert_array_equal(next_token_distribution(model, [2], temperature=0), np.eye(5)[q.argmax()])


def test_huge_logits_give_finite_probabilities():
    table = np.array([[1e300, -1e300, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = next_token_distribution(BigramModel(table), [0], temperature=1e-3, top_p=0.5)
    assert np.all(np.isfinite(p)) and p[0] == 1.0


# ---- top-k, top-p, sampled frequencies -------------------------------------------------

PROBS = np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.03, 0.02])


def _draws(model, n, **kwargs):
    """n independent next-token draws (one per row of a batch of identical one-token prompts)."""
    out = generate(model, np.zeros((n, 1), dtype=np.int64), 1, **kwargs)
    return np.array([row[1] for row in out])


def _assert_frequencies_match(draws, probs):
    """Each token's count is Binomial(n, p): allow 5 standard deviations per token
    (a correct sampler fails this with probability < 1e-5 over 8 tokens; a sampler
    off by a few percent fails it for n = 20000)."""
    n = len(draws)
    freq = np.bincount(draws, minlength=len(probs)) / n
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-12), (freq, probs)


def test_sampling_frequencies_match_the_softmax():
    model = BigramModel(np.tile(np.log(PROBS), (8, 1)))
    _assert_frequencies_match(_draws(model, 20000, seed=1), PROBS)


def test_top_k_never_samples_outside_the_top_k_and_renormalises():
    model = BigramModel(np.tile(np.log(PROBS), (8, 1)))
    draws = _draws(model, 20000, top_k=3, seed=2)
    assert set(np.unique(draws)) <= {0, 1, 2}
    renorm = np.where(np.arange(8) < 3, PROBS, 0.0)
    _assert_frequencies_match(draws, renorm / renorm.sum())


def test_top_p_keeps_the_smallest_set_reaching_p():
    model = BigramModel(np.tile(np.log(PROBS), (8, 1)))
    # cumulative mass: 0.30, 0.52, 0.68, 0.80, 0.89, 0.95, 0.98, 1.00
    for top_p, n_kept in [(0.1, 1), (0.3 - 1e-9, 1), (0.5, 2), (0.6, 3), (0.79, 4), (0.9, 6), (1.0, 8)]:
        p = next_token_distribution(model, [0], top_p=top_p)
        assert np.count_nonzero(p) == n_kept, top_p
        np.testing.assert_allclose(p[:n_kept], PROBS[:n_kept] / PROBS[:n_kept].sum(), rtol=1e-12)
    draws = _draws(model, 20000, top_p=0.6, seed=3)
    assert set(np.unique(draws)) <= {0, 1, 2}
    renorm = np.where(np.arange(8) < 3, PROBS, 0.0)
    _assert_frequencies_match(draws, renorm / renorm.sum())


def test_top_p_counts_a_set_whose_mass_equals_p_exactly_as_reaching_it():
    model = BigramModel(np.zeros((4, 4)))               # four tokens of probability exactly 1/4
    for top_p, n_kept in [(0.25, 1), (0.5, 2), (0.75, 3), (0.5 + 1e-9, 3)]:
        assert np.count_nonzero(next_token_distribution(model, [0], top_p=top_p)) == n_kept, top_p


class _FixedUniform:
    """A stand-in generator whose uniform draws are fixed: the extremes of [0, 1)."""

    def __init__(self, u):
        self.u = u

    def random(self, n):
        return np.full(n, self.u)


def test_inverse_cdf_sampling_never_draws_a_zero_probability_token_even_at_the_extremes():
    p = np.array([[0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0]])
    assert _sample(p, _FixedUniform(0.0))[0] == 2                 # u = 0 skips the leading zeros
    assert _sample(p, _FixedUniform(1 - 2 ** -53))[0] == 4        # the largest u skips the trailing zeros
    assert _sample(p, _FixedUniform(0.5))[0] == 4


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=12), st.floats(0.01, 1.0),
       st.integers(1, 12), st.floats(0.2, 3.0))
def test_top_k_then_top_p_keep_a_minimal_set_of_the_most_probable_tokens(logits, top_p, top_k, temperature):
    logits = np.array(logits)
    model = BigramModel(np.tile(logits, (len(logits), 1)))
    base = next_token_distribution(model, [0], temperature=temperature)
    after_k = next_token_distribution(model, [0], temperature=temperature, top_k=top_k)
    p = next_token_distribution(model, [0], temperature=temperature, top_k=top_k, top_p=top_p)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    kept_k = after_k > 0
    kept = p > 0
    assert kept_k.sum() == min(top_k, len(logits)) or base[~kept_k].max(initial=0) == 0
    assert np.all(kept <= kept_k)
    # every kept token is at least as probable as every dropped one
    assert base[kept].min() >= base[~kept].max(initial=0.0)
    # the kept mass reaches p, and dropping the least probable kept token would not
    mass = np.sort(after_k[kept])[::-1]
    assert mass.sum() >= top_p - 1e-12
    assert mass[:-1].sum() < top_p + 1e-12
    np.testing.assert_allclose(p[kept], after_k[kept] / after_k[kept].sum(), rtol=1e-9)


def test_same_seed_same_output_and_different_seed_different_output():
    model = BigramModel(np.random.default_rng(4).normal(size=(10, 10)), block_size=64)
    a = generate(model, [1, 2, 3], 40, seed=7)
    assert a == generate(model, [1, 2, 3], 40, seed=7)
    assert a != generate(model, [1, 2, 3], 40, seed=8)


# ---- end token, batches, context -------------------------------------------------------------

def test_each_row_stops_at_its_end_token_and_finished_rows_stop_growing():
    EOS = 0
    table = np.full((4, 4), -10.0)
    table[1, 2] = table[2, 3] = table[3, EOS] = table[0, 0] = 10.0     # 1 -> 2 -> 3 -> EOS
    model = BigramModel(table)
    out = generate(model, np.array([[3], [1]]), 10, do_sample=False, eos_token_id=EOS)
    assert out == [[3, EOS], [1, 2, 3, EOS]]
    assert [shape[0] for shape in model.calls] == [2, 1, 1]          # the finished row is not fed again
    assert generate(model, [1], 2, do_sample=False, eos_token_id=EOS) == [1, 2, 3]   # max_new_tokens wins
    assert generate(model, [1], 0) == [1]


def test_context_is_cropped_to_the_last_block_size_tokens():
    model = WindowSumModel(vocab_size=7, block_size=4)
    prompt = [1, 2, 3, 4, 5, 6]                              # longer than block_size already
    out = generate(model, prompt, 12, do_sample=False)
    seq = list(prompt)
    for _ in range(12):
        seq.append(sum(seq[-4:]) % 7)                        # what a model seeing the last 4 tokens says
    assert out == seq
    assert beam_search(model, prompt, 12, num_beams=3) == seq


def test_generate_and_beam_search_accept_arrays_lists_and_batches():
    model = BigramModel(np.random.default_rng(5).normal(size=(6, 6)))
    one = generate(model, np.array([1, 2]), 3, do_sample=False)
    assert isinstance(one, list) and len(one) == 5 and all(isinstance(t, int) for t in one)
    batch = beam_search(model, np.array([[1, 2], [3, 4]]), 3, num_beams=2)
    assert len(batch) == 2 and all(len(r) == 5 for r in batch)
    assert batch[0] == beam_search(model, [1, 2], 3, num_beams=2)


# ---- beam search ---------------------------------------------------------------------------

GREEDY_TRAP = np.log(np.array([
    [0.10, 0.50, 0.40],      # from 0: greedy takes 1 (0.5) ...
    [0.34, 0.33, 0.33],      # ... but from 1 nothing is likely
    [0.05, 0.05, 0.90],      # while 2 -> 2 has 0.4 · 0.9 = 0.36 > 0.5 · 0.34
]))


def _brute_force_best(model, prompt, n, eos=None, length_penalty=1.0):
    """argmax over every continuation of at most n tokens (stopping at eos) of
    log π(y | x) / |y|^length_penalty."""
    V = model.config.vocab_size
    best = (-math.inf, None)
    for length in range(1, n + 1):
        for seq in itertools.product(range(V), repeat=length):
            ends = eos is not None and seq[-1] == eos
            if eos is not None and eos in seq[:-1]:
                continue
            if length < n and not ends:
                continue                                     # only complete hypotheses compete
            score = _seq_logprob(model, prompt, seq) / length ** length_penalty
            best = max(best, (score, list(prompt) + list(seq)))
    return best


def test_beam_search_finds_the_most_probable_sequence_where_greedy_does_not():
    model = BigramModel(GREEDY_TRAP)
    greedy = generate(model, [0], 2, do_sample=False)
    best_score, best = _brute_force_best(model, [0], 2)
    assert best == [0, 2, 2] and greedy == [0, 1, 0]
    assert _seq_logprob(model, [0], greedy[1:]) < best_score
    assert beam_search(model, [0], 2, num_beams=2) == best


def test_beam_search_with_one_beam_is_greedy():
    for seed in range(5):
        model = BigramModel(np.random.default_rng(seed).normal(size=(5, 5)) * 2)
        prompt = [seed % 5]
        assert beam_search(model, prompt, 8, num_beams=1) == generate(model, prompt, 8, do_sample=False)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.booleans())
def test_beam_search_with_enough_beams_equals_brute_force_enumeration(seed, length_penalty, with_eos):
    V, n = 3, 3
    rng = np.random.default_rng(seed)
    model = BigramModel(rng.normal(size=(V, V)) * 2)
    eos = 0 if with_eos else None
    best_score, _ = _brute_force_best(model, [1], n, eos=eos, length_penalty=length_penalty)
    found = beam_search(model, [1], n, num_beams=V ** n, eos_token_id=eos, length_penalty=length_penalty)
    found_score = _seq_logprob(model, [1], found[1:]) / (len(found) - 1) ** length_penalty
    assert found_score == pytest.approx(best_score, abs=1e-12)


def _beam_search_to_the_end(model, prompt, n, num_beams, eos, length_penalty):
    """Beam search as ``beam_search`` runs it, but never stopping early: every step to ``n``, then the
    best of the finished and the live hypotheses. The early stop may save steps, never change the answer."""
    norm = lambda score, length: score / max(length, 1) ** length_penalty     # noqa: E731
    beams, finished = [(0.0, list(prompt))], []
    for step in range(1, n + 1):
        candidates = []
        for score, seq in beams:
            logp = log_softmax(model.forward(np.array([seq]), cache=False)[0, -1].astype(np.float64))
            candidates += [(score + float(logp[v]), seq + [v]) for v in range(len(logp))]
        candidates.sort(key=lambda c: -c[0])                       # stable: ties keep beam then token order
        beams = []
        for score, seq in candidates[:2 * num_beams]:       # an end ranked past the last live beam is not kept
            if seq[-1] == eos:
                finished.append((norm(score, step), seq))
            else:
                beams.append((score, seq))
            if len(beams) == num_beams:
                break
        finished = sorted(finished, key=lambda f: -f[0])[:num_beams]
        if not beams:
            break
    hypotheses = finished + [(norm(s, len(seq) - len(prompt)), seq) for s, seq in beams]
    return max(hypotheses, key=lambda h: h[0])[1]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1, 2]), st.sampled_from([-1.0, 0.5, 1.0, 2.0, 3.0]))
def test_beam_searchs_early_stop_never_changes_the_answer(seed, num_beams, length_penalty):
    """With one or two beams and a length penalty, the search stops once no live beam can beat the worst
    finished one: its bound must hold at every length still possible (a penalty > 0 favours the longest,
    one < 0 the current), or a stop throws the best hypothesis away."""
    V, n = 4, 6
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V)) * 1.5
    table[:, 0] += rng.normal()                                    # the end token 0: sometimes likely, sometimes not
    model = BigramModel(table)
    want = _beam_search_to_the_end(model, [1], n, num_beams, 0, length_penalty)
    assert beam_search(model, [1], n, num_beams=num_beams, eos_token_id=0, length_penalty=length_penalty) == want


# ---- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_generation_arguments_raise_value_error_naming_them(kwargs, name):
    model = BigramModel(np.zeros((3, 3)))
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate(model, [0], **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(top_k=2.5), "top_k"), (dict(max_new_tokens=True), "max_new_tokens"), (dict(temperature="1"), "temperature"),
])
def test_generation_arguments_of_the_wrong_kind_raise_type_error_naming_them(kwargs, name):
    model = BigramModel(np.zeros((3, 3)))
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(TypeError, match=name):
        generate(model, [0], **kwargs)


def test_bad_prompts_and_beam_arguments_are_rejected():
    model = BigramModel(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="idx"):
        generate(model, [0, 5], 1)
    with pytest.raises(ValueError, match="idx"):
        generate(model, np.zeros((1, 1, 1), dtype=int), 1)
    with pytest.raises(ValueError, match="idx"):
        generate(model, [], 1)
    with pytest.raises(TypeError, match="idx"):
        generate(model, [0.5], 1)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, [0], 2, num_beams=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(model, [0], -1)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, [0], 2, length_penalty=float("inf"))


def test_nan_logits_raise_instead_of_sampling_garbage():
    with pytest.raises(ValueError, match="NaN"):
        generate(BigramModel(np.full((3, 3), np.nan)), [0], 1)


# ---- the real GPT ---------------------------------------------------------------------------

def _tiny_gpt():
    from dpo_np.model import GPT, GPTConfig
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16), seed=0)


def test_greedy_with_gpt_takes_the_argmax_of_a_forward_over_the_last_block_size_tokens():
    model = _tiny_gpt()
    prompt = [3, 1, 4, 1, 5, 9]
    out = generate(model, prompt, 10, do_sample=False)        # 16 tokens > block_size 8
    assert out[:6] == prompt and len(out) == 16
    for t in range(6, 16):
        context = np.array([out[:t][-8:]])
        assert out[t] == int(model.forward(context, cache=False)[0, -1].argmax())
    assert beam_search(model, prompt, 10, num_beams=1) == out


def test_sampling_from_gpt_is_seeded_and_in_range():
    model = _tiny_gpt()
    batch = np.array([[1, 2, 3], [4, 5, 6]])
    a = generate(model, batch, 12, temperature=0.8, top_k=5, top_p=0.9, seed=11)
    assert a == generate(model, batch, 12, temperature=0.8, top_k=5, top_p=0.9, seed=11)
    assert all(len(r) == 15 and all(0 <= t < 11 for t in r) for r in a)
    p = next_token_distribution(model, [1, 2, 3])
    assert p.shape == (11,) and p.dtype == np.float64 and p.sum() == pytest.approx(1.0)


def test_sampling_with_the_key_value_cache_draws_what_full_forwards_draw():
    """The cache is a speed-up, not another distribution: the same seed gives the same tokens,
    rows that stop at the end token included, and past block_size the context crops as before."""
    model = GPT(GPTConfig(vocab_size=7, block_size=10, n_layer=2, n_head=2, n_embd=8), seed=3)

    class WithoutCache:
        config = model.config

        def forward(self, idx, attention_mask=None, cache=True):
            return model.forward(idx, attention_mask, cache=False)

    fed = []
    real_decode = model.decode
    model.decode = lambda idx, past=None: (fed.append(idx.shape[1]), real_decode(idx, past))[1]
    prompts = np.random.default_rng(0).integers(0, 7, size=(5, 4))
    for kwargs in (dict(temperature=1.3, seed=4), dict(do_sample=False), dict(top_k=3, seed=1)):
        fed.clear()
        cached = generate(model, prompts, 12, eos_token_id=2, **kwargs)       # 4 + 12 > block_size
        plain = generate(WithoutCache(), prompts, 12, eos_token_id=2, **kwargs)
        assert cached == plain
        assert fed[0] == 4 and set(fed[1:]) == {1}        # the prompt once, then one token per step
