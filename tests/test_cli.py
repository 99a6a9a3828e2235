"""The command line is a thin layer: every subcommand has --help and bad options fail cleanly."""

import argparse
import contextlib
import subprocess
import sys
import types

import pytest

from dpo_np.cli import DEFAULT_THREADS, _subparsers, _trl_spellings, build_parser, main, thread_setting


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


# ---- every default in --help ------------------------------------------------------------------

@pytest.mark.parametrize("command", _subcommands())
def test_every_option_says_its_default_in_help_and_every_command_takes_threads(command):
    sub = _subparsers(build_parser())[command]
    assert "--threads" in sub._option_string_actions
    for action in sub._actions:
        if not action.option_strings or action.required or isinstance(action, (argparse._HelpAction,
                                                                                 argparse._StoreTrueAction)):
            continue
        text = action.help or ""
        assert "default" in text and "default None" not in text and "default: None" not in text, \
            (action.option_strings, text)


# ---- BLAS threads -------------------------------------------------------------------------------

def test_the_thread_count_comes_from_the_option_then_the_users_variable_then_the_default():
    assert thread_setting(3, {"OPENBLAS_NUM_THREADS": "2"}) == (3, "--threads")
    assert thread_setting(None, {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "4"}) == (2, "OPENBLAS_NUM_THREADS=2")
    assert thread_setting(None, {"OMP_NUM_THREADS": "4"}) == (4, "OMP_NUM_THREADS=4")
    assert thread_setting(None, {"OMP_NUM_THREADS": "4,2"}) == (None, "OMP_NUM_THREADS=4,2")
    assert thread_setting(None, {"OPENBLAS_NUM_THREADS": " "}) == (DEFAULT_THREADS, "the default")


class _FakeThreadpoolctl(types.ModuleType):
    """threadpoolctl's two calls, recording the limit in force: the CLI's logic without the library."""

    def __init__(self):
        super().__init__("threadpoolctl")
        self.current, self.calls = None, []

    def threadpool_info(self):
        return [{"user_api": "blas", "internal_api": "openblas", "num_threads": self.current or 2}]

    @contextlib.contextmanager
    def threadpool_limits(self, limits, user_api):
        self.calls.append((limits, user_api))
        before, self.current = self.current, limits
        try:
            yield
        finally:
            self.current = before


@pytest.fixture
def checkpoint(tmp_path):
    from dpo_np.checkpoint import save_checkpoint
    from dpo_np.model import GPT, GPTConfig
    from dpo_np.tokenizer import CharTokenizer

    tok = CharTokenizer.from_corpus("Q: What is 2+2?\nA: 4")
    save_checkpoint(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1,
                                                     n_embd=8)), tokenizer=tok)
    return str(tmp_path / "ckpt")


def _threads_seen(monkeypatch, probe):
    """Make ``generate`` record ``probe()`` while it runs; returns the list it appends to."""
    from dpo_np import cli
    seen, generate = [], cli._generate
    monkeypatch.setattr(cli, "_generate", lambda args: (seen.append(probe()), generate(args))[1])
    return seen


