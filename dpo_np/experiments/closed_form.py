"""DPO recovers the closed-form optimum π* of the RLHF objective, on a problem small enough to check.

The experiment ties the notes together end to end:

1. enumerate every response (V^L of them), build π_ref(y|x) from an
   autoregressive table and a known reward r(x, y) (``toy_problem.py``);
2. compute the optimum exactly: log π*(y|x) = log π_ref + r/β − log Z(x)
   (DPO paper eq. 4, ``rlhf.optimal_policy``) and J(π*) = β log Z(x);
3. sample preference pairs from the Bradley–Terry model under r (eq. 1);
4. train a tabular policy π_θ(y|x) = softmax_y(θ[x, y]), initialised at
   π_ref, with the DPO loss (eq. 7, ``losses.dpo_loss``) through the autograd;
5. watch KL(π* ‖ π_θ) fall towards 0 and J(π_θ) rise to J(π*).

DPO never sees r or Z(x), only which response won, yet its minimizer over
all policies is π*: the loss is Bradley–Terry's likelihood with the reward
written as β log π_θ/π_ref (eq. 5), and Z(x) cancels in the difference. With
finitely many pairs it converges to the maximum-likelihood fit of the data,
whose distance to π* shrinks like 1/(number of pairs): at the defaults, 2M
pairs, KL(π* ‖ π_θ) is 3.1e-4 on average over seeds 0–9 (1.7e-4 to 4.9e-4;
``closed_form_seeds``, ``python -m dpo_np closed-form --seeds 0-9``).

Two ways to miss π*, exposed for comparison: training with a β other than
the one π* is defined for (``train_beta``) converges to π*_{train_beta}; and
``reference_free=True`` (log π_ref ≡ 0) converges to softmax(r/β), the optimum
for a uniform reference.

The speed trick: the loss is a mean over pairs, and many pairs are the same
(x, y_w, y_l) triple (there are at most P·N² distinct ones: 2,916 at the
defaults). Summing each distinct triple's loss times its count gives the same
loss and gradient as the full mean, so a step over 2M pairs costs as much as a
step over ~3k triples.

Why Adam (``optim.AdamW`` without weight decay) rather than plain gradient steps: the
curvature of the loss along θ[x, y] is β² times how often y appears in a
pair, which spans orders of magnitude (π_ref(y) from ~1e-3 to ~0.2) and
changes with β, V and L. A plain gradient step fast enough for rare
responses diverges on common ones; Adam's per-coordinate scaling lets one
learning rate serve every setting. The loss is full-batch and convex in θ, so
no noise, no schedule and no weight decay are needed.
"""

import sys
import time

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, losses, rlhf
from dpo_np.experiments import spread, toy_problem
from dpo_np.optim import AdamW
from dpo_np.experiments.plots import save_figure
from dpo_np.progress import progress as progress_bar

DEFAULT_PAIRS = 2_000_000
DEFAULT_STEPS = 1000
DEFAULT_LR = 0.05
DEFAULT_LOG_EVERY = 100


def aggregate_pairs(prompt, chosen, rejected, n_responses):
    """The distinct (x, y_w, y_l) triples and how many times each occurs.

    Returns (prompt, chosen, rejected, counts), each (M,) with M ≤ P·N²; the mean
    loss over all pairs equals Σ_m counts[m]·ℓ(triple m) / Σ_m counts[m].
    """
    xp = backend.xp()
    N = int(n_responses)
    key = (xp.asarray(prompt, dtype=xp.int64) * N + xp.asarray(chosen)) * N + xp.asarray(rejected)
    distinct, counts = xp.unique(key, return_counts=True)
    return distinct // (N * N), (distinct // N) % N, distinct % N, counts


def make_problem(vocab_size, length, n_prompts, beta, seed, reference_scale, reward_scale):
    """Responses (N, L), exact log π_ref, r and log π* (each (P, N), float64) for one seed: the problem
    every toy experiment on the enumerated set shares."""
    responses = toy_problem.enumerate_responses(vocab_size, length)                    # (N, L)
    table = toy_problem.random_reference_table(n_prompts, vocab_size, length, seed=seed, scale=reference_scale)
    ref_logprobs = toy_problem.sequence_logprobs(table, responses)                      # (P, N)
    rewards = toy_problem.random_rewards(responses, n_prompts, vocab_size, seed=seed + 1, scale=reward_scale)
    return responses, ref_logprobs, rewards, rlhf.optimal_policy(ref_logprobs, rewards, beta)


