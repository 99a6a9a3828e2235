"""After DPO, on a problem with a known answer: which successors aim at π*_β, and where the others land.

``python -m dpo_np successors`` trains eight methods on the same enumerated problem, from the same
start (π_θ = π_ref), and measures each final policy against the exact optimum of the notes' RLHF
objective J(π) = E_π[r] − β KL(π ‖ π_ref) (DPO paper eq. 3):

    dpo, ipo, simpo, orpo   preference pairs (x, y_w, y_l), Bradley–Terry labels under the true r
    kto                     the same pairs split into (x, y_w, desirable) and (x, y_l, undesirable)
    rloo, grpo, dr_grpo     K responses sampled per prompt from π_θ, each scored by the true r

Each method gets the same data budget: n pairs are 2n responses, so KTO gets 2n labelled examples
and the RL methods 2n reward queries (a query returns r(x, y) itself, more than a comparison does).
The problem is ``closed_form``'s with an end token (``toy_problem.enumerate_responses(eos=True)``),
so responses have 1 to L tokens: SimPO, ORPO and IPO read per-token averages, and GRPO divides by
|y|, which on fixed-length responses would only rescale β and so hide what they change.

Per method and seed: ``final_kl`` = KL(π*_β ‖ π_θ), ``suboptimality`` = J(π*_β) − J(π_θ)
(= β KL(π_θ ‖ π*_β)), ``kl_to_own_optimum`` = KL(π_own ‖ π_θ) where the loss's own optimum π_own is
derived (``successor_optima``), and the point (KL(π_θ ‖ π_ref), E_π_θ[r]) against the exact frontier
(``rlhf_toy.frontier_gap``); means over prompts.

The policy is a table of logits over whole responses (π_θ(y|x) = softmax_y θ[x, y]), behind a small
interface — ``sequence_logprobs()``, ``token_logprobs()`` and ``update(d_sequence, d_token)`` — so
that a shared-parameter policy scoring the same enumerated set plugs into the same loops. Which
optima below are the minimizers is a tabular fact: a policy that cannot represent π_own stops
elsewhere.
"""

import math
import os
import sys
import time

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rl, rlhf, successors
from dpo_np.experiments import successor_optima as optima
from dpo_np.experiments import toy_problem
from dpo_np.experiments.closed_form import aggregate_pairs
from dpo_np.experiments.plots import save_figure
from dpo_np.experiments.rlhf_toy import frontier_gap, frontier_point, sample_responses
from dpo_np.losses import dpo_loss
from dpo_np.optim import AdamW, cosine_schedule
from dpo_np.progress import progress as progress_bar

METHODS = ("dpo", "ipo", "simpo", "orpo", "kto", "rloo", "grpo", "dr_grpo")
PROBLEM = dict(vocab_size=3, length=4, n_prompts=4, reference_scale=0.5, reward_scale=0.5)   # 40 responses
DEFAULTS = dict(beta=0.5, pairs=100_000, steps=1000, lr=0.05, samples=16, rl_lr=0.05, clip_eps=0.2,
                simpo_beta=2.0, simpo_gamma=1.0, orpo_lambda=0.1)
#: seconds instead of minutes: every method on little data and few steps (a first look, and tests)
QUICK = dict(pairs=4_000, steps=150, samples=8)
OPTIMA = {"dpo": "π*_β (DPO paper eq. 4)", "ipo": "IPO's optimum on per-token averages (ipo_optimum)",
          "simpo": "SimPO's population minimizer (simpo_optimum)", "orpo": None, "kto": None,
          "rloo": "π*_β (the RLHF objective's gradient, unbiased)", "grpo": None,
          "dr_grpo": "the per-token forward-KL fixed point at β·K/(K − 1) (token_forward_kl_fixed_point)"}


# -- the problem and the policy --------------------------------------------------------------

