"""After DPO: SimPO, ORPO and KTO (successors.py), RLOO, GRPO and Dr. GRPO (rl.py) — each value against its
paper's formula written out independently in float64 NumPy, each gradient against central differences,
the edges (lengths, huge margins) finite, and every bad argument named."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpo_np import autograd as ag
from dpo_np import rl, successors
from dpo_np.autograd import Tensor
from dpo_np.gradcheck import gradcheck
from dpo_np.losses import dpo_loss

TOL = 1e-6
SETTINGS = settings(max_examples=25, deadline=None)


def logsig(z):
    return -np.logaddexp(0.0, -z)


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def averaged_logps(rng, B=7):
    """Per-token averages ū = log π(y)/|y| of random responses: sums over 1..6 tokens, divided by the count."""
    lengths = rng.integers(1, 7, size=(2, B))
    sums = -np.abs(rng.standard_normal((2, B))) * lengths * 1.5 - 0.05 * lengths
    return sums / lengths


# -- SimPO -------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), beta=st.floats(0.1, 5.0), gamma=st.floats(0.0, 3.0),
       eps=st.floats(0.0, 0.5))
def test_simpo_is_the_papers_loss_on_length_normalised_log_probabilities(seed, beta, gamma, eps):
    """ℓ = −(1 − ε) log σ(z) − ε log σ(−z), z = (β/|y_w|) log π(y_w) − (β/|y_l|) log π(y_l) − γ."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=(2, 5)).astype(float)
    sums = -np.abs(rng.standard_normal((2, 5))) * lengths
    z = beta / lengths[0] * sums[0] - beta / lengths[1] * sums[1] - gamma
    expected = -(1 - eps) * logsig(z) - eps * logsig(-z)
    got = successors.simpo_loss(sums[0] / lengths[0], sums[1] / lengths[1], beta, gamma, eps)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_simpo_without_a_margin_is_reference_free_dpo_on_averages():
    pw, pl = averaged_logps(np.random.default_rng(0))
    simpo = successors.simpo_loss(pw, pl, beta=2.5, gamma=0.0)
    dpo, _, _ = dpo_loss(pw, pl, beta=2.5, reference_free=True)
    np.testing.assert_allclose(simpo, dpo, rtol=1e-14)
    # the margin γ only ever raises the loss: the winner must lead by γ more
    assert np.all(successors.simpo_loss(pw, pl, beta=2.5, gamma=0.8) > simpo)


# -- ORPO --------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 2.0))
def test_orpo_is_the_nll_plus_lambda_times_the_odds_ratio_term(seed, lam):
    """ℓ = −log P̄(y_w) − λ log σ(log[odds(y_w)/odds(y_l)]), P̄ = π(y)^{1/|y|}, odds = P̄/(1 − P̄)."""
    pw, pl = averaged_logps(np.random.default_rng(seed))
    p_w, p_l = np.exp(pw), np.exp(pl)                                      # the average likelihoods P̄
    odds_w, odds_l = p_w / (1 - p_w), p_l / (1 - p_l)
    expected = -np.log(p_w) - lam * np.log(sig(np.log(odds_w / odds_l)))
    np.testing.assert_allclose(successors.orpo_loss(pw, pl, lam), expected, rtol=1e-11, atol=1e-13)


def test_log_odds_and_log1mexp_stay_accurate_where_the_naive_formula_cancels():
    x = np.array([-1e-12, -1e-6, -0.5, -0.7, -1.0, -30.0, -700.0])
    # log(1 − e^x) to full precision: log(−expm1(x)) is exact near 0, log1p(−e^x) far below it
    want = np.array([math.log(-math.expm1(v)) if v > -1 else math.log1p(-math.exp(v)) for v in x])
    np.testing.assert_allclose(ag.log1mexp(x).data, want, rtol=1e-14)
    assert abs(np.log(1 - np.exp(-1e-12)) - want[0]) > 1e-5          # the cancellation it avoids
    np.testing.assert_allclose(successors.log_odds(x), x - want, rtol=1e-14)
    assert max(gradcheck(ag.log1mexp, [np.array([-0.05, -0.2, -0.69, -0.7, -3.0, -20.0])])) < TOL
    near = Tensor(np.array([-1e-9, -1e-4]), requires_grad=True)           # d/dx = e^x/expm1(x) ≈ 1/x there
    ag.log1mexp(near).sum().backward()
    np.testing.assert_allclose(near.grad, [math.exp(-1e-9) / math.expm1(-1e-9), math.exp(-1e-4) / math.expm1(-1e-4)],
                               rtol=1e-14)


def test_orpo_at_the_ends_of_the_range_is_finite_in_value_and_gradient():
    pw = Tensor(np.array([-1e-9, -700.0, -1.0]), requires_grad=True)        # P̄ ≈ 1, P̄ ≈ e^{-700}, between
    pl = Tensor(np.array([-700.0, -1e-9, -1.0]), requires_grad=True)
    losses = successors.orpo_loss(pw, pl, 0.2)
    losses.sum().backward()
    assert np.isfinite(losses.data).all() and np.isfinite(pw.grad).all() and np.isfinite(pl.grad).all()
    assert losses.data[2] == pytest.approx(1.0 + 0.2 * math.log(2))          # equal odds: −log σ(0) = log 2


