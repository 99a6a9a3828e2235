"""Where DPO's successors converge, on enumerated problems: each derived optimum is a zero of the exact
population gradient and is where training on the population lands; GRPO's k3 term has the gradient of a
forward KL, per context; Dr. GRPO's expected update, by enumerating every batch, vanishes at its own fixed
point and not at π*_β; KTO has no finite stationary point; and the ``successors`` command."""

import itertools
import json
import math

import numpy as np
import pytest

from dpo_np import autograd as ag
from dpo_np import rl, rlhf, successors
from dpo_np.cli import main
from dpo_np.experiments import successor_optima as optima
from dpo_np.experiments import successors as S
from dpo_np.experiments import toy_problem
from dpo_np.gradcheck import relative_error, central_difference
from dpo_np.losses import dpo_loss

SETTINGS = dict(S.DEFAULTS, simpo_beta=1.5, simpo_gamma=0.6, samples=2)


def small(seed=0, vocab_size=2, length=3, n_prompts=2, beta=0.5):
    """An enumerated problem with responses of 1 to ``length`` tokens: 7 of them by default."""
    return S.make_problem(seed, beta, vocab_size=vocab_size, length=length, n_prompts=n_prompts)


def problem_from(responses, ref, rewards, beta):
    """The experiment's problem dict for any response set (here: one-token responses, no end token)."""
    structure = optima.prefix_structure(responses)
    return {"responses": responses, "lengths": optima.response_lengths(responses), "structure": structure,
            "ref": ref, "ref_tokens": optima.token_logprobs(ref, structure), "rewards": rewards, "beta": beta,
            "star": rlhf.optimal_policy(ref, rewards, beta)}


def kl(p, q):
    return float(rlhf.kl_divergence(p, q).mean())


def random_policy(problem, seed, scale=0.7):
    theta = problem["ref"] + scale * np.random.default_rng(seed).standard_normal(problem["ref"].shape)
    return theta - np.logaddexp.reduce(theta, axis=1, keepdims=True)


def grad_of(fn, logprobs):
    """d fn(log_softmax(θ))/dθ at θ = ``logprobs`` (any logits of the same policy would do)."""
    th = ag.Tensor(np.array(logprobs), requires_grad=True)
    fn(ag.log_softmax(th, axis=-1)).backward()
    return th.grad


# -- the response set --------------------------------------------------------------------------

def test_per_token_conditionals_are_the_reference_tables_and_sum_to_the_sequence():
    seed, V, L, P = 3, 2, 3, 2
    problem = small(seed, V, L, P)
    table = toy_problem.random_reference_table(P, V, L, seed=seed, eos=True, scale=S.PROBLEM["reference_scale"])
    responses, tok = problem["responses"], problem["ref_tokens"]
    for x in range(P):
        for n, row in enumerate(responses):
            for t in range(L):
                prev = V if t == 0 else row[t - 1]                    # the start marker, then y_{t−1}
                want = table[x, t, prev, row[t]] if row[t] != toy_problem.PAD else 0.0
                assert tok[x, n, t] == pytest.approx(want, abs=1e-12)
    policy = random_policy(problem, 1)
    np.testing.assert_allclose(optima.token_logprobs(policy, problem["structure"]).sum(-1), policy, atol=1e-12)


def test_the_pair_population_is_what_sample_preference_pairs_draws():
    problem = small()
    mu, r = np.exp(problem["ref"]), problem["rewards"]
    W = optima.pair_population(problem["ref"], r)
    want = np.zeros_like(W)
    for x, a, b in itertools.product(range(mu.shape[0]), range(mu.shape[1]), range(mu.shape[1])):
        first_wins = 1 / (1 + math.exp(-(r[x, a] - r[x, b])))                # y1 = a, y2 = b
        want[x, a, b] += mu[x, a] * mu[x, b] * first_wins                     # a chosen as y1 …
        want[x, b, a] += mu[x, a] * mu[x, b] * (1 - first_wins)               # … or b chosen as y2
    np.testing.assert_allclose(W, want, rtol=1e-12)
    # and a large sample's frequencies agree with it
    n = 400_000
    d = toy_problem.sample_preference_pairs(problem["ref"], r, n, seed=5)
    freq = np.zeros_like(W)
    np.add.at(freq, (d["prompt"], d["chosen"], d["rejected"]), 1.0 / n)
    np.testing.assert_allclose(freq * W.shape[0], W, atol=5e-3)


