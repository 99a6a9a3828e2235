"""DPO's known failure modes, measured exactly: the project's GPT on a response set it can enumerate.

``python -m dpo_np exact-gpt --seeds 0-2``. On each seed's problem (``exact_policies``: 4 two-token
prompts, 40 responses of 0–3 content tokens and an end token each; π_ref = the GPT after a short
SFT on samples from a random autoregressive model; a known reward r(x, y) of token and
adjacent-pair scores; π*_β exact), five questions, each answered with exact numbers:

1. ``displacement``: does log π_θ(y_w|x) fall while the margin grows, and where does the
   probability go? The mass on responses that no pair compares, before and after, and the mass
   moved onto them split by their similarity (edit distance, shared prefix) to the chosen and to the
   rejected responses of their prompt — for the GPT, a log-linear policy and the table.
2. ``coverage``: DPO on pairs drawn from π_ref (on-policy), from another model (off-policy) and from
   only a few responses per prompt (low coverage), at several numbers of pairs.
3. ``online``: rounds that draw new pairs from the current π_θ, labelled by Bradley–Terry under r,
   against offline DPO with the same total pairs and the same number of steps.
4. ``length``: the per-token-averaged loss (``loss_type="sigmoid_norm"``) converges to the
   length-tilted policy ``exact_policies.length_tilted_optimum``, not π*; the summed loss to π*.
5. ``beta``: the suboptimality J(π*) − J(π_θ) = β KL(π_θ ‖ π*) along training, across β and learning
   rates: the step where it is smallest is where over-optimization begins.

Every training run is full-batch Adam on the DPO loss (``exact_policies.train_dpo``), so a run is a
deterministic function of its seed. What this can test: exact consequences of the DPO loss for a
small transformer with shared parameters, on data whose size and source we control. What it
cannot: anything that needs a large model's inductive biases or natural-language similarity.
"""

import sys
import time

import numpy as np

from dpo_np import backend, checks, rlhf
from dpo_np.experiments import exact_policies as ep
from dpo_np.experiments.exact_policies import mean_length
from dpo_np.experiments import toy_problem
from dpo_np.experiments.plots import save_figure
from dpo_np.model import GPT
from dpo_np.progress import progress as progress_bar

PARTS = ("displacement", "coverage", "online", "length", "beta")

DEFAULTS = dict(vocab_size=3, max_length=3, n_prompts=4, n_layer=1, n_head=2, n_embd=8,
                reference_scale=1.0, reward_scale=0.5, sft_samples=64, sft_steps=100, sft_lr=1e-2,
                beta=0.5, lr=1e-2, steps=160, log_every=10, table_lr=0.05, length_lr=3e-2, length_table_lr=0.2,
                displacement_pairs=256, coverage_pairs=(256, 1024, 4096), low_coverage_responses=4,
                online_pairs=1024, online_rounds=4, length_steps=240,
                betas=(0.25, 0.5, 1.0), lrs=(3e-3, 1e-2, 3e-2), beta_pairs=1024)

#: the same measurements on a few steps: seconds, for a first look and the tests (not the README's numbers)
QUICK = dict(DEFAULTS, sft_steps=30, steps=30, log_every=5, coverage_pairs=(256, 1024), online_rounds=2,
             length_steps=40, betas=(0.5, 1.0), lrs=(1e-2,))


# -- one seed's problem ------------------------------------------------------------------------

def _stream(seed, k):
    """The seed of random stream k of run seed ``seed`` (streams of different seeds never share a seed)."""
    return 1000 * seed + k


def make_problem(seed, cfg):
    """Everything the five parts share on one seed: the set, π_ref (the GPT after SFT), r, π*, the pairs.

    Streams: 1 the data model the SFT samples come from, 2 the GPT's initialisation, 3 the SFT
    samples, 4 the reward, 5 the off-policy model, 6 the low-coverage responses, 7–9 the pairs
    (on-policy, off-policy, low coverage; the first n of a sample are an n-pair sample, so every
    size of one kind is a prefix of the largest), 20+ the online rounds.
    """
    rs = ep.response_set(cfg["vocab_size"], cfg["max_length"], cfg["n_prompts"])
    P, N = rs.shape
    V, L = cfg["vocab_size"], cfg["max_length"]

    def autoregressive(stream):
        table = toy_problem.random_reference_table(P, V, L + 1, seed=_stream(seed, stream), eos=True,
                                                   scale=cfg["reference_scale"])
        return backend.to_numpy(toy_problem.sequence_logprobs(table, rs.responses), np.float64)

    # the problem's tables (π_ref, r, the proposals, the pairs) live on the host; the GPT on the device
    data = autoregressive(1)
    model = GPT(ep.gpt_config(rs, cfg["n_layer"], cfg["n_head"], cfg["n_embd"]), seed=_stream(seed, 2),
                dtype=np.float64)
    policy = ep.GPTPolicy(model, rs)
    sft_loss = ep.train_sft(policy, ep.sample_counts(data, cfg["sft_samples"], _stream(seed, 3)),
                            cfg["sft_steps"], cfg["sft_lr"])
    ref = backend.to_numpy(policy.logprobs(), np.float64)
    rewards = backend.to_numpy(toy_problem.random_rewards(rs.responses, P, V, seed=_stream(seed, 4),
                                                          scale=cfg["reward_scale"]), np.float64)
    few = restricted(ref, cfg["low_coverage_responses"], _stream(seed, 6))
    proposals = {"on_policy": ref, "off_policy": autoregressive(5), "low_coverage": few}
    n_max = max([*cfg["coverage_pairs"], cfg["displacement_pairs"], cfg["online_pairs"], cfg["beta_pairs"]])
    pairs = {kind: toy_problem.sample_preference_pairs(proposals[kind], rewards, n_max, seed=_stream(seed, 7 + i))
             for i, kind in enumerate(proposals)}
    dist, prefix = ep.similarity_matrices(rs)
    return {"seed": seed, "rs": rs, "config": model.config,
            "ref_params": {k: v.copy() for k, v in model.params.items()},
            "sft_loss": sft_loss, "data": data, "ref": ref, "rewards": rewards, "proposals": proposals,
            "pairs": {kind: {k: backend.to_numpy(v) for k, v in d.items()} for kind, d in pairs.items()},
            "features": ep.response_features(rs), "distance": dist, "prefix": prefix, "runs": {}}


