"""The policy-gradient formulas: each value computed again by hand, each gradient against the exact one.

The RLHF proofs are by enumeration: with a handful of responses every batch of
samples can be listed with its probability, so "the estimator is unbiased" is
an equality between two sums, exact to rounding, with no sampling noise.
"""

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dpo_np import autograd as ag
from dpo_np import rl, rlhf
from dpo_np.gradcheck import gradcheck

finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


def normalized(rng, shape):
    z = rng.standard_normal(shape)
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


# -- returns ----------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 7)), elements=finite),
       st.floats(0, 1))
def test_discounted_returns_are_the_discounted_sums_and_satisfy_the_recursion(rewards, gamma):
    G = rl.discounted_returns(rewards, gamma)
    T = rewards.shape[1]
    for t in range(T):
        by_definition = sum(gamma ** k * rewards[:, t + k] for k in range(T - t))
        np.testing.assert_allclose(G[:, t], by_definition, rtol=1e-12, atol=1e-12)
        after = G[:, t + 1] if t + 1 < T else 0.0
        np.testing.assert_allclose(G[:, t], rewards[:, t] + gamma * after, rtol=1e-12, atol=1e-12)


# -- REINFORCE ----------------------------------------------------------------------

def test_reinforce_loss_value_and_gradient_by_hand():
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((3, 5))                   # 3 states, 5 actions
    states, actions = rng.integers(3, size=(4, 6)), rng.integers(5, size=(4, 6))
    G, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    mask = rng.random((4, 6)) < 0.7
    logpi = theta - np.logaddexp.reduce(theta, axis=1, keepdims=True)
    pi = np.exp(logpi)
    th = ag.Tensor(theta, requires_grad=True)
    loss = rl.reinforce_loss(ag.log_softmax(th)[states, actions], G, b, mask=mask)
    loss.backward()
    assert loss.item() == pytest.approx(-(mask * (G - b) * logpi[states, actions]).sum() / 4, rel=1e-12)
    # ∇ log π(a|s) = e_a − π(·|s) for a softmax row: the score function, by hand
    grad = np.zeros_like(theta)
    for i, t in zip(*np.nonzero(mask)):
        s, a = states[i, t], actions[i, t]
        grad[s] -= (G[i, t] - b[i, t]) * (np.eye(5)[a] - pi[s]) / 4
    np.testing.assert_allclose(th.grad, grad, rtol=1e-12, atol=1e-15)


def test_losses_pass_a_central_difference_gradient_check():
    rng = np.random.default_rng(1)
    theta = rng.standard_normal((2, 6))
    x, y = rng.integers(2, size=10), rng.integers(6, size=10)
    G, A = rng.standard_normal(10), rng.standard_normal(10)
    old = ag.log_softmax(theta + 0.3 * rng.standard_normal((2, 6))).data[x, y]
    assert gradcheck(lambda th: rl.reinforce_loss(ag.log_softmax(th)[x, y], G), [theta])[0] < 1e-8
    # away from the clip's kinks: central differences see a smooth function there
    ratio = np.exp(ag.log_softmax(theta).data[x, y] - old)
    assert np.min(np.abs(np.abs(ratio - 1) - 0.2)) > 1e-3
    assert gradcheck(lambda th: rl.ppo_clip_loss(ag.log_softmax(th)[x, y], old, A, 0.2), [theta])[0] < 1e-8


def test_masked_steps_contribute_nothing():
    rng = np.random.default_rng(2)
    logp, G = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    garbage = np.where(mask, logp, 1e6)
    assert rl.reinforce_loss(garbage, G, mask=mask) == pytest.approx(rl.reinforce_loss(logp * mask, G * mask))
    assert rl.ppo_clip_loss(np.where(mask, logp, 50.0), logp, G, mask=mask) == pytest.approx(
        rl.ppo_clip_loss(logp, logp, G * mask))


# -- the KL-penalized reward of RLHF ---------------------------------------------------