# -- the optima: zeros of the population gradient, where population training lands -------------------

def population_loss(method, problem, settings, triples=None):
    """The population loss of a paired method as a function of log π_θ (P, N), through ``dpo_loss``."""
    x, w, l, p = S.population_triples(problem) if triples is None else triples
    lengths = problem["lengths"]

    def f(lp):
        scale = 1.0 / lengths if method in ("ipo", "simpo") else 1.0
        a = lp * scale
        if method == "simpo":
            losses, _, _ = dpo_loss(a[x, w], a[x, l], beta=settings["simpo_beta"], loss_type="simpo",
                                    simpo_gamma=settings["simpo_gamma"], reference_free=True)
        else:
            ref = problem["ref"] * scale
            losses, _, _ = dpo_loss(a[x, w], a[x, l], ref[x, w], ref[x, l], beta=problem["beta"], loss_type=method)
        return (losses * p).sum()
    return f


@pytest.mark.parametrize("method", ["ipo", "simpo"])
def test_each_derived_optimum_zeroes_the_exact_population_gradient_and_pi_star_does_not(method):
    problem = small(1)
    own = S.own_optimum(method, problem, SETTINGS)
    g_own = grad_of(population_loss(method, problem, SETTINGS), own)
    g_star = grad_of(population_loss(method, problem, SETTINGS), problem["star"])
    assert np.abs(g_own).max() < 1e-12 and np.abs(g_star).max() > 1e-3
    assert kl(problem["star"], own) > 1e-3                                   # a different policy from π*_β


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo"])
def test_training_on_the_population_of_pairs_lands_on_the_derived_optimum(method):
    problem = small(2)
    policy = S.TabularPolicy(problem, 0.05)
    S.train_pairs(policy, problem, S.population_triples(problem), method, 1500, SETTINGS)
    landed = kl(S.own_optimum(method, problem, SETTINGS), policy.sequence_logprobs())
    nearest_other = min(kl(S.own_optimum(m, problem, SETTINGS), policy.sequence_logprobs())
                        for m in ("dpo", "ipo", "simpo") if m != method)
    assert landed < 1e-6 and landed < 1e-4 * nearest_other


def test_orpo_without_its_odds_ratio_term_lands_on_the_length_discounted_chosen_distribution():
    problem = small(13)
    policy = S.TabularPolicy(problem, 0.05)
    x, w, l, p = S.population_triples(problem)
    for _ in range(1500):                         # λ = 0 directly (the trainers' β, ORPO's λ there, must be > 0)
        seq = ag.Tensor(policy.sequence_logprobs(), requires_grad=True)
        a = seq * (1.0 / problem["lengths"])
        (successors.orpo_loss(a[x, w], a[x, l], 0.0) * p).sum().backward()
        policy.update(d_sequence=seq.grad)
    own = optima.orpo_nll_optimum(problem["ref"], problem["rewards"], problem["lengths"])
    assert kl(own, policy.sequence_logprobs()) < 1e-9
    chosen = optima.pair_population(problem["ref"], problem["rewards"]).sum(axis=2)
    np.testing.assert_allclose(np.exp(own), chosen / problem["lengths"] / (chosen / problem["lengths"]).sum(1,
                               keepdims=True), rtol=1e-12)
    moved = S.TabularPolicy(problem, 0.05)                                   # λ > 0 leaves that point
    S.train_pairs(moved, problem, S.population_triples(problem), "orpo", 1500, dict(SETTINGS, orpo_lambda=0.5))
    assert kl(own, moved.sequence_logprobs()) > 1e-4


