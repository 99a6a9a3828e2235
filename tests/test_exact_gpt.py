"""The tiny GPT on an enumerated response set: the set is the whole support, every exact measure is
what it claims, the averaged loss's optimum is the derived one, and the command reports per seed."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import autograd as ag
from dpo_np import gradcheck, logprobs, rlhf
from dpo_np.cli import main
from dpo_np.experiments import exact_gpt as eg
from dpo_np.experiments import exact_policies as ep
from dpo_np.experiments import toy_problem
from dpo_np.generate import generate, next_token_distribution
from dpo_np.model import GPT

#: the command's measurements at toy size: every part runs in well under a second
TINY = dict(vocab_size=2, max_length=2, n_prompts=2, sft_samples=8, sft_steps=3, steps=4, log_every=2,
            displacement_pairs=16, coverage_pairs=(16, 32), low_coverage_responses=3, online_pairs=32,
            online_rounds=2, length_steps=4, betas=(0.5,), lrs=(1e-2,), beta_pairs=32)


def random_gpt(rs, seed=0, scale=1.0):
    """A GPT (the command's size) whose weights are far from the near-uniform initialisation: N(0, scale²)."""
    model = GPT(ep.gpt_config(rs), seed=seed, dtype=np.float64)
    gen = np.random.default_rng(seed)
    model.params = {k: gen.normal(0.0, scale, v.shape) for k, v in model.params.items()}
    return model


@pytest.fixture(scope="module")
def rs():
    return ep.response_set(vocab_size=3, max_length=3, n_prompts=3)


# -- the set ----------------------------------------------------------------------------------

def test_the_set_lists_every_response_once_with_its_scored_length(rs):
    assert rs.shape == (3, 1 + 3 + 9 + 27)
    contents = [tuple(int(t) for t in y if 0 <= t < 3) for y in rs.responses]
    assert len(set(contents)) == len(contents)
    assert all(len(c) == k for c, k in zip(contents, rs.content))
    # |y| = content tokens + the end token, except after L content tokens, where the end is forced
    np.testing.assert_array_equal(rs.lengths, np.where(rs.content < 3, rs.content + 1, 3))
    np.testing.assert_array_equal(logprobs.response_mask(rs.labels).sum(axis=1), np.tile(rs.lengths, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_sum_to_one_over_the_set_for_random_weights(rs, seed):
    lp = ep.GPTPolicy(random_gpt(rs, seed), rs).logprobs()
    assert np.abs(np.exp(lp).sum(axis=1) - 1).max() < 1e-13
    assert lp.std() > 1.0                 # log-probabilities spread over orders of magnitude: not near-uniform


def test_enumerated_logprobs_are_the_product_of_the_models_next_token_probabilities(rs):
    model = random_gpt(rs, 3)
    lp = ep.GPTPolicy(model, rs).logprobs()
    V, L = rs.vocab_size, rs.max_length
    for x, prompt in enumerate(rs.prompts):
        for i, y in enumerate(rs.responses):
            tokens = [int(t) for t in y if t >= 0]
            prefix, total = list(map(int, prompt)), 0.0
            for k, t in enumerate(tokens):
                if k == L:                                               # the forced end: probability 1
                    assert t == V
                    break
                total += math.log(next_token_distribution(model, np.array(prefix))[t])
                prefix.append(t)
            assert lp[x, i] == pytest.approx(total, abs=1e-12)
    # and the autograd's get_batch_logps on the same logits
    batch = logprobs.get_batch_logps(ag.Tensor(model.forward(rs.idx)), rs.labels)
    np.testing.assert_allclose(batch.data.reshape(rs.shape), lp, atol=1e-13)


def test_sampled_generations_land_on_the_set_with_the_enumerated_frequencies(rs):
    model = random_gpt(rs, 4, scale=0.7)
    lp = ep.GPTPolicy(model, rs).logprobs()
    index = {tuple(int(t) for t in y if t >= 0 and t < rs.vocab_size): i for i, y in enumerate(rs.responses)}
    m = 6000
    out = generate(model, np.repeat(rs.prompts[:1], m, axis=0), rs.max_length, eos_token_id=rs.eos, seed=0)
    counts = np.zeros(rs.shape[1])
    for row in out:
        counts[index[tuple(t for t in row[2:] if t != rs.eos)]] += 1
    p = np.exp(lp[0])
    # every response within 4.5 standard errors of its exact probability (a 1e-5 two-sided tail each)
    assert np.all(np.abs(counts / m - p) <= 4.5 * np.sqrt(p * (1 - p) / m) + 1 / m)
    assert ((counts / m - p) ** 2 / p).sum() * m < 40 + 3 * math.sqrt(2 * 39)     # χ² with 39 d.o.f.


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="n_prompts"):
        ep.response_set(vocab_size=2, max_length=2, n_prompts=5)              # only 2² two-token prompts
    with pytest.raises(ValueError, match="lengths"):
        ep.length_tilted_optimum(np.log(np.full((1, 2), 0.5)), np.zeros((1, 2)), 0.5, [0, 1])


# -- the policies and the loss ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    """A 2-prompt, 7-response problem with a random GPT as π_ref, a reward and some pairs."""
    rs = ep.response_set(vocab_size=2, max_length=2, n_prompts=2)
    model = random_gpt(rs, 5, scale=0.5)
    ref = ep.GPTPolicy(model, rs).logprobs()
    r = toy_problem.random_rewards(rs.responses, 2, 2, seed=6)
    pairs = toy_problem.sample_preference_pairs(ref, r, 40, seed=7)
    return rs, model, ref, r, {k: np.asarray(v) for k, v in pairs.items()}


def dpo_loss_by_hand(lp, ref, pairs, beta, lengths=None):
    """−mean log σ(β(ρ_w − ρ_l)) over the listed pairs, written out with NumPy."""
    x, w, l = pairs["prompt"], pairs["chosen"], pairs["rejected"]
    rho = lp - ref if lengths is None else (lp - ref) / lengths
    z = beta * (rho[x, w] - rho[x, l])
    return float(np.mean(np.logaddexp(0, -z)))


@pytest.mark.parametrize("average", [False, True])
def test_the_dpo_objective_is_the_mean_pair_loss_and_its_gradient_matches_central_differences(small, average):
    rs, model, ref, r, pairs = small
    policy = ep.GPTPolicy(random_gpt(rs, 8, scale=0.3), rs)
    triples = ep.pair_weights(pairs, rs.shape[1])
    loss, summed, grads = ep.dpo_objective(policy, triples, ref, 0.7, average=average)
    assert loss == pytest.approx(dpo_loss_by_hand(summed, ref, pairs, 0.7, rs.lengths if average else None), rel=1e-12)
    np.testing.assert_allclose(summed, policy.logprobs(), atol=1e-13)
    errors = gradcheck.parameter_gradient_errors(
        policy.params, {k: v.copy() for k, v in grads.items()},
        lambda: ep.dpo_objective(policy, triples, ref, 0.7, average=average, grad=False)[0])
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kind", ["table", "log_linear"])
def test_the_autograd_policies_give_the_same_loss_and_a_checked_gradient(small, kind):
    rs, model, ref, r, pairs = small
    phi = ep.response_features(rs)
    policy = ep.TablePolicy(ref, rs.lengths) if kind == "table" else ep.LogLinearPolicy(ref, phi, rs.lengths)
    policy.params["theta"] += np.random.default_rng(9).normal(0, 0.3, policy.params["theta"].shape)
    triples = ep.pair_weights(pairs, rs.shape[1])
    for average in (False, True):
        loss, summed, grads = ep.dpo_objective(policy, triples, ref, 0.7, average=average)
        assert loss == pytest.approx(dpo_loss_by_hand(summed, ref, pairs, 0.7, rs.lengths if average else None),
                                     rel=1e-12)
        theta = policy.params["theta"]
        numeric = gradcheck.central_difference(
            lambda _: ep.dpo_objective(policy, triples, ref, 0.7, average=average, grad=False)[0], [theta], 0)
        assert gradcheck.relative_error(grads["theta"], numeric) < 1e-7


def test_pair_weights_merge_repeated_pairs_and_population_pairs_are_the_sampling_chances(small):
    rs, model, ref, r, pairs = small
    x, w, l, weight = ep.pair_weights(pairs, rs.shape[1])
    assert weight.sum() == pytest.approx(1.0)
    for i in range(len(x)):
        hits = (pairs["prompt"] == x[i]) & (pairs["chosen"] == w[i]) & (pairs["rejected"] == l[i])
        assert weight[i] == pytest.approx(hits.sum() / len(pairs["prompt"]))
    pop = ep.population_pairs(ref, r)
    P, N = ref.shape
    table = np.zeros((P, N, N))
    table[pop["prompt"], pop["chosen"], pop["rejected"]] = pop["weight"]
    mu = np.exp(ref)
    # each unordered pair's two orders together: the chance of drawing it; their ratio: Bradley–Terry's odds
    off = ~np.eye(N, dtype=bool)
    both_orders = (table + table.transpose(0, 2, 1))[:, off]
    np.testing.assert_allclose(both_orders, (mu[:, :, None] * mu[:, None, :] / P)[:, off])
    np.testing.assert_allclose(table[0, 1, 2] / table[0, 2, 1], math.exp(r[0, 1] - r[0, 2]))


def test_the_suboptimality_is_beta_times_the_kl_to_the_optimum(small):
    rs, model, ref, r, pairs = small
    path = ep.train_dpo(ep.GPTPolicy(random_gpt(rs, 5, scale=0.5), rs), pairs, ref, 0.5, 5, 1e-2)
    for lp in path["logprobs"]:
        star = rlhf.optimal_policy(ref, r, 0.5)
        assert eg.suboptimality(lp, ref, r, 0.5) == pytest.approx(0.5 * eg.kl(lp, star), rel=1e-9, abs=1e-13)
    assert eg.suboptimality(rlhf.optimal_policy(ref, r, 0.5), ref, r, 0.5) == pytest.approx(0.0, abs=1e-12)


def test_the_reward_is_linear_in_the_features_so_the_log_linear_family_holds_pi_star(small):
    rs, model, ref, r, pairs = small
    phi = ep.response_features(rs)
    w, *_ = np.linalg.lstsq(phi, r.T, rcond=None)                  # (F, P)
    np.testing.assert_allclose(phi @ w, r.T, atol=1e-10)
    policy = ep.LogLinearPolicy(ref, phi, rs.lengths)
    policy.params["theta"][...] = w.T / 0.5
    np.testing.assert_allclose(policy.logprobs(), rlhf.optimal_policy(ref, r, 0.5), atol=1e-10)


def test_sft_lowers_the_per_token_negative_log_likelihood_of_its_samples(small):
    rs, model, ref, r, pairs = small
    policy = ep.GPTPolicy(random_gpt(rs, 10, scale=0.1), rs)
    counts = ep.sample_counts(ref, 50, seed=11)
    assert counts.sum(axis=1).tolist() == [50, 50]
    history = ep.train_sft(policy, counts, 40, 3e-2)
    lp0 = ep.GPTPolicy(random_gpt(rs, 10, scale=0.1), rs).logprobs()
    assert history[0] == pytest.approx(-(counts * lp0).sum() / (counts * rs.lengths).sum(), rel=1e-12)
    assert history[-1] == pytest.approx(-(counts * policy.logprobs()).sum() / (counts * rs.lengths).sum(), rel=1e-12)
    assert history[-1] < history[0] - 0.05


# -- never-compared responses -----------------------------------------------------------------

def test_a_table_never_moves_a_never_compared_logit_but_a_gpt_reshapes_them(small):
    rs, model, ref, r, pairs = small
    keep = (pairs["chosen"] < 4) & (pairs["rejected"] < 4)             # responses 4, 5, 6 never compared
    data = {k: v[keep] for k, v in pairs.items()}
    never = ~eg.compared_mask(data, ref.shape)
    assert never[:, 4:].all() and never.sum() > 6
    table = ep.TablePolicy(ref, rs.lengths)
    triples = ep.pair_weights(data, rs.shape[1])
    grad = ep.dpo_objective(table, triples, ref, 0.5)[2]["theta"]
    # the −π_θ parts of ∇log π(y_w) and ∇log π(y_l) cancel: zero, up to the rounding of Σ ±g over a row
    assert np.abs(grad[never]).max() < 1e-14 * np.abs(grad).max() and np.abs(grad[~never]).max() > 1e-3
    path = ep.train_dpo(table, data, ref, 0.5, 50, 0.1)
    theta = table.params["theta"]
    assert np.abs(theta - ref)[never].max() < 1e-9 < 0.1 < np.abs(theta - ref)[~never].max()
    before, after = path["logprobs"][0], path["logprobs"][-1]
    d = eg.displacement_measures(before, after, data, *ep.similarity_matrices(rs))
    assert d["never_compared_shape_kl"] < 1e-12                       # they keep their shape among themselves
    # and their total changes only through the normalizer: Σ_C e^θ(0) / Σ_all e^θ(t)
    expected = ((np.exp(ref) * never).sum(1) / np.exp(theta).sum(1)).mean()
    assert d["never_compared_mass"]["after"] == pytest.approx(expected, rel=1e-9)
    assert abs(d["never_compared_mass"]["after"] - d["never_compared_mass"]["before"]) > 1e-3
    gpt = ep.GPTPolicy(random_gpt(rs, 5, scale=0.5), rs)
    path = ep.train_dpo(gpt, data, ref, 0.5, 50, 3e-2)
    d = eg.displacement_measures(path["logprobs"][0], path["logprobs"][-1], data, *ep.similarity_matrices(rs))
    assert d["never_compared_shape_kl"] > 1e-3                        # shared parameters move them unevenly


def test_displacement_measures_on_a_hand_made_example():
    # one prompt, responses 0..3; pairs (0 ≻ 1) twice, (2 ≻ 0) once, (3 ≻ 3) once (no comparison)
    before = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    after = np.log(np.array([[0.3, 0.1, 0.2, 0.4]]))
    pairs = {"prompt": np.zeros(4, int), "chosen": np.array([0, 0, 2, 3]), "rejected": np.array([1, 1, 0, 3])}
    distance = np.array([[0, 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 2], [1, 2, 2, 0]])
    prefix = np.array([[3, 1, 0, 2], [1, 3, 0, 0], [0, 0, 3, 1], [2, 0, 1, 3]])
    d = eg.displacement_measures(before, after, pairs, distance, prefix)
    assert d["pairs_compared"] == 3
    assert d["chosen_logp_fell"] == pytest.approx(2 / 3)              # y_w = 0 fell (twice), 2 did not
    assert d["rejected_logp_fell"] == pytest.approx(1.0)              # 1 fell (twice), 0 fell
    assert d["both_fell"] == pytest.approx(2 / 3)
    assert d["margin_grew"] == pytest.approx(1.0)                     # log(0.75/0.333) > 0 and log(1/0.75) > 0
    assert d["fell_while_margin_grew"] == pytest.approx(2 / 3)
    assert d["chosen_logp_change"] == pytest.approx((2 * math.log(0.75) + 0.0) / 3)
    assert d["fell_by_distance"] == {1: 1.0, 2: 0.0}
    assert (d["only_chosen"], d["only_chosen_fell"]) == (1, 0.0)      # response 2 only won; it stayed at 0.2
    assert d["never_compared_mass"] == {"before": pytest.approx(0.1), "after": pytest.approx(0.4)}
    # response 3 is never compared; net winner 0 (2 wins, 1 loss) and 2, net loser 1: it is 1 edit from
    # 0 and 2 from 1, and shares 2 tokens with 0 against 0 with 1 — the chosen side both ways
    assert d["mass_moved"]["nearer_chosen"] == pytest.approx(0.3)
    assert d["mass_moved"]["prefix_chosen"] == pytest.approx(0.3)
    assert d["mass_moved"]["nearer_rejected"] == d["mass_moved"]["equidistant"] == 0.0


# -- the length-tilted optimum --------------------------------------------------------------------

def tabular_problem(seed, N=6, P=2):
    gen = np.random.default_rng(seed)
    ref = ag.log_softmax(gen.normal(0, 1, (P, N)), axis=-1).data
    return ref, gen.normal(0, 1, (P, N)), gen.integers(1, 5, N)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.25, 0.5, 2.0]))