def make_problem(seed, beta=DEFAULTS["beta"], eos=True, **sizes):
    """The enumerated problem of ``seed``: a dict of responses (N, T), lengths (N,), the prefix
    structure, log π_ref (P, N) and per token (P, N, T), r (P, N), β and log π*_β (P, N).
    ``sizes`` override ``PROBLEM``; ``eos=False``: every response has exactly ``length`` tokens."""
    p = {**PROBLEM, **sizes}
    responses = toy_problem.enumerate_responses(p["vocab_size"], p["length"], eos=eos)
    table = toy_problem.random_reference_table(p["n_prompts"], p["vocab_size"], p["length"], seed=seed, eos=eos,
                                               scale=p["reference_scale"])
    # the problem's tables live on the host; a policy's parameters on the device (``TabularPolicy``)
    ref = backend.to_numpy(toy_problem.sequence_logprobs(table, responses), np.float64)
    rewards = backend.to_numpy(toy_problem.random_rewards(responses, p["n_prompts"], p["vocab_size"], seed=seed + 1,
                                                          scale=p["reward_scale"]), np.float64)
    structure = optima.prefix_structure(responses)
    return {"responses": responses, "lengths": optima.response_lengths(responses), "structure": structure,
            "ref": ref, "ref_tokens": optima.token_logprobs(ref, structure), "rewards": rewards,
            "beta": rlhf.check_beta(beta), "star": backend.to_numpy(rlhf.optimal_policy(ref, rewards, beta)),
            "description": f"tabular toy, {dict(p, eos=eos)}"}


class TabularPolicy:
    """π_θ(y|x) = softmax_y θ[x, y] over the enumerated responses, started at π_ref, trained by Adam.

    The interface the experiment's loops use, and all a shared-parameter policy has to offer:
    ``sequence_logprobs()`` log π_θ(y|x) (P, N); ``token_logprobs()`` log π_θ(y_t|x, y_<t) (P, N, T),
    0 at padding; ``update(d_sequence, d_token, lr)`` one optimizer step from dL/dlog π_θ(y|x)
    and/or dL/dlog π_θ(y_t|x, y_<t), the gradient of whatever loss the caller computed from them.
    """

    def __init__(self, problem, lr):
        self.structure = problem["structure"]
        self.theta = backend.asarray(np.array(problem["ref"], dtype=np.float64))       # on the device
        self.adam = AdamW({"theta": self.theta}, lr=checks.positive(lr, "lr"), weight_decay=0.0)

    def sequence_logprobs(self):
        """log π_θ(y|x) (P, N), a host table like the problem's."""
        return backend.to_numpy(ag.log_softmax(self.theta, axis=-1).data, np.float64)

    def token_logprobs(self):
        return optima.token_logprobs(self.sequence_logprobs(), self.structure)

    def gradient(self, d_sequence=None, d_token=None):
        """dL/dθ (P, N) from dL/dlog π_θ(y|x) and/or dL/dlog π_θ(y_t|x, y_<t): the chain rule back."""
        if d_sequence is None and d_token is None:
            raise ValueError("a gradient needs d_sequence or d_token: the gradient of a loss to follow")
        th = ag.Tensor(self.theta, requires_grad=True)
        lp = ag.log_softmax(th, axis=-1)
        terms = [] if d_sequence is None else [(lp * d_sequence).sum()]
        if d_token is not None:
            terms.append((optima.token_logprobs(lp, self.structure) * d_token).sum())
        sum(terms[1:], terms[0]).backward()
        return th.grad

    def update(self, d_sequence=None, d_token=None, lr=None):
        self.adam.step({"theta": self.gradient(d_sequence, d_token)}, lr=lr)


# -- training, one loop per kind of data ---------------------------------------------------------

def _averaged(method):
    return method in ("ipo", "simpo", "orpo")                 # the trainer's AVERAGED_LOSSES