def test_simpo_without_a_margin_ignores_the_reference_and_fits_the_reward_per_token():
    """γ = 0: (β/|y|) log π(y) − r(y) is one number per prompt, and the same policy zeroes the population
    gradient whatever distribution the pairs were drawn from; γ > 0 depends on it."""
    problem, other = small(3), small(4)
    other["rewards"] = problem["rewards"]                                 # same reward, another π_ref for μ
    s0 = dict(SETTINGS, simpo_gamma=0.0)
    own = optima.simpo_optimum(problem["rewards"], problem["lengths"], s0["simpo_beta"])
    score = s0["simpo_beta"] * own / problem["lengths"] - problem["rewards"]
    np.testing.assert_allclose(score, score[:, :1] * np.ones_like(score), atol=1e-12)
    for p in (problem, other):
        assert np.abs(grad_of(population_loss("simpo", p, s0), own)).max() < 1e-12
    with_margin = S.own_optimum("simpo", problem, SETTINGS)
    assert np.abs(grad_of(population_loss("simpo", other, SETTINGS), with_margin)).max() > 1e-4


@pytest.mark.parametrize("p", [0.1, 0.35, 0.5, 0.8, 0.97])
def test_a_margin_moves_each_pairs_target_by_gamma_times_two_p_minus_one(p):
    """The per-pair minimizer of −p log σ(d − γ) − (1 − p) log σ(−d − γ) is logit p + γ(2p − 1) + O(γ²)."""
    for gamma in (1e-2, 1e-3):
        lo, hi = -20.0, 20.0
        for _ in range(200):                                                  # the derivative's root
            d = 0.5 * (lo + hi)
            slope = -p / (1 + math.exp(d - gamma)) + (1 - p) / (1 + math.exp(-d - gamma))
            lo, hi = (d, hi) if slope < 0 else (lo, d)
        assert abs(d - (math.log(p / (1 - p)) + gamma * (2 * p - 1))) < 5 * gamma ** 2


def test_the_forward_kl_optimum_maximizes_reward_minus_forward_kl():
    problem = small(5)
    ref, r, beta = problem["ref"], problem["rewards"], problem["beta"]
    objective = lambda lp: ((ag.exp(lp) * r).sum(-1) - (np.exp(ref) * (ref - lp)).sum(-1) * beta).sum()   # noqa: E731
    own = optima.forward_kl_optimum(ref, r, beta)
    assert np.abs(grad_of(objective, own)).max() < 1e-12
    best = float(objective(ag.Tensor(own)).data)
    for seed in range(5):
        moved = own + 0.05 * np.random.default_rng(seed).standard_normal(own.shape)
        assert float(objective(ag.Tensor(moved - np.logaddexp.reduce(moved, 1, keepdims=True))).data) < best


# -- GRPO's k3 term and Dr. GRPO's fixed point ------------------------------------------------------

def expected_k3_gradient(problem, logprobs):
    """E_{y∼π_θ}[∇_θ Σ_t k3_t(y)] exactly: every response's k3 gradient weighted by π_θ(y) (held fixed)."""
    weights = np.exp(logprobs)
    return grad_of(lambda lp: (rl.k3_kl(optima.token_logprobs(lp, problem["structure"]), problem["ref_tokens"])
                               .sum(-1) * weights).sum(), logprobs)


