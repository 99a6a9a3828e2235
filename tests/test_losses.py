"""The DPO loss family: values against the papers' formulas, gradients against central differences."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpo_np import losses as losses_module
from dpo_np.autograd import Tensor
from dpo_np.gradcheck import gradcheck
from dpo_np.losses import (F_DIVERGENCE_TYPES, LOSS_TYPES, SMOOTHED_LOSS_TYPES, dpo_loss,
                           implicit_rewards, log_ratio, log_ratio_margin, update_running_mean)

TOL = 1e-6
SETTINGS = settings(max_examples=25, deadline=None)


# -- the formulas, written out independently in float64 NumPy -------------------------------

def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_score(rho_w, rho_l, f_div, alpha):
    """h_f = f'(u_w) − f'(u_l), u = π_θ/π_ref = e^ρ, with f' written directly in u."""
    u_w, u_l = np.exp(rho_w), np.exp(rho_l)
    if f_div == "reverse_kl":
        return np.log(u_w) - np.log(u_l)
    if f_div == "forward_kl":
        return (-1.0 / u_w) - (-1.0 / u_l)
    if f_div == "js_divergence":
        return np.log(2 * u_w / (1 + u_w)) - np.log(2 * u_l / (1 + u_l))
    return (1 - u_w ** -alpha) / alpha - (1 - u_l ** -alpha) / alpha


def reference_loss(kind, pw, pl, rw, rl, beta, eps=0.0, f_div="reverse_kl", alpha=1.0,
                   delta=0.0, tau=0.05, lengths=None, gamma=0.5):
    rho_w, rho_l = pw - rw, pl - rl
    h = reference_score(rho_w, rho_l, f_div, alpha)
    z = beta * h
    if kind in ("sigmoid", "sigmoid_norm"):
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if kind == "robust":
        return ((1 - eps) * -logsig(z) - eps * -logsig(-z)) / (1 - 2 * eps)
    if kind == "hinge":
        return np.maximum(0.0, 1.0 - z)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if kind == "bco_pair":
        return -logsig(beta * rho_w - delta) - logsig(-(beta * rho_l - delta))
    if kind == "nca_pair":
        return -logsig(beta * rho_w) - 0.5 * logsig(-beta * rho_w) - 0.5 * logsig(-beta * rho_l)
    if kind == "sppo_hard":
        return (rho_w - 1 / (2 * beta)) ** 2 + (rho_l + 1 / (2 * beta)) ** 2
    if kind == "exo_pair":
        e = eps if eps > 0 else 1e-3
        p = sig(z)                                   # the policy's pair distribution (p, 1 − p)
        return p * np.log(p / (1 - e)) + (1 - p) * np.log((1 - p) / e)
    if kind == "apo_zero":
        return (1 - sig(beta * rho_w)) + sig(beta * rho_l)
    if kind == "apo_down":
        return sig(beta * rho_w) + (1 - sig(beta * (rho_w - rho_l)))
    if kind in ("aot", "aot_unpaired"):
        d = (np.sort(pw - pl) - np.sort(rw - rl)) if kind == "aot" else (np.sort(rho_w) - np.sort(rho_l))
        return -(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d)
    if kind == "discopop":
        zz = beta * (rho_w - rho_l)
        m = sig(zz / tau)
        return (1 - m) * -logsig(zz) + m * np.exp(-zz)
    if kind == "sft":
        return -pw if lengths is None else -pw / lengths
    if kind == "simpo":                              # Meng et al. 2024: pw, pl are per-token averages
        zs = beta * pw - beta * pl - gamma
        return -(1 - eps) * logsig(zs) - eps * logsig(-zs)
    if kind == "orpo":                               # Hong et al. 2024: odds of the average likelihood
        odds_w, odds_l = np.exp(pw) / (1 - np.exp(pw)), np.exp(pl) / (1 - np.exp(pl))
        return -pw - beta * logsig(np.log(odds_w / odds_l))
    raise AssertionError(kind)


