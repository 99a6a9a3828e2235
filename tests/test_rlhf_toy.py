"""RLHF by sampling on the enumerated toy problem: the estimator is exact in expectation, the methods reach
π*_β, no policy beats the frontier, β's direction, and DPO's known behaviours — each by enumeration where
it can be exact."""

import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import autograd as ag
from dpo_np import rlhf
from dpo_np.cli import main
from dpo_np.experiments import rlhf_toy as toy
from dpo_np.experiments import toy_problem
from dpo_np.experiments.closed_form import aggregate_pairs, make_problem, run_closed_form


def problem(seed=0, beta=0.5, length=3, n_prompts=4):
    """The closed-form command's problem (or a smaller one): ref, r, log π* (P, N)."""
    _, ref, r, star = make_problem(3, length, n_prompts, beta, seed, 0.5, 0.5)
    return ref, r, star


class GridGenerator:
    """A stand-in for a NumPy generator whose uniforms are an even grid: sampling becomes exact counting."""
    def __init__(self, m):
        self.m = m

    def random(self, shape):
        return np.broadcast_to((np.arange(self.m) + 0.5) / self.m, shape).copy()


def test_sampling_by_inverse_cdf_draws_each_response_with_its_probability():
    ref, _, _ = problem()
    m = 100_000
    y = toy.sample_responses(ref, m, GridGenerator(m))                       # (P, m)
    freq = np.stack([np.bincount(row, minlength=ref.shape[1]) for row in y]) / m
    np.testing.assert_allclose(freq, np.exp(ref), atol=1.5 / m)


# -- the estimator, exactly ------------------------------------------------------------

def expected_update_direction(theta, ref, r, beta, K, method):
    """Σ over every batch y (K responses per prompt) of P(y) × (−∇ of the toy's surrogate at θ = θ_old)."""
    P, N = theta.shape
    old = ag.log_softmax(theta).data
    total = np.zeros_like(theta)
    for flat in itertools.product(range(N), repeat=P * K):
        y = np.array(flat).reshape(P, K)
        th = ag.Tensor(theta, requires_grad=True)
        toy.surrogate(th, y, old, toy.advantages(r, old, ref, y, beta), method).backward()
        total -= np.exp(old[np.arange(P)[:, None], y].sum()) * th.grad
    return total


@pytest.mark.parametrize("method", ["reinforce", "ppo"])
def test_the_expected_sampled_gradient_is_the_exact_gradient_of_the_rlhf_objective(method):
    ref, r, _ = problem(length=1, n_prompts=2)                               # 3 responses, 2 prompts
    theta = ref + np.random.default_rng(1).standard_normal(ref.shape)       # anywhere, not at π_ref
    beta = 0.5
    th = ag.Tensor(theta, requires_grad=True)
    rlhf.rlhf_objective(ag.log_softmax(th), ref, r, beta).mean().backward()
    np.testing.assert_allclose(expected_update_direction(theta, ref, r, beta, 2, method), th.grad,
                               rtol=1e-10, atol=1e-13)


def test_at_the_optimum_every_advantage_is_zero_so_the_estimate_has_no_noise():
    ref, r, star = problem()
    y = toy.sample_responses(star, 50, np.random.default_rng(0))
    # r − β log π*/π_ref = β log Z(x) for every y: the penalized reward is one number per prompt
    np.testing.assert_allclose(toy.advantages(r, star, ref, y, 0.5), 0.0, atol=1e-12)


# -- convergence ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["reinforce", "ppo"])
def test_reinforce_and_ppo_reach_the_optimum_with_the_defaults(method):
    ref, r, star = problem()
    run = toy.train_policy_gradient(ref, r, 0.5, method, seed=10)
    assert run["queries"][-1] == 1000 * 4 * 64
    assert run["kl"][0] > 0.5 and run["kl"][-1] < 1e-2
    assert run["kl"][-1] == pytest.approx(rlhf.kl_divergence(star, run["logprobs"]).mean(), rel=1e-12)
    assert run["updates"] == 1000 * (16 if method == "ppo" else 1)