def test_on_one_token_responses_k3s_expected_gradient_is_the_forward_kls_not_the_reverse_ones():
    V, P = 5, 3
    responses = toy_problem.enumerate_responses(V, 1)
    ref = toy_problem.sequence_logprobs(toy_problem.random_reference_table(P, V, 1, seed=0), responses)
    problem = problem_from(responses, ref, toy_problem.random_rewards(responses, P, V, seed=1), 0.5)
    policy = random_policy(problem, 2)
    got = expected_k3_gradient(problem, policy)
    forward = grad_of(lambda lp: (np.exp(ref) * (ref - lp)).sum(), policy)           # ∇ KL(π_ref ‖ π_θ)
    reverse = grad_of(lambda lp: rlhf.kl_divergence(lp, ref).sum(), policy)          # ∇ KL(π_θ ‖ π_ref)
    np.testing.assert_allclose(got, forward, atol=1e-13)
    assert np.abs(got - reverse).max() > 1e-2


def test_on_longer_responses_k3_is_the_forward_kl_of_each_context_weighted_where_the_policy_goes():
    """E[∇ Σ_t k3_t] = ∇ Σ_s P_θ(s) KL(π_ref(·|s) ‖ π_θ(·|s)) with P_θ(s) held: neither the sequence's
    forward KL (contexts weighted by π_ref) nor its reverse KL."""
    problem = small(6, vocab_size=2, length=4)
    ref, responses = problem["ref"], problem["responses"]
    policy = random_policy(problem, 3)
    prefixes = sorted({tuple(row[:t]) for row in responses for t in range(int((row >= 0).sum()))})
    starts = lambda s: np.array([tuple(row[:len(s)]) == s for row in responses])      # noqa: E731
    reach = {s: np.exp(policy)[:, starts(s)].sum(1) for s in prefixes}                # P_θ(s), constants

    def per_context(lp):
        total = 0.0
        for s in prefixes:                                   # every context where a token is chosen
            for a in {int(row[len(s)]) for row in responses if tuple(row[:len(s)]) == s}:
                child = starts(s + (a,))
                log_ref = np.logaddexp.reduce(ref[:, child], 1) - np.logaddexp.reduce(ref[:, starts(s)], 1)
                log_pi = ag.logsumexp(lp[:, child], axis=-1) - ag.logsumexp(lp[:, starts(s)], axis=-1)
                total = total + (reach[s] * np.exp(log_ref) * (log_ref - log_pi)).sum()
        return total

    got = expected_k3_gradient(problem, policy)
    np.testing.assert_allclose(got, grad_of(per_context, policy), atol=1e-12)
    sequence_forward = grad_of(lambda lp: (np.exp(ref) * (ref - lp)).sum(), policy)
    assert np.abs(got - sequence_forward).max() > 1e-3


def expected_update(problem, method, logprobs, K):
    """Σ over every batch (K samples per prompt) of its probability × the θ-gradient of its loss, exactly."""
    policy = S.TabularPolicy(problem, 0.05)
    policy.theta[...] = logprobs
    tokens = policy.token_logprobs()
    P, N = logprobs.shape
    total = np.zeros_like(logprobs)
    for flat in itertools.product(range(N), repeat=P * K):
        y = np.array(flat).reshape(P, K)
        weight = np.exp(logprobs[np.arange(P)[:, None], y].sum())
        total += weight * policy.gradient(**S.group_gradient(problem, method, logprobs, tokens, y, 0.2))
    return total


@pytest.mark.parametrize("K", [2, 3])
def test_rloo_expects_the_rlhf_gradient_and_dr_grpo_a_shrunk_reward_gradient_plus_the_k3_term(K):
    problem = small(7, length=2, n_prompts=1)                                 # 3 responses, 1 prompt
    ref, r, beta = problem["ref"], problem["rewards"], problem["beta"]
    policy = random_policy(problem, 4)
    j = grad_of(lambda lp: rlhf.rlhf_objective(lp, ref, r, beta).sum(), policy)
    np.testing.assert_allclose(expected_update(problem, "rloo", policy, K), -j, atol=1e-12)
    reward = grad_of(lambda lp: (ag.exp(lp) * r).sum(), policy)
    T = problem["responses"].shape[1]                                         # Dr. GRPO divides by it
    want = (-(1 - 1 / K) * reward + beta * expected_k3_gradient(problem, policy)) / T
    np.testing.assert_allclose(expected_update(problem, "dr_grpo", policy, K), want, atol=1e-12)


