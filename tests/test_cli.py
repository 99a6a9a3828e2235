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
    assert out.returncode == 2 and "--beta: must be a number > 0" in out.stderr


def test_generate_answers_from_a_checkpoint_and_names_a_missing_one(tmp_path, capsys):
    from dpo_np.checkpoint import save_checkpoint
    from dpo_np.model import GPT, GPTConfig
    from dpo_np.tokenizer import CharTokenizer

    tok = CharTokenizer.from_corpus("Q: What is 2+2?\nA: 4")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok)
    assert main(["generate", str(tmp_path / "ckpt"), "What is 2+2?"]) == 0
    assert capsys.readouterr().out.startswith("Q: What is 2+2?\nA: ")
    assert main(["generate", str(tmp_path / "nowhere"), "What is 2+2?"]) == 2
    assert "no such directory (expected a dpo_np checkpoint" in capsys.readouterr().err