def test_the_length_tilted_policy_is_where_the_averaged_loss_stops_and_pi_star_where_the_summed_one_does(seed, beta):
    ref, r, lengths = tabular_problem(seed)
    tilted, c = ep.length_tilted_optimum(ref, r, beta, lengths)
    star = rlhf.optimal_policy(ref, r, beta)
    np.testing.assert_allclose(np.exp(tilted).sum(axis=1), 1.0, atol=1e-12)
    # its implicit reward per token is r + c(x) on every response, as derived
    np.testing.assert_allclose(beta * (tilted - ref) / lengths, r + c[:, None], atol=1e-9)
    for proposal in (ref, np.full(ref.shape, -np.log(ref.shape[1]))):     # π_ref's pairs or uniform ones
        triples = ep.pair_weights(ep.population_pairs(proposal, r), ref.shape[1])

        def gradient(logp, average):
            return ep.dpo_objective(ep.TablePolicy(logp, lengths), triples, ref, beta, average)[2]["theta"]

        assert np.abs(gradient(tilted, True)).max() < 1e-10
        assert np.abs(gradient(star, False)).max() < 1e-10
        if np.ptp(lengths) > 0 and np.ptp(r) > 0.5:
            assert np.abs(gradient(star, True)).max() > 1e-4
            assert np.abs(gradient(tilted, False)).max() > 1e-4