def test_dr_grpos_expected_update_vanishes_at_its_fixed_point_and_not_at_pi_star():
    K = 3
    problem = small(8, length=2, n_prompts=1)
    own = optima.token_forward_kl_fixed_point(problem["ref"], problem["rewards"], problem["responses"],
                                              problem["beta"] * K / (K - 1))
    assert np.abs(expected_update(problem, "dr_grpo", own, K)).max() < 1e-12
    assert np.abs(expected_update(problem, "dr_grpo", problem["star"], K)).max() > 1e-3
    np.testing.assert_allclose(S.own_optimum("dr_grpo", problem, dict(SETTINGS, samples=K)), own, atol=1e-13)


def test_for_one_token_responses_the_per_token_fixed_point_is_the_forward_kl_optimum():
    V, P = 4, 2
    responses = toy_problem.enumerate_responses(V, 1)
    ref = toy_problem.sequence_logprobs(toy_problem.random_reference_table(P, V, 1, seed=3), responses)
    r = toy_problem.random_rewards(responses, P, V, seed=4)
    np.testing.assert_allclose(optima.token_forward_kl_fixed_point(ref, r, responses, 0.7),
                               optima.forward_kl_optimum(ref, r, 0.7), atol=1e-12)


# -- KTO ----------------------------------------------------------------------------------------------

def test_kto_pushes_every_net_undesirable_response_down_so_it_has_no_finite_stationary_point():
    """With z held, dL/dlog π(y) = −β σ'(β(ρ_y − z)) (λ_D D(y) − λ_U U(y)) / n: its sign is fixed by the data,
    so no full-support policy is stationary when some responses win more often than they lose and others
    less. Training drains the net-undesirable ones."""
    problem = small(9)
    x, y, good, weight = S.kto_examples(S.population_triples(problem))
    net = np.zeros_like(problem["ref"])
    np.add.at(net, (x, y), np.where(good, weight, -weight))                  # D(y) − U(y)
    assert (net > 1e-9).any() and (net < -1e-9).any()
    for seed in range(3):
        lp = random_policy(problem, seed)
        seq = ag.Tensor(lp, requires_grad=True)
        z = float(rlhf.kl_divergence(lp, problem["ref"]).mean())
        (successors.kto_loss(seq[x, y], problem["ref"][x, y], good, z, beta=0.5) * weight).sum().backward()
        clear = np.abs(net) > 1e-9
        assert np.array_equal(np.sign(seq.grad[clear]), -np.sign(net[clear]))
    policy, masses = S.TabularPolicy(problem, 0.05), []
    for steps in (0, 100, 300):
        S.train_kto(policy, problem, (x, y, good, weight), steps, SETTINGS)
        masses.append(float((np.exp(policy.sequence_logprobs()) * (net < 0)).sum(1).mean()))
    assert masses[0] > masses[1] > masses[2]


# -- the policy interface and the measurements ---------------------------------------------------------

def test_the_tabular_policys_gradient_is_the_chain_rule_through_both_kinds_of_log_probability():
    problem = small(10)
    policy = S.TabularPolicy(problem, 0.05)
    policy.theta[...] = random_policy(problem, 5)
    rng = np.random.default_rng(6)
    d_seq, d_tok = rng.standard_normal(problem["ref"].shape), rng.standard_normal(problem["ref_tokens"].shape)

    def scalar(arrays):
        lp = ag.log_softmax(arrays[0], axis=-1).data
        return (lp * d_seq).sum() + (optima.token_logprobs(lp, problem["structure"]) * d_tok).sum()

    numeric = central_difference(scalar, [policy.theta.copy()], 0)
    assert relative_error(policy.gradient(d_seq, d_tok), numeric) < 1e-7
    with pytest.raises(ValueError, match="d_sequence or d_token"):
        policy.gradient()


