"""Toy problems: complete enumeration, an exactly normalized π_ref, Bradley–Terry pair sampling."""

import itertools
import math

import numpy as np
import pytest

from dpo_np import rlhf
from dpo_np.experiments import toy_problem


def logsumexp(a, axis=-1):
    return np.logaddexp.reduce(a, axis=axis)


@pytest.mark.parametrize("V,L", [(1, 3), (2, 1), (3, 3), (4, 2), (2, 5)])
def test_fixed_length_enumeration_lists_all_v_to_the_l_sequences_lexicographically(V, L):
    responses = toy_problem.enumerate_responses(V, L)
    assert responses.shape == (V ** L, L) == (toy_problem.count_responses(V, L), L)
    assert responses.dtype == np.int64
    # exactly itertools.product's order: lexicographic, the last token fastest
    np.testing.assert_array_equal(responses, np.array(list(itertools.product(range(V), repeat=L))))


@pytest.mark.parametrize("V,L", [(1, 3), (2, 1), (2, 3), (3, 4)])
def test_eos_enumeration_lists_every_response_ending_in_eos(V, L):
    responses = toy_problem.enumerate_responses(V, L, eos=True)
    n = sum(V ** l for l in range(L))                              # l = 0..L−1 content tokens, then EOS
    assert responses.shape == (n, L) and toy_problem.count_responses(V, L, eos=True) == n
    eos_at = (responses == V).argmax(axis=1)
    assert np.all((responses == V).sum(axis=1) == 1)               # exactly one EOS per response
    for row, l in zip(responses, eos_at):
        assert np.all((row[:l] >= 0) & (row[:l] < V))               # content before it
        assert np.all(row[l + 1:] == toy_problem.PAD)                       # padding after it
    assert len({tuple(row) for row in responses}) == n             # no duplicates
    np.testing.assert_array_equal(np.bincount(eos_at, minlength=L), [V ** l for l in range(L)])


@pytest.mark.parametrize("eos", [False, True])
@pytest.mark.parametrize("V,L,P", [(3, 3, 4), (2, 5, 2), (5, 2, 3)])
def test_reference_logprobs_normalize_exactly_over_the_enumerated_set(V, L, P, eos):
    responses = toy_problem.enumerate_responses(V, L, eos=eos)
    table = toy_problem.random_reference_table(P, V, L, seed=V * 10 + L, eos=eos, scale=2.0)
    ref = toy_problem.sequence_logprobs(table, responses)
    assert ref.shape == (P, len(responses))
    np.testing.assert_allclose(logsumexp(ref), 0.0, atol=len(responses) * 1e-15)
    rlhf.check_logprobs(ref, "ref_logprobs")
    # and no proper subset normalizes: dropping one response loses its (positive) mass
    assert np.all(logsumexp(ref[:, 1:]) < -1e-12)


def test_sequence_logprobs_is_the_sum_of_next_token_logprobs():
    V, L = 3, 4
    for eos in (False, True):
        responses = toy_problem.enumerate_responses(V, L, eos=eos)
        table = toy_problem.random_reference_table(2, V, L, seed=3, eos=eos, eos_bias=-0.5)
        ref = toy_problem.sequence_logprobs(table, responses)
        rng = np.random.default_rng(0)
        for i in rng.choice(len(responses), size=12, replace=False):
            for x in range(2):
                prev, total = V, 0.0                                # V marks the start of the response
                for t, token in enumerate(responses[i]):
                    if token == toy_problem.PAD:
                        break
                    total += table[x, t, prev, token]
                    prev = token
                assert math.isclose(ref[x, i], total, rel_tol=1e-13, abs_tol=1e-13)