# -- KTO ---------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), beta=st.floats(0.01, 3.0), z=st.floats(0.0, 2.0),
       lam_d=st.floats(0.1, 3.0), lam_u=st.floats(0.1, 3.0))
def test_kto_is_lambda_minus_the_value_of_each_example(seed, beta, z, lam_d, lam_u):
    """ℓ = λ_D − λ_D σ(β(ρ − z)) for a desirable y, λ_U − λ_U σ(β(z − ρ)) for an undesirable one."""
    rng = np.random.default_rng(seed)
    policy, reference = -np.abs(rng.standard_normal(8)) * 4, -np.abs(rng.standard_normal(8)) * 4
    good = rng.random(8) < 0.5
    rho = policy - reference
    value = np.where(good, lam_d * sig(beta * (rho - z)), lam_u * sig(beta * (z - rho)))
    expected = np.where(good, lam_d, lam_u) - value
    got = successors.kto_loss(policy, reference, good, z, beta, lam_d, lam_u)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-14)


def test_kto_reference_point_is_the_mean_log_ratio_of_the_mismatched_pairs_clipped_at_zero():
    assert successors.kto_reference_point([-1.0, -2.0, -3.0], [-2.0, -2.5, -3.5]) == pytest.approx(2.0 / 3.0)
    assert successors.kto_reference_point([-3.0, -4.0], [-1.0, -2.0]) == 0.0     # a KL is never negative


def test_kto_sends_no_gradient_to_the_reference():
    policy, reference = Tensor(np.array([-1.0, -2.0]), requires_grad=True), Tensor(np.array([-1.5, -1.0]),
                                                                                 requires_grad=True)
    successors.kto_loss(policy, reference, np.array([True, False]), 0.3, beta=0.5).sum().backward()
    assert reference.grad is None and np.all(policy.grad != 0)


# -- gradients and ranges ------------------------------------------------------------------------

def test_every_successor_loss_backward_matches_central_differences():
    rng = np.random.default_rng(4)
    pw, pl = averaged_logps(rng)
    good = rng.random(pw.shape) < 0.5
    for f in (lambda a, b: successors.simpo_loss(a, b, 1.7, 0.6, 0.1),
              lambda a, b: successors.orpo_loss(a, b, 0.3)):
        assert max(gradcheck(f, [pw, pl])) < TOL
    # KTO's reference is a constant, so only the policy's log-probabilities have a gradient to check
    kto = lambda a: successors.kto_loss(a * 3, pl * 3, good, 0.4, beta=0.7, desirable_weight=1.3)   # noqa: E731
    assert max(gradcheck(kto, [pw])) < TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_margins_stay_finite(dtype):
    big = dtype(5e3)
    for loss in (lambda a, b: successors.simpo_loss(a, b, 1.0, 0.5),
                 lambda a, b: successors.kto_loss(a, b, np.array([True, False]), 0.0, beta=1.0)):
        a, b = Tensor(np.array([-big, -1.0], dtype), requires_grad=True), \
            Tensor(np.array([-1.0, -big], dtype), requires_grad=True)
        out = loss(a, b)
        out.sum().backward()
        assert out.dtype == dtype and np.isfinite(out.data).all() and np.isfinite(a.grad).all()