def restricted(logprobs, m, seed):
    """log of π restricted to ``m`` responses per prompt drawn from π without replacement, renormalized:
    a proposal that only ever shows those m (−inf elsewhere)."""
    gen = backend.rng(seed)
    out = np.full(logprobs.shape, -np.inf)
    for x, row in enumerate(logprobs):
        pick = gen.choice(len(row), size=m, replace=False, p=np.exp(row) / np.exp(row).sum())
        out[x, pick] = row[pick] - np.logaddexp.reduce(row[pick])
    return out


def first_pairs(pairs, n):
    """The first ``n`` pairs of a sample (an ``n``-pair sample of the same kind)."""
    return {k: v[:n] for k, v in pairs.items()}


def new_policy(problem, kind):
    """A fresh π_θ = π_ref of one kind: "gpt" (a copy of the SFT weights), "log_linear" or "table"."""
    rs, ref = problem["rs"], problem["ref"]
    if kind == "gpt":
        model = GPT(problem["config"], dtype=np.float64)
        model.params = {k: v.copy() for k, v in problem["ref_params"].items()}
        return ep.GPTPolicy(model, rs)
    if kind == "log_linear":
        return ep.LogLinearPolicy(ref, problem["features"], rs.lengths)
    return ep.TablePolicy(ref, rs.lengths)


def run(problem, cfg, kind="gpt", data="on_policy", n=None, beta=None, lr=None, steps=None, average=False):
    """A DPO run from π_ref on the first ``n`` pairs of ``data`` ("population": every pair, weighted by its
    chance under a uniform proposal, ``exact_policies.population_pairs``); each run is trained once per seed."""
    beta = cfg["beta"] if beta is None else beta
    lr = (cfg["lr"] if kind == "gpt" else cfg["table_lr"]) if lr is None else lr
    steps = cfg["steps"] if steps is None else steps
    key = (kind, data, n, beta, lr, steps, average)
    if key not in problem["runs"]:
        uniform = np.full(problem["ref"].shape, -np.log(problem["ref"].shape[1]))
        pairs = (ep.population_pairs(uniform, problem["rewards"]) if data == "population"
                 else first_pairs(problem["pairs"][data], n))
        problem["runs"][key] = ep.train_dpo(new_policy(problem, kind), pairs, problem["ref"], beta, steps, lr,
                                            average=average, log_every=cfg["log_every"])
    return problem["runs"][key]


# -- exact measures ----------------------------------------------------------------------------

def optimum(ref, rewards, beta):
    """log π*_β (P, N) as a host table, like every table of the problem (``rlhf.optimal_policy``)."""
    return backend.to_numpy(rlhf.optimal_policy(ref, rewards, beta), np.float64)


def kl(p, q):
    """mean over prompts of KL(p ‖ q), p and q log-probabilities (P, N)."""
    return float(rlhf.kl_divergence(p, q).mean())


def suboptimality(logprobs, ref, rewards, beta):
    """mean_x J(π*) − J(π_θ), computed from the objective itself: it equals β KL(π_θ ‖ π*) (notebook 04)."""
    star = optimum(ref, rewards, beta)
    gap = rlhf.rlhf_objective(star, ref, rewards, beta) - rlhf.rlhf_objective(logprobs, ref, rewards, beta)
    return float(gap.mean())


def compared_mask(pairs, shape):
    """(P, N) True where a response is y_w or y_l of some pair with y_w ≠ y_l (a pair of one response
    with itself carries no comparison and no DPO gradient)."""
    x, w, l = (backend.to_numpy(pairs[k]) for k in ("prompt", "chosen", "rejected"))
    keep = w != l
    mask = np.zeros(shape, dtype=bool)
    mask[x[keep], w[keep]] = mask[x[keep], l[keep]] = True
    return mask


