"""`python -m dpo_np figures`: every figure the README shows is drawn by it, and it writes nowhere else."""

import importlib.util
import os
import re

import pytest

from dpo_np.experiments.figures import make_figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures(str(out), quick=True, print_fn=lambda *a: None)


def test_every_figure_is_a_png_in_the_output_dir_and_nothing_else_is_left_there(drawn):
    out, paths = drawn
    assert paths and sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    for p in paths:
        assert os.path.dirname(p) == str(out)
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_committed_figures_and_the_readmes_pictures_are_exactly_what_the_command_draws(drawn):
    _, paths = drawn
    names = {os.path.basename(p) for p in paths}
    committed = {n for n in os.listdir(os.path.join(ROOT, "figures")) if n.endswith(".png")}
    assert committed == names
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        shown = set(re.findall(r"figures/([\w.-]+\.png)", f.read()))
    assert shown and shown <= names


def test_an_unknown_group_is_named():
    with pytest.raises(ValueError, match=r"unknown figure group\(s\) \['nope'\]"):
        make_figures("unused", only=["nope"])


def test_the_help_names_every_group_and_which_are_drawn_over_seeds_0_to_2():
    from dpo_np.cli import build_parser
    from dpo_np.experiments.figures import FIGURES, OVER_SEEDS
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "figures" in a.choices)
    text = " ".join(sub.choices["figures"].description.split())
    assert all(name in text for name, _ in FIGURES)
    assert f"({', '.join(OVER_SEEDS)}: seeds 0-2" in text


def test_the_groups_over_seeds_draw_seeds_0_to_2_and_the_others_seed_0(monkeypatch, tmp_path):
    from dpo_np.experiments import figures
    seen = {}

    def runner(group):
        def run(*args, seed=None, seeds=None, **kwargs):
            seen[group] = list(seeds if seeds is not None else args[0] if args else [seed])
            return {"figures": []}
        return run

    for group, name in (("closed-form", "run_closed_form"), ("gridworld", "run_gridworld"), ("rlhf", "run_rlhf"),
                        ("demo", "run_demo"), ("ppo-gpt", "run_ppo_gpt_seeds"), ("exact-gpt", "run_exact_gpt"),
                        ("successors", "run_successors")):
        monkeypatch.setattr(figures, name, runner(group))
    for name in ("plot_closed_form", "plot_gridworld", "plot_ppo_gpt", "plot_exact_gpt", "plot_successors"):
        monkeypatch.setattr(figures, name, lambda *a, **k: "drawn.png")
    monkeypatch.setattr(figures, "plot_rlhf", lambda *a, **k: ["drawn.png"])
    figures.make_figures(str(tmp_path), print_fn=lambda *a: None)
    assert set(seen) == {name for name, _ in figures.FIGURES}
    for group, seeds in seen.items():
        assert seeds == ([0, 1, 2] if group in figures.OVER_SEEDS else [0]), group
