"""After DPO with shared parameters: the eight methods of ``successors`` with the project's GPT as π_θ.

``python -m dpo_np successors`` (``--policy gpt``, or ``both``, the default) trains DPO, IPO, SimPO,
ORPO, KTO, RLOO, GRPO and Dr. GRPO again, with π_θ the project's GPT (``model.py``: 1 layer, 8
channels, float64; its hand-written backward) scored exactly on an enumerated set through
``exact_policies.GPTPolicy``, and measures where each lands against π*_β as the tabular run does.

- **The set** is the tabular problem's: 40 responses of 0–3 content tokens and an end token
  (``successors.make_problem``), which is exactly ``exact_policies.response_set(3, 3)``: the GPT's
  generation capped at 3 content tokens, the end forced after them (label −100, probability 1 for
  every policy). |y| counts that forced end, as the tabular problem does, so IPO, SimPO, ORPO and
  GRPO average over the same lengths in both runs (``exact_gpt`` counts only the scored tokens).
- **π_ref** is a GPT: the one fit by maximum likelihood to the tabular problem's π_ref of the same
  seed (``exact_policies.train_sft`` on its exact probabilities), so that π_θ = π_ref at the start.
  r is that problem's reward; π*_β is recomputed from the GPT's π_ref.
- **The data** are drawn from the GPT's π_ref as ``run_successors`` draws them, on the same budget
  per method as the tabular run (n pairs; the 2n responses of those pairs as KTO examples; 2n reward
  queries), with K = 128 samples per prompt per RL step instead of 16: the same queries in fewer
  steps, since a GPT step costs several table steps.
- **The table on the same problem** (``gpt["table"]``): the same problem, data and steps with a table
  of logits as π_θ, so a difference between the two is the shared parameters' alone.
- **How close the GPT can come to π_own at all** (``representable_kl``): from where each method left
  the GPT, more steps of maximum likelihood on π_own's exact probabilities, the loss whose minimum
  is min_θ KL(π_own ‖ π_θ); the KL reached bounds that minimum from above. The derived optima are
  the tabular minimizers: a GPT that cannot represent π_own stops elsewhere, and this says whether
  that is why a method stops short of π_own here, or whether its loss, data or samples are.

What this can test: whether each method's tabular landing survives a policy whose parameters every
response shares, on a problem where every number is exact. What it cannot: a large model's
inductive biases, or data that a 1-layer GPT cannot fit (here it fits every derived optimum closely).
"""

import sys
import time

import numpy as np

from dpo_np import backend, checks, rlhf
from dpo_np.experiments import exact_policies as ep
from dpo_np.experiments import successor_optima as optima
from dpo_np.experiments import successors as S
from dpo_np.experiments.exact_gpt import new_policy
from dpo_np.experiments.plots import new_figure, save_figure
from dpo_np.model import GPT
from dpo_np.optim import AdamW

#: the GPT comparison's own settings; steps and samples replace successors.DEFAULTS' for both of its runs
DEFAULTS = dict(steps=300, samples=128, gpt_lr=1e-2, gpt_rl_lr=1e-2, n_layer=1, n_head=2, n_embd=8,
                sft_steps=300, sft_lr=1e-2, fit_steps=300, fit_lr=1e-2)
#: seconds: little data, few steps (a first look, and the tests)
QUICK = dict(pairs=4_000, steps=40, samples=16, sft_steps=60, fit_steps=40)
GPT_SEED = 3                   # the GPT of seed s starts from init_params(seed=s + 3)


# -- the problem and the policy ---------------------------------------------------------------