def _nearest(values, among, better):
    """Per response, the best of ``values[y, y']`` over y' in ``among`` (min or max; inf/−1 if none)."""
    if not among.any():
        return np.full(values.shape[0], np.inf if better is np.min else -1)
    return better(values[:, among], axis=1)


def displacement_measures(before, after, pairs, distance, prefix):
    """How the log-probabilities of the compared responses moved, and where the probability went.

    ``before``, ``after``: log π_θ (P, N) at the start and the end; ``pairs`` the training pairs;
    ``distance``, ``prefix`` (N, N) from ``exact_policies.similarity_matrices``. Returns a dict:
    over the pairs with y_w ≠ y_l, each counted as often as it occurs (``pairs_compared``):
    ``chosen_logp_fell`` the fraction whose log π_θ(y_w|x) fell, ``rejected_logp_fell``,
    ``both_fell``, ``margin_grew`` (ρ_w − ρ_l > 0), ``fell_while_margin_grew`` (both at once),
    ``chosen_logp_change`` and ``rejected_logp_change`` (mean changes), ``fell_by_distance`` {d: the
    fraction fell among pairs whose y_w and y_l are d edits apart}; ``only_chosen_fell``: among the
    responses that won every pair they were in (``only_chosen`` of them), the fraction whose
    log π_θ fell — in a table such a response's logit only rises, so it can fall only through the
    normalizer. Then ``never_compared_measures``.
    """
    x, w, l = (backend.to_numpy(pairs[k]) for k in ("prompt", "chosen", "rejected"))
    keep = w != l
    x, w, l = x[keep], w[keep], l[keep]
    dw, dl = after[x, w] - before[x, w], after[x, l] - before[x, l]
    d_pair = distance[w, l]
    wins, losses_ = np.zeros(before.shape, int), np.zeros(before.shape, int)
    np.add.at(wins, (x, w), 1)
    np.add.at(losses_, (x, l), 1)
    only_won = (wins > 0) & (losses_ == 0)
    return {"pairs_compared": int(keep.sum()),
            "chosen_logp_fell": float(np.mean(dw < 0)), "rejected_logp_fell": float(np.mean(dl < 0)),
            "both_fell": float(np.mean((dw < 0) & (dl < 0))), "margin_grew": float(np.mean(dw - dl > 0)),
            "fell_while_margin_grew": float(np.mean((dw < 0) & (dw - dl > 0))),
            "chosen_logp_change": float(dw.mean()), "rejected_logp_change": float(dl.mean()),
            "fell_by_distance": {int(d): float(np.mean(dw[d_pair == d] < 0)) for d in np.unique(d_pair)},
            "only_chosen": int(only_won.sum()),
            "only_chosen_fell": float(np.mean((after < before)[only_won])) if only_won.any() else 0.0,
            **never_compared_measures(before, after, wins - losses_, (wins == 0) & (losses_ == 0), distance, prefix)}


def never_compared_measures(before, after, net_wins, never, distance, prefix):
    """What happened to the responses no pair compares (``never``, (P, N)).

    ``never_compared_mass`` {before, after}: mean over prompts of their total probability;
    ``never_compared_shape_kl``: mean over prompts of the KL between their distribution among
    themselves after and before (0 when they only rescale together, as in a table); ``mass_moved``:
    the change of their total probability (mean over prompts) split by which side each resembles
    more — by edit distance (``nearer_chosen``, ``nearer_rejected``, ``equidistant``) and by shared
    prefix (``prefix_chosen``, ``prefix_rejected``, ``prefix_equal``), the chosen side of a prompt
    being its responses with more wins than losses (``net_wins`` > 0), the rejected side those with fewer.
    """
    P = before.shape[0]
    p0, p1 = np.exp(before), np.exp(after)
    moved = dict.fromkeys(("nearer_chosen", "nearer_rejected", "equidistant",
                           "prefix_chosen", "prefix_rejected", "prefix_equal"), 0.0)
    shape_kl = []
    for x in range(P):
        won, lost = net_wins[x] > 0, net_wins[x] < 0
        d_w, d_l = _nearest(distance, won, np.min), _nearest(distance, lost, np.min)
        s_w, s_l = _nearest(prefix, won, np.max), _nearest(prefix, lost, np.max)
        change = (p1[x] - p0[x]) * never[x] / P
        for name, cls in (("nearer_chosen", d_w < d_l), ("nearer_rejected", d_l < d_w), ("equidistant", d_w == d_l),
                          ("prefix_chosen", s_w > s_l), ("prefix_rejected", s_l > s_w), ("prefix_equal", s_w == s_l)):
            moved[name] += float(change[cls].sum())
        if never[x].any():
            a, b = after[x, never[x]], before[x, never[x]]
            shape_kl.append(kl(a - np.logaddexp.reduce(a), b - np.logaddexp.reduce(b)))
    return {"never_compared_mass": {"before": float((p0 * never).sum(1).mean()),
                                    "after": float((p1 * never).sum(1).mean())},
            "never_compared_shape_kl": float(np.mean(shape_kl)) if shape_kl else 0.0, "mass_moved": moved}