def test_suboptimality_is_beta_times_the_kl_to_the_optimum():
    problem = small(11)
    lp = random_policy(problem, 7)
    m = S.measure(lp, problem)
    assert m["suboptimality"] == pytest.approx(problem["beta"] * kl(lp, problem["star"]), rel=1e-10)
    assert m["final_kl"] == pytest.approx(kl(problem["star"], lp), rel=1e-12) and m["kl_to_own_optimum"] is None
    assert m["frontier_gap"] > 0


def test_with_samples_the_rl_methods_land_where_derived():
    """RLOO reaches π*_β; Dr. GRPO stops at its own fixed point, much nearer to it than to π*_β."""
    problem = small(12)
    settings = dict(SETTINGS, samples=8, pairs=10_000)
    rloo = S.run_method("rloo", problem, None, settings, 0)[1]
    dr = S.run_method("dr_grpo", problem, None, settings, 0)[1]
    assert rloo["final_kl"] < 1e-3
    assert dr["kl_to_own_optimum"] < dr["final_kl"] / 10


# -- the command ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run():
    return S.run_successors(seeds=[0, 1], quick=True, progress=False)


def test_the_quick_run_has_every_method_with_per_seed_values_and_repeats_exactly(quick_run):
    again = S.run_successors(seeds=[1], quick=True, progress=False, methods=("kto", "grpo"))
    for m in ("kto", "grpo"):
        assert again[m]["final_kl"]["per_seed"] == quick_run[m]["final_kl"]["per_seed"][1:]
    for m in S.METHODS:
        row = quick_run[m]
        assert row["seeds"] == [0, 1]
        values = row["final_kl"]["per_seed"]
        assert row["final_kl"]["mean"] == pytest.approx(np.mean(values)) and row["final_kl"]["min"] == min(values)
        assert (row["kl_to_own_optimum"] is None) == (S.OPTIMA[m] is None)
    json.dumps(quick_run, allow_nan=False)
    assert quick_run["dpo"]["kl_to_own_optimum"] == quick_run["dpo"]["final_kl"]   # DPO's own optimum is π*_β


def test_the_command_prints_and_writes_the_same_numbers(tmp_path, capsys):
    path = tmp_path / "succ.json"
    assert main(["successors", "--quick", "--seeds", "3", "--json", str(path), "--output-dir", "", "--quiet"]) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["config"]["seeds"] == [3]
    for m in S.METHODS:
        assert f"{saved[m]['final_kl']['mean']:.3e}" in out


def test_another_problem_and_another_policy_plug_into_the_same_run():
    """The run reads a problem through ``problem_factory`` and trains through ``policy_factory``'s three
    methods only: a policy that counts its updates sees every step of every method."""
    class Counting(S.TabularPolicy):
        updates = 0

        def update(self, d_sequence=None, d_token=None, lr=None):
            Counting.updates += 1
            super().update(d_sequence, d_token, lr)

    out = S.run_successors(seeds=[4], quick=True, progress=False, methods=("simpo", "dr_grpo"),
                           problem_factory=lambda seed, beta: small(seed, beta=beta), policy_factory=Counting)
    cfg = out["config"]
    assert cfg["problem"]["responses"] == 7 and cfg["problem"]["n_prompts"] == 2
    assert Counting.updates == cfg["steps"] + cfg["rl_steps"]
    assert out["simpo"]["kl_to_own_optimum"]["per_seed"][0] < out["simpo"]["final_kl"]["per_seed"][0]


def test_bad_options_are_named(capsys):
    assert main(["successors", "--seeds", "a-b"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["successors", "--samples", "1"])
    assert "--samples" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown setting"):
        S.run_successors(seeds=[0], nope=1)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_the_dpo_command_takes_the_new_paired_losses(loss_type):
    from dpo_np.cli import build_parser
    args = build_parser().parse_args(["dpo", "--data", "d.jsonl", "--model", "m", "--loss-type", loss_type])
    assert args.loss_type == loss_type
