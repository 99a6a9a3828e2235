"""The RLHF derivations of the notes, proved numerically over enumerated response sets.

Each test is one fact: the sigmoid form of Bradley–Terry, the optimal policy
and its partition function, the reparameterized reward, the cancellation of
Z(x) that makes DPO possible, and the DPO gradient of the paper's eq. 7.
Everything exact is checked in float64 against tolerances of rounding error.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpo_np import autograd as ag
from dpo_np import rlhf
from dpo_np.experiments import toy_problem as toy
from dpo_np.autograd import Tensor
from dpo_np.gradcheck import gradcheck, relative_error
from dpo_np.losses import dpo_loss

SETTINGS = settings(max_examples=40, deadline=None)
EPS64 = np.finfo(np.float64).eps


def toy_problem(seed=0, vocab_size=3, length=3, n_prompts=4, eos=False, reward_scale=1.0, dtype=np.float64):
    """Exact log π_ref (P, N) from an autoregressive table and a known reward r (P, N)."""
    responses = toy.enumerate_responses(vocab_size, length, eos=eos)
    table = toy.random_reference_table(n_prompts, vocab_size, length, seed=seed, eos=eos, dtype=dtype)
    ref = toy.sequence_logprobs(table, responses)
    rewards = toy.random_rewards(responses, n_prompts, vocab_size, seed=seed + 100, scale=reward_scale)
    return ref, rewards.astype(dtype)


def random_logprobs(rng, shape, spread=2.0):
    """Log-probabilities of a random policy with full support (a log-softmax of Gaussian logits)."""
    logits = spread * rng.standard_normal(shape)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


PROBLEMS = [dict(seed=0), dict(seed=1, eos=True, vocab_size=2, length=4), dict(seed=2, reward_scale=5.0)]
BETAS = [0.05, 0.5, 3.0]


# -- Bradley–Terry -------------------------------------------------------------------

@SETTINGS
@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
def test_bradley_terry_equals_sigmoid_of_reward_difference(a, b):
    # e^A / (e^A + e^B), evaluated without overflow as exp(A − log(e^A + e^B)): the left side of
    # the notes' identity, never written as a sigmoid. bradley_terry computes σ(A − B).
    lhs = np.exp(a - np.logaddexp(a, b))
    rhs = rlhf.bradley_terry(a, b)
    # rounding of A − B and of logaddexp costs ~eps·max(|A|, |B|) in the exponent
    assert np.isclose(rhs, lhs, rtol=8 * EPS64 * max(1.0, abs(a), abs(b)), atol=1e-300)
    if max(abs(a), abs(b)) < 700:      # where e^A is representable, the literal quotient too
        assert np.isclose(rhs, np.exp(a) / (np.exp(a) + np.exp(b)), rtol=1e-12, atol=0)
    assert np.isfinite(rhs) and 0.0 <= rhs <= 1.0


def test_bradley_terry_loss_is_negative_mean_log_likelihood():
    rng = np.random.default_rng(0)
    r_w, r_l = rng.standard_normal(50) * 3, rng.standard_normal(50) * 3
    expected = -np.mean(np.log(rlhf.bradley_terry(r_w, r_l)))
    assert np.isclose(rlhf.bradley_terry_loss(r_w, r_l), expected, rtol=1e-13)
    # and it stays finite where log(σ) of an underflowed σ would not: margins of ±1e4
    big = rlhf.bradley_terry_loss(np.array([-5e3, 5e3]), np.array([5e3, -5e3]))
    assert np.isclose(big, (1e4 + 0.0) / 2, rtol=1e-12)


def test_weighted_bradley_terry_loss_equals_the_loss_over_repeated_pairs():
    rng = np.random.default_rng(1)
    r_w, r_l = rng.standard_normal(6), rng.standard_normal(6)
    counts = np.array([3, 0, 1, 7, 2, 5])
    repeated = rlhf.bradley_terry_loss(np.repeat(r_w, counts), np.repeat(r_l, counts))
    assert np.isclose(rlhf.bradley_terry_loss(r_w, r_l, weights=counts), repeated, rtol=1e-13)
    rw = ag.Tensor(r_w, requires_grad=True)
    rlhf.bradley_terry_loss(rw, r_l, weights=counts).backward()
    # dL/dr_w = −σ(r_l − r_w) · w / Σw, by hand
    np.testing.assert_allclose(rw.grad, -counts / counts.sum() / (1 + np.exp(r_w - r_l)), rtol=1e-12)
    for bad in (np.ones(5), -np.ones(6), np.zeros(6), np.full(6, np.nan)):
        with pytest.raises(ValueError, match="weights"):
            rlhf.bradley_terry_loss(r_w, r_l, weights=bad)


# -- the optimal policy and the objective -------------------------------------------------

@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_optimal_policy_objective_equals_beta_log_partition(problem, beta):
    ref, r = toy_problem(**problem)
    star = rlhf.optimal_policy(ref, r, beta)
    rlhf.check_logprobs(star, "π*")                        # π* is a distribution over the set
    J_star = rlhf.rlhf_objective(star, ref, r, beta)
    beta_log_z = beta * rlhf.log_partition(ref, r, beta)
    scale = np.abs(r).max() + beta * np.abs(ref).max()
    np.testing.assert_allclose(J_star, beta_log_z, rtol=0, atol=100 * EPS64 * scale)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_optimal_policy_maximizes_rlhf_objective(problem, beta):
    ref, r = toy_problem(**problem)
    rng = np.random.default_rng(7)
    star = rlhf.optimal_policy(ref, r, beta)
    J_star = rlhf.rlhf_objective(star, ref, r, beta)
    tol = 100 * EPS64 * (np.abs(r).max() + beta * np.abs(ref).max())
    candidates = [random_logprobs(rng, ref.shape, spread) for spread in (0.1, 1.0, 4.0) for _ in range(60)]
    candidates += [ref, rlhf.optimal_policy(ref, r, 2 * beta), rlhf.optimal_policy(ref, r, beta / 2)]
    # small moves away from π* in random directions: J must go down from its maximum
    candidates += [star + 1e-3 * d - np.logaddexp.reduce(star + 1e-3 * d, axis=-1, keepdims=True)
                   for d in rng.standard_normal((30,) + ref.shape)]
    for logprobs in candidates:
        assert np.all(rlhf.rlhf_objective(logprobs, ref, r, beta) <= J_star + tol)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_objective_gap_equals_beta_kl_to_optimal_policy(problem, beta):
    # J(π*) − J(π) = β KL(π ‖ π*) for every π: the sharper form of "π* is the maximizer",
    # from J(π) = β log Z − β KL(π ‖ π*) (substitute r = β log π*/π_ref + β log Z into J).
    ref, r = toy_problem(**problem)
    rng = np.random.default_rng(11)
    star = rlhf.optimal_policy(ref, r, beta)
    J_star = rlhf.rlhf_objective(star, ref, r, beta)
    for spread in (0.1, 1.0, 4.0):
        logprobs = random_logprobs(rng, ref.shape, spread)
        gap = J_star - rlhf.rlhf_objective(logprobs, ref, r, beta)
        scale = np.abs(r).max() + beta * (np.abs(ref).max() + np.abs(logprobs).max())
        np.testing.assert_allclose(gap, beta * rlhf.kl_divergence(logprobs, star), rtol=0,
                                   atol=100 * EPS64 * scale)
        # the error measure the toy experiments report is this gap, by the same identity
        np.testing.assert_allclose(rlhf.suboptimality(logprobs, star, beta), gap, rtol=0, atol=100 * EPS64 * scale)
        assert np.all(gap > 0)


def test_objective_gradient_vanishes_at_optimal_policy_and_not_elsewhere():
    ref, r = toy_problem(seed=3)
    beta = 0.7

    def objective(theta):            # Σ_x J(softmax(θ_x)): θ are the policy's logits
        return rlhf.rlhf_objective(ag.log_softmax(theta, axis=-1), ref, r, beta).sum()

    # the autograd's gradient of J is right (float64 central differences, random upstream)
    assert max(gradcheck(lambda th: rlhf.rlhf_objective(ag.log_softmax(th), ref, r, beta),
                         [np.random.default_rng(0).standard_normal(ref.shape)])) < 1e-7

    def gradient(theta):
        th = Tensor(theta, requires_grad=True)
        objective(th).backward()
        return th.grad

    scale = np.abs(r).max()
    at_star = gradient(rlhf.optimal_policy(ref, r, beta))
    assert np.abs(at_star).max() < 100 * EPS64 * scale
    rng = np.random.default_rng(5)
    for theta in [ref, rlhf.optimal_policy(ref, r, 1.5 * beta), rng.standard_normal(ref.shape)]:
        assert np.abs(gradient(theta)).max() > 1e-3


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_reparameterized_reward_recovers_reward(problem, beta):
    # r(x, y) = β log π*(y|x)/π_ref(y|x) + β log Z(x)   (DPO paper eq. 5)
    ref, r = toy_problem(**problem)
    star = rlhf.optimal_policy(ref, r, beta)
    recovered = rlhf.implicit_reward(star, ref, beta) + beta * rlhf.log_partition(ref, r, beta)[..., None]
    np.testing.assert_allclose(recovered, r, rtol=0, atol=100 * EPS64 * (np.abs(r).max() + beta * 10))


@pytest.mark.parametrize("beta", BETAS)
def test_partition_function_cancels_in_bradley_terry(beta):
    ref, r = toy_problem(seed=4, reward_scale=2.0)
    star = rlhf.optimal_policy(ref, r, beta)
    implicit = rlhf.implicit_reward(star, ref, beta)                  # r − β log Z(x): Z dropped
    log_z = rlhf.log_partition(ref, r, beta)
    assert np.all(np.abs(beta * log_z) > 1e-2)                      # so the two rewards really differ
    # every ordered pair (y_w, y_l) of every prompt
    p_true = rlhf.bradley_terry(r[:, :, None], r[:, None, :])
    p_implicit = rlhf.bradley_terry(implicit[:, :, None], implicit[:, None, :])
    np.testing.assert_allclose(p_implicit, p_true, rtol=0, atol=1e-12)


def test_dpo_loss_gradient_matches_paper_eq7():
    # L = −mean_i log σ(r̂_w − r̂_l), r̂ = β log π_θ/π_ref, for a tabular softmax policy
    # π_θ(y|x) = softmax(θ_x)_y. DPO paper eq. 7:
    #   ∇_θ L = −β mean_i σ(r̂_l − r̂_w) (∇_θ log π_θ(y_w|x) − ∇_θ log π_θ(y_l|x)),
    # with ∇_θ log π_θ(y|x) = onehot(y) − π_θ(·|x) in row x and 0 in the other rows.
    rng = np.random.default_rng(0)
    ref, _ = toy_problem(seed=6)
    P, N = ref.shape
    beta, B = 0.3, 64
    theta = ref + rng.standard_normal(ref.shape)
    x, w, l = rng.integers(P, size=B), rng.integers(N, size=B), rng.integers(N, size=B)

    def loss_of(th):
        logp = ag.log_softmax(th, axis=-1)
        losses, _, _ = dpo_loss(logp[x, w], logp[x, l], ref[x, w], ref[x, l], beta=beta)
        return losses.mean()

    th = Tensor(theta, requires_grad=True)
    loss_of(th).backward()

    logp = theta - np.logaddexp.reduce(theta, axis=-1, keepdims=True)
    pi = np.exp(logp)
    r_hat = beta * (logp - ref)
    weight = 1.0 / (1.0 + np.exp(-(r_hat[x, l] - r_hat[x, w])))    # σ(r̂_l − r̂_w), (B,)
    grad = np.zeros_like(theta)
    for i in range(B):
        d_log_w = np.eye(N)[w[i]] - pi[x[i]]                          # ∇ log π_θ(y_w|x) in row x
        d_log_l = np.eye(N)[l[i]] - pi[x[i]]
        grad[x[i]] += -beta * weight[i] * (d_log_w - d_log_l) / B
    assert relative_error(th.grad, grad) < 1e-12
    assert np.abs(grad).max() > 1e-3                                   # not a comparison of zeros
    assert max(gradcheck(loss_of, [theta])) < 1e-7                     # and both against differences


def test_large_beta_optimal_policy_tends_to_reference():
    # KL(π* ‖ π_ref) = Var_{π_ref}(r) / (2β²) + O(1/β³): π* → π_ref as β → ∞
    ref, r = toy_problem(seed=8, reward_scale=3.0)
    p_ref = np.exp(ref)
    variance = (p_ref * r ** 2).sum(-1) - (p_ref * r).sum(-1) ** 2
    kls = []
    for beta in (1e1, 1e2, 1e3, 1e4):
        kl = rlhf.kl_divergence(rlhf.optimal_policy(ref, r, beta), ref)
        kls.append(kl)
        if beta >= 1e3:
            np.testing.assert_allclose(kl * 2 * beta ** 2 / variance, 1.0, rtol=30 / beta)
    assert np.all(np.diff(np.array(kls), axis=0) < 0)
    star = np.exp(rlhf.optimal_policy(ref, r, 1e4))
    assert np.abs(star - p_ref).max() < 1e-3


def test_small_beta_optimal_policy_tends_to_reward_argmax():
    ref, r = toy_problem(seed=9, reward_scale=1.0)
    rows = np.arange(r.shape[0])
    best = r.argmax(axis=-1)
    others = np.eye(r.shape[-1])[best] == 0                           # every response but y* = argmax r
    top2 = np.sort(r, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]                                    # reward margin of the best response
    off_best = []
    for beta in (1.0, 0.1, 1e-2, 1e-3):
        star = np.exp(rlhf.optimal_policy(ref, r, beta))
        # 1 − π*(y*) = S/(1 + S) ≤ S, S = Σ_{y≠y*} π_ref(y)/π_ref(y*) e^{−(r(y*) − r(y))/β}
        S = np.where(others, np.exp(ref - ref[rows, best][:, None] - (r[rows, best][:, None] - r) / beta), 0)
        S = S.sum(-1)
        mass_elsewhere = np.where(others, star, 0).sum(-1)          # summed directly, not as 1 − π*(y*)
        np.testing.assert_allclose(mass_elsewhere, S / (1 + S), rtol=1e-9, atol=1e-300)
        off_best.append(mass_elsewhere)
    assert np.all(np.diff(np.array(off_best), axis=0) <= 0)          # more peaked as β falls
    assert np.all(off_best[0] > 1e-3)                                # (and not peaked to begin with)
    # at β = 1e-3 every reward margin is ≥ 16β here, so S ≤ e^{−16}/π_ref(y*): π* is one-hot at argmax r
    assert np.all(gap / 1e-3 > 16) and np.all(S < 1e-5)
    # (π*(y*) carries a rounding error of ~eps·|r|/β from log space: r/β is ~1e3 here)
    assert np.all(np.abs(star - np.eye(r.shape[-1])[best]).max(-1) <= S + 10 * EPS64 * np.abs(r).max() / 1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [1e-3, 1e3])
def test_everything_finite_for_extreme_beta_and_rewards_in_the_hundreds(dtype, beta):
    ref, r = toy_problem(seed=10, reward_scale=60.0, dtype=dtype)
    assert np.abs(r).max() > 200                                     # rewards of a few hundred
    star = rlhf.optimal_policy(ref, r, beta)
    log_z = rlhf.log_partition(ref, r, beta)
    J_star = rlhf.rlhf_objective(star, ref, r, beta)
    outputs = [star, log_z, J_star, rlhf.implicit_reward(star, ref, beta), rlhf.kl_divergence(star, ref),
               rlhf.rlhf_objective(ref, ref, r, beta), rlhf.bradley_terry(r[:, 0], r[:, 1]),
               rlhf.bradley_terry_loss(r[:, 0], r[:, 1])]
    for out in outputs:
        assert out.dtype == dtype
        assert np.all(np.isfinite(out))
    rlhf.check_logprobs(star, "π*")
    eps = np.finfo(dtype).eps
    n = r.shape[-1]
    # J(π*) = β log Z up to rounding in a sum of N terms of size ≤ max |r| (+ the β·log-ratio terms)
    scale = np.abs(r).max() + beta * np.abs(ref).max()
    np.testing.assert_allclose(J_star, beta * log_z, rtol=0, atol=n * eps * scale)
    # and with Tensors: the gradient of J at π* is finite too
    th = Tensor(star, requires_grad=True)
    rlhf.rlhf_objective(ag.log_softmax(th), ref, r, beta).sum().backward()
    assert np.all(np.isfinite(th.grad))


# -- arrays and Tensors ----------------------------------------------------------------------

def test_functions_return_arrays_for_arrays_and_tensors_for_tensors():
    ref, r = toy_problem(seed=12)
    beta = 0.4
    star = rlhf.optimal_policy(ref, r, beta)
    cases = [(rlhf.log_partition, (ref, r, beta)), (rlhf.optimal_policy, (ref, r, beta)),
             (rlhf.rlhf_objective, (star, ref, r, beta)), (rlhf.implicit_reward, (star, ref, beta)),
             (rlhf.kl_divergence, (star, ref)), (rlhf.bradley_terry, (r[:, 0], r[:, 1])),
             (rlhf.bradley_terry_loss, (r[:, 0], r[:, 1]))]
    for fn, args in cases:
        plain = fn(*args)
        assert isinstance(plain, np.ndarray), fn.__name__
        as_tensors = fn(*[Tensor(a) if isinstance(a, np.ndarray) else a for a in args])
        assert isinstance(as_tensors, Tensor), fn.__name__
        np.testing.assert_array_equal(as_tensors.data, plain)


def test_kl_divergence_skips_zero_probability_responses():
    p = np.array([[np.log(0.5), np.log(0.5), -np.inf], np.log([0.2, 0.3, 0.5])])    # −inf where p = 0
    q = np.log(np.array([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]]))
    kl = rlhf.kl_divergence(p, q)
    np.testing.assert_allclose(kl, [np.log(2.0), 0.0], atol=1e-15)
    logits = Tensor(np.array([[0.0, 0.0, -np.inf]]), requires_grad=True)
    rlhf.kl_divergence(ag.log_softmax(logits), q[:1]).sum().backward()
    assert np.all(np.isfinite(logits.grad[:, :2]))


# -- bad input: ValueError naming the argument ---------------------------------------------------

def test_shape_mismatch_is_rejected():
    ref, r = toy_problem()
    with pytest.raises(ValueError, match="rewards has shape"):
        rlhf.log_partition(ref, r[:, :-1], 0.5)
    with pytest.raises(ValueError, match="rewards has shape"):
        rlhf.optimal_policy(ref, r[:2], 0.5)
    with pytest.raises(ValueError, match="logprobs has shape"):
        rlhf.rlhf_objective(ref[:, :-1], ref, r, 0.5)
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        rlhf.implicit_reward(ref, ref[:3], 0.5)
    with pytest.raises(ValueError, match="logprobs_q has shape"):
        rlhf.kl_divergence(ref, ref[0])
    with pytest.raises(ValueError, match="r_l has shape .* does not broadcast"):
        rlhf.bradley_terry(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("beta, error", [(0.0, ValueError), (-0.5, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("x", TypeError), (True, TypeError)])
def test_nonpositive_or_nonfinite_beta_is_rejected(beta, error):
    ref, r = toy_problem()
    for call in (lambda: rlhf.log_partition(ref, r, beta), lambda: rlhf.optimal_policy(ref, r, beta),
                 lambda: rlhf.rlhf_objective(ref, ref, r, beta), lambda: rlhf.implicit_reward(ref, ref, beta)):
        with pytest.raises(error, match="beta"):
            call()


def test_unnormalized_logprobs_are_rejected_naming_the_prompt():
    ref, r = toy_problem()
    bad = ref.copy()
    bad[2] += 1e-3                                                 # prompt 2 sums to e^{1e-3}
    with pytest.raises(ValueError, match=r"ref_logprobs do not normalize.*prompt 2"):
        rlhf.optimal_policy(bad, r, 0.5)
    with pytest.raises(ValueError, match=r"logprobs do not normalize.*prompt 2"):
        rlhf.rlhf_objective(bad, ref, r, 0.5)
    with pytest.raises(ValueError, match=r"logprobs_p do not normalize"):
        rlhf.kl_divergence(bad, ref)
    with pytest.raises(ValueError, match=r"ref_logprobs do not normalize.*prompt 0"):
        rlhf.log_partition(np.zeros((3, 4)), np.zeros((3, 4)), 1.0)  # raw scores, not log-probabilities


def test_normalization_tolerance_follows_dtype():
    ref, r = toy_problem()
    off = ref + 1e-6                                               # sums to e^{1e-6}: within float32 rounding
    rlhf.optimal_policy(off.astype(np.float32), r.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="do not normalize"):
        rlhf.optimal_policy(off, r, 0.5)                           # but far outside float64's


def test_nan_or_inf_rewards_are_rejected():
    ref, r = toy_problem()
    for value in (np.nan, np.inf, -np.inf):
        bad = r.copy()
        bad[1, 5] = value
        with pytest.raises(ValueError, match=r"rewards must be finite.*\(1, 5\)"):
            rlhf.optimal_policy(ref, bad, 0.5)
        with pytest.raises(ValueError, match="rewards must be finite"):
            rlhf.rlhf_objective(ref, ref, bad, 0.5)
        with pytest.raises(ValueError, match="r_w must be finite"):
            rlhf.bradley_terry(bad[1], r[1])


def test_implicit_reward_of_a_response_neither_policy_produces_is_rejected():
    logprobs = np.array([[np.log(0.5), np.log(0.5), -np.inf]])          # π(y_2) = π_ref(y_2) = 0
    with pytest.raises(ValueError, match=r"implicit reward undefined at index \(0, 2\)"):
        rlhf.implicit_reward(logprobs, logprobs, 0.5)


def test_nan_logprobs_are_rejected():
    ref, r = toy_problem()
    bad = ref.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match=r"ref_logprobs must be log-probabilities.*\(0, 3\)"):
        rlhf.log_partition(bad, r, 0.5)


def test_empty_response_set_is_rejected():
    with pytest.raises(ValueError, match="ref_logprobs has an empty response set"):
        rlhf.log_partition(np.zeros((2, 0)), np.zeros((2, 0)), 0.5)
    with pytest.raises(ValueError, match="logprobs has an empty response set"):
        rlhf.implicit_reward(np.zeros((2, 0)), np.zeros((2, 0)), 0.5)
    with pytest.raises(ValueError, match="empty"):
        rlhf.bradley_terry_loss(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="response axis"):
        rlhf.optimal_policy(np.float64(0.0), np.float64(1.0), 0.5)


def test_results_follow_the_dtype_of_the_log_probabilities_not_of_the_rewards():
    logprobs = np.log(np.full((2, 4), 0.25, dtype=np.float32))
    rewards = np.arange(8, dtype=np.int64).reshape(2, 4)           # integers, or float64, in
    for r in (rewards, rewards.astype(np.float64)):
        assert rlhf.rlhf_objective(logprobs, logprobs, r, 0.5).dtype == np.float32
        assert rlhf.optimal_policy(logprobs, r, 0.5).dtype == np.float32
        assert rlhf.log_partition(logprobs, r, 0.5).dtype == np.float32


# -- accuracy over the documented range, in both dtypes -----------------------------------------

DOCUMENTED_BETAS = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3]


def documented_range_problem(beta, dtype, n=256, seed=0):
    """log π_ref (4, n) and rewards with |r| ≤ 500, in ``dtype``: rewards spread over [−500, 500];
    near +500 and near −500 with gaps of a few β (so π* spreads over many responses while r/β is
    ~5e5, where float32 steps by 0.03); and small rewards."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((4, n))
    ref = (logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)).astype(dtype)
    rewards = np.stack([rng.uniform(-500, 500, n), 500 - beta * rng.uniform(0, 5, n),
                        -500 + beta * rng.uniform(0, 5, n), rng.standard_normal(n)]).astype(dtype)
    return ref, rewards