def test_the_penalized_reward_averages_to_the_rlhf_objective():
    rng = np.random.default_rng(3)
    logp, ref, r, beta = normalized(rng, (3, 7)), normalized(rng, (3, 7)), rng.standard_normal((3, 7)), 0.4
    r_tilde = rl.kl_penalized_reward(r, logp, ref, beta)
    np.testing.assert_allclose((np.exp(logp) * r_tilde).sum(axis=-1), rlhf.rlhf_objective(logp, ref, r, beta),
                               rtol=1e-12)
    np.testing.assert_allclose(r_tilde, r - beta * (logp - ref), rtol=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2 ** 31 - 1), st.floats(0.01, 10))
def test_the_per_token_penalty_sums_to_the_per_sequence_penalty(B, T, seed, beta):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    token_lp, token_ref = rng.standard_normal((B, T)) - 2, rng.standard_normal((B, T)) - 2
    score = rng.standard_normal(B)
    per_token = rl.kl_penalized_token_rewards(score, token_lp, token_ref, beta, mask)
    assert np.all(per_token[~mask] == 0)
    np.testing.assert_allclose(per_token[np.arange(B), lengths - 1] + beta * (token_lp - token_ref)[np.arange(B), lengths - 1],
                               score, rtol=1e-9, atol=1e-9)              # the score sits on the last token
    sequence = rl.kl_penalized_reward(score, (token_lp * mask).sum(1), (token_ref * mask).sum(1), beta)
    np.testing.assert_allclose(per_token.sum(axis=1), sequence, rtol=1e-10, atol=1e-10)
    # and with γ = 1 the return from the first token is the same number
    np.testing.assert_allclose(rl.discounted_returns(per_token, 1.0)[:, 0], sequence, rtol=1e-10, atol=1e-10)


def test_group_baselines():
    r = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(rl.group_baseline(r), [[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]])
    np.testing.assert_allclose(rl.group_baseline(r, leave_one_out=False), [[3.0] * 3, [1.0] * 3])


def batch_gradient(theta, ref, r, beta, y, loss="reinforce", leave_one_out=True, old_theta=None):
    """The gradient of one batch's surrogate: y (P, K) sampled responses, K per prompt."""
    P, K = y.shape
    x = np.repeat(np.arange(P)[:, None], K, axis=1)
    old = ag.log_softmax(theta if old_theta is None else old_theta).data
    r_tilde = rl.kl_penalized_reward(r[x, y], old[x, y], ref[x, y], beta)
    A = r_tilde - rl.group_baseline(r_tilde, leave_one_out)
    th = ag.Tensor(theta, requires_grad=True)
    lp = ag.log_softmax(th)[x.ravel(), y.ravel()]
    if loss == "reinforce":
        rl.reinforce_loss(lp, A.ravel()).backward()
    else:
        rl.ppo_clip_loss(lp, old[x, y].ravel(), A.ravel(), 0.2).backward()
    return th.grad


def expected_batch_gradient(theta, K, **kwargs):
    """Σ over every batch (K responses per prompt, P prompts) of P(batch) × its gradient."""
    P, N = theta.shape
    pi = np.exp(ag.log_softmax(theta).data)
    total = np.zeros_like(theta)
    for flat in itertools.product(range(N), repeat=P * K):
        y = np.array(flat).reshape(P, K)
        total += np.prod(pi[np.arange(P)[:, None], y]) * batch_gradient(theta, y=y, **kwargs)
    return total


@pytest.fixture(scope="module")
def bandit():
    rng = np.random.default_rng(4)
    P, N = 2, 3
    return dict(theta=rng.standard_normal((P, N)), ref=normalized(rng, (P, N)), r=2 * rng.standard_normal((P, N)),
                beta=0.7)


def exact_rlhf_gradient(theta, ref, r, beta):
    th = ag.Tensor(theta, requires_grad=True)
    rlhf.rlhf_objective(ag.log_softmax(th), ref, r, beta).mean().backward()
    return th.grad


