"""The demo on several seeds, and the table the README quotes: does the main job work on every seed?

    python -m dpo_np demo --seeds 0-4 --json seeds.json

Each seed draws its own data split and its own model initialisation (``run_demo(seed=...)``). The
table gives, per seed, the held-out implicit-reward accuracy on the pairs whose rule can be
learned and on the pairs that need an unseen fact, the reward model's accuracy likewise, whether
the greedy answers to the notes' three prompts are the chosen ones, and the time; then the mean ±
sample standard deviation and the worst seed of each column, and the machine (the BLAS thread
count can change the last bits of a result).
"""

import os

import numpy as np

from dpo_np.bench import machine
from dpo_np.experiments.demo import run_demo

COLUMNS = (("implicit_reward_accuracy", "r̂ acc. (rules)"), ("implicit_reward_accuracy_facts", "r̂ acc. (facts)"),
           ("reward_model_accuracy", "r_φ acc. (rules)"), ("reward_model_accuracy_facts", "r_φ acc. (facts)"))


def run_seeds(seeds, output_dir="runs/demo", quick=False, overwrite=False, show_progress=False, print_fn=print,
              **overrides):
    """``run_demo`` for every seed (under ``output_dir/seed-<n>``); prints and returns the table."""
    rows = []
    for seed in seeds:
        print_fn(f"seeds: seed {seed} ({len(rows) + 1} of {len(seeds)})")
        r = run_demo(output_dir=os.path.join(output_dir, f"seed-{seed}"), figures_dir="", quick=quick, seed=seed,
                     show_progress=show_progress, print_fn=lambda *a: None, overwrite=overwrite, **overrides)
        row = {"seed": seed, **{key: r["after"][key] for key, _ in COLUMNS},
               "notes_answers_chosen": sum(a["after_is"] == "chosen" for a in r["answers"].values()),
               "answers": {p: a["after"] for p, a in r["answers"].items()},
               "kl": r["after"]["kl"], "best_steps": r["best_steps"], "seconds": r["seconds"]["total"]}
        rows.append(row)
        print_fn(_row(row))
    summary = summarize(rows)
    table = format_seed_table(rows, summary)
    print_fn(table)
    return {"rows": rows, "summary": summary, "machine": machine.describe(), "table": table,
            "config": {"quick": quick, **overrides}}


def summarize(rows):
    """Per column: mean, sample standard deviation, worst value and the seed that gave it."""
    out = {}
    for key in [k for k, _ in COLUMNS] + ["notes_answers_chosen", "seconds"]:
        values = np.array([r[key] for r in rows], dtype=float)
        worst = int(np.argmax(values) if key == "seconds" else np.argmin(values))
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "worst": float(values[worst]), "worst_seed": rows[worst]["seed"]}
    return out


def _row(r):
    cells = " | ".join(f"{r[key]:.3f}" for key, _ in COLUMNS)
    return f"| {r['seed']} | {cells} | {r['notes_answers_chosen']}/3 | {r['seconds']:.0f} s |"


def format_seed_table(rows, summary):
    """A Markdown table: one row per seed, then mean ± s.d. and the worst seed."""
    head = "| seed | " + " | ".join(title for _, title in COLUMNS) + " | notes' answers chosen | time |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)] + [_row(r) for r in rows]
    stat = lambda key, fmt: f"{summary[key]['mean']:{fmt}} ± {summary[key]['sd']:{fmt}}"      # noqa: E731
    lines.append("| mean ± s.d. | " + " | ".join(stat(k, ".3f") for k, _ in COLUMNS)
                 + f" | {stat('notes_answers_chosen', '.1f')} | {stat('seconds', '.0f')} s |")
    lines.append("| worst (seed) | " + " | ".join(f"{summary[k]['worst']:.3f} ({summary[k]['worst_seed']})"
                                                  for k, _ in COLUMNS)
                 + f" | {summary['notes_answers_chosen']['worst']:.0f}/3 ({summary['notes_answers_chosen']['worst_seed']})"
                 + f" | {summary['seconds']['worst']:.0f} s ({summary['seconds']['worst_seed']}) |")
    lines.append(f"\nmeasured on: {machine.one_line()}")
    return "\n".join(lines)