@pytest.mark.parametrize("beta", DOCUMENTED_BETAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimal_policy_and_log_partition_are_accurate_over_the_documented_range(dtype, beta):
    """β from 1e-3 to 1e3, |r| ≤ 500: π* and log Z come back in the caller's dtype as the exact value
    (float64 NumPy, from the same inputs) rounded once. A float32 sum of log π_ref + r/β fails this by
    ~0.04 in log π* and ~5e-3 in Σ π* at β = 1e-3."""
    ref, r = documented_range_problem(beta, dtype)
    logits = ref.astype(np.float64) + r.astype(np.float64) / beta
    exact_log_z = np.logaddexp.reduce(logits, axis=-1)
    exact_star = logits - exact_log_z[:, None]
    star, log_z = rlhf.optimal_policy(ref, r, beta), rlhf.log_partition(ref, r, beta)
    assert star.dtype == log_z.dtype == dtype
    eps = np.finfo(dtype).eps
    # one rounding to dtype (relative, or absolute near 0), plus the float64 rounding that any
    # log π* = logits − log Z carries when the logits are ~|r|/β (1e-10 at β = 1e-3; 0 in effect for float32)
    # (8 ulps: in float64 the package's r·(1/β) and the test's r/β may differ by one or two)
    rounding = 8 * eps * np.maximum(1.0, np.abs(exact_star)) + 8 * EPS64 * np.abs(logits).max(-1, keepdims=True)
    assert np.all(np.abs(star - exact_star) <= rounding)
    assert np.all(np.abs(log_z - exact_log_z) <= 8 * eps * np.maximum(1.0, np.abs(exact_log_z)))
    p = np.exp(star.astype(np.float64))
    assert np.all(np.abs(p.sum(axis=-1) - 1) <= (p * rounding).sum(axis=-1) + 1e-12)   # Σ π* = 1
    assert np.abs(p.sum(axis=-1) - 1).max() <= 1e-5                    # (that bound is ~1e-6 in float32)
    rlhf.check_logprobs(star, "π*")
    if dtype == np.float32:          # and it agrees with a float64 run on the same (float32) inputs
        ref64 = ref.astype(np.float64)
        ref64 -= np.logaddexp.reduce(ref64, axis=-1, keepdims=True)       # normalized to float64's tolerance
        star64 = rlhf.optimal_policy(ref64, r.astype(np.float64), beta)
        np.testing.assert_allclose(star, star64, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p, np.exp(star64), rtol=0, atol=1e-6)
        np.testing.assert_allclose(log_z, rlhf.log_partition(ref64, r.astype(np.float64), beta), rtol=1e-6, atol=1e-6)


def test_float32_tensors_take_the_same_float64_detour_and_get_float32_gradients():
    ref, r = documented_range_problem(1e-3, np.float32, n=16)
    plain = rlhf.optimal_policy(ref, r, 1e-3)
    rt = Tensor(r, requires_grad=True)
    star = rlhf.optimal_policy(Tensor(ref), rt, 1e-3)
    assert star.dtype == np.float32
    np.testing.assert_array_equal(star.data, plain)
    logits = ref.astype(np.float64) + r.astype(np.float64) / 1e-3
    exact = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    assert np.all(np.abs(star.data - exact) <= 8 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(exact)))
    w = np.random.default_rng(1).standard_normal(star.shape).astype(np.float32)
    (ag.exp(star) * w).sum().backward()
    # d/dr Σ_y w_y π*(y) = π*(w − Σ w π*)/β, in float64 from the same values
    p = np.exp(plain.astype(np.float64))
    expected = p * (w - (w * p).sum(-1, keepdims=True)) / 1e-3
    assert rt.grad.dtype == np.float32
    np.testing.assert_allclose(rt.grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ---- β at the edges of float64 -----------------------------------------------------------------------

def test_pi_star_with_a_subnormal_beta_or_an_overflowing_r_over_beta_is_refused_by_name():
    """A subnormal β (1e-320) has an infinite 1/β, and even a normal one can make r/β overflow: π* and Z(x)
    would be NaN. Both are refused naming β, before any arithmetic."""
    ref = np.log(np.full((2, 3), 1 / 3))
    r = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 500.0]])
    for fn in (rlhf.optimal_policy, rlhf.log_partition):
        with pytest.raises(ValueError, match=r"beta=\S+ does not fit float64.*infinite 1/β"):
            fn(ref, r, 1e-320)
        with pytest.raises(ValueError, match=r"r/β overflows float64: β = 1e-307 with rewards up to 500 in size"):
            fn(ref, r, 1e-307)
    star = rlhf.optimal_policy(ref, r, 1e-300)                   # small but representable: the argmax, exactly
    np.testing.assert_allclose(np.exp(star), [[0, 0, 1], [0, 0, 1]], atol=1e-300)
