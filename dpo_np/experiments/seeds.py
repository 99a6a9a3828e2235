"""The demo on several seeds, and the table the README quotes: does the main job work on every seed?

    python -m dpo_np demo --seeds 0-4 --json seeds.json

Each seed draws its own data split and its own model initialisation (``run_demo(seed=...)``). The
table gives, per seed, what the model says: the share of sampled answers that follow y_w's rule by
the gold judge (``toy_preferences.judge``), under π_ref and π_θ, on prompts DPO trained on and on
held-out ones, and greedily on held-out ones; KL(π_θ‖π_ref); the held-out implicit-reward accuracy
on the pairs whose rule can be learned and on the pairs that need an unseen fact, the reward model's
accuracy likewise; how many of the notes' three prompts π_ref and π_θ answer with the chosen answer;
and the time. Then the mean ± sample standard deviation and the worst seed of each column, and the
machine (the BLAS thread count can change the last bits of a result); then the held-out sampled
share split by the data's families, which shows where DPO changes new answers and where it cannot.
"""

import os

import numpy as np

from dpo_np.bench import machine
from dpo_np.experiments import toy_preferences
from dpo_np.experiments.demo import run_demo

#: (key, title) of the per-seed columns; "judge.policy" reads row["judge"]["policy"]
COLUMNS = (("judge_train.reference", "trained prompts: π_ref"), ("judge_train.policy", "π_θ"),
           ("judge.reference", "held-out prompts: π_ref"), ("judge.policy", "π_θ"),
           ("judge_greedy.reference", "held-out greedy: π_ref"), ("judge_greedy.policy", "π_θ"),
           ("kl", "KL(π_θ‖π_ref)"),
           ("implicit_reward_accuracy", "r̂ acc. (rules)"), ("implicit_reward_accuracy_facts", "r̂ acc. (facts)"),
           ("reward_model_accuracy", "r_φ acc. (rules)"), ("reward_model_accuracy_facts", "r_φ acc. (facts)"))
LOWER_IS_WORSE = {"kl": False, "seconds": False}      # for the "worst seed" row: a larger KL or time is worse


def run_seeds(seeds, output_dir="runs/demo", quick=False, overwrite=False, show_progress=False, print_fn=print,
              **overrides):
    """``run_demo`` for every seed (under ``output_dir/seed-<n>``); prints and returns the table."""
    rows = []
    for seed in seeds:
        print_fn(f"seeds: seed {seed} ({len(rows) + 1} of {len(seeds)})")
        r = run_demo(output_dir=os.path.join(output_dir, f"seed-{seed}"), figures_dir="", quick=quick, seed=seed,
                     show_progress=show_progress, print_fn=lambda *a: None, overwrite=overwrite, **overrides)
        row = {"seed": seed, **{key: r["after"][key] for key in ("implicit_reward_accuracy",
                                                                 "implicit_reward_accuracy_facts",
                                                                 "reward_model_accuracy", "reward_model_accuracy_facts")},
               **{key: {"reference": r["before"][key]["preferred"], "policy": r["after"][key]["preferred"]}
                  for key in ("judge_train", "judge", "judge_greedy")},
               "judge_by_family": {fam: {"reference": r["before"]["judge"]["by_family"][fam], "policy": counts}
                                   for fam, counts in r["after"]["judge"]["by_family"].items()},
               "notes_answers": {who: sum(a[when + "_is"] == "chosen" for a in r["answers"].values())
                                 for who, when in (("reference", "before"), ("policy", "after"))},
               "answers": {p: a["after"] for p, a in r["answers"].items()},
               "kl": r["after"]["kl"], "best_steps": r["best_steps"], "seconds": r["seconds"]["total"]}
        rows.append(row)
        print_fn(_row(row))
    summary, info = summarize(rows), machine.describe()
    table = format_seed_table(rows, summary, info) + "\n\n" + format_family_table(rows)
    print_fn(table)
    return {"rows": rows, "summary": summary, "machine": info, "table": table,
            "config": {"quick": quick, **overrides}}