def test_the_reward_model_pipeline_and_dpo_land_on_the_same_policy():
    ref, r, star = problem()
    n = 200_000
    dpo = run_closed_form(pairs=n, seed=0, progress=False)
    pairs = toy_problem.sample_preference_pairs(ref, r, n, seed=2)          # the pairs DPO drew (seed + 2)
    x, w, l, counts = aggregate_pairs(pairs["prompt"], pairs["chosen"], pairs["rejected"], r.shape[1])
    assert len(counts) == dpo["n_triples"]
    r_phi = toy.fit_reward_model(x, w, l, counts, r.shape)
    np.testing.assert_allclose(r_phi.mean(axis=1), 0.0, atol=1e-12)
    assert np.sqrt(np.mean((r_phi - (r - r.mean(1, keepdims=True))) ** 2)) < 0.1
    # DPO's optimum is the Bradley–Terry fit's π*: r̂ = β log π/π_ref is a reparameterized reward model
    target = rlhf.optimal_policy(ref, r_phi, 0.5)
    assert rlhf.kl_divergence(target, np.log(dpo["policy"])).mean() < 1e-8
    assert rlhf.kl_divergence(star, target).mean() == pytest.approx(dpo["kl"][-1], rel=1e-4)


# -- the frontier and β ---------------------------------------------------------------------

def test_no_policy_lies_above_the_frontier_and_the_optima_lie_on_it():
    ref, r, _ = problem()
    for beta in (0.05, 0.3, 1.0, 7.0):
        _, _, gap = toy.frontier_gap(rlhf.optimal_policy(ref, r, beta), ref, r)
        assert abs(gap) < 1e-9
    rng = np.random.default_rng(0)
    for scale in (0.3, 1.0, 3.0, 10.0):
        for _ in range(10):
            logits = ref + scale * rng.standard_normal(ref.shape)
            _, _, gap = toy.frontier_gap(logits - np.logaddexp.reduce(logits, 1, keepdims=True), ref, r)
            assert gap > -1e-9


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 3.0))
def test_the_optimum_moves_towards_the_reference_as_beta_grows(seed, reward_scale):
    _, ref, r, _ = make_problem(2, 3, 2, 1.0, seed, 1.0, reward_scale)
    betas = np.logspace(-2, 2, 30)
    kls = toy.kl_of_optimum(ref, r, betas)
    # never rising; strictly falling wherever the change is above rounding (at tiny β with large rewards
    # π*_β already sits on the best response and the curve is flat to the last bit)
    assert np.all(np.diff(kls) <= 1e-13) and kls[-1] < kls[0]
    # and at the rate the derivative says: dKL(π*_β ‖ π_ref)/dβ = −Var_{π*_β}(r)/β³
    beta, h = 0.7, 1e-5
    numeric = (toy.kl_of_optimum(ref, r, [beta + h])[0] - toy.kl_of_optimum(ref, r, [beta - h])[0]) / (2 * h)
    p = np.exp(rlhf.optimal_policy(ref, r, beta))
    variance = (p * (r - (p * r).sum(1, keepdims=True)) ** 2).sum(1)
    assert numeric == pytest.approx(-variance.mean() / beta ** 3, rel=1e-6)


# -- deterministic preferences and flipped labels ---------------------------------------------

def one_pair(n=1000, prompt=0, chosen=3, rejected=11):
    return {"prompt": np.full(n, prompt), "chosen": np.full(n, chosen), "rejected": np.full(n, rejected)}


def margin(run, data):
    x, w, l = data["prompt"][0], data["chosen"][0], data["rejected"][0]
    rho = np.log(run["policy"][x]) - np.log(run["reference_policy"][x])
    return rho[w] - rho[l]                         # h = log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l)


@pytest.mark.parametrize("beta", [0.25, 2.0])
def test_on_one_pair_always_preferred_dpo_has_no_finite_optimum_but_ipo_and_cdpo_do(beta):
    data = one_pair()
    kwargs = dict(beta=beta, data=data, progress=False, log_every=100)
    ipo = run_closed_form(loss_type="ipo", steps=1500, **kwargs)
    assert margin(ipo, data) == pytest.approx(1 / (2 * beta), rel=1e-3)            # IPO: h* = 1/(2β)
    eps = 0.1
    cdpo = run_closed_form(label_smoothing=eps, steps=1500, **kwargs)
    assert margin(cdpo, data) == pytest.approx(np.log((1 - eps) / eps) / beta, rel=1e-3)   # σ(βh*) = 1 − ε
    dpo = run_closed_form(steps=1500, log_policies=True, **kwargs)
    rejected = [p[0, 11] for p in dpo["policies"]]
    assert all(b < a for a, b in zip(rejected, rejected[1:]))                      # π(y_l) keeps falling
    assert margin(dpo, data) > max(margin(ipo, data), margin(cdpo, data))
    assert all(b < a for a, b in zip(dpo["loss"], dpo["loss"][1:]))               # and so does the loss