def test_the_averaged_loss_is_lowest_at_the_tilted_policy_and_equals_pi_star_when_every_length_is_one():
    ref, r, lengths = tabular_problem(3)
    beta = 0.5
    tilted, _ = ep.length_tilted_optimum(ref, r, beta, lengths)
    star = rlhf.optimal_policy(ref, r, beta)
    assert eg.kl(star, tilted) > 0.01
    triples = ep.pair_weights(ep.population_pairs(ref, r), ref.shape[1])

    def loss(logp):
        return ep.dpo_objective(ep.TablePolicy(logp, lengths), triples, ref, beta, average=True, grad=False)[0]

    gen = np.random.default_rng(0)
    assert all(loss(tilted) < loss(tilted + gen.normal(0, 0.3, tilted.shape)) for _ in range(20))
    assert loss(tilted) < loss(star) - 1e-4
    ones, _ = ep.length_tilted_optimum(ref, r, beta, np.ones_like(lengths))
    np.testing.assert_allclose(ones, star, atol=1e-12)


def test_trained_on_every_pair_a_table_reaches_the_tilted_policy_with_the_averaged_loss():
    ref, r, lengths = tabular_problem(4)
    tilted, _ = ep.length_tilted_optimum(ref, r, 0.5, lengths)
    star = rlhf.optimal_policy(ref, r, 0.5)
    pairs = ep.population_pairs(np.full(ref.shape, -np.log(ref.shape[1])), r)
    averaged = ep.train_dpo(ep.TablePolicy(ref, lengths), pairs, ref, 0.5, 400, 0.2, average=True)["logprobs"][-1]
    summed = ep.train_dpo(ep.TablePolicy(ref, lengths), pairs, ref, 0.5, 400, 0.2)["logprobs"][-1]
    assert eg.kl(tilted, averaged) < 1e-6 < eg.kl(star, averaged)
    assert eg.kl(star, summed) < 1e-6 < eg.kl(tilted, summed)