def test_sequence_logprobs_rejects_bad_tokens():
    table = toy_problem.random_reference_table(1, 3, 2, seed=0)
    with pytest.raises(ValueError, match="token ids in"):
        toy_problem.sequence_logprobs(table, np.array([[0, 3]]))
    with pytest.raises(ValueError, match="2-D"):
        toy_problem.sequence_logprobs(table, np.array([0, 1]))
    with pytest.raises(ValueError, match="positions"):
        toy_problem.sequence_logprobs(table, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        toy_problem.sequence_logprobs(table, np.zeros((2, 2)))


def test_enumeration_refuses_sizes_beyond_a_toy():
    with pytest.raises(ValueError, match="too many"):
        toy_problem.enumerate_responses(10, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        toy_problem.enumerate_responses(0, 3)


def test_rewards_are_deterministic_from_the_seed_and_scale_linearly():
    responses = toy_problem.enumerate_responses(3, 3, eos=True)
    r = toy_problem.random_rewards(responses, 2, 3, seed=5)
    np.testing.assert_array_equal(r, toy_problem.random_rewards(responses, 2, 3, seed=5))
    assert not np.allclose(r, toy_problem.random_rewards(responses, 2, 3, seed=6))
    np.testing.assert_allclose(toy_problem.random_rewards(responses, 2, 3, seed=5, scale=100.0), 100 * r, rtol=1e-14)
    assert np.abs(toy_problem.random_rewards(toy_problem.enumerate_responses(3, 3), 2, 3, seed=5, scale=100.0)).max() > 100
    assert len(np.unique(r[0])) == r.shape[1]                       # the reward separates responses


def test_pair_sampling_is_seeded():
    ref = toy_problem.sequence_logprobs(toy_problem.random_reference_table(2, 2, 2, seed=0), toy_problem.enumerate_responses(2, 2))
    r = toy_problem.random_rewards(toy_problem.enumerate_responses(2, 2), 2, 2, seed=1)
    a = toy_problem.sample_preference_pairs(ref, r, 500, seed=3)
    b = toy_problem.sample_preference_pairs(ref, r, 500, seed=3)
    c = toy_problem.sample_preference_pairs(ref, r, 500, seed=4)
    for key in ("prompt", "chosen", "rejected"):
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("proposal", ["reference", "uniform"])
def test_pair_sampling_frequencies_match_bradley_terry(proposal):
    # With n_ab pairs of {a, b}, the number won by a is Binomial(n_ab, σ(r_a − r_b)); and the
    # number of {a, b} pairs is Binomial(n, q_ab), q_ab = (1/P)·2 π(a) π(b) for the proposal π.
    # Each observed frequency must sit within Z standard deviations of its probability; Z = 5.5
    # makes a false alarm among these ~50 comparisons a chance of about 2e-6 (a seed is fixed anyway),
    # while a wrong probability (e.g. σ(r_b − r_a), or a skipped label) is off by dozens of sigmas.
    Z = 5.5
    V, L, P, n = 2, 2, 3, 400_000
    responses = toy_problem.enumerate_responses(V, L)
    ref = toy_problem.sequence_logprobs(toy_problem.random_reference_table(P, V, L, seed=1), responses)
    r = toy_problem.random_rewards(responses, P, V, seed=2, scale=0.7)
    pairs = toy_problem.sample_preference_pairs(ref, r, n, seed=3, proposal=proposal)
    x, w, l = (np.asarray(pairs[k]) for k in ("prompt", "chosen", "rejected"))
    N = responses.shape[0]
    proposal_probs = np.exp(ref) if proposal == "reference" else np.full(ref.shape, 1.0 / N)
    checked = 0
    for p in range(P):
        for a, b in itertools.combinations(range(N), 2):
            a_won = np.sum((x == p) & (w == a) & (l == b))
            b_won = np.sum((x == p) & (w == b) & (l == a))
            n_ab = a_won + b_won
            q = 2 * proposal_probs[p, a] * proposal_probs[p, b] / P
            assert abs(n_ab - n * q) <= Z * math.sqrt(n * q * (1 - q))
            p_win = 1.0 / (1.0 + math.exp(-(r[p, a] - r[p, b])))   # σ(r_a − r_b)
            assert abs(a_won - n_ab * p_win) <= Z * math.sqrt(n_ab * p_win * (1 - p_win))
            checked += 1
    assert checked == P * N * (N - 1) // 2


def test_pair_sampling_rejects_bad_arguments():
    ref = toy_problem.sequence_logprobs(toy_problem.random_reference_table(2, 2, 2, seed=0), toy_problem.enumerate_responses(2, 2))
    r = np.zeros_like(ref)
    with pytest.raises(ValueError, match="proposal"):
        toy_problem.sample_preference_pairs(ref, r, 10, seed=0, proposal="greedy")
    with pytest.raises(ValueError, match="n_pairs"):
        toy_problem.sample_preference_pairs(ref, r, 0, seed=0)
    with pytest.raises(ValueError, match="shape"):
        toy_problem.sample_preference_pairs(ref, r[:, :2], 10, seed=0)
    with pytest.raises(ValueError, match="ref_logprobs do not normalize"):
        toy_problem.sample_preference_pairs(ref + 0.1, r, 10, seed=0)
    with pytest.raises(ValueError, match="seed"):
        toy_problem.sample_preference_pairs(ref, r, 10, seed=None)