def run_closed_form(vocab_size=3, length=3, n_prompts=4, beta=0.5, pairs=DEFAULT_PAIRS, steps=DEFAULT_STEPS,
                    lr=DEFAULT_LR, seed=0, train_beta=None, reference_free=False, log_every=DEFAULT_LOG_EVERY,
                    progress=True, *, reward_scale=0.5, reference_scale=0.5, proposal="reference", file=None,
                    data=None, loss_type="sigmoid", label_smoothing=0.0, log_policies=False):
    """Train a tabular policy with DPO on Bradley–Terry pairs and compare it with the exact π*.

    ``beta`` defines the target π* (DPO paper eq. 4); ``train_beta`` (default:
    ``beta``) is the β inside the DPO loss; ``reference_free`` drops π_ref from
    the loss. ``pairs`` preference pairs are sampled with ``toy_problem.sample_preference_pairs``
    (y1, y2 ~ π_ref, or uniform with ``proposal="uniform"``). ``reward_scale`` and
    ``reference_scale`` size the toy reward and π_ref's logits. With ``progress``,
    a table (every ``log_every`` steps) goes to ``file`` (default stdout) and a
    progress indicator to stderr. ``pairs``, ``steps``, ``lr``, ``log_every`` = None
    mean the defaults (2,000,000 pairs, 1,000 steps, lr 0.05, every 100 steps).
    ``data``: preference pairs to train on instead of sampling them, a dict like
    ``toy_problem.sample_preference_pairs``'s (relabelled pairs, say); ``pairs`` is then
    their number. ``loss_type`` and ``label_smoothing`` go to ``losses.dpo_loss``.
    ``log_policies``: also keep π_θ (P, N) at every logged step, under ``policies``.

    Returns a dict:
      step, loss, kl, objective, reward, kl_ref, suboptimality: lists, one entry per logged step:
          the step (updates done), the DPO loss, mean_x KL(π* ‖ π_θ), mean_x J(π_θ) (J with
          ``beta``), mean_x E_{π_θ}[r], mean_x KL(π_θ ‖ π_ref) (where π_θ sits in the reward–KL
          plane) and mean_x β KL(π_θ ‖ π*) = J(π*) − J(π_θ) (``rlhf.suboptimality``);
      optimal_objective: mean_x J(π*) = mean_x β log Z(x);
      policy, optimal_policy, reference_policy: π_θ (after the last step), π*, π_ref as (P, N)
          NumPy probabilities; responses (N, L), rewards (P, N);
      n_pairs, n_triples, config (every setting), seconds ({"data", "train"}).
    """
    V, L, P = (toy_problem.positive_int(vocab_size, "vocab_size"), toy_problem.positive_int(length, "length"),
               toy_problem.positive_int(n_prompts, "n_prompts"))
    if data is not None and not (isinstance(data, dict) and {"prompt", "chosen", "rejected"} <= set(data)):
        raise ValueError("data must be a dict of 'prompt', 'chosen' and 'rejected' index arrays, "
                         "as toy_problem.sample_preference_pairs returns")
    n_pairs = toy_problem.positive_int(DEFAULT_PAIRS if pairs is None else pairs, "pairs") if data is None \
        else toy_problem.positive_int(len(data["prompt"]), "len(data['prompt'])")
    steps = DEFAULT_STEPS if steps is None else steps
    steps = checks.integer(steps, "steps", low=0)
    log_every = toy_problem.positive_int(DEFAULT_LOG_EVERY if log_every is None else log_every, "log_every")
    beta = rlhf.check_beta(beta)
    train_beta = beta if train_beta is None else rlhf.check_beta(train_beta, "train_beta")
    lr = float(DEFAULT_LR if lr is None else lr)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    out = sys.stdout if file is None else file
    xp = backend.xp()
    data_given = data is not None

    t0 = time.perf_counter()
    responses, ref_logprobs, rewards, star_logprobs = make_problem(V, L, P, beta, seed, reference_scale,
                                                                    reward_scale)
    N = responses.shape[0]
    optimal_objective = float(backend.to_numpy(rlhf.rlhf_objective(star_logprobs, ref_logprobs, rewards, beta).mean()))
    if data is None:
        data = toy_problem.sample_preference_pairs(ref_logprobs, rewards, n_pairs, seed=seed + 2, proposal=proposal)
    x, w, l, counts = aggregate_pairs(data["prompt"], data["chosen"], data["rejected"], N)    # (M,) each
    del data
    weight = counts / float(n_pairs)                                        # each triple's share of the mean
    ref_w, ref_l = ref_logprobs[x, w], ref_logprobs[x, l]                   # log π_ref(y_w|x), log π_ref(y_l|x)
    t_data = time.perf_counter() - t0

    theta = xp.array(ref_logprobs, dtype=np.float64)          # (P, N) logits: π_θ starts at π_ref exactly
    adam = AdamW({"theta": theta}, lr=lr, weight_decay=0.0)   # no decay: plain Adam, updating theta in place
    history = {"step": [], "loss": [], "kl": [], "objective": [], "reward": [], "kl_ref": [], "suboptimality": []}
    if progress:
        print(f"closed form: V={V} L={L} → {N} responses × {P} prompts; β={beta:g} (train β={train_beta:g}"
              f"{', reference-free' if reference_free else ''}); {n_pairs:,} pairs → {int(x.shape[0]):,} "
              f"distinct triples; J(π*) = β log Z = {optimal_objective:.6f}", file=out)
        print(f"{'step':>6} {'loss':>10} {'KL(π*‖π_θ)':>12} {'J(π_θ)':>12} {'J(π*)−J(π_θ)':>13}", file=out)
    steps_iter = range(steps + 1)
    # in a log (not a terminal) the table rows already report progress: no second stream of lines
    bar = progress_bar(steps_iter, desc="dpo", file=sys.stderr) if progress and sys.stderr.isatty() else None
    t1 = time.perf_counter()
    for step in (bar if bar is not None else steps_iter):
        th = ag.Tensor(theta, requires_grad=True)
        logp = ag.log_softmax(th, axis=-1)                                  # (P, N) log π_θ(y|x)
        per_triple, _, _ = losses.dpo_loss(logp[x, w], logp[x, l], ref_w, ref_l, beta=train_beta,
                                           reference_free=reference_free, loss_type=loss_type,
                                           label_smoothing=label_smoothing)  # (M,)
        loss = (per_triple * weight).sum()                                  # = the mean over all pairs
        if step % log_every == 0 or step == steps:
            logged = xp.stack([loss.data, rlhf.kl_divergence(star_logprobs, logp.data).mean(),
                               rlhf.rlhf_objective(logp.data, ref_logprobs, rewards, beta).mean(),
                               (xp.exp(logp.data) * rewards).sum(axis=-1).mean(),
                               rlhf.kl_divergence(logp.data, ref_logprobs).mean(),
                               rlhf.suboptimality(logp.data, star_logprobs, beta).mean()])
            loss_value, kl, objective, reward, kl_ref, gap = backend.to_numpy(logged).tolist()   # one transfer
            for key, value in zip(history, (step, loss_value, kl, objective, reward, kl_ref, gap)):
                history[key].append(value)
            if log_policies:
                history.setdefault("policies", []).append(backend.to_numpy(xp.exp(logp.data)))
            if progress:
                _clear_bar(bar)
                print(f"{step:>6} {loss_value:>10.6f} {kl:>12.3e} {objective:>12.6f} "
                      f"{optimal_objective - objective:>13.3e}", file=out, flush=True)
                if bar is not None:
                    bar.set_postfix(kl=kl)
        if step == steps:
            continue                                # the last row: measured, not updated
        loss.backward()
        adam.step({"theta": th.grad})
    t_train = time.perf_counter() - t1

    final_logp = ag.log_softmax(theta, axis=-1).data
    result = {
        "config": {"vocab_size": V, "length": L, "n_prompts": P, "beta": beta, "train_beta": train_beta,
                   "reference_free": bool(reference_free), "pairs": n_pairs, "steps": steps, "lr": lr,
                   "seed": seed, "reward_scale": reward_scale, "reference_scale": reference_scale,
                   "proposal": proposal, "data": "given" if data_given else "sampled",
                   "loss_type": loss_type, "label_smoothing": label_smoothing},
        **history,
        "optimal_objective": optimal_objective,
        "policy": backend.to_numpy(xp.exp(final_logp)),
        "optimal_policy": backend.to_numpy(xp.exp(star_logprobs)),
        "reference_policy": backend.to_numpy(xp.exp(ref_logprobs)),
        "responses": backend.to_numpy(responses),
        "rewards": backend.to_numpy(rewards),
        "n_pairs": n_pairs,
        "n_triples": int(x.shape[0]),
        "seconds": {"data": t_data, "train": t_train},
    }
    return result