def test_the_table_length_experiment_lands_each_loss_on_its_own_optimum_and_reports_it_truly():
    o = ep.table_length_experiment(0, steps=2000)
    ref, r, lengths, beta = o["reference"], o["rewards"], o["lengths"], 0.5
    assert sorted(set(lengths.tolist())) == [1, 2, 3] and ref.shape == (4, 40)
    np.testing.assert_allclose(np.exp(ref).sum(axis=1), 1.0, atol=1e-12)
    # π* by hand, and the tilted optimum's defining property: β(log π − log π_ref)/|y| − r is c(x) everywhere
    star = ref + r / beta
    np.testing.assert_allclose(o["pi_star"], star - np.log(np.exp(star).sum(axis=1, keepdims=True)), atol=1e-12)
    np.testing.assert_allclose(beta * (o["tilted"] - ref) / lengths - r, np.repeat(o["c"][:, None], 40, 1), atol=1e-9)

    def kl(p, q):
        return float(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))

    for rule in ("averaged", "summed"):
        assert o["kl"][rule]["to_pi_star"] == pytest.approx(kl(o["pi_star"], o[rule]), abs=1e-12)
        assert o["kl"][rule]["to_tilted"] == pytest.approx(kl(o["tilted"], o[rule]), abs=1e-12)
        assert o["mean_length"][rule] == pytest.approx(np.mean(np.exp(o[rule]) @ lengths), rel=1e-12)
    assert o["kl_pi_star_to_tilted"] == pytest.approx(kl(o["pi_star"], o["tilted"]), rel=1e-12) and \
        o["kl_pi_star_to_tilted"] > 0.1
    # each rule on its own optimum, and so as far from the other one as the two optima are apart
    assert o["kl"]["averaged"]["to_tilted"] < 1e-9 and o["kl"]["summed"]["to_pi_star"] < 1e-6
    assert o["kl"]["averaged"]["to_pi_star"] == pytest.approx(o["kl_pi_star_to_tilted"], abs=1e-6)
    # at either optimum every pair's margin is r(y_w) − r(y_l): both losses end at the Bradley–Terry
    # cross-entropy of the labels with themselves, Σ weight · softplus(r_l − r_w)
    pairs = ep.population_pairs(np.full(ref.shape, -np.log(40)), r)
    x, w, l, weight = pairs["prompt"], pairs["chosen"], pairs["rejected"], pairs["weight"]
    floor = float(np.sum(weight * np.log1p(np.exp(r[x, l] - r[x, w]))) / weight.sum())
    assert o["loss"]["averaged"] == pytest.approx(floor, abs=1e-9)
    assert o["loss"]["summed"] == pytest.approx(floor, abs=1e-7)