def make_gpt_problem(seed, beta=S.DEFAULTS["beta"], n_layer=DEFAULTS["n_layer"], n_head=DEFAULTS["n_head"],
                     n_embd=DEFAULTS["n_embd"], sft_steps=DEFAULTS["sft_steps"], sft_lr=DEFAULTS["sft_lr"], **sizes):
    """``successors.make_problem(seed, beta, **sizes)`` with π_ref a GPT: the keys ``run_successors`` reads,
    and ``seed``, ``rs``, ``config``, ``ref_params`` (``exact_gpt.new_policy`` starts a GPT π_θ = π_ref
    from them), ``table_ref`` (the tabular π_ref the GPT was fit to) and ``reference_fit_kl`` =
    KL(table_ref ‖ π_ref), means over prompts."""
    problem = S.make_problem(seed, beta, **sizes)
    V, length, P = ({**S.PROBLEM, **sizes}[k] for k in ("vocab_size", "length", "n_prompts"))
    rs = ep.response_set(V, length - 1, P)           # length − 1 content tokens, then the (forced) end
    if not np.array_equal(rs.responses, problem["responses"]):
        raise ValueError("the GPT's response set and the tabular problem's differ: check successors.PROBLEM")
    model = GPT(ep.gpt_config(rs, n_layer, n_head, n_embd), seed=seed + GPT_SEED, dtype=np.float64)
    gpt = ep.GPTPolicy(model, rs)
    ep.train_sft(gpt, np.exp(problem["ref"]), sft_steps, sft_lr)      # cross-entropy to the exact π_ref
    ref, table_ref = backend.to_numpy(gpt.logprobs(), np.float64), problem["ref"]     # the problem's tables: host
    problem.update(seed=seed, ref=ref, ref_tokens=optima.token_logprobs(ref, problem["structure"]),
                   star=backend.to_numpy(rlhf.optimal_policy(ref, problem["rewards"], problem["beta"]), np.float64), rs=rs,
                   config=model.config, ref_params={k: v.copy() for k, v in model.params.items()},
                   table_ref=table_ref, reference_fit_kl=float(rlhf.kl_divergence(table_ref, ref).mean()),
                   description=f"GPT ({n_layer} layer, {n_embd} channels), π_ref fit to the tabular π_ref of "
                               f"{dict(S.PROBLEM, **sizes)}")
    return problem


class SharedGPTPolicy:
    """π_θ = the GPT of a ``make_gpt_problem`` problem, started at π_ref, behind ``successors``' policy interface.

    ``sequence_logprobs()`` (P, N) and ``token_logprobs()`` (P, N, T) come from one forward over all
    P·N prompt + response rows (``exact_policies.GPTPolicy.token_forward``), kept until the next
    update; ``update(d_sequence, d_token, lr)`` takes that forward's backward (one ``GPT.backward``)
    and one AdamW step, without weight decay, so the loss is the whole objective.
    """

    def __init__(self, problem, lr):
        self.gpt = new_policy(problem, "gpt")
        self.adam = AdamW(self.gpt.params, lr=checks.positive(lr, "lr"), weight_decay=0.0)
        self._forward = None                    # (log π (P, N), per token (P, N, T), backward) at the current θ

    def _current(self):
        if self._forward is None:
            self._forward = self.gpt.token_forward()
        return self._forward

    def sequence_logprobs(self):
        """log π_θ(y|x) (P, N), a host table like the problem's."""
        return backend.to_numpy(self._current()[0], np.float64)

    def token_logprobs(self):
        return backend.to_numpy(self._current()[1], np.float64)

    def gradient(self, d_sequence=None, d_token=None):
        """dL/dθ (the GPT's parameter dict) from dL/dlog π_θ(y|x) and/or dL/dlog π_θ(y_t|x, y_<t)."""
        return self._current()[2](d_sequence, d_token)

    def update(self, d_sequence=None, d_token=None, lr=None):
        self.adam.step(self.gradient(d_sequence, d_token), lr=lr)
        self._forward = None


def closest_fit(problem, target, steps, lr, start=None):
    """KL(π_target ‖ π_θ) after training the GPT by maximum likelihood on π_target's exact probabilities,
    from ``start`` (a parameter dict; None: π_ref's). −Σ π_target log π_θ is KL(π_target ‖ π_θ) plus a
    constant, so this bounds from above the closest the GPT can come to π_target (mean over prompts)."""
    policy = new_policy(problem, "gpt")
    if start is not None:
        policy.model.params = policy.params = {k: v.copy() for k, v in start.items()}
    ep.train_sft(policy, np.exp(target), steps, lr)
    return float(rlhf.kl_divergence(target, backend.to_numpy(policy.logprobs(), np.float64)).mean())


# -- the experiment ------------------------------------------------------------------------------

PROBLEM_KEYS = ("n_layer", "n_head", "n_embd", "sft_steps", "sft_lr")          # make_gpt_problem's settings