#: the two ways to miss π* the command shows beside DPO at β: (label, JSON key, run_closed_form settings of β)
COMPARE = (("β_train = 4β", "train_beta_4x", lambda beta: {"train_beta": 4 * beta}),
           ("reference-free", "reference_free", lambda beta: {"reference_free": True}))

#: the per-seed table of ``closed_form_seeds``: (row key, title, format)
SEED_COLUMNS = (("start_kl", "KL(π*‖π_ref)", ".3f"), ("final_kl", "KL(π*‖π_θ)", ".3e"), ("suboptimality", "J(π*) − J(π_θ)", ".3e"),
                ("train_beta_4x_kl", "KL, β_train = 4β", ".3f"), ("reference_free_kl", "KL, reference-free", ".3f"))


def seed_row(result, compare=None):
    """The numbers of one seed's run (and of its ``compare`` runs, {JSON key: result}) as a flat dict.

    ``suboptimality`` is β KL(π_θ ‖ π*); ``objective_gap`` is J(π*) − J(π_θ) from the two
    objectives: the same number by the identity of ``rlhf.suboptimality``.
    """
    row = {"start_kl": result["kl"][0], "final_kl": result["kl"][-1], "suboptimality": result["suboptimality"][-1],
           "objective_gap": result["optimal_objective"] - result["objective"][-1]}
    for key, res in (compare or {}).items():
        row[f"{key}_kl"] = res["kl"][-1]
        row[f"{key}_suboptimality"] = res["suboptimality"][-1]
    return row