def test_deterministic_pairs_follow_the_reward_and_flips_swap_the_asked_fraction():
    ref, r, _ = problem()
    det = toy.deterministic_pairs(ref, r, 20_000, seed=3)
    assert np.all(r[det["prompt"], det["chosen"]] > r[det["prompt"], det["rejected"]])
    assert 15_000 < len(det["prompt"]) < 20_000                       # pairs of a response with itself left out
    same = toy.flip_labels(det, 0.0, seed=5)
    for k in det:
        np.testing.assert_array_equal(same[k], det[k])
    flipped = toy.flip_labels(det, 0.25, seed=5)
    swapped = flipped["chosen"] != det["chosen"]
    np.testing.assert_array_equal(flipped["rejected"][swapped], det["chosen"][swapped])
    assert abs(swapped.mean() - 0.25) < 0.02
    policy = np.full(r.shape, 1.0 / r.shape[1])
    assert toy.rejected_mass(policy, det) == pytest.approx(
        np.mean([len(set(det["rejected"][det["prompt"] == x])) for x in range(4)]) / r.shape[1])


# -- the whole run and the command ------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run():
    return toy.run_rlhf(seed=1, progress=False, **toy.QUICK)


def test_the_quick_run_is_deterministic_and_json_ready(quick_run):
    again = toy.run_rlhf(seed=1, progress=False, **toy.QUICK)
    for key in ("final_kl", "curves", "two_stage", "frontier", "beta_direction", "deterministic", "label_flips"):
        assert json.loads(json.dumps(quick_run[key])) == json.loads(json.dumps(again[key]))
    assert set(quick_run["final_kl"]) == {"reinforce", "ppo", "dpo"}
    assert quick_run["config"]["kl_penalty"] == "per sequence"
    assert quick_run["beta_direction"]["decreasing"] and quick_run["beta_direction"]["strictly"]
    assert {row["loss"] for row in quick_run["deterministic"]["rows"]} == {"dpo", "ipo", "cdpo"}
    assert {row["loss"] for row in quick_run["label_flips"]["rows"]} == {"dpo", "cdpo", "robust"}