# -- the five parts, on one seed -----------------------------------------------------------------

def part_displacement(problem, cfg):
    """Part 1 on one seed: the GPT's displacement measures, and the log-linear policy's and the table's;
    ``mass``: π_ref, π*, each trained policy (P, N) and which responses the pairs compare."""
    n = cfg["displacement_pairs"]
    pairs = first_pairs(problem["pairs"]["on_policy"], n)
    star = optimum(problem["ref"], problem["rewards"], cfg["beta"])
    out, mass = {}, {"reference": np.exp(problem["ref"]), "pi_star": np.exp(star),
                     "compared": compared_mask(pairs, star.shape)}
    for kind in ("gpt", "log_linear", "table"):
        path = run(problem, cfg, kind, "on_policy", n)
        measures = displacement_measures(path["logprobs"][0], path["logprobs"][-1], pairs, problem["distance"],
                                         problem["prefix"])
        measures["final_kl"] = kl(star, path["logprobs"][-1])
        mass[kind] = np.exp(path["logprobs"][-1])
        measures["mean_length"] = {"before": mean_length(path["logprobs"][0], problem["rs"].lengths),
                                   "after": mean_length(path["logprobs"][-1], problem["rs"].lengths)}
        out[kind] = measures
    return {**out.pop("gpt"), **out, "pairs": n, "mass": mass}


def part_coverage(problem, cfg):
    """Part 2 on one seed: DPO on pairs from π_ref, from another model and from a few responses per prompt.

    Keys: ``pairs`` (the sizes), ``start_kl`` (KL(π* ‖ π_ref)), per source ``kl_by_pairs``,
    ``best_kl_by_pairs`` (the smallest along each run) and ``suboptimality_by_pairs``, one value per
    size; ``final_kl``, ``best_kl``, ``final_suboptimality`` at the largest size; ``star_mass_compared``:
    the probability π* puts on responses the largest sample compares.
    """
    ref, r, beta = problem["ref"], problem["rewards"], cfg["beta"]
    star = optimum(ref, r, beta)
    out = {"pairs": list(cfg["coverage_pairs"]), "start_kl": kl(star, ref), "kl_by_pairs": {},
           "best_kl_by_pairs": {}, "suboptimality_by_pairs": {}, "star_mass_compared": {}}
    for kind in ("on_policy", "off_policy", "low_coverage"):
        paths = [run(problem, cfg, "gpt", kind, n) for n in cfg["coverage_pairs"]]
        out["kl_by_pairs"][kind] = [kl(star, p["logprobs"][-1]) for p in paths]
        out["best_kl_by_pairs"][kind] = [min(kl(star, lp) for lp in p["logprobs"]) for p in paths]
        out["suboptimality_by_pairs"][kind] = [suboptimality(p["logprobs"][-1], ref, r, beta) for p in paths]
        mask = compared_mask(first_pairs(problem["pairs"][kind], max(cfg["coverage_pairs"])), star.shape)
        out["star_mass_compared"][kind] = float((np.exp(star) * mask).sum(1).mean())
    out["final_kl"] = {kind: v[-1] for kind, v in out["kl_by_pairs"].items()}
    out["best_kl"] = {kind: v[-1] for kind, v in out["best_kl_by_pairs"].items()}
    out["final_suboptimality"] = {kind: v[-1] for kind, v in out["suboptimality_by_pairs"].items()}
    return out


def part_online(problem, cfg):
    """Part 3 on one seed: rounds of pairs drawn from the current π_θ, against offline DPO on as many pairs.

    Keys: ``final_kl`` and ``final_suboptimality`` {offline, online}; ``kl_by_round`` {online: after
    each round, offline: at the same step counts}; ``offline_best_kl``: the smallest along the offline run.
    """
    n, rounds, steps = cfg["online_pairs"], cfg["online_rounds"], cfg["steps"]
    ref, r, beta = problem["ref"], problem["rewards"], cfg["beta"]
    star = optimum(ref, r, beta)
    per_round, steps_per_round = n // rounds, steps // rounds
    offline = run(problem, cfg, "gpt", "on_policy", n)
    policy, current = new_policy(problem, "gpt"), ref
    data = first_pairs(problem["pairs"]["on_policy"], per_round)       # round 1: the offline run's first pairs
    kl_by_round = []
    for k in range(rounds):
        if k:
            new = toy_problem.sample_preference_pairs(current, r, per_round, seed=_stream(problem["seed"], 20 + k))
            data = {key: np.concatenate([data[key], backend.to_numpy(new[key])]) for key in data}
        # each round is a DPO run of its own from the current π_θ (a fresh Adam), against the fixed π_ref
        current = ep.train_dpo(policy, data, ref, beta, steps_per_round, cfg["lr"])["logprobs"][-1]
        kl_by_round.append(kl(star, current))
    offline_at = [kl(star, lp) for s, lp in zip(offline["step"], offline["logprobs"])
                  if s in {steps_per_round * (k + 1) for k in range(rounds)}]
    return {"pairs": n, "rounds": rounds, "steps": steps,
            "final_kl": {"offline": kl(star, offline["logprobs"][-1]), "online": kl_by_round[-1]},
            "final_suboptimality": {"offline": suboptimality(offline["logprobs"][-1], ref, r, beta),
                                    "online": suboptimality(current, ref, r, beta)},
            "kl_by_round": {"online": kl_by_round, "offline": offline_at},
            "offline_best_kl": min(kl(star, lp) for lp in offline["logprobs"])}