def value(row, key):
    """``row[key]``, where "a.b" reads ``row["a"]["b"]``."""
    for part in key.split("."):
        row = row[part]
    return row


def summarize(rows):
    """Per column: mean, sample standard deviation, worst value and the seed that gave it."""
    out = {}
    for key in [k for k, _ in COLUMNS] + ["notes_answers.reference", "notes_answers.policy", "seconds"]:
        values = np.array([value(r, key) for r in rows], dtype=float)
        worst = int(np.argmin(values) if LOWER_IS_WORSE.get(key, True) else np.argmax(values))
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "worst": float(values[worst]), "worst_seed": rows[worst]["seed"]}
    return out


def _row(r):
    cells = " | ".join(f"{value(r, key):.3f}" for key, _ in COLUMNS)
    notes = r["notes_answers"]
    return f"| {r['seed']} | {cells} | {notes['reference']}/3 → {notes['policy']}/3 | {r['seconds']:.0f} s |"


def format_seed_table(rows, summary, machine_info=None):
    """A Markdown table: one row per seed, then mean ± s.d. and the worst seed, and the machine
    (``machine_info``, ``bench.machine.describe()``'s dict; None: this one, now)."""
    head = "| seed | " + " | ".join(title for _, title in COLUMNS) + " | notes' answers, π_ref → π_θ | time |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)] + [_row(r) for r in rows]
    stat = lambda key, fmt: f"{summary[key]['mean']:{fmt}} ± {summary[key]['sd']:{fmt}}"      # noqa: E731
    worst = lambda key, fmt, unit="": (f"{summary[key]['worst']:{fmt}}{unit} "                # noqa: E731
                                       f"({summary[key]['worst_seed']})")
    lines.append("| mean ± s.d. | " + " | ".join(stat(k, ".3f") for k, _ in COLUMNS)
                 + f" | {stat('notes_answers.reference', '.1f')} → {stat('notes_answers.policy', '.1f')}"
                 + f" | {stat('seconds', '.0f')} s |")
    lines.append("| worst (seed) | " + " | ".join(worst(k, ".3f") for k, _ in COLUMNS)
                 + f" | {worst('notes_answers.policy', '.0f', '/3')} | {worst('seconds', '.0f', ' s')} |")
    lines.append(f"\nmeasured on: {machine.one_line(machine_info)}")
    return "\n".join(lines)


def preferred_share(counts):
    """The share of answers the judge calls preferred, from one family's counts of each judgement."""
    return counts[toy_preferences.PREFERRED] / sum(counts.values())


def format_family_table(rows):
    """Held-out sampled answers that follow y_w's rule, per family: mean ± s.d. over the seeds and
    the worst seed, π_ref and π_θ. It shows which rules DPO changes what the model writes on new
    prompts, and which it cannot (a family whose answers must copy a name the model never saw)."""
    lines = ["held-out prompts, sampled answers following y_w's rule, by family (mean ± s.d. over seeds; worst):",
             "| family | answers per seed | π_ref | π_θ | π_θ worst (seed) |", "| --- | --- | --- | --- | --- |"]
    sd = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0      # noqa: E731
    for fam in [f for f in toy_preferences.LEARNABLE if f in rows[0]["judge_by_family"]]:
        n = sorted({sum(r["judge_by_family"][fam]["policy"].values()) for r in rows})
        share = {who: np.array([preferred_share(r["judge_by_family"][fam][who]) for r in rows])
                 for who in ("reference", "policy")}
        worst = int(np.argmin(share["policy"]))
        lines.append(f"| {fam} | {n[0] if len(n) == 1 else f'{n[0]}–{n[-1]}'} | "
                     + " | ".join(f"{v.mean():.3f} ± {sd(v):.3f}" for v in share.values())
                     + f" | {share['policy'][worst]:.3f} ({rows[worst]['seed']}) |")
    return "\n".join(lines)