def run_successors_gpt(seeds=(0, 1, 2), quick=False, progress=True, methods=S.METHODS, **overrides):
    """Every method of ``methods`` with the GPT as π_θ, and with the table on the same problems; JSON-ready.

    Returns ``run_successors``' shape for the GPT run (one key per method with final_kl,
    suboptimality, kl_to_own_optimum, kl_ref, reward, frontier_gap: {mean, min, max, per_seed},
    optimum, data, seeds; ``config``; ``frontier``; ``seconds``), each method also with
    ``representable_kl`` (``closest_fit`` to its own optimum from where the GPT landed; None without
    one); ``reference_fit_kl`` (KL(tabular π_ref ‖ GPT π_ref) per seed); and ``table``: the same run
    with the table as π_θ. Overrides: any key of ``successors.DEFAULTS`` (both runs; ``lr`` and
    ``rl_lr`` are the table's) or of ``DEFAULTS`` here. Seed s: the problem and data of
    ``run_successors``' seed s, the GPT initialised with s + 3.
    """
    start = time.perf_counter()
    s = _settings(quick, overrides)
    problems, landed = {}, {}

    def problem_factory(seed, beta):             # one GPT π_ref per seed, shared by both runs
        if seed not in problems:
            problems[seed] = make_gpt_problem(seed, beta, **{k: s[k] for k in PROBLEM_KEYS})
        return problems[seed]

    def policy_factory(problem, lr):             # kept: the fits go on from where each run ended
        policy = SharedGPTPolicy(problem, lr)
        landed.setdefault(problem["seed"], []).append(policy)
        return policy

    shared = {k: s[k] for k in S.DEFAULTS}
    out = S.run_successors(seeds, progress=progress, methods=methods, problem_factory=problem_factory,
                           policy_factory=policy_factory, **dict(shared, lr=s["gpt_lr"], rl_lr=s["gpt_rl_lr"]))
    out["table"] = S.run_successors(seeds, progress=progress, methods=methods, problem_factory=problem_factory,
                                    policy_factory=S.TabularPolicy, **shared)
    cfg = out["config"]
    fits = {m: [] for m in cfg["methods"] if S.OPTIMA[m] is not None}
    for seed in cfg["seeds"]:
        # run_successors trains the methods of one seed in the order of cfg["methods"]
        for m, policy in zip(cfg["methods"], landed[seed]):
            if m in fits:
                own = S.own_optimum(m, problems[seed], cfg)
                fits[m].append(closest_fit(problems[seed], own, s["fit_steps"], s["fit_lr"], start=policy.gpt.params))
    for m in cfg["methods"]:
        out[m]["representable_kl"] = S._spread(fits[m]) if m in fits else None
    out["reference_fit_kl"] = S._spread([problems[seed]["reference_fit_kl"] for seed in cfg["seeds"]])
    cfg.update(quick=bool(quick), table_lr=s["lr"], table_rl_lr=s["rl_lr"],
               gpt={k: s[k] for k in PROBLEM_KEYS + ("fit_steps", "fit_lr")})
    out["seconds"]["total"] = time.perf_counter() - start
    return out