def random_logps(rng, B=6, scale=3.0):
    """Four (B,) arrays of log-probabilities: policy chosen/rejected, reference chosen/rejected."""
    return [-np.abs(rng.standard_normal(B)) * scale - 1.0 for _ in range(4)]


def valid_smoothing(kind, rng):
    """A label smoothing ε the loss accepts: 0 for the losses without ε, which reject any other."""
    if kind not in SMOOTHED_LOSS_TYPES:
        return 0.0
    return float(rng.uniform(0.0, 0.45)) if kind in ("robust", "exo_pair") else float(rng.uniform(0, 1))


def some_smoothing(kind):
    return 0.1 if kind in SMOOTHED_LOSS_TYPES else 0.0


# -- values -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", LOSS_TYPES)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), beta=st.floats(0.05, 2.0))
def test_each_loss_type_matches_its_formula(kind, seed, beta):
    rng = np.random.default_rng(seed)
    pw, pl, rw, rl = random_logps(rng)
    eps = valid_smoothing(kind, rng)
    delta, gamma = float(rng.normal()), float(rng.uniform(0, 2))
    lengths = rng.integers(1, 20, size=pw.shape).astype(np.float64)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        pw, pl, rw, rl, beta=beta, loss_type=kind, label_smoothing=eps, bco_delta=delta,
        chosen_lengths=lengths, simpo_gamma=gamma)
    expected = reference_loss(kind, pw, pl, rw, rl, beta, eps, delta=delta, lengths=lengths, gamma=gamma)
    np.testing.assert_allclose(losses, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(chosen_rewards, beta * (pw - rw), rtol=1e-12)
    np.testing.assert_allclose(rejected_rewards, beta * (pl - rl), rtol=1e-12)


@pytest.mark.parametrize("kind", ["sigmoid", "robust", "hinge", "ipo", "exo_pair"])
@pytest.mark.parametrize("f_div", F_DIVERGENCE_TYPES)
def test_f_divergence_scores_match_f_prime_of_the_density_ratio(kind, f_div):
    rng = np.random.default_rng(7)
    pw, pl, rw, rl = random_logps(rng, scale=0.7)
    alpha, eps = 0.6, (0.2 if kind in SMOOTHED_LOSS_TYPES else 0.0)
    losses, _, _ = dpo_loss(pw, pl, rw, rl, beta=0.3, loss_type=kind, label_smoothing=eps,
                            f_divergence_type=f_div, f_alpha_divergence_coef=alpha)
    expected = reference_loss(kind, pw, pl, rw, rl, 0.3, eps, f_div=f_div, alpha=alpha)
    np.testing.assert_allclose(losses, expected, rtol=1e-9, atol=1e-12)


def test_forward_kl_is_the_alpha_divergence_at_alpha_one():
    pw, pl, rw, rl = random_logps(np.random.default_rng(3))
    fkl, _, _ = dpo_loss(pw, pl, rw, rl, f_divergence_type="forward_kl", f_alpha_divergence_coef=0.3)
    alpha1, _, _ = dpo_loss(pw, pl, rw, rl, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0)
    np.testing.assert_array_equal(fkl, alpha1)


def test_aot_couples_the_batch_through_sorting():
    """AOT's loss at rank i compares the i-th smallest policy margin with the i-th smallest reference one."""
    rng = np.random.default_rng(11)
    pw, pl, rw, rl = random_logps(rng)
    losses, _, _ = dpo_loss(pw, pl, rw, rl, loss_type="aot")
    perm = rng.permutation(len(pw))                 # shuffling the policy side alone changes nothing
    shuffled, _, _ = dpo_loss(pw[perm], pl[perm], rw, rl, loss_type="aot")
    np.testing.assert_allclose(shuffled, losses, rtol=1e-12)
    plain, _, _ = dpo_loss(pw[perm], pl[perm], rw, rl, loss_type="sigmoid")
    original, _, _ = dpo_loss(pw, pl, rw, rl, loss_type="sigmoid")
    assert not np.allclose(np.sort(plain), np.sort(original))   # the per-pair loss does change


# -- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_every_loss_type_backward_matches_central_differences(kind):
    rng = np.random.default_rng(LOSS_TYPES.index(kind))
    pw, pl, rw, rl = random_logps(rng, scale=1.0)
    eps = valid_smoothing(kind, rng)
    lengths = rng.integers(1, 20, size=pw.shape).astype(np.float64)

    def f(policy_chosen, policy_rejected):
        losses, _, _ = dpo_loss(policy_chosen, policy_rejected, rw, rl, beta=0.7, loss_type=kind,
                                label_smoothing=eps, bco_delta=0.3, chosen_lengths=lengths)
        return losses

    errors = gradcheck(f, [pw, pl])
    assert max(errors) < TOL, errors


@pytest.mark.parametrize("f_div", F_DIVERGENCE_TYPES)
def test_f_divergence_backward_matches_central_differences(f_div):
    pw, pl, rw, rl = random_logps(np.random.default_rng(5), scale=0.5)

    def f(policy_chosen, policy_rejected):
        return dpo_loss(policy_chosen, policy_rejected, rw, rl, beta=0.5, f_divergence_type=f_div,
                        f_alpha_divergence_coef=0.5)[0]

    errors = gradcheck(f, [pw, pl])
    assert max(errors) < TOL, errors


def test_weighted_loss_list_backward_matches_central_differences():
    pw, pl, rw, rl = random_logps(np.random.default_rng(9), scale=1.0)

    def f(policy_chosen, policy_rejected):
        return dpo_loss(policy_chosen, policy_rejected, rw, rl, beta=0.2,
                        loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])[0]

    errors = gradcheck(f, [pw, pl])
    assert max(errors) < TOL, errors


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), beta=st.floats(0.01, 5.0))
def test_sigmoid_gradient_is_the_papers_closed_form(seed, beta):
    """∂ℓ/∂log π_θ(y_w) = −β σ(−βh) and ∂ℓ/∂log π_θ(y_l) = +β σ(−βh) (DPO paper §4, "What does
    the DPO update do?"): each pair is weighted by how wrong the implicit reward model is."""
    rng = np.random.default_rng(seed)
    pw, pl, rw, rl = random_logps(rng)
    tw, tl = Tensor(pw, requires_grad=True), Tensor(pl, requires_grad=True)
    losses, _, _ = dpo_loss(tw, tl, rw, rl, beta=beta)
    losses.sum().backward()
    h = (pw - rw) - (pl - rl)
    weight = beta * sig(-beta * h)
    np.testing.assert_allclose(tw.grad, -weight, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(tl.grad, weight, rtol=1e-10, atol=1e-15)


def test_gradients_flow_into_the_policy_only():
    pw, pl, rw, rl = random_logps(np.random.default_rng(2))
    leaves = [Tensor(x, requires_grad=True) for x in (pw, pl, rw, rl)]
    losses, chosen_rewards, rejected_rewards = dpo_loss(*leaves)
    losses.sum().backward()
    assert leaves[0].grad is not None and leaves[1].grad is not None
    assert leaves[2].grad is None and leaves[3].grad is None
    assert isinstance(losses, Tensor)
    assert isinstance(chosen_rewards, np.ndarray) and isinstance(rejected_rewards, np.ndarray)


# -- special cases the notes name --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_policy_equal_to_reference_gives_log2_and_zero_rewards_exactly(dtype):
    pw, pl, _, _ = (x.astype(dtype) for x in random_logps(np.random.default_rng(4)))
    losses, chosen_rewards, rejected_rewards = dpo_loss(pw, pl, pw.copy(), pl.copy(), beta=0.1)
    assert losses.dtype == dtype
    np.testing.assert_array_equal(losses, np.full_like(losses, np.log(dtype(2))))
    np.testing.assert_array_equal(chosen_rewards, 0.0)
    np.testing.assert_array_equal(rejected_rewards, 0.0)


@pytest.mark.parametrize("kind", ["sigmoid", "robust"])
def test_zero_label_smoothing_reduces_to_plain_dpo(kind):
    pw, pl, rw, rl = random_logps(np.random.default_rng(8))
    smoothed, _, _ = dpo_loss(pw, pl, rw, rl, loss_type=kind, label_smoothing=0.0)
    np.testing.assert_allclose(smoothed, -logsig(0.1 * ((pw - rw) - (pl - rl))), rtol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_reference_free_ignores_the_reference(seed):
    rng = np.random.default_rng(seed)
    pw, pl, rw, rl = random_logps(rng)
    other_w, other_l = rw + rng.normal(size=rw.shape), rl - 3.0
    for kind in LOSS_TYPES:
        eps = some_smoothing(kind)
        a = dpo_loss(pw, pl, rw, rl, loss_type=kind, reference_free=True, label_smoothing=eps)
        b = dpo_loss(pw, pl, other_w, other_l, loss_type=kind, reference_free=True, label_smoothing=eps)
        c = dpo_loss(pw, pl, None, None, loss_type=kind, reference_free=True, label_smoothing=eps)
        for x, y, w in zip(a, b, c):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, w)
    losses, chosen_rewards, _ = dpo_loss(pw, pl, rw, rl, beta=0.3, reference_free=True)
    np.testing.assert_allclose(losses, -logsig(0.3 * (pw - pl)), rtol=1e-12)
    np.testing.assert_allclose(chosen_rewards, 0.3 * pw, rtol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_a_shared_shift_of_both_responses_cancels_like_log_Z(seed):
    """Adding c(x) to log π_θ(y_w|x) and log π_θ(y_l|x) alike (as β log Z(x) is added to both
    rewards) leaves every margin-based loss unchanged: Z(x) cancels in Bradley–Terry."""
    rng = np.random.default_rng(seed)
    pw, pl, rw, rl = random_logps(rng)
    c = rng.normal(size=pw.shape) * 5.0
    for kind in ("sigmoid", "robust", "hinge", "ipo", "exo_pair", "aot", "discopop"):
        a, _, _ = dpo_loss(pw, pl, rw, rl, loss_type=kind, label_smoothing=some_smoothing(kind))
        b, _, _ = dpo_loss(pw + c, pl + c, rw, rl, loss_type=kind, label_smoothing=some_smoothing(kind))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_rpo_is_sigmoid_plus_sft_and_mpo_is_the_weighted_sum():
    pw, pl, rw, rl = random_logps(np.random.default_rng(12))
    rpo, _, _ = dpo_loss(pw, pl, rw, rl, beta=0.2, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
    np.testing.assert_allclose(rpo, -logsig(0.2 * ((pw - rw) - (pl - rl))) - pw, rtol=1e-12)
    weights = [0.8, 0.2, 1.0]
    mpo, _, _ = dpo_loss(pw, pl, rw, rl, beta=0.2, loss_type=["sigmoid", "bco_pair", "sft"],
                         loss_weights=weights, bco_delta=0.1)
    parts = [dpo_loss(pw, pl, rw, rl, beta=0.2, loss_type=k, bco_delta=0.1)[0]
             for k in ("sigmoid", "bco_pair", "sft")]
    np.testing.assert_allclose(mpo, sum(w * p for w, p in zip(weights, parts)), rtol=1e-12)


@pytest.mark.parametrize("formula, calls", [
    ("sigmoid_loss", [dict(loss_type="sigmoid"),                                        # the paper's DPO
                      dict(loss_type=["sigmoid", "sft"]),                               # RPO
                      dict(loss_type="sigmoid", f_divergence_type="js_divergence"),     # f-DPO
                      dict(loss_type="sigmoid_norm"), dict(loss_type="aot"), dict(loss_type="aot_unpaired")]),
    ("ipo_loss", [dict(loss_type="ipo"), dict(loss_type=["ipo", "sft"]),
                  dict(loss_type="ipo", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)]),
])
def test_each_paper_formula_has_one_home_that_every_variant_reads(formula, calls, monkeypatch):
    """Editing losses.sigmoid_loss (or ipo_loss), where ARCHITECTURE.md points, changes every loss
    built on it: the plain loss, RPO's list, the f-divergence variants and AOT, by the same edit."""
    pw, pl, rw, rl = random_logps(np.random.default_rng(15))
    before = [dpo_loss(pw, pl, rw, rl, beta=0.3, **c)[0] for c in calls]
    original = getattr(losses_module, formula)
    monkeypatch.setattr(losses_module, formula, lambda *args: original(*args) + 1.0)
    after = [dpo_loss(pw, pl, rw, rl, beta=0.3, **c)[0] for c in calls]
    for c, b, a in zip(calls, before, after):
        np.testing.assert_allclose(a, b + 1.0, rtol=1e-12, err_msg=str(c))


def test_helpers_read_like_the_notes():
    pw, pl, rw, rl = random_logps(np.random.default_rng(13))
    np.testing.assert_array_equal(log_ratio(pw, rw), pw - rw)
    np.testing.assert_allclose(log_ratio_margin(pw, pl, rw, rl), (pw - rw) - (pl - rl), rtol=1e-12)
    np.testing.assert_allclose(implicit_rewards(Tensor(pw, requires_grad=True), rw, 0.5),
                               0.5 * (pw - rw), rtol=1e-12)
    margin = log_ratio_margin(Tensor(pw, requires_grad=True), pl, rw, rl)
    assert isinstance(margin, Tensor) and margin.requires_grad


def test_bco_running_mean_is_the_mean_of_every_reward_seen():
    rng = np.random.default_rng(14)
    batches = [(rng.normal(size=n), rng.normal(size=n)) for n in (3, 5, 2)]
    mean, count = 0.0, 0
    for chosen, rejected in batches:
        mean, count = update_running_mean(mean, count, chosen, rejected)
    everything = np.concatenate([np.concatenate(b) for b in batches])
    assert count == everything.size
    np.testing.assert_allclose(mean, everything.mean(), rtol=1e-12)


# -- numerical range ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_large_margins_stay_finite_in_values_and_gradients(kind, dtype):
    """|βh| = 1e4 on both sides: every loss and its gradient stay finite (no log σ underflow)."""
    big = dtype(5e3)
    pw = np.array([big, -big, 0.0], dtype=dtype)
    pl = np.array([-big, big, 0.0], dtype=dtype)
    if kind == "orpo":           # odds of an average likelihood need ū < 0: P̄ near 1 against P̄ near 0
        pw, pl = np.array([-1e-6, -big, -1.0], dtype=dtype), np.array([-big, -1e-6, -1.0], dtype=dtype)
    zeros = np.zeros(3, dtype=dtype)
    tw, tl = Tensor(pw, requires_grad=True), Tensor(pl, requires_grad=True)
    losses, _, _ = dpo_loss(tw, tl, zeros, zeros, beta=1.0, loss_type=kind,
                            label_smoothing=some_smoothing(kind))
    assert losses.dtype == dtype
    assert np.isfinite(losses.data).all(), losses.data
    losses.backward(np.ones(3, dtype=dtype))
    for leaf in (tw, tl):        # sft does not depend on log π_θ(y_l): no gradient reaches it
        assert leaf.grad is None if (kind, leaf) == ("sft", tl) else np.isfinite(leaf.grad).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("f_div", F_DIVERGENCE_TYPES)
def test_large_margins_stay_finite_under_every_f_divergence(f_div, dtype):
    big = dtype(5e3)
    pw = np.array([big, -big], dtype=dtype)
    pl = np.array([-big, big], dtype=dtype)
    zeros = np.zeros(2, dtype=dtype)
    tw, tl = Tensor(pw, requires_grad=True), Tensor(pl, requires_grad=True)
    losses, _, _ = dpo_loss(tw, tl, zeros, zeros, beta=1.0, f_divergence_type=f_div)
    assert np.isfinite(losses.data).all(), losses.data
    losses.sum().backward()
    assert np.isfinite(tw.grad).all() and np.isfinite(tl.grad).all()


def test_sigmoid_loss_at_large_margins_is_the_asymptote():
    """−log σ(z) → 0 for z → +∞ and → −z for z → −∞ (log(sigmoid(z)) would be inf at z = −1e4)."""
    pw = np.array([5e3, -5e3], dtype=np.float32)
    losses, _, _ = dpo_loss(pw, -pw, np.zeros(2, np.float32), np.zeros(2, np.float32), beta=1.0)
    np.testing.assert_allclose(losses, [0.0, 1e4], rtol=1e-6)


def test_plain_inputs_give_plain_arrays_in_their_dtype():
    pw, pl, rw, rl = (x.astype(np.float32) for x in random_logps(np.random.default_rng(15)))
    for kind in LOSS_TYPES:
        losses, chosen_rewards, rejected_rewards = dpo_loss(pw, pl, rw, rl, loss_type=kind)
        assert isinstance(losses, np.ndarray) and losses.dtype == np.float32, kind
        assert losses.shape == pw.shape
        assert chosen_rewards.dtype == np.float32


@pytest.mark.parametrize("loss_type", ["sft", ["sigmoid", "sft"]])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_float64_chosen_lengths_keep_float32_losses(loss_type, as_tensor):
    """|y_w| is a constant like π_ref: it takes the policy's dtype instead of upcasting ℓ."""
    pw, pl, rw, rl = (x.astype(np.float32) for x in random_logps(np.random.default_rng(17)))
    lengths = np.arange(1.0, len(pw) + 1.0)                               # float64
    tw, tl = (Tensor(pw, requires_grad=True), Tensor(pl, requires_grad=True)) if as_tensor else (pw, pl)
    losses, _, _ = dpo_loss(tw, tl, rw, rl, loss_type=loss_type, chosen_lengths=lengths)
    assert losses.dtype == np.float32
    if as_tensor:
        losses.sum().backward()
        assert tw.grad.dtype == np.float32
    sft = losses if loss_type == "sft" else losses - dpo_loss(pw, pl, rw, rl)[0]
    np.testing.assert_allclose(sft.data if as_tensor else sft, -pw / lengths, rtol=1e-5)


# -- errors ---------------------------------------------------------------------------------------------

@pytest.fixture
def batch():
    return random_logps(np.random.default_rng(16), B=4)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_beta_must_be_positive(batch, beta):
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*batch, beta=beta)


def test_unknown_loss_type_lists_the_valid_ones(batch):
    with pytest.raises(ValueError, match="dpo_v2") as err:
        dpo_loss(*batch, loss_type="dpo_v2")
    assert all(kind in str(err.value) for kind in LOSS_TYPES)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(*batch, loss_type=["sigmoid", "kto"])


@pytest.mark.parametrize("kind, eps", [("robust", 0.5), ("robust", -0.01), ("exo_pair", 1.0),
                                       ("sigmoid", 1.2), ("sigmoid", -0.1), ("hinge", 2.0)])
def test_label_smoothing_outside_its_range_is_rejected(batch, kind, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*batch, loss_type=kind, label_smoothing=eps)


def test_mismatched_shapes_name_both_arguments(batch):
    pw, pl, rw, rl = batch
    with pytest.raises(ValueError, match=r"policy_chosen_logps has shape \(4,\) but policy_rejected_logps "
                                         r"has shape \(3,\)"):
        dpo_loss(pw, pl[:3], rw, rl)
    with pytest.raises(ValueError, match=r"reference_rejected_logps has shape \(5,\)"):
        dpo_loss(pw, pl, rw, np.zeros(5))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \(B,\).*\(2, 2\)"):
        dpo_loss(pw.reshape(2, 2), pl.reshape(2, 2), rw.reshape(2, 2), rl.reshape(2, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", range(4))
def test_non_finite_inputs_are_rejected(batch, bad, which):
    names = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
             "reference_rejected_logps")
    inputs = [x.copy() for x in batch]
    inputs[which][1] = bad
    with pytest.raises(ValueError, match=names[which] + ".*non-finite"):
        dpo_loss(*inputs)


def test_loss_weights_must_match_the_loss_types(batch):
    with pytest.raises(ValueError, match="loss_weights has 1 entries but loss_type names 2"):
        dpo_loss(*batch, loss_type=["sigmoid", "sft"], loss_weights=[1.0])


def test_other_argument_errors(batch):
    pw, pl, _, _ = batch
    with pytest.raises(ValueError, match="reference_free"):
        dpo_loss(pw, pl, None, None)
    with pytest.raises(ValueError, match="f_divergence_type"):
        dpo_loss(*batch, f_divergence_type="hellinger")
    with pytest.raises(ValueError, match="f_alpha_divergence_coef"):
        dpo_loss(*batch, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.0)
    with pytest.raises(ValueError, match="discopop_tau"):
        dpo_loss(*batch, loss_type="discopop", discopop_tau=-1.0)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(*batch, loss_type="sft", chosen_lengths=np.zeros(4))
    with pytest.raises(TypeError, match="beta"):
        dpo_loss(*batch, beta="0.1x")


@pytest.mark.parametrize("kind", [k for k in LOSS_TYPES if k not in SMOOTHED_LOSS_TYPES])
def test_label_smoothing_is_rejected_by_a_loss_without_epsilon(batch, kind):
    with pytest.raises(ValueError, match=f"label_smoothing=0.1 would be ignored by loss_type '{kind}'"):
        dpo_loss(*batch, loss_type=kind, label_smoothing=0.1)
    with pytest.raises(ValueError, match=f"label_smoothing.*'{kind}'"):       # one deaf term is enough
        dpo_loss(*batch, loss_type=["sigmoid", kind], label_smoothing=0.1)
    dpo_loss(*batch, loss_type=kind, label_smoothing=0.0)


@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_an_f_divergence_is_read_by_the_losses_built_on_h_and_refused_by_the_others(batch, kind):
    from dpo_np.variants import F_DIVERGENCE_LOSS_TYPES
    if kind not in F_DIVERGENCE_LOSS_TYPES:
        with pytest.raises(ValueError, match=f"f_divergence_type='js_divergence' would be ignored by loss_type '{kind}'"):
            dpo_loss(*batch, loss_type=kind, f_divergence_type="js_divergence")
        return
    kl, js = (dpo_loss(*batch, loss_type=kind, f_divergence_type=f)[0] for f in ("reverse_kl", "js_divergence"))
    assert not np.allclose(kl, js)                            # the setting changes the loss it reaches


def test_label_smoothing_is_accepted_when_every_loss_type_reads_it(batch):
    smoothed, _, _ = dpo_loss(*batch, loss_type=list(SMOOTHED_LOSS_TYPES), label_smoothing=0.2)
    parts = [dpo_loss(*batch, loss_type=k, label_smoothing=0.2)[0] for k in SMOOTHED_LOSS_TYPES]
    np.testing.assert_allclose(smoothed, sum(parts), rtol=1e-12)


def test_the_smoothed_loss_types_are_exactly_those_whose_value_depends_on_epsilon(batch, monkeypatch):
    """The rejection list is read off the formulas: with the check lifted, ε moves exactly these losses."""
    monkeypatch.setattr(losses_module, "SMOOTHED_LOSS_TYPES", LOSS_TYPES)
    moved = {kind for kind in LOSS_TYPES
             if not np.array_equal(dpo_loss(*batch, loss_type=kind, label_smoothing=0.0)[0],
                                   dpo_loss(*batch, loss_type=kind, label_smoothing=0.2)[0])}
    assert moved == set(SMOOTHED_LOSS_TYPES)


@pytest.mark.parametrize("kwargs, name, shown", [
    (dict(loss_type=None), "loss_type", "None"),
    (dict(loss_type=3), "loss_type", "3"),
    (dict(loss_type=["sigmoid", None]), "loss_type", "None"),
    (dict(label_smoothing="x"), "label_smoothing", "'x'"),
    (dict(label_smoothing=None), "label_smoothing", "None"),
    (dict(bco_delta="x"), "bco_delta", "'x'"),
    (dict(loss_weights=["a"]), "loss_weights", "['a']"),
    (dict(beta="0.1x"), "beta", "'0.1x'"),
])
def test_an_argument_of_the_wrong_kind_is_named_with_its_value(batch, kwargs, name, shown):
    with pytest.raises((TypeError, ValueError)) as err:
        dpo_loss(*batch, **kwargs)
    assert name in str(err.value) and shown in str(err.value), str(err.value)


# ---- numbers that must not turn silently wrong ---------------------------------------------------

@pytest.mark.parametrize("dtype, beta, why", [(np.float32, 1e39, "is inf there"), (np.float32, 1e-40, "infinite 1/β"),
                                              (np.float64, 1e-320, "infinite 1/β")])
def test_a_beta_that_does_not_fit_the_inputs_dtype_is_refused_by_name(dtype, beta, why):
    """β finite in float64 but inf in float32 (or subnormal, with an infinite 1/β for IPO's 1/(2β))
    would give inf and NaN losses without a word."""
    logps = [np.zeros(3, dtype) for _ in range(4)]
    for kind in ("sigmoid", "ipo"):
        with pytest.raises(ValueError, match=re.escape(f"beta={beta:g} does not fit {np.dtype(dtype).name}") + f".*{why}"):
            dpo_loss(*logps, beta=beta, loss_type=kind)


def test_a_beta_whose_product_with_the_margins_overflows_is_refused_not_returned_as_inf():
    pw = np.full(3, 5.0, np.float32)
    zeros = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"beta=1e\+38 times these log-probability ratios overflows float32"), \
            np.errstate(over="ignore"):                 # the overflow is what is refused
        dpo_loss(pw, zeros, zeros, zeros, beta=1e38)
    losses, chosen, _ = dpo_loss(pw.astype(np.float64), zeros, zeros, zeros, beta=1e38)     # float64 holds it
    assert np.all(np.isfinite(losses)) and np.allclose(chosen, 5e38)


@pytest.mark.parametrize("bad, message", [
    (np.ones(3) + 1j, r"policy_chosen_logps must be an array of real numbers of shape \(B,\), got complex128"),
    (Tensor(np.ones(3) + 1j), r"got complex128"),
    (np.array([True, False, True]), r"got bool"),
    (np.array(["a", "b", "c"]), r"got str"),
])
def test_log_probabilities_that_are_not_real_numbers_are_refused_not_cast(bad, message):
    with pytest.raises(TypeError, match=message):
        dpo_loss(bad, np.zeros(3), np.zeros(3), np.zeros(3))


def test_an_empty_batch_is_refused_in_the_losss_own_words():
    empty = np.zeros(0)
    with pytest.raises(ValueError, match=r"policy_chosen_logps is empty: a batch of pairs needs at least one pair") as err:
        dpo_loss(empty, empty, empty, empty)
    assert "response set" not in str(err.value)


@pytest.mark.parametrize("loss_type", [{"sigmoid": 1.0}, {"sigmoid", "sft"}, 3])
def test_a_loss_type_that_is_neither_a_name_nor_a_list_is_refused(batch, loss_type):
    with pytest.raises(TypeError, match=r"loss_type must be a name of LOSS_TYPES or a list of them"):
        dpo_loss(*batch, loss_type=loss_type)
    assert dpo_loss(*batch, loss_type=("sigmoid", "sft"))[0].shape == batch[0].shape     # a tuple is a list


def test_the_successors_and_the_kl_penalty_check_beta_in_their_inputs_dtype():
    from dpo_np import rl, successors
    f32 = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=re.escape("beta=1e+39 does not fit float32")):
        successors.simpo_loss(f32, f32, beta=1e39)
    with pytest.raises(ValueError, match=re.escape("beta=1e+39 does not fit float32")):
        successors.kto_loss(f32, f32, np.array([True, False, True]), 0.0, beta=1e39)
    with pytest.raises(ValueError, match=re.escape("beta=1e+39 does not fit float32")):
        rl.kl_penalized_reward(f32, f32, f32, beta=1e39)
    with pytest.raises(ValueError, match="policy_chosen_logps is empty"):
        successors.simpo_loss(np.zeros(0), np.zeros(0), beta=1.0)
