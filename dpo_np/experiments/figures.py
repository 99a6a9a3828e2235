"""Every figure the README shows, drawn again from seeds: ``python -m dpo_np figures``.

Each figure comes from the command that measures it, with that command's defaults and seed 0 (seeds
0 to 2 for the groups of ``OVER_SEEDS``, whose figures show every seed the README's numbers are
over), so a figure in ``figures/`` is what a reader gets by running that command. This is the only command
that writes into ``figures/``; the others write under their own output directories. Training
runs made on the way (the demo's and ppo-gpt's checkpoints) go to a temporary directory and are
removed.
"""

import os
import tempfile

from dpo_np.experiments.closed_form import plot_closed_form, run_closed_form
from dpo_np.experiments.demo import run_demo
from dpo_np.experiments.exact_gpt import plot_exact_gpt, run_exact_gpt
from dpo_np.experiments.gridworld import plot_gridworld, run_gridworld
from dpo_np.experiments.ppo_gpt import plot_ppo_gpt, run_ppo_gpt_seeds
from dpo_np.experiments.rlhf_toy import QUICK as RLHF_QUICK
from dpo_np.experiments.rlhf_toy import plot_rlhf, run_rlhf
from dpo_np.experiments.successors import plot_successors, run_successors
from dpo_np.experiments.successors_gpt import plot_successors_gpt, run_successors_gpt

#: the groups drawn from seeds seed, seed + 1 and seed + 2 (ppo-gpt and exact-gpt: one seed when quick):
#: the README quotes their numbers over seeds 0-2, and the figure shows each of those seeds
OVER_SEEDS = ("ppo-gpt", "exact-gpt", "successors")


def _seeds(seed, quick):
    return [seed] if quick else [seed, seed + 1, seed + 2]


#: what draws which figures: (name, function of (output_dir, quick, seed) -> list of paths)
FIGURES = (
    ("closed-form", lambda out, quick, seed: [plot_closed_form(
        run_closed_form(seed=seed, progress=False, **(dict(pairs=20_000, steps=200) if quick else {})),
        os.path.join(out, "closed_form.png"))]),
    ("gridworld", lambda out, quick, seed: [plot_gridworld(
        run_gridworld(seed=seed, progress=False, **(dict(iterations=30, variance_episodes=20) if quick else {})),
        os.path.join(out, "gridworld.png"))]),
    ("rlhf", lambda out, quick, seed: plot_rlhf(
        run_rlhf(seed=seed, progress=False, **(RLHF_QUICK if quick else {})), out)),
    ("demo", lambda out, quick, seed: _demo_figures(out, quick, seed)),
    ("ppo-gpt", lambda out, quick, seed: _ppo_gpt_figures(out, quick, seed)),
    ("exact-gpt", lambda out, quick, seed: [plot_exact_gpt(
        run_exact_gpt(seeds=_seeds(seed, quick), quick=quick), os.path.join(out, "exact_gpt.png"))]),
    ("successors", lambda out, quick, seed: _successors_figures(out, quick, range(seed, seed + 3))),
)


def _successors_figures(output_dir, quick, seeds):
    """The tabular run's figure and the GPT's beside it, as ``successors`` (``--policy both``) draws them."""
    result = run_successors(seeds=seeds, quick=quick, progress=False)
    result["gpt"] = run_successors_gpt(seeds=seeds, quick=quick, progress=False)
    return [plot_successors(result, os.path.join(output_dir, "successors.png")),
            plot_successors_gpt(result, os.path.join(output_dir, "successors_gpt.png"))]


def _demo_figures(output_dir, quick, seed):
    with tempfile.TemporaryDirectory(prefix="dpo_np-figures-") as runs:
        result = run_demo(output_dir=runs, figures_dir=output_dir, quick=quick, seed=seed, show_progress=False,
                          print_fn=lambda *a: None)
    return result["figures"]


def _ppo_gpt_figures(output_dir, quick, seed):
    with tempfile.TemporaryDirectory(prefix="dpo_np-figures-") as runs:
        result = run_ppo_gpt_seeds(_seeds(seed, quick), quick=quick, output_dir=runs, figure=False,
                                   show_progress=False, print_fn=lambda *a: None)
    return [plot_ppo_gpt(result, os.path.join(output_dir, "ppo_vs_dpo.png"))]


def make_figures(output_dir="figures", only=None, quick=False, seed=0, print_fn=print):
    """Draw the figures of every command in ``FIGURES`` (or those named in ``only``) into
    ``output_dir``; returns their paths. ``quick``: small runs, for tests (not the README's figures)."""
    names = [name for name, _ in FIGURES]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"only: unknown figure group(s) {unknown}; choose from {names}")
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for name, draw in FIGURES:
        if only and name not in only:
            continue
        print_fn(f"figures: {name} ...")
        for path in draw(output_dir, quick, seed):
            print_fn(f"  {path}")
            paths.append(path)
    return paths