def test_bad_arguments_are_named():
    pw, pl = averaged_logps(np.random.default_rng(1))
    with pytest.raises(ValueError, match="beta"):
        successors.simpo_loss(pw, pl, beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        successors.simpo_loss(pw, pl, gamma=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        successors.simpo_loss(pw, pl, label_smoothing=1.5)
    with pytest.raises(ValueError, match="policy_rejected_logps must have shape"):
        successors.simpo_loss(pw, pl[:3])
    with pytest.raises(ValueError, match="policy_chosen_logps holds a non-finite"):
        successors.orpo_loss(np.array([np.nan]), np.array([-1.0]))
    with pytest.raises(ValueError, match="average_logps must be < 0"):
        successors.orpo_loss(np.array([0.0]), np.array([-1.0]))
    with pytest.raises(ValueError, match="lam"):
        successors.orpo_loss(pw, pl, lam=-0.1)
    with pytest.raises(ValueError, match="desirable must be booleans of shape"):
        successors.kto_loss(pw, pl, np.array([1, 0]), 0.0)
    with pytest.raises(ValueError, match="desirable_weight"):
        successors.kto_loss(pw, pl, pw < -1, 0.0, desirable_weight=0)
    with pytest.raises(TypeError, match="policy_logps must hold floating"):
        successors.kto_loss(np.array(["a"]), np.array([-1.0]), np.array([True]), 0.0)


# -- RLOO, GRPO, Dr. GRPO ---------------------------------------------------------------------------

def test_rloo_and_grpo_advantages_by_hand():
    r = np.array([[1.0, 3.0, 2.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    loo = np.array([[r[g, i] - np.mean(np.delete(r[g], i)) for i in range(4)] for g in range(2)])
    np.testing.assert_allclose(rl.rloo_advantages(r), loo, rtol=1e-14)
    mean = r.mean(axis=1, keepdims=True)
    sample_sd = np.sqrt(((r - mean) ** 2).sum(axis=1, keepdims=True) / 3)     # K − 1, as the standard trainer
    np.testing.assert_allclose(rl.grpo_advantages(r), (r - mean) / (sample_sd + 1e-4), rtol=1e-14)
    np.testing.assert_allclose(rl.grpo_advantages(r, scale_rewards=False), r - mean, rtol=1e-14)
    assert np.all(rl.grpo_advantages(r)[1] == 0)                                # a group that agrees: no signal
    # centring with r_i itself in the mean is the leave-one-out advantage shrunk by (1 − 1/K)
    np.testing.assert_allclose(rl.grpo_advantages(r, scale_rewards=False), loo * 3 / 4, rtol=1e-14)


def test_k3_is_non_negative_zero_at_the_reference_and_averages_to_the_reverse_kl():
    rng = np.random.default_rng(2)
    logits, ref_logits = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ref = ref_logits - np.logaddexp.reduce(ref_logits, axis=1, keepdims=True)
    k3 = rl.k3_kl(lp, ref)
    np.testing.assert_allclose(k3, np.exp(ref - lp) - (ref - lp) - 1, rtol=1e-14)
    assert np.all(k3 >= 0) and np.all(rl.k3_kl(ref, ref) == 0)
    reverse_kl = (np.exp(lp) * (lp - ref)).sum(axis=1)                       # KL(π ‖ π_ref) per context
    np.testing.assert_allclose((np.exp(lp) * k3).sum(axis=1), reverse_kl, rtol=1e-12)


def grpo_by_hand(lp, old, ref, A, mask, beta, eps, loss_type, max_len):
    """GRPO's per-token loss written out with loops: −min(ρÂ, clip(ρ)Â) + β k3, then the aggregation."""
    G, T = lp.shape
    per_token = np.zeros((G, T))
    for i in range(G):
        for t in range(T):
            ratio = math.exp(lp[i, t] - old[i, t])
            surrogate = min(ratio * A[i], min(max(ratio, 1 - eps), 1 + eps) * A[i])
            kl = math.exp(ref[i, t] - lp[i, t]) - (ref[i, t] - lp[i, t]) - 1
            per_token[i, t] = (-surrogate + beta * kl) * mask[i, t]
    if loss_type == "grpo":
        return np.mean([per_token[i].sum() / mask[i].sum() for i in range(G)])
    if loss_type == "bnpo":
        return per_token.sum() / mask.sum()
    return per_token.sum() / (G * max_len)


@pytest.mark.parametrize("loss_type", rl.GRPO_LOSS_TYPES)
def test_grpo_loss_value_by_hand_and_gradient_by_central_differences(loss_type):
    rng = np.random.default_rng(rl.GRPO_LOSS_TYPES.index(loss_type))
    G, T = 6, 4
    old = -np.abs(rng.standard_normal((G, T)))
    lp = old + 0.4 * rng.standard_normal((G, T))                             # ratios inside and outside the clip
    ref = -np.abs(rng.standard_normal((G, T)))
    A = rng.standard_normal(G)
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, size=G)[:, None]   # responses of 1..T tokens
    kw = dict(mask=mask, beta=0.3, clip_eps=0.2, loss_type=loss_type, max_completion_length=7)
    want = grpo_by_hand(lp, old, ref, A, mask, 0.3, 0.2, loss_type, 7)
    assert rl.grpo_loss(lp, old, ref, A, **kw) == pytest.approx(want, rel=1e-12)
    assert max(gradcheck(lambda x: rl.grpo_loss(x, old, ref, A, **kw), [lp])) < TOL


def test_grpo_loss_without_kl_needs_no_reference_and_bad_arguments_are_named():
    lp = -np.ones((2, 3))
    A = np.array([1.0, -1.0])
    assert rl.grpo_loss(lp, lp, None, A, beta=0.0) == pytest.approx(0.0)    # ratio 1: −mean(Â) = 0
    with pytest.raises(ValueError, match="ref_logprobs are required"):
        rl.grpo_loss(lp, lp, None, A, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        rl.grpo_loss(lp, lp, lp, A, loss_type="dapo")
    with pytest.raises(ValueError, match=r"advantages one per response \(G,\)"):
        rl.grpo_loss(lp, lp, lp, np.ones(3))
    with pytest.raises(ValueError, match="max_completion_length"):
        rl.grpo_loss(lp, lp, lp, A, loss_type="dr_grpo", max_completion_length=0)
    with pytest.raises(ValueError, match="groups of at least 2"):
        rl.grpo_advantages(np.ones((3, 1)))
    with pytest.raises(ValueError, match="eps"):
        rl.grpo_advantages(np.ones((3, 2)), eps=-1.0)
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        rl.k3_kl(lp, np.ones(3))