# -- similarity -------------------------------------------------------------------------------

def test_edit_distance_and_shared_prefix_known_values():
    assert ep.edit_distance([0, 1, 2], [0, 2]) == 1
    assert ep.edit_distance([], [1, 1]) == 2
    assert ep.edit_distance([0, 1], [1, 0]) == 2
    assert ep.shared_prefix([0, 1, 2], [0, 1]) == 2 and ep.shared_prefix([1], [0, 1]) == 0


@settings(max_examples=60, deadline=None)
@given(*[st.lists(st.integers(0, 2), max_size=4)] * 3)
def test_edit_distance_is_a_metric(a, b, c):
    assert ep.edit_distance(a, b) == ep.edit_distance(b, a)
    assert (ep.edit_distance(a, b) == 0) == (a == b)
    assert ep.edit_distance(a, c) <= ep.edit_distance(a, b) + ep.edit_distance(b, c)
    assert abs(len(a) - len(b)) <= ep.edit_distance(a, b) <= max(len(a), len(b))


# -- the command ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run():
    return eg.run_exact_gpt(seeds=[0, 1, 2], quick=True, **TINY)


CONTRACT = [("displacement", "never_compared_mass", "before"), ("displacement", "never_compared_mass", "after"),
            ("displacement", "chosen_logp_fell"), ("coverage", "final_kl", "on_policy"),
            ("coverage", "final_kl", "off_policy"), ("coverage", "final_kl", "low_coverage"),
            ("online", "final_kl", "offline"), ("online", "final_kl", "online"),
            ("length", "kl_to_pi_star"), ("length", "kl_to_predicted")]