def train_pairs(policy, problem, triples, method, steps, settings):
    """Full-batch Adam on the count-weighted mean loss over the distinct triples (x, y_w, y_l, count)."""
    x, w, l, counts = triples
    weight = counts / counts.sum()
    scale = 1.0 / problem["lengths"] if _averaged(method) else np.ones_like(problem["lengths"])
    ref = problem["ref"] * scale
    options = {"dpo": dict(loss_type="sigmoid", beta=problem["beta"]),
               "ipo": dict(loss_type="ipo", beta=problem["beta"]),
               "simpo": dict(loss_type="simpo", beta=settings["simpo_beta"], simpo_gamma=settings["simpo_gamma"],
                             reference_free=True),
               "orpo": dict(loss_type="orpo", beta=settings["orpo_lambda"], reference_free=True)}[method]
    refs = () if options.get("reference_free") else (ref[x, w], ref[x, l])
    for _ in range(steps):
        seq = ag.Tensor(policy.sequence_logprobs(), requires_grad=True)
        lp = seq * scale                                       # log π, or its per-token mean
        losses, _, _ = dpo_loss(lp[x, w], lp[x, l], *refs, **options)
        (losses * weight).sum().backward()
        policy.update(d_sequence=seq.grad)


def sampled_triples(problem, n_pairs, seed):
    """``n_pairs`` Bradley–Terry pairs drawn from π_ref with ``seed`` (``toy_problem.sample_preference_pairs``),
    as the distinct triples (x, y_w, y_l, count) that ``train_pairs`` reads."""
    pairs = toy_problem.sample_preference_pairs(problem["ref"], problem["rewards"], n_pairs, seed=seed)
    triples = aggregate_pairs(pairs["prompt"], pairs["chosen"], pairs["rejected"], problem["ref"].shape[1])
    return tuple(backend.to_numpy(a) for a in triples)


def population_triples(problem):
    """Every triple (x, y_w, y_l) with its exact probability under the pair sampling (``pair_population``)
    in place of a count: training on it minimizes the population loss, the limit of infinitely many pairs."""
    W = optima.pair_population(problem["ref"], problem["rewards"])
    x, w, l = np.nonzero(W > 0)
    return x, w, l, W[x, w, l]


def kto_examples(triples):
    """The pairs as unpaired examples: (x, y_w) desirable and (x, y_l) undesirable, each with its pair's count."""
    x, w, l, counts = triples
    return np.concatenate([x, x]), np.concatenate([w, l]), np.repeat([True, False], len(x)), np.concatenate([counts, counts])


def train_kto(policy, problem, examples, steps, settings):
    """Full-batch Adam on KTO's loss, z_ref the exact mean KL(π_θ ‖ π_ref) over prompts at each step
    (the quantity the paper's batch estimate stands for), held constant within the step."""
    x, y, desirable, counts = examples
    weight = counts / counts.sum()
    ref = problem["ref"]
    for _ in range(steps):
        lp = policy.sequence_logprobs()
        z = float(rlhf.kl_divergence(lp, ref).mean())
        seq = ag.Tensor(lp, requires_grad=True)
        losses = successors.kto_loss(seq[x, y], ref[x, y], desirable, z, beta=problem["beta"])
        (losses * weight).sum().backward()
        policy.update(d_sequence=seq.grad)


def train_group(policy, problem, method, steps, samples, settings, seed):
    """RLOO, GRPO or Dr. GRPO: each step samples K responses per prompt from π_θ, scores them with the
    true r, and takes one Adam step on the method's loss (one update per batch: ratio 1 at the step,
    as the standard trainers run by default), the learning rate decaying to 0 on a cosine."""
    gen = backend.rng(seed)
    for step in range(steps):
        old = policy.sequence_logprobs()
        y = sample_responses(old, samples, gen)                               # (P, K): P·K reward queries
        tokens = None if method == "rloo" else policy.token_logprobs()
        policy.update(**group_gradient(problem, method, old, tokens, y, settings["clip_eps"]),
                      lr=cosine_schedule(step, settings["rl_lr"], 0, steps))