def test_every_command_runs_on_the_threads_it_names_first(monkeypatch, capsys, checkpoint):
    fake = _FakeThreadpoolctl()
    monkeypatch.setitem(sys.modules, "threadpoolctl", fake)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    seen = _threads_seen(monkeypatch, lambda: fake.current)
    assert main(["generate", checkpoint, "What is 2+2?", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == \
        f"threads: {DEFAULT_THREADS} BLAS thread (the default; --threads N to change)"
    assert main(["generate", checkpoint, "What is 2+2?", "--max-new-tokens", "2", "--threads", "2"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "threads: 2 BLAS threads (--threads)"
    assert seen == [DEFAULT_THREADS, 2] and fake.current is None              # in force inside, undone after
    monkeypatch.setenv("OMP_NUM_THREADS", "3")                                 # the user's own, read at load
    assert main(["generate", checkpoint, "What is 2+2?", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "threads: 3 BLAS threads (OMP_NUM_THREADS=3, set before starting)"
    assert fake.calls == [(DEFAULT_THREADS, "blas"), (2, "blas")]             # and left as the BLAS read it


def test_without_threadpoolctl_the_blas_keeps_its_count_and_an_explicit_threads_is_refused(monkeypatch, capsys,
                                                                                          checkpoint):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)                    # import threadpoolctl fails
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["generate", checkpoint, "What is 2+2?", "--max-new-tokens", "2"]) == 0
    assert "threads: the BLAS's own count (threadpoolctl is not installed" in capsys.readouterr().err
    assert main(["generate", checkpoint, "What is 2+2?", "--threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: --threads: threadpoolctl is not installed" in err and "OPENBLAS_NUM_THREADS=2" in err


def test_the_real_blas_runs_on_the_default_thread_count_and_gets_its_own_back(monkeypatch, capsys, checkpoint):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    blas = lambda: [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]  # noqa: E731
    before = blas()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS to control here")
    seen = _threads_seen(monkeypatch, blas)
    assert main(["generate", checkpoint, "What is 2+2?", "--max-new-tokens", "2"]) == 0
    assert seen == [[DEFAULT_THREADS] * len(before)] and blas() == before


# ---- TRL's words ------------------------------------------------------------------------------

def test_trls_option_names_mean_the_same_options():
    parser = build_parser()
    ours = parser.parse_args(["dpo", "--data", "p", "--lr", "1e-3", "--batch-size", "4", "--epochs", "2", "--steps",
                              "5", "--max-length", "40", "--max-prompt-length", "20", "--output-dir", "o",
                              "--loss-type", "ipo", "--label-smoothing", "0", "--save-steps", "2", "--overwrite",
                              "--model", "m", "--eval-data", "e"])
    trl = ["dpo", "--data", "p", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
           "--num_train_epochs", "2", "--max_steps", "5", "--max_length", "40", "--max_prompt_length=20",
           "--output_dir", "o", "--loss_type", "ipo", "--label_smoothing", "0", "--save_steps", "2",
           "--overwrite_output_dir", "--model_name_or_path", "m", "--eval_data", "e"]
    assert vars(parser.parse_args(_trl_spellings(trl, parser))) == vars(ours)
    assert _trl_spellings(["demo", "--max_steps", "3"], parser) == ["demo", "--max_steps", "3"]   # no --steps there


@pytest.mark.parametrize("typed, hint", [("--lerning_rate", "--lerning_rate: did you mean --learning_rate (--lr)?"),
                                         ("--bta", "--bta: did you mean --beta?"),
                                         ("--label-smothing", "did you mean --label-smoothing?")])
def test_an_unknown_option_close_to_a_known_one_gets_a_did_you_mean(typed, hint, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["dpo", "--data", "p.jsonl", typed, "0.1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"unrecognized arguments: {typed} 0.1" in err and hint in err, err


def test_label_smoothing_is_conservative_dpo_and_a_loss_that_would_ignore_it_is_named_by_its_options(capsys):
    assert main(["dpo", "--data", "p.jsonl", "--loss-type", "ipo", "--label-smoothing", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--label-smoothing=0.1 would be ignored by --loss-type 'ipo'" in err
    assert "label_smoothing" not in err.replace("--label-smoothing", "")
    with pytest.raises(SystemExit):
        main(["dpo", "--data", "p.jsonl", "--label-smoothing", "1.5"])
    assert "--label-smoothing: must be a number >= 0 and <= 1" in capsys.readouterr().err


def test_a_prompt_template_option_reads_backslash_n_as_a_new_line_and_needs_one_prompt_field(capsys):
    parser = build_parser()
    assert parser.parse_args(["sft", "--prompt-template", "User: {prompt}\\nBot: "]).prompt_template == \
        "User: {prompt}\nBot: "
    for bad in ("no field", "{prompt} {prompt}"):
        with pytest.raises(SystemExit):
            parser.parse_args(["sft", "--prompt-template", bad])
        assert "--prompt-template: must hold the field {prompt} exactly once" in capsys.readouterr().err
