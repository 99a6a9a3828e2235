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