def closed_form_seeds(seeds, compare=True, print_fn=None, **settings):
    """``run_closed_form`` on every seed (each draws its own π_ref, r and pairs), with the ``COMPARE``
    runs when ``compare``; returns {seeds, per_seed (rows of ``seed_row``), spread (per column:
    n, mean, sd, se, min, max), table (Markdown), config (the first seed's), runs (each seed's
    ``run_closed_form`` result at β)}."""
    def run(seed):
        main = run_closed_form(seed=seed, progress=False, **settings)
        beta = main["config"]["beta"]
        others = {key: run_closed_form(seed=seed, progress=False, **settings, **extra(beta))
                  for _, key, extra in (COMPARE if compare else ())}
        return main, others

    rows, results = spread.over_seeds(seeds, run, lambda res: seed_row(*res), print_fn)
    columns = [c for c in SEED_COLUMNS if c[0] in rows[0]]
    return {"seeds": list(seeds), "per_seed": rows, "spread": spread.spreads(rows, [k for k in rows[0] if k != "seed"]),
            "table": spread.seed_table(rows, columns),
            "config": {k: v for k, v in results[0][0]["config"].items() if k != "seed"},
            "runs": [main for main, _ in results]}


def _clear_bar(bar):
    """Wipe a redrawn-in-place indicator line, so a table row does not land after it."""
    if bar is not None and bar.tty:
        bar.file.write("\r\x1b[2K")
        bar.file.flush()


def plot_closed_form(result, path="figures/closed_form.png"):
    """Draw KL(π* ‖ π_θ) over the steps (log scale) and π_θ against π* per response; returns ``path``.

    matplotlib is imported here, not at package import. The file is written to a
    temporary name beside ``path`` and moved into place, so it is never half-written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    cfg = result["config"]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_kl, ax_pi = fig.subplots(1, 2)

    steps, kl = np.asarray(result["step"]), np.asarray(result["kl"])
    ax_kl.semilogy(steps, np.maximum(kl, 1e-12), marker="o", markersize=3)
    ax_kl.axhline(1e-3, color="grey", linestyle="--", linewidth=1, label="1e-3")
    ax_kl.set_xlabel("step")
    ax_kl.set_ylabel("mean over prompts of KL(π* ‖ π_θ)")
    label = f"β={cfg['beta']:g}"
    if cfg["train_beta"] != cfg["beta"]:
        label += f", trained with β={cfg['train_beta']:g}"
    if cfg["reference_free"]:
        label += ", reference-free"
    ax_kl.set_title(f"DPO → π* ({label}; {cfg['pairs']:,} pairs)")
    ax_kl.legend()

    star, pol, ref = (np.asarray(result[k]) for k in ("optimal_policy", "policy", "reference_policy"))
    lo = min(star.min(), pol.min(), ref.min()) * 0.7
    hi = max(star.max(), pol.max(), ref.max()) * 1.4
    for p in range(star.shape[0]):
        ax_pi.scatter(star[p], ref[p], s=10, marker="x", color="lightgrey",
                      label="π_ref (start)" if p == 0 else None)
    for p in range(star.shape[0]):
        ax_pi.scatter(star[p], pol[p], s=14, label=f"π_θ, prompt {p}")
    ax_pi.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax_pi.set_xscale("log")
    ax_pi.set_yscale("log")
    ax_pi.set_xlim(lo, hi)
    ax_pi.set_ylim(lo, hi)
    ax_pi.set_xlabel("π*(y|x), exact")
    ax_pi.set_ylabel("π_θ(y|x) after DPO")
    ax_pi.set_title("one point per response; on the diagonal = π*")
    ax_pi.legend(fontsize="small")
    fig.tight_layout()

    return save_figure(fig, path, dpi=120)