def test_reinforce_with_a_leave_one_out_baseline_is_an_unbiased_estimate_of_the_rlhf_gradient(bandit):
    exact = exact_rlhf_gradient(**bandit)
    for K in (2, 3):
        estimate = -expected_batch_gradient(K=K, **bandit)
        np.testing.assert_allclose(estimate, exact, rtol=1e-10, atol=1e-13)


def test_the_plain_group_mean_shrinks_the_expected_gradient_by_one_minus_one_over_k(bandit):
    exact = exact_rlhf_gradient(**bandit)
    for K in (2, 3):
        estimate = -expected_batch_gradient(K=K, leave_one_out=False, **bandit)
        np.testing.assert_allclose(estimate, (1 - 1 / K) * exact, rtol=1e-10, atol=1e-13)


def test_ppo_at_ratio_one_has_the_reinforce_gradient_so_its_first_step_is_unbiased_too(bandit):
    rng = np.random.default_rng(5)
    for _ in range(5):
        y = rng.integers(3, size=(2, 4))
        np.testing.assert_allclose(batch_gradient(y=y, loss="ppo", **bandit),
                                   batch_gradient(y=y, loss="reinforce", **bandit), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(-expected_batch_gradient(K=2, loss="ppo", **bandit), exact_rlhf_gradient(**bandit),
                               rtol=1e-10, atol=1e-13)


# -- PPO's clip --------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1, 1)),
       hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-3, 3)),
       st.floats(0.05, 0.5))
def test_the_clipped_surrogate_value_and_its_gradient_zero_exactly_where_the_clip_binds(log_ratio, A, eps):
    n = min(len(log_ratio), len(A))
    log_ratio, A = log_ratio[:n], A[:n]
    rho = np.exp(log_ratio)
    assume(np.all(np.abs(np.abs(rho - 1) - eps) > 1e-9))           # not on a kink
    old = np.linspace(-2, -1, n)
    lp = ag.Tensor(old + log_ratio, requires_grad=True)
    loss = rl.ppo_clip_loss(lp, old, A, eps)
    loss.backward()
    assert loss.item() == pytest.approx(-np.mean(np.minimum(rho * A, np.clip(rho, 1 - eps, 1 + eps) * A)),
                                        rel=1e-12, abs=1e-14)
    binds = ((A > 0) & (rho > 1 + eps)) | ((A < 0) & (rho < 1 - eps))
    np.testing.assert_allclose(lp.grad, np.where(binds, 0.0, -rho * A / n), rtol=1e-12, atol=1e-15)


# -- bad input -----------------------------------------------------------------------------

def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="gamma"):
        rl.discounted_returns(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="returns has shape"):
        rl.reinforce_loss(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="baseline has shape"):
        rl.reinforce_loss(np.ones(3), np.ones(3), baseline=np.ones(2))
    with pytest.raises(ValueError, match="clip_eps"):
        rl.ppo_clip_loss(np.ones(3), np.ones(3), np.ones(3), clip_eps=0.0)
    with pytest.raises(ValueError, match="advantages has shape"):
        rl.ppo_clip_loss(np.ones(3), np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="beta"):
        rl.kl_penalized_reward(np.ones(3), np.ones(3), np.ones(3), beta=-1.0)
    with pytest.raises(ValueError, match="score has shape"):
        rl.kl_penalized_token_rewards(np.ones(3), np.ones((2, 4)), np.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match="mask"):
        rl.kl_penalized_token_rewards(np.ones(2), np.ones((2, 4)), np.ones((2, 4)), 0.1,
                                      mask=np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool))
    with pytest.raises(ValueError, match="at least 2"):
        rl.group_baseline(np.ones((3, 1)))
    with pytest.raises(TypeError, match="leave_one_out"):
        rl.group_baseline(np.ones((3, 2)), leave_one_out=1)
    with pytest.raises(ValueError, match="episode axis"):
        rl.reinforce_loss(np.float64(1.0), np.float64(1.0))