def test_the_command_prints_and_writes_the_same_numbers(tmp_path, capsys):
    path = tmp_path / "rlhf.json"
    assert main(["rlhf", "--quick", "--seed", "1", "--quiet", "--json", str(path),
                 "--output-dir", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    numbers = json.loads(path.read_text())
    for key in ("config", "final_kl", "queries", "curves", "two_stage", "frontier", "beta_direction",
                "deterministic", "label_flips", "seconds"):
        assert key in numbers
    printed = dict(re.findall(r"(\w+) ([0-9.e+-]+)", out.split("final_kl: ")[1].split("(")[0]))
    assert set(printed) == {"reinforce", "ppo", "dpo"}
    for method, value in printed.items():
        assert float(value) == pytest.approx(numbers["final_kl"][method], rel=1e-6)
    pytest.importorskip("matplotlib")
    for name in ("rlhf_convergence", "rlhf_frontier", "beta_direction", "deterministic_preferences",
                 "label_flips"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 10_000


def test_bad_arguments_are_named(capsys):
    ref, r, _ = problem()
    with pytest.raises(ValueError, match="method"):
        toy.train_policy_gradient(ref, r, 0.5, "a2c")
    with pytest.raises(ValueError, match="samples"):
        toy.train_policy_gradient(ref, r, 0.5, "ppo", samples=1)
    with pytest.raises(ValueError, match="minibatches"):
        toy.train_policy_gradient(ref, r, 0.5, "ppo", samples=2, minibatches=9)
    with pytest.raises(ValueError, match="flips"):
        toy.run_rlhf(flips=(0.6,), progress=False)
    with pytest.raises(ValueError, match="beta"):
        toy.run_rlhf(beta=0.0, progress=False)
    assert main(["rlhf", "--quick", "--samples", "1", "--quiet", "--output-dir", ""]) == 2
    assert "samples" in capsys.readouterr().err


# -- IPO's own optimum, the error measure, the same-information arm, costs ----------------------

def pairs_of(triples, prompt=0):
    """Pairs data from (y_w, y_l, count) triples on one prompt."""
    w = np.concatenate([np.full(c, a) for a, _, c in triples])
    l = np.concatenate([np.full(c, b) for _, b, c in triples])
    return {"prompt": np.full(len(w), prompt), "chosen": w, "rejected": l}


def ipo_margins(logp, ref, data):
    x, w, l = data["prompt"], data["chosen"], data["rejected"]
    return (logp[x, w] - ref[x, w]) - (logp[x, l] - ref[x, l])


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_optimum_on_three_responses_is_the_hand_derived_least_squares_fit(beta):
    ref, _, _ = problem(length=1, n_prompts=1)                      # 3 responses
    tau = 1 / (2 * beta)
    # one pair: its margin is τ exactly
    one = pairs_of([(0, 2, 1)])
    chain = pairs_of([(0, 1, 1), (1, 2, 1), (0, 2, 1)])
    with pytest.raises(ValueError, match="prompt 0 leave 1 of its 3 responses"):
        toy.ipo_optimal_policy(ref, one, beta)                        # response 1 never compared
    # a ≻ b ≻ c and a ≻ c, once each: minimize (u−τ)² + (v−τ)² + (u+v−τ)² over u = ρa−ρb, v = ρb−ρc,
    # whose stationary point is u = v = 2τ/3, so the three margins are 2τ/3, 2τ/3 and 4τ/3
    opt = toy.ipo_optimal_policy(ref, chain, beta)
    np.testing.assert_allclose(np.exp(opt).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ipo_margins(opt, ref, chain), [2 * tau / 3, 2 * tau / 3, 4 * tau / 3], rtol=1e-10)
    # counts weigh the fit: seen 3 times, a ≻ b pulls its own margin closer to τ
    heavy = toy.ipo_optimal_policy(ref, pairs_of([(0, 1, 3), (1, 2, 1), (0, 2, 1)]), beta)
    h = ipo_margins(heavy, ref, pairs_of([(0, 1, 1), (1, 2, 1), (0, 2, 1)]))
    assert abs(h[0] - tau) < abs(2 * tau / 3 - tau)


def test_ipo_optimum_has_zero_gradient_and_ipo_training_reaches_it():
    ref, r, _ = problem()
    det = toy.deterministic_pairs(ref, r, 20_000, seed=3)
    beta = 0.5
    opt = toy.ipo_optimal_policy(ref, det, beta)
    th = ag.Tensor(opt.copy(), requires_grad=True)
    lp = ag.log_softmax(th, axis=-1)
    x, w, l = det["prompt"], det["chosen"], det["rejected"]
    loss = (((lp[x, w] - ref[x, w]) - (lp[x, l] - ref[x, l]) - 1 / (2 * beta)) ** 2).mean()
    loss.backward()
    assert np.abs(th.grad).max() < 1e-10                                  # a stationary point of a convex loss
    run = run_closed_form(beta=beta, data=det, loss_type="ipo", steps=1500, progress=False, log_every=1500)
    assert rlhf.kl_divergence(opt, np.log(run["policy"])).mean() < 1e-8
    # and it is not π*_β: deterministic labels carry the reward's order, not its size
    assert rlhf.kl_divergence(rlhf.optimal_policy(ref, r, beta), opt).mean() > 1e-2


def test_every_response_but_the_best_loses_so_dpo_rejected_mass_is_one_minus_the_best_response_mass():
    ref, r, _ = problem()
    det = toy.deterministic_pairs(ref, r, 200_000, seed=3)
    rejected = np.zeros(r.shape, bool)
    rejected[det["prompt"], det["rejected"]] = True
    np.testing.assert_array_equal(~rejected, r == r.max(axis=1, keepdims=True))
    policy = np.exp(ref)
    assert toy.rejected_mass(policy, det) == pytest.approx(1 - toy.best_response_mass(policy, r), rel=1e-12)


def test_the_suboptimality_an_arm_logs_is_the_objective_it_leaves_behind():
    ref, r, star = problem()
    run = toy.train_policy_gradient(ref, r, 0.5, "reinforce", steps=30, samples=8, seed=1)
    logp = run["logprobs"]
    gap = rlhf.rlhf_objective(star, ref, r, 0.5) - rlhf.rlhf_objective(logp, ref, r, 0.5)
    assert run["suboptimality"][-1] == pytest.approx(gap.mean(), rel=1e-9)
    assert run["suboptimality"][0] == pytest.approx((0.5 * rlhf.kl_divergence(ref, star)).mean(), rel=1e-12)


def test_the_same_information_arm_fits_the_comparisons_and_reaches_their_optimum_not_the_true_one():
    ref, r, star = problem()
    pairs = toy_problem.sample_preference_pairs(ref, r, 200_000, seed=2)
    x, w, l, counts = aggregate_pairs(pairs["prompt"], pairs["chosen"], pairs["rejected"], r.shape[1])
    r_phi = toy.fit_reward_model(x, w, l, counts, r.shape)
    # the fit is the Bradley–Terry maximum-likelihood estimate: the likelihood's gradient vanishes there
    phi = ag.Tensor(r_phi, requires_grad=True)
    rlhf.bradley_terry_loss(phi[x, w], phi[x, l], weights=counts).backward()
    assert np.abs(phi.grad).max() < 1e-6
    arm = toy.train_policy_gradient(ref, r_phi, 0.5, "reinforce", seed=10, star_logprobs=star, true_rewards=r)
    target = rlhf.optimal_policy(ref, r_phi, 0.5)
    assert rlhf.kl_divergence(target, arm["logprobs"]).mean() < 1e-3       # it climbs r_φ, never r
    limit = rlhf.kl_divergence(star, target).mean()
    assert arm["kl"][-1] == pytest.approx(limit, rel=0.5) and arm["kl"][-1] > 1e-3


def test_equal_query_comparison_counts_where_each_curve_is_lower_and_the_learning_rate_then():
    q = [0, 100, 200, 300, 400, 500]
    reinforce = {"kl": [1.0, 0.5, 0.2, 0.1, 0.05, 0.04], "queries": q}
    ppo = {"kl": [1.0, 0.4, 0.3, 0.2, 0.04, 0.01], "queries": q}
    e = toy.equal_query_comparison(reinforce, ppo, queries_per_step=100, passes=16)
    assert e["reinforce_ahead_fraction"] == pytest.approx(2 / 5)
    assert e["ppo_ahead_from_queries"] == 400 and e["ppo_ahead_from_fraction_of_run"] == pytest.approx(0.8)
    assert e["ppo_lr_fraction_then"] == pytest.approx(0.5 * (1 + np.cos(np.pi * 4 * 16 / (5 * 16))))
    never = toy.equal_query_comparison(ppo, reinforce, 100, 16)
    assert never["ppo_ahead_from_queries"] is None and never["reinforce_ahead_fraction"] == pytest.approx(3 / 5)


def test_the_run_reports_costs_in_shared_units_and_every_arm_beside_the_headline(quick_run):
    c = quick_run["costs"]
    cfg = quick_run["config"]
    per_batch = 4 * cfg["samples"] * cfg["steps"]
    assert c["reinforce"]["reward_queries"] == c["ppo"]["reward_queries"] == per_batch
    assert c["ppo"]["updates"] == 16 * c["reinforce"]["updates"] == 16 * cfg["steps"]
    assert c["ppo_reward_model"]["reward_queries"] == 0 and c["ppo_reward_model"]["comparisons"] == cfg["pairs"]
    assert c["dpo"]["comparisons"] == cfg["pairs"] and c["dpo"]["updates"] == cfg["dpo_steps"]
    assert set(quick_run["final_kl_all"]) == set(quick_run["final_suboptimality"]) == set(toy.RL_ARMS) | {"dpo"}
    for row in quick_run["deterministic"]["rows"]:
        assert 0 < row["ipo_optimal_rejected_mass"] < 1