def test_every_part_reports_its_numbers_per_seed(tiny_run):
    assert tiny_run["seeds"] == [0, 1, 2]
    for path in CONTRACT:
        value = at(tiny_run, path)
        assert isinstance(value, list) and len(value) == 3 and all(math.isfinite(v) for v in value), path
    for row in tiny_run["beta"]["rows"]:
        assert isinstance(row["beta"], float) and len(row["suboptimality_final"]) == 3
        assert all(len(curve) == len(row["step"]) for curve in row["suboptimality"])
    # the on-policy run at the largest size is the offline arm and the β row at the default β and lr
    assert tiny_run["online"]["final_kl"]["offline"] == tiny_run["coverage"]["final_kl"]["on_policy"]


def at(result, path):
    for key in path:
        result = result[key]
    return result


def test_each_seed_gives_the_same_numbers_alone_and_in_company(tiny_run):
    alone = eg.run_exact_gpt(seeds=[1], quick=True, **TINY)
    for path in CONTRACT + [("length", "summed", "kl_to_pi_star"), ("displacement", "table", "chosen_logp_fell"),
                            ("coverage", "kl_by_pairs", "off_policy"), ("online", "kl_by_round", "online")]:
        assert at(alone, path) == [at(tiny_run, path)[1]], path
    assert alone["beta"]["rows"][0]["suboptimality"] == [tiny_run["beta"]["rows"][0]["suboptimality"][1]]