def part_length(problem, cfg):
    """Part 4 on one seed: the averaged and the summed loss against π* and the length-tilted optimum.

    In the limit of infinitely many pairs (``population_pairs``), for the GPT and the table: the
    pairs' proposal there is uniform over the set, since the optimum of either loss does not depend
    on it (every pair only needs a positive chance) and π_ref rarely draws the long responses the
    tilted optimum favours, which would leave them barely constrained. And on the largest on-policy
    sample, for the GPT: what finitely many pairs give.
    """
    ref, r, beta, lengths = problem["ref"], problem["rewards"], cfg["beta"], problem["rs"].lengths
    star = optimum(ref, r, beta)
    tilted, _ = ep.length_tilted_optimum(ref, r, beta, lengths)

    def against(lp):
        return {"kl_to_pi_star": kl(star, lp), "kl_to_predicted": kl(tilted, lp),
                "mean_length": mean_length(lp, lengths)}

    n = max(cfg["coverage_pairs"])
    runs = {}
    for kind in ("gpt", "table"):
        lr = cfg["length_lr"] if kind == "gpt" else cfg["length_table_lr"]
        for name, average in (("averaged", True), ("summed", False)):
            runs[kind, name] = run(problem, cfg, kind, "population", lr=lr, steps=cfg["length_steps"],
                                   average=average)
    for name, average in (("averaged", True), ("summed", False)):
        runs["sampled", name] = run(problem, cfg, "gpt", "on_policy", n, average=average)
    res = {key: against(path["logprobs"][-1]) for key, path in runs.items()}
    return {**res[("gpt", "averaged")], "summed": res[("gpt", "summed")],
            "table": {"averaged": res[("table", "averaged")], "summed": res[("table", "summed")]},
            "sampled": {"pairs": n, "averaged": res[("sampled", "averaged")], "summed": res[("sampled", "summed")]},
            "kl_pi_star_to_predicted": kl(star, tilted),
            "mass": {"reference": np.exp(ref), "pi_star": np.exp(star), "predicted": np.exp(tilted),
                     "averaged": np.exp(runs["gpt", "averaged"]["logprobs"][-1]),
                     "summed": np.exp(runs["gpt", "summed"]["logprobs"][-1])},
            "mean_length_of": {"reference": mean_length(ref, lengths), "pi_star": mean_length(star, lengths),
                               "predicted": mean_length(tilted, lengths)}}


def part_beta(problem, cfg):
    """Part 5 on one seed: the exact objective along training for each β and learning rate."""
    ref, r = problem["ref"], problem["rewards"]
    n = cfg["beta_pairs"]
    pairs = first_pairs(problem["pairs"]["on_policy"], n)
    rows = []
    for beta in cfg["betas"]:
        star = optimum(ref, r, beta)
        for lr in cfg["lrs"]:
            path = run(problem, cfg, "gpt", "on_policy", n, beta=beta, lr=lr)
            gap = [suboptimality(lp, ref, r, beta) for lp in path["logprobs"]]
            best = int(np.argmin(gap))
            shift = displacement_measures(path["logprobs"][0], path["logprobs"][-1], pairs, problem["distance"],
                                          problem["prefix"])
            rows.append({"beta": beta, "lr": lr, "step": path["step"], "suboptimality": gap, "loss": path["loss"],
                         "kl_ref": [kl(lp, ref) for lp in path["logprobs"]],
                         "reward": [float((np.exp(lp) * r).sum(1).mean()) for lp in path["logprobs"]],
                         "best_step": path["step"][best], "suboptimality_best": gap[best],
                         "suboptimality_final": gap[-1], "suboptimality_start": gap[0],
                         "kl_ref_at_best": kl(path["logprobs"][best], ref), "optimum_kl_ref": kl(star, ref),
                         "final_kl": kl(star, path["logprobs"][-1]),
                         "chosen_logp_fell": shift["chosen_logp_fell"],
                         "never_compared_mass": shift["never_compared_mass"]})
    return {"pairs": n, "rows": rows}


PART_FUNCTIONS = {"displacement": part_displacement, "coverage": part_coverage, "online": part_online,
                  "length": part_length, "beta": part_beta}


# -- every seed ---------------------------------------------------------------------------------