def group_gradient(problem, method, old, old_tokens, y, clip_eps):
    """The gradient of one batch's loss with respect to the log-probabilities it reads, at θ = θ_old:
    {"d_sequence": (P, N)} for RLOO (a sequence-level surrogate, KL in the reward), {"d_token":
    (P, N, T)} for GRPO and Dr. GRPO (per-token surrogates with the k3 term). y (P, K): the samples."""
    ref, r, beta = problem["ref"], problem["rewards"], problem["beta"]
    rows = np.arange(y.shape[0])[:, None]
    xs, ys = np.repeat(np.arange(y.shape[0]), y.shape[1]), y.ravel()
    if method == "rloo":
        penalized = rl.kl_penalized_reward(r[rows, y], old[rows, y], ref[rows, y], beta)
        seq = ag.Tensor(old, requires_grad=True)
        rl.ppo_clip_loss(seq[xs, ys], old[xs, ys], rl.rloo_advantages(penalized).ravel(), clip_eps).backward()
        return {"d_sequence": seq.grad}
    advantages = rl.grpo_advantages(r[rows, y], scale_rewards=method == "grpo").ravel()
    tok = ag.Tensor(old_tokens, requires_grad=True)
    rl.grpo_loss(tok[xs, ys], old_tokens[xs, ys], problem["ref_tokens"][xs, ys], advantages,
                 mask=problem["structure"]["real"][ys], beta=beta, clip_eps=clip_eps, loss_type=method,
                 max_completion_length=old_tokens.shape[-1]).backward()
    return {"d_token": tok.grad}


# -- the optimum each method aims at --------------------------------------------------------------

def own_optimum(method, problem, settings):
    """log π of the policy ``method`` converges to on this problem, where it is derived; else None."""
    ref, r, beta, lengths = problem["ref"], problem["rewards"], problem["beta"], problem["lengths"]
    if method in ("dpo", "rloo"):
        return problem["star"]
    if method == "ipo":
        return optima.ipo_optimum(ref, r, lengths, beta)
    if method == "simpo":
        return optima.simpo_optimum(r, lengths, settings["simpo_beta"], settings["simpo_gamma"],
                                    weights=optima.pair_population(ref, r))
    if method == "dr_grpo":
        K = settings["samples"]
        return optima.token_forward_kl_fixed_point(ref, r, problem["responses"], beta * K / (K - 1))
    return None


def measure(logprobs, problem, own=None):
    """Where a final policy landed: KL(π*_β ‖ π_θ), J(π*_β) − J(π_θ), KL(π_own ‖ π_θ), and its
    reward–KL point with the gap below the exact frontier (means over prompts)."""
    ref, r, beta, star = problem["ref"], problem["rewards"], problem["beta"], problem["star"]
    kl_ref, reward, gap = frontier_gap(logprobs, ref, r)
    j = lambda lp: float(rlhf.rlhf_objective(lp, ref, r, beta).mean())       # noqa: E731
    return {"final_kl": float(rlhf.kl_divergence(star, logprobs).mean()),
            "suboptimality": j(star) - j(logprobs),
            "kl_to_own_optimum": None if own is None else float(rlhf.kl_divergence(own, logprobs).mean()),
            "kl_ref": kl_ref, "reward": reward, "frontier_gap": gap}


# -- the experiment ---------------------------------------------------------------------------