def test_the_command_writes_json_and_a_figure(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(eg, "QUICK", dict(eg.QUICK, **TINY))
    out = tmp_path / "numbers.json"
    assert main(["exact-gpt", "--quick", "--seeds", "2,5", "--quiet", "--json", str(out),
                 "--output-dir", str(tmp_path / "figs")]) == 0
    data = json.loads(out.read_text())
    assert data["command"] == "exact-gpt" and data["seeds"] == [2, 5]
    assert set(eg.PARTS) <= set(data)
    assert len(data["displacement"]["never_compared_mass"]["after"]) == 2
    assert (tmp_path / "figs" / "exact_gpt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "1. displacement" in printed and "5. β and the learning rate" in printed


def test_bad_seeds_and_settings_are_named(capsys):
    assert main(["exact-gpt", "--seeds", "a-b"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nope"):
        eg.run_exact_gpt(seeds=[0], nope=1)
    with pytest.raises(ValueError, match="distinct"):
        eg.run_exact_gpt(seeds=[0, 0])


def test_the_reported_numbers_are_the_runs_measured_again(tiny_run):
    cfg = dict(eg.QUICK, **TINY)
    problem = eg.make_problem(0, cfg)
    ref, r, beta = problem["ref"], problem["rewards"], cfg["beta"]
    star = rlhf.optimal_policy(ref, r, beta)
    last = lambda path: path["logprobs"][-1]                            # noqa: E731
    n = max(cfg["coverage_pairs"])
    assert tiny_run["coverage"]["final_kl"]["off_policy"][0] == pytest.approx(
        rlhf.kl_divergence(star, last(eg.run(problem, cfg, "gpt", "off_policy", n))).mean(), rel=1e-12)
    tilted, _ = ep.length_tilted_optimum(ref, r, beta, problem["rs"].lengths)
    averaged = last(eg.run(problem, cfg, "gpt", "population", lr=cfg["length_lr"], steps=cfg["length_steps"],
                           average=True))
    assert tiny_run["length"]["kl_to_predicted"][0] == pytest.approx(rlhf.kl_divergence(tilted, averaged).mean(),
                                                                   rel=1e-12)
    table = last(eg.run(problem, cfg, "table", "on_policy", cfg["displacement_pairs"]))
    never = ~eg.compared_mask(eg.first_pairs(problem["pairs"]["on_policy"], cfg["displacement_pairs"]), ref.shape)
    assert tiny_run["displacement"]["table"]["never_compared_mass"]["after"][0] == pytest.approx(
        (np.exp(table) * never).sum(axis=1).mean(), rel=1e-12)
    row = tiny_run["beta"]["rows"][0]
    path = eg.run(problem, cfg, "gpt", "on_policy", cfg["beta_pairs"], beta=row["beta"], lr=row["lr"])
    star_b = rlhf.optimal_policy(ref, r, row["beta"])
    gaps = [row["beta"] * rlhf.kl_divergence(lp, star_b).mean() for lp in path["logprobs"]]
    np.testing.assert_allclose(row["suboptimality"][0], gaps, rtol=1e-9, atol=1e-13)
    assert row["best_step"][0] == path["step"][int(np.argmin(gaps))]


def test_summaries_and_small_measures_by_hand():
    assert eg.spread([1.0, 2.0, 6.0]) == {"mean": 3.0, "min": 1.0, "max": 6.0}
    gathered = eg.gather([{"pairs": 4, "a": {"b": 1.0}}, {"pairs": 4, "a": {"b": 2.0, "c": 3.0}}])
    assert gathered == {"pairs": 4, "a": {"b": [1.0, 2.0], "c": [None, 3.0]}}
    lengths = np.array([1, 2, 3, 3])
    assert eg.mean_length(np.log(np.full((2, 4), 0.25)), lengths) == pytest.approx(2.25)
    few = eg.restricted(np.log(np.array([[0.1, 0.2, 0.3, 0.4]])), 2, seed=0)
    kept = np.isfinite(few[0])
    assert kept.sum() == 2 and np.exp(few[0, kept]).sum() == pytest.approx(1.0)
    p = np.array([0.1, 0.2, 0.3, 0.4])[kept]
    np.testing.assert_allclose(np.exp(few[0, kept]), p / p.sum())