CONSTANT = ("pairs", "rounds", "steps", "step", "beta", "lr")      # the same on every seed: kept once


def gather(per_seed, key=None):
    """Per-seed results (a list of equally shaped dicts) as one dict whose leaves are per-seed lists.

    A dict becomes a dict of gathered values (a key missing on some seed gives None there), a list
    of dicts (the β rows) a list of gathered dicts; a number or a list of numbers becomes a list over
    the seeds, except the settings in ``CONSTANT``, kept once.
    """
    first = per_seed[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for d in per_seed for k in d))
        return {k: gather([d.get(k) for d in per_seed], k) for k in keys}
    if isinstance(first, list) and first and isinstance(first[0], dict):
        return [gather(list(rows), key) for rows in zip(*per_seed)]
    if key in CONSTANT and all(v == first for v in per_seed):
        return first
    return list(per_seed)


def spread(values):
    """{"mean", "min", "max"} of per-seed values."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def run_exact_gpt(seeds=(0, 1, 2), quick=False, progress=False, **overrides):
    """The five parts on every seed; returns a JSON-ready dict.

    Keys: config (every setting), seeds, then ``displacement``, ``coverage``, ``online``, ``length``,
    ``beta``: each the per-seed results of ``part_<name>`` gathered (``gather``: every number a list
    in the order of ``seeds``), and seconds. ``quick`` starts from ``QUICK`` instead of ``DEFAULTS``;
    ``overrides`` change single settings. With ``progress``, an indicator on stderr counts the parts.
    """
    seeds = [checks.integer(s, "seeds", low=0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    cfg = dict(QUICK if quick else DEFAULTS)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {sorted(cfg)}")
    cfg.update(overrides)
    rounds = checks.integer(cfg["online_rounds"], "online_rounds", low=1)
    if cfg["online_pairs"] % rounds or cfg["steps"] % rounds or (cfg["steps"] // rounds) % cfg["log_every"]:
        raise ValueError(f"online_rounds={rounds} must divide online_pairs={cfg['online_pairs']} and steps="
                         f"{cfg['steps']}, and log_every={cfg['log_every']} the steps of a round, so that the "
                         f"offline run is measured where each round ends")
    start = time.perf_counter()
    jobs = [(seed, part) for seed in seeds for part in ("problem",) + PARTS]
    per_seed, problem = {part: [] for part in PARTS}, None
    bar = progress_bar(jobs, desc="exact-gpt", file=sys.stderr) if progress else jobs
    for seed, part in bar:
        if progress:
            bar.set_postfix(seed=seed, part=part)
        if part == "problem":
            problem = make_problem(seed, cfg)
        else:
            per_seed[part].append(PART_FUNCTIONS[part](problem, cfg))
    result = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "seeds": seeds}
    result.update({part: gather(per_seed[part]) for part in PARTS})
    result["seconds"] = time.perf_counter() - start
    return result


# -- the report ---------------------------------------------------------------------------------

def _line(label, values, fmt=".3f", width=44):
    cells = " ".join(f"{v:>9{fmt}}" for v in values)
    s = spread(values)
    return f"  {label:<{width}} {cells}   {s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def _head(result):
    return f"  {'':<44} " + " ".join(f"{'seed ' + str(s):>9}" for s in result["seeds"]) + "   mean (min–max)"


def _displacement_lines(d):
    out = [f"1. displacement: {d['pairs']} pairs from π_ref; over the pairs with y_w ≠ y_l"]
    for name, m in (("GPT", d), ("log-linear", d["log_linear"]), ("table", d["table"])):
        out += [_line(f"{name}: log π(y_w) fell (fraction of pairs)", m["chosen_logp_fell"]),
                _line(f"{name}: … while the margin grew", m["fell_while_margin_grew"]),
                _line(f"{name}: log π(y_l) fell", m["rejected_logp_fell"]),
                _line(f"{name}: y that only ever won: log π fell", m["only_chosen_fell"]),
                _line(f"{name}: never-compared mass, before", m["never_compared_mass"]["before"]),
                _line(f"{name}: never-compared mass, after", m["never_compared_mass"]["after"]),
                _line(f"{name}:   moved onto more prefix with a y_w", m["mass_moved"]["prefix_chosen"]),
                _line(f"{name}:   moved onto more prefix with a y_l", m["mass_moved"]["prefix_rejected"]),
                _line(f"{name}:   moved onto as much with both", m["mass_moved"]["prefix_equal"]),
                _line(f"{name}: KL(π*‖π_θ) at the end", m["final_kl"])]
    return out


def _coverage_lines(c):
    out = ["2. coverage: KL(π*‖π_θ) after training, by the source and number of the pairs",
           _line("π_ref, where every run starts", c["start_kl"])]
    for kind in ("on_policy", "off_policy", "low_coverage"):
        out += [_line(f"{kind}, {n} pairs", [v[i] for v in c["kl_by_pairs"][kind]]) for i, n in enumerate(c["pairs"])]
        out += [_line(f"{kind}, {c['pairs'][-1]} pairs, best along the run", c["best_kl"][kind]),
                _line(f"{kind}: π* mass on compared responses", c["star_mass_compared"][kind])]
    return out


def _online_lines(o):
    return [f"3. online: {o['pairs']} pairs in {o['rounds']} rounds drawn from the current π_θ, against offline "
            f"(all from π_ref); {o['steps']} steps each",
            _line("KL(π*‖π_θ), offline", o["final_kl"]["offline"]),
            _line("KL(π*‖π_θ), online", o["final_kl"]["online"]),
            _line("offline, best along its run", o["offline_best_kl"]),
            _line("J(π*) − J(π_θ), offline", o["final_suboptimality"]["offline"]),
            _line("J(π*) − J(π_θ), online", o["final_suboptimality"]["online"])]


def _length_lines(n):
    out = ["4. length: the per-token-averaged loss against the summed one, on every pair (uniform proposal)",
           _line("KL(π*‖π_tilted): how far apart the two are", n["kl_pi_star_to_predicted"])]
    for label, m in (("GPT, averaged", n), ("GPT, summed", n["summed"]), ("table, averaged", n["table"]["averaged"]),
                     ("table, summed", n["table"]["summed"]),
                     (f"GPT, averaged, {n['sampled']['pairs']} sampled pairs", n["sampled"]["averaged"]),
                     (f"GPT, summed, {n['sampled']['pairs']} sampled pairs", n["sampled"]["summed"])):
        out += [_line(f"{label}: KL(π*‖π_θ)", m["kl_to_pi_star"]),
                _line(f"{label}: KL(π_tilted‖π_θ)", m["kl_to_predicted"])]
    return out + [_line("E|y| under π_ref", n["mean_length_of"]["reference"]),
                  _line("E|y| under π*", n["mean_length_of"]["pi_star"]),
                  _line("E|y| under π_tilted", n["mean_length_of"]["predicted"]),
                  _line("E|y| under the GPT, averaged loss", n["mean_length"])]


def _beta_lines(b):
    out = [f"5. β and the learning rate: J(π*_β) − J(π_θ) = β KL(π_θ‖π*_β) along runs on "
           f"{b['pairs']} pairs"]
    for row in b["rows"]:
        tag = f"β {row['beta']:g}, lr {row['lr']:g}:"
        out += [_line(f"{tag} step where J is highest", row["best_step"], ".0f"),
                _line(f"{tag} J(π*) − J(π_θ) at the start", row["suboptimality_start"]),
                _line(f"{tag}   … at the best step", row["suboptimality_best"]),
                _line(f"{tag}   … at the end", row["suboptimality_final"]),
                _line(f"{tag} KL(π_θ‖π_ref) at the best step", row["kl_ref_at_best"]),
                _line(f"{tag} KL(π*‖π_ref)", row["optimum_kl_ref"]),
                _line(f"{tag} log π(y_w) fell", row["chosen_logp_fell"])]
    return out


def format_part(result, part):
    """One part's numbers as a table: one column per seed, then mean (min–max)."""
    lines = {"displacement": _displacement_lines, "coverage": _coverage_lines, "online": _online_lines,
             "length": _length_lines, "beta": _beta_lines}[part](result[part])
    return "\n".join(lines[:1] + [_head(result)] + lines[1:])