def run_method(method, problem, data, settings, seed, policy_factory=TabularPolicy):
    """Train ``method`` from π_ref on this problem and its data; returns (log π_θ (P, N), measurements)."""
    steps, samples = settings["steps"], settings["samples"]
    if method in ("rloo", "grpo", "dr_grpo"):
        policy = policy_factory(problem, settings["rl_lr"])
        rl_steps = max(1, 2 * settings["pairs"] // (problem["ref"].shape[0] * samples))
        train_group(policy, problem, method, rl_steps, samples, settings, seed + 10)
    else:
        policy = policy_factory(problem, settings["lr"])
        if method == "kto":
            train_kto(policy, problem, kto_examples(data), steps, settings)
        else:
            train_pairs(policy, problem, data, method, steps, settings)
    logprobs = policy.sequence_logprobs()
    return logprobs, measure(logprobs, problem, own_optimum(method, problem, settings))


def run_successors(seeds=(0, 1, 2), quick=False, progress=True, methods=METHODS, problem_factory=make_problem,
                   policy_factory=TabularPolicy, **overrides):
    """Every method of ``methods`` on the problem of each seed; returns a JSON-ready dict.

    ``problem_factory(seed, beta)`` builds each seed's problem (``make_problem``'s keys) and
    ``policy_factory(problem, lr)`` each policy (``TabularPolicy``'s three methods): another
    enumerated problem or a shared-parameter policy plugs in there.

    Keys: one per method (``dpo`` … ``dr_grpo``), each {final_kl, suboptimality, kl_to_own_optimum,
    kl_ref, reward, frontier_gap: {mean, min, max, per_seed}, optimum (what its own optimum is, or
    None), data (its budget)}; ``config``; ``frontier`` (the first seed's curve, π*_β and every
    method's point and own optimum there, for the figure); ``seconds``. Overrides: any key of
    ``DEFAULTS``. The pairs of seed s are drawn with seed s + 2 (``sampled_triples``, as ``closed_form``
    draws them), the RL samples with s + 10.
    """
    start = time.perf_counter()
    seeds = [checks.integer(s, "seeds", low=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; choose from {sorted(DEFAULTS)}")
    methods = [checks.choice(m, "methods", METHODS) for m in methods]
    settings = _settings({**DEFAULTS, **(QUICK if quick else {}), **overrides})
    jobs = [(s, m) for s in seeds for m in methods]
    bar = progress_bar(jobs, desc="successors", file=sys.stderr) if progress else jobs
    per_seed, seconds, problems = {m: [] for m in methods}, {m: 0.0 for m in methods}, {}
    for seed, method in bar:
        if seed not in problems:
            problems[seed] = problem_factory(seed, settings["beta"])
            problems[seed]["triples"] = sampled_triples(problems[seed], settings["pairs"], seed + 2)
        if progress:
            bar.set_postfix(run=f"{method}:{seed}")
        t = time.perf_counter()
        logprobs, measured = run_method(method, problems[seed], problems[seed]["triples"], settings, seed,
                                        policy_factory)
        seconds[method] += time.perf_counter() - t
        per_seed[method].append({"seed": seed, **measured, "logprobs": logprobs})
    out = {m: _summary(per_seed[m], m, settings, problems[seeds[0]]) for m in methods}
    out["frontier"] = _frontier(problems[seeds[0]], {m: per_seed[m][0] for m in methods}, settings)
    first = problems[seeds[0]]
    P, N = first["ref"].shape
    out["config"] = {"problem": {"description": first.get("description"), "n_prompts": P, "responses": N,
                                 "max_tokens": int(first["lengths"].max())},
                     "seeds": seeds, "methods": methods, "quick": bool(quick), **settings,
                     "rl_steps": max(1, 2 * settings["pairs"] // (P * settings["samples"]))}
    out["seconds"] = {**seconds, "total": time.perf_counter() - start}
    return out


def _settings(s):
    """Every setting checked by name."""
    for name in ("pairs", "steps", "samples"):
        s[name] = checks.integer(s[name], name, low=2 if name == "samples" else 1)
    for name in ("beta", "lr", "rl_lr", "clip_eps", "simpo_beta"):
        s[name] = checks.positive(s[name], name)
    for name in ("simpo_gamma", "orpo_lambda"):
        s[name] = checks.number(s[name], name, low=0.0)
    return s


def _spread(values):
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "per_seed": values}


def _summary(rows, method, settings, problem):
    keys = ("final_kl", "suboptimality", "kl_to_own_optimum", "kl_ref", "reward", "frontier_gap")
    out = {k: None if rows[0][k] is None else _spread([r[k] for r in rows]) for k in keys}
    n, P, K = settings["pairs"], problem["ref"].shape[0], settings["samples"]
    rl_steps = max(1, 2 * n // (P * K))
    out["data"] = {"dpo": f"{n:,} pairs", "ipo": f"{n:,} pairs", "simpo": f"{n:,} pairs", "orpo": f"{n:,} pairs",
                   "kto": f"{2 * n:,} unpaired examples (each pair split)"}.get(
        method, f"{rl_steps * P * K:,} reward queries ({rl_steps:,} steps × {P} prompts × {K} samples)")
    out["optimum"] = OPTIMA[method]
    out["seeds"] = [r["seed"] for r in rows]
    return out


def _frontier(problem, first, settings):
    """The first seed's exact frontier, π*_β, and each method's final point and own optimum on it."""
    ref, r = problem["ref"], problem["rewards"]
    betas = np.logspace(-2, 1.5, 60)
    curve = [frontier_point(ref, r, b) for b in betas]
    points = {}
    for method, row in first.items():
        own = own_optimum(method, problem, settings)
        points[method] = {"kl_ref": row["kl_ref"], "reward": row["reward"],
                          "own_optimum": None if own is None else list(frontier_point_of(own, problem))}
    return {"seed": first[next(iter(first))]["seed"], "beta": problem["beta"],
            "curve": {"beta": betas.tolist(), "kl": [c[0] for c in curve], "reward": [c[1] for c in curve]},
            "optimum": list(frontier_point_of(problem["star"], problem)), "points": points}


def frontier_point_of(logprobs, problem):
    """(mean_x KL(π ‖ π_ref), mean_x E_π[r]) of any policy: where it sits in the reward–KL plane."""
    return (float(rlhf.kl_divergence(logprobs, problem["ref"]).mean()),
            float((np.exp(logprobs) * problem["rewards"]).sum(axis=-1).mean()))


# -- printing and the figure ---------------------------------------------------------------------

LABELS = {"dpo": "DPO", "ipo": "IPO", "simpo": "SimPO", "orpo": "ORPO", "kto": "KTO", "rloo": "RLOO",
          "grpo": "GRPO", "dr_grpo": "Dr. GRPO"}


def print_successors_report(result, file=None):
    """The landing points of ``run_successors`` as a table: mean [min–max] over the seeds."""
    out = sys.stdout if file is None else file
    cfg = result["config"]
    print(f"after DPO on the enumerated problem: {cfg['problem']['responses']} responses (1 to "
          f"{cfg['problem']['max_tokens']} tokens) × {cfg['problem']['n_prompts']} prompts, β = {cfg['beta']:g}, "
          f"seeds {', '.join(map(str, cfg['seeds']))}", file=out)
    print(f"SimPO β = {cfg['simpo_beta']:g}, γ = {cfg['simpo_gamma']:g}; ORPO λ = {cfg['orpo_lambda']:g}; "
          f"pairs and KTO: {cfg['steps']} full-batch steps; RL: {cfg['samples']} samples per prompt per step",
          file=out)
    cell = lambda s: "—" if s is None else f"{s['mean']:.3e} [{s['min']:.1e}–{s['max']:.1e}]"   # noqa: E731
    print(f"\n{'method':<9} {'KL(π*_β‖π_θ)':>28} {'J(π*_β)−J(π_θ)':>28} {'KL(π_own‖π_θ)':>28} "
          f"{'KL(π_θ‖π_ref)':>14} {'E[r]':>8}  data", file=out)
    for m in cfg["methods"]:
        s = result[m]
        print(f"{LABELS[m]:<9} {cell(s['final_kl']):>28} {cell(s['suboptimality']):>28} "
              f"{cell(s['kl_to_own_optimum']):>28} {s['kl_ref']['mean']:>14.4f} {s['reward']['mean']:>8.4f}  "
              f"{s['data']}", file=out)
    print("\nπ_own: " + "; ".join(f"{LABELS[m]}: {result[m]['optimum'] or 'none derived'}" for m in cfg["methods"]),
          file=out)


def draw_landings(ax, frontier, methods, squares=None):
    """On ``ax``, the reward–KL plane of ``run_successors``' "frontier": the exact frontier, π*_β, each
    method's landing point (a dot in its colour) and own optimum (a ring), and ``squares``' points
    ({method: {"kl_ref", "reward"}}, hollow squares: another policy's landings on the same problem)."""
    fr = frontier
    ax.plot(fr["curve"]["kl"], fr["curve"]["reward"], color="black", linewidth=1.2, label="exact frontier (π*_β′, all β′)")
    ax.scatter(*fr["optimum"], marker="*", s=260, color="black", zorder=2, label=f"π*_β, β = {fr['beta']:g}")
    for i, m in enumerate(methods):
        p = fr["points"][m]
        ax.scatter(p["kl_ref"], p["reward"], s=60, color=f"C{i}", zorder=4, label=LABELS[m])
        if p["own_optimum"] is not None:
            ax.scatter(*p["own_optimum"], s=140, facecolors="none", edgecolors=f"C{i}", linewidths=1.5, zorder=3)
        if squares is not None:
            ax.scatter(squares[m]["kl_ref"], squares[m]["reward"], s=60, marker="s", facecolors="none",
                       edgecolors=f"C{i}", zorder=4)
    ax.set_xlabel("mean over prompts of KL(π ‖ π_ref) (nats)")
    ax.set_ylabel("mean over prompts of E_π[r]")
    points = list(fr["points"].values()) + ([] if squares is None else [squares[m] for m in methods])
    shown = [fr["optimum"]] + [(p["kl_ref"], p["reward"]) for p in points] + \
        [p["own_optimum"] for p in fr["points"].values() if p["own_optimum"] is not None]
    right = max(k for k, _ in shown) * 1.25
    top = max([r for k, r in zip(fr["curve"]["kl"], fr["curve"]["reward"]) if k <= right] + [r for _, r in shown])
    ax.set_xlim(0, right)
    ax.set_ylim(min(r for _, r in shown) - 0.1, top + 0.1)
    ax.legend(fontsize="small", loc="upper left", ncol=2)       # above the frontier no policy can be


def plot_successors(result, path="runs/successors/successors.png"):
    """The first seed's reward–KL plane (the exact frontier, π*_β, each method's landing point and its
    own optimum) beside KL(π*_β ‖ π_θ) of every method on every seed; returns ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    ax, ax_kl = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    fr, cfg = result["frontier"], result["config"]
    draw_landings(ax, fr, cfg["methods"])
    ax.set_title(f"where each method lands (seed {fr['seed']}); rings: its own derived optimum", fontsize="medium")
    for i, m in enumerate(cfg["methods"]):
        values = result[m]["final_kl"]["per_seed"]
        ax_kl.scatter([i] * len(values), values, color=f"C{i}", s=25)
        own = result[m]["kl_to_own_optimum"]
        if own is not None:
            ax_kl.scatter([i + 0.25] * len(own["per_seed"]), np.maximum(own["per_seed"], 1e-12), marker="x",
                          color=f"C{i}", s=25)
    ax_kl.set_yscale("log")
    ax_kl.set_xticks(range(len(cfg["methods"])), [LABELS[m] for m in cfg["methods"]], rotation=30)
    ax_kl.set_ylabel("nats")
    ax_kl.set_title(f"dots: KL(π*_β ‖ π_θ); crosses: KL(π_own ‖ π_θ); seeds {', '.join(map(str, cfg['seeds']))}",
                    fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