def _settings(quick, overrides):
    """successors.DEFAULTS, then DEFAULTS (and QUICK) here, then ``overrides``: the GPT's own checked by name."""
    unknown = sorted(set(overrides) - set(S.DEFAULTS) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; choose from {sorted(set(S.DEFAULTS) | set(DEFAULTS))}")
    s = {**S.DEFAULTS, **DEFAULTS, **(QUICK if quick else {}), **overrides}
    for name in ("n_layer", "n_head", "n_embd"):
        s[name] = checks.integer(s[name], name, low=1)
    for name in ("sft_steps", "fit_steps"):
        s[name] = checks.integer(s[name], name, low=0)
    for name in ("gpt_lr", "gpt_rl_lr", "sft_lr", "fit_lr"):
        s[name] = checks.positive(s[name], name)
    return s


# -- printing and the figure ---------------------------------------------------------------------

def print_successors_gpt_report(gpt, file=None):
    """``run_successors_gpt``'s landing points: the GPT's as mean [min–max] over seeds, the table's on
    the same problems as means, and how near the GPT can come to each own optimum."""
    out = sys.stdout if file is None else file
    cfg, g = gpt["config"], gpt["config"]["gpt"]
    fit = gpt["reference_fit_kl"]
    print(f"\nthe same methods with shared parameters: π_θ = a GPT ({g['n_layer']} layer, {g['n_embd']} channels) on "
          f"the same {cfg['problem']['responses']} responses × {cfg['problem']['n_prompts']} prompts, π_ref = the "
          f"GPT fit to each seed's tabular π_ref (KL {fit['mean']:.1e} [{fit['min']:.1e}–{fit['max']:.1e}]), "
          f"β = {cfg['beta']:g}, seeds {', '.join(map(str, cfg['seeds']))}", file=out)
    print(f"the same data budget; pairs and KTO: {cfg['steps']} full-batch steps (GPT lr {cfg['lr']:g}, table lr "
          f"{cfg['table_lr']:g}); RL: {cfg['rl_steps']} steps of {cfg['samples']} samples per prompt (GPT lr "
          f"{cfg['rl_lr']:g}, table lr {cfg['table_rl_lr']:g}); 'GPT can reach': {g['fit_steps']} more steps of "
          f"maximum likelihood on π_own from where the GPT landed", file=out)
    cell = lambda s: "—" if s is None else f"{s['mean']:.2e} [{s['min']:.1e}–{s['max']:.1e}]"     # noqa: E731
    mean = lambda s: "—" if s is None else f"{s['mean']:.2e}"                                     # noqa: E731
    print(f"\n{'method':<9} {'KL(π*_β‖π_θ) GPT':>28} {'table':>9} {'J(π*_β)−J(π_θ) GPT':>28} "
          f"{'KL(π_own‖π_θ) GPT':>28} {'table':>9} {'GPT can reach':>28}", file=out)
    for m in cfg["methods"]:
        s, t = gpt[m], gpt["table"][m]
        print(f"{S.LABELS[m]:<9} {cell(s['final_kl']):>28} {mean(t['final_kl']):>9} {cell(s['suboptimality']):>28} "
              f"{cell(s['kl_to_own_optimum']):>28} {mean(t['kl_to_own_optimum']):>9} "
              f"{cell(s['representable_kl']):>28}", file=out)


def plot_successors_gpt(result, path="runs/successors/successors_gpt.png"):
    """The GPT's landing points beside the table's: the first seed's reward–KL plane of the GPT's problem
    (``successors.draw_landings``: the GPT's dots, the table's squares on the same problem, rings for
    each own optimum), and KL(π*_β ‖ π_θ) of every method on every seed for the GPT, the table on the
    GPT's problems and, when ``result`` holds it, the tabular run on its own problems (the command's
    result, with "gpt"); returns ``path``."""
    gpt = result["gpt"]
    fig, (ax, ax_kl) = new_figure(1, 2, panel_size=(6.5, 5))
    methods = gpt["config"]["methods"]
    S.draw_landings(ax, gpt["frontier"], methods, squares=gpt["table"]["frontier"]["points"])
    ax.set_title(f"the GPT's problem, seed {gpt['frontier']['seed']}: dots the GPT, squares the table, "
                 f"rings π_own", fontsize="medium")
    runs = [("GPT", gpt, "o", 0.0), ("table, same problem", gpt["table"], "s", 0.22)]
    if all(m in result for m in methods):
        runs.append(("tabular run, its own problem", result, "^", -0.22))
    for label, run, marker, dx in runs:
        for i, m in enumerate(methods):
            values = run[m]["final_kl"]["per_seed"]
            ax_kl.scatter([i + dx] * len(values), values, marker=marker, s=22, edgecolors=f"C{i}",
                          facecolors=f"C{i}" if marker == "o" else "none", label=label if i == 0 else None)
    ax_kl.set_yscale("log")
    ax_kl.set_xticks(range(len(methods)), [S.LABELS[m] for m in methods], rotation=30)
    ax_kl.set_ylabel("KL(π*_β ‖ π_θ) (nats)")
    ax_kl.set_title(f"every seed ({', '.join(map(str, gpt['config']['seeds']))})", fontsize="medium")
    ax_kl.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