def format_report(result):
    """Every part's table, under a line that says what was run."""
    cfg = result["config"]
    n = toy_problem.count_responses(cfg["vocab_size"], cfg["max_length"] + 1, eos=True)
    head = (f"exact-gpt: the GPT ({cfg['n_layer']} layer, {cfg['n_embd']} channels, float64) on {cfg['n_prompts']} "
            f"prompts × {n} responses (0–{cfg['max_length']} of {cfg['vocab_size']} content tokens, then the end "
            f"token); β {cfg['beta']:g}; every DPO run: {cfg['steps']} full-batch Adam steps at lr {cfg['lr']:g} "
            f"from π_ref (the GPT after SFT)")
    return "\n\n".join([head] + [format_part(result, part) for part in PARTS] + [f"({result['seconds']:.0f} s)"])


def print_report(result, file=None):
    print(format_report(result), file=sys.stdout if file is None else file)


# -- figures ------------------------------------------------------------------------------------

PANELS = ("displacement", "moved", "coverage", "online", "length", "beta")
POLICIES = (("GPT", lambda d: d), ("log-linear", lambda d: d["log_linear"]), ("table", lambda d: d["table"]))


def _bars(ax, groups, labels, per_seed):
    """Grouped bars of the mean over seeds with min–max whiskers: per_seed[g][i] a per-seed list."""
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        s = [spread(per_seed[g][i]) for g in range(len(groups))]
        xs = np.arange(len(groups)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(xs, [v["mean"] for v in s], width, label=label,
               yerr=[[v["mean"] - v["min"] for v in s], [v["max"] - v["mean"] for v in s]], capsize=3)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.legend(fontsize="small")


def _band(ax, x, per_seed, label, **kw):
    """The mean over seeds as a line, the min–max as a shaded band; per_seed: a list (seeds) of curves."""
    a = np.asarray(per_seed, dtype=np.float64)
    line, = ax.plot(x, a.mean(axis=0), label=label, **kw)
    ax.fill_between(x, a.min(axis=0), a.max(axis=0), color=line.get_color(), alpha=0.2)


def draw_panel(ax, result, name):
    """Draw one question's answer on ``ax``: one of ``PANELS`` (matplotlib axes, any figure)."""
    d, c, o, n, b = (result[p] for p in PARTS)
    if name == "displacement":
        _bars(ax, [p for p, _ in POLICIES], ["log π(y_w) fell (fraction of pairs)", "never-compared mass, before",
                                             "never-compared mass, after"],
              [[get(d)["chosen_logp_fell"], get(d)["never_compared_mass"]["before"],
                get(d)["never_compared_mass"]["after"]] for _, get in POLICIES])
        ax.set_ylabel("fraction of pairs / probability")
        ax.set_title(f"1. displacement: DPO on {d['pairs']} pairs from π_ref", fontsize="medium")
    elif name == "moved":
        _bars(ax, [p for p, _ in POLICIES], ["shares more prefix with a y_w", "with a y_l", "as much with both"],
              [[get(d)["mass_moved"][k] for k in ("prefix_chosen", "prefix_rejected", "prefix_equal")]
               for _, get in POLICIES])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("probability moved onto never-compared y")
        ax.set_title("1. where it went: onto never-compared y that …", fontsize="medium")
    elif name == "coverage":
        for kind in ("on_policy", "off_policy", "low_coverage"):
            _band(ax, c["pairs"], c["kl_by_pairs"][kind], kind.replace("_", " "), marker="o")
        ax.axhline(np.mean(c["start_kl"]), color="grey", linestyle=":", label="π_ref, where every run starts")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(c["pairs"], [str(n) for n in c["pairs"]])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("preference pairs (count)")
        ax.set_ylabel("KL(π* ‖ π_θ) after training (nats)")
        ax.set_title("2. coverage: where the pairs come from", fontsize="medium")
        ax.legend(fontsize="small")
    elif name == "online":
        steps = [o["steps"] * (k + 1) // o["rounds"] for k in range(o["rounds"])]
        _band(ax, steps, o["kl_by_round"]["online"], f"online: {o['pairs'] // o['rounds']} new pairs a round",
              marker="o")
        _band(ax, steps, o["kl_by_round"]["offline"], f"offline: all {o['pairs']} pairs from π_ref", marker="s")
        ax.set_xlabel("optimizer steps (rounds for online)")
        ax.set_ylabel("KL(π* ‖ π_θ) (nats)")
        ax.set_title("3. online vs offline: equal pairs, equal steps", fontsize="medium")
        ax.legend(fontsize="small")
    elif name == "length":
        rows = [("GPT\naveraged", n), ("GPT\nsummed", n["summed"]), ("table\naveraged", n["table"]["averaged"]),
                ("table\nsummed", n["table"]["summed"])]
        _bars(ax, [r for r, _ in rows], ["KL(π* ‖ π_θ)", "KL(π_tilted ‖ π_θ)"],
              [[m["kl_to_pi_star"], m["kl_to_predicted"]] for _, m in rows])
        ax.set_ylabel("nats")
        ax.set_title("4. length: averaged or summed loss, on every pair", fontsize="medium")
    elif name == "beta":
        styles = ["-", "--", ":", "-."]
        lrs = sorted({row["lr"] for row in b["rows"]})
        betas = sorted({row["beta"] for row in b["rows"]})
        for row in b["rows"]:
            gap = np.asarray(row["suboptimality"]) / np.asarray(row["suboptimality_start"])[:, None]
            ax.plot(row["step"], gap.mean(axis=0), label=f"β {row['beta']:g}, lr {row['lr']:g}",
                    color=f"C{betas.index(row['beta'])}", linestyle=styles[lrs.index(row["lr"]) % len(styles)])
        ax.axhline(1, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("(J(π*) − J(π_θ)) / (J(π*) − J(π_ref))")
        ax.set_title(f"5. over-optimization: {b['pairs']} pairs (mean over seeds)", fontsize="medium")
        ax.legend(fontsize="x-small", ncol=len(betas))
    else:
        raise ValueError(f"name must be one of {PANELS}, got {name!r}")


def plot_exact_gpt(result, path="runs/exact_gpt/exact_gpt.png"):
    """Every panel of ``draw_panel`` in one figure (2 × 3), written to ``path``; returns ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    fig = Figure(figsize=(18, 10))
    FigureCanvasAgg(fig)
    for ax, name in zip(fig.subplots(2, 3).ravel(), PANELS):
        draw_panel(ax, result, name)
    fig.suptitle(f"DPO on the tiny GPT over an enumerated response set: seeds {', '.join(map(str, result['seeds']))} "
                 f"(mean; whiskers and bands: min–max)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
