"""The command line is a thin layer: every subcommand has --help and bad options fail cleanly."""

import subprocess
import sys

import pytest

from dpo_np.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "dpo_np", *args], capture_output=True, text=True)


def _subcommands():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    return sorted(choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command):
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: python -m dpo_np " + command in out.stdout


def test_closed_form_command_trains_to_the_optimum_and_reports_it(tmp_path):
    figure = tmp_path / "closed_form.png"
    code = main(["closed-form", "--pairs", "1000000", "--steps", "400", "--figure", str(figure), "--quiet"])
    assert code == 0
    assert figure.exists() == (pytest.importorskip("matplotlib") is not None)


def test_closed_form_prints_the_final_kl_and_the_failure_modes(capsys):
    assert main(["closed-form", "--pairs", "1000000", "--steps", "400", "--figure", "", "--quiet"]) == 0
    out = capsys.readouterr().out
    final_kl = float(out.split("final KL(π*‖π_θ) = ")[1].split(",")[0])
    assert final_kl < 1e-3
    assert "β_train = 4β" in out and "reference-free" in out


def test_bad_option_values_are_rejected_with_the_option_name():
    out = run("closed-form", "--beta", "-1")
    assert out.returncode == 2 and "--beta" in out.stderr and "must be > 0" in out.stderr
