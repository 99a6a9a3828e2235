"""The edges of every command, tried as an adversarial user would: nothing lost, nothing ignored, every
message in the user's words, every check before the work, no unbounded work unasked.

Each refusal here is checked to come before anything runs (no output directory created, the inputs
byte for byte as they were) and to name the option as it was typed."""

import hashlib
import json
import os
import signal
import tracemalloc

import pytest

from dpo_np import cli, training
from dpo_np.checkpoint import save_checkpoint
from dpo_np.cli import main
from dpo_np.experiments import runs
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import ByteTokenizer

PAIRS = [{"prompt": "hi", "chosen": "yes", "rejected": "no"}, {"prompt": "a", "chosen": "b", "rejected": "c"},
         {"prompt": "x", "chosen": "yy", "rejected": "z"}]
SFT = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--max-length", "32", "--batch-size", "2", "--quiet"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _digest(path):
    """Every file under ``path`` (or the file) with its bytes' hash: what "left intact" means."""
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    return {os.path.relpath(os.path.join(d, f), path): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(path) for f in files}


@pytest.fixture
def files(tmp_path):
    """Data files and a tiny checkpoint (byte tokenizer, 32 tokens of context)."""
    tok = ByteTokenizer()
    for where in ("ckpt", "old/final"):              # a checkpoint, and one where a run left it
        save_checkpoint(tmp_path / where, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1,
                                                        n_embd=8), seed=0), tokenizer=tok)
    return {"dir": tmp_path, "prefs": _jsonl(tmp_path / "prefs.jsonl", PAIRS), "sft": _jsonl(tmp_path / "sft.jsonl", SFT),
            "ckpt": str(tmp_path / "ckpt"), "old": str(tmp_path / "old" / "final")}


def _refused(args, capsys, *says):
    """``main(args)`` exits 2 with one error line holding each of ``says`` and no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("threads: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for text in says:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# ---- 1. data loss: an output on an input, a committed folder, an overwrite half-done -------------------

def _overlaps(f):
    d, prefs, sft, ckpt, old = f["dir"], f["prefs"], f["sft"], f["ckpt"], f["old"]
    os.symlink(prefs, d / "link.jsonl")
    os.link(sft, d / "hard.jsonl")
    return [
        (["sft", "--data", sft, "--json", sft, *TINY], sft, "--json", "--data"),
        (["sft", "--data", sft, "--eval-data", prefs, "--json", prefs, *TINY], prefs, "--json", "--eval-data"),
        (["sft", "--data", sft, "--json", str(d / "hard.jsonl"), *TINY], sft, "--json", "--data"),     # a hard link
        (["dpo", "--data", str(d / "link.jsonl"), "--model", ckpt, "--json", prefs], prefs, "--json", "--data"),
        (["dpo", "--data", prefs, "--model", ckpt, "--json", os.path.join(ckpt, "state.json")], ckpt, "--json",
         "--model"),
        (["dpo", "--data", prefs, "--model", old, "--output-dir", os.path.dirname(old), "--overwrite"], old,
         "--output-dir", "--model"),                                     # an overwrite would delete the model read
        (["dpo", "--data", prefs, "--model", old, "--ref", ckpt, "--output-dir", ckpt], ckpt, "--output-dir", "--ref"),
        (["evaluate", "--model", ckpt, "--ref", ckpt, "--data", prefs, "--json", prefs], prefs, "--json", "--data"),
        (["export", ckpt, ckpt], ckpt, "OUTPUT_DIR", "CHECKPOINT"),
        (["diagnose", str(d), "--json", prefs], prefs, "--json", "PATH"),
        (["sft", "--data", sft, "--learning_rate", "1e-3", "--output_dir", str(d / "r"), "--json", sft, *TINY], sft,
         "--json", "--data"),
    ]


def test_an_output_that_would_land_on_an_input_is_refused_and_the_input_is_left_intact(files, capsys):
    for args, kept, output, source in _overlaps(files):
        before = _digest(kept)
        line = _refused(args, capsys, output, source)
        assert "threads" not in line and _digest(kept) == before, args
        assert not os.path.exists(files["dir"] / "r")                  # refused before anything was made


def test_two_outputs_on_one_path_and_a_report_over_a_runs_own_file_are_refused(files, capsys):
    d = files["dir"]
    _refused(["closed-form", "--json", str(d / "x.png"), "--figure", str(d / "x.png")], capsys, "--json", "--figure")
    _refused(["sft", "--data", files["sft"], "--output-dir", str(d / "r"), "--json", str(d / "r" / "metrics.jsonl"),
              *TINY], capsys, "--output-dir", "--json")
    _refused(["demo", "--output-dir", str(d / "demo"), "--figures-dir", str(d / "demo" / "sft")], capsys,
             "--output-dir", "--figures-dir")


def test_a_report_inside_the_run_directory_but_beside_its_files_is_fine(files):
    d = files["dir"]
    assert main(["sft", "--data", files["sft"], "--output-dir", str(d / "r"), "--json", str(d / "r" / "report.json"),
                 "--steps", "1", *TINY]) == 0
    assert json.loads((d / "r" / "report.json").read_text())["steps"] == 1


def test_figures_quick_never_writes_into_the_readmes_figures(monkeypatch, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(cli, "make_figures", lambda out, only, quick: seen.append(out) or [])
    assert main(["figures", "--quick"]) == 0 and seen == [cli.QUICK_FIGURES]
    assert main(["figures"]) == 0 and seen[-1] == "figures"
    for where in (cli.README_FIGURES, "figures", "./figures/"):
        _refused(["figures", "--quick", "--output-dir", where], capsys, "--quick", "never writes into", "--output-dir")
    assert len(seen) == 2


def _old_run(path):
    """An earlier run's files: metrics, two checkpoints and final/, plus a note of the user's own."""
    from dpo_np.sft import SFTTrainer
    tok = ByteTokenizer()
    SFTTrainer(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8)),
               train_dataset=SFT, tokenizer=tok, output_dir=str(path), max_steps=2, save_steps=1, max_length=32,
               max_prompt_length=16, show_progress=False).train()
    (path / "notes.txt").write_text("mine")
    return _digest(path)


def test_an_overwrite_that_meets_a_foreign_file_refuses_before_deleting_anything(files, capsys):
    run = files["dir"] / "run"
    _old_run(run)
    (run / "checkpoint-2" / "mine.txt").write_text("a file the package did not write")
    before = _digest(run)
    _refused(["sft", "--data", files["sft"], "--output-dir", str(run), "--overwrite", *TINY], capsys,
             "--overwrite", "checkpoint-2", "mine.txt")
    assert _digest(run) == before


def test_an_overwrite_that_fails_half_way_puts_the_earlier_run_back_whole(files, monkeypatch):
    run = files["dir"] / "run"
    before = _old_run(run)
    rename, calls = os.rename, []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 3 and ".replaced-" in str(dst):          # the third entry cannot be moved
            raise PermissionError(13, "Permission denied", src)
        return rename(src, dst)
    monkeypatch.setattr(training.os, "rename", failing)
    with pytest.raises(PermissionError):
        runs.run_sft(data=files["sft"], n_layer=1, n_head=1, n_embd=8, max_length=32, batch_size=2, steps=1,
                     output_dir=str(run), overwrite=True, show_progress=False, print_fn=lambda *a: None)
    assert _digest(run) == before and not [e for e in os.listdir(run) if e.startswith(".replaced-")]


def test_an_overwrite_checks_permissions_first_and_a_finished_one_leaves_nothing_aside(files, capsys, monkeypatch):
    run = files["dir"] / "run"
    before = _old_run(run)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not str(p).endswith("checkpoint-1"))
    _refused(["sft", "--data", files["sft"], "--output-dir", str(run), "--overwrite", *TINY], capsys,
             "--overwrite", "checkpoint-1", "nothing was deleted")
    assert _digest(run) == before
    monkeypatch.setattr(os, "access", access)
    assert main(["sft", "--data", files["sft"], "--output-dir", str(run), "--overwrite", "--steps", "1", *TINY]) == 0
    assert sorted(os.listdir(run)) == ["final", "metrics.jsonl", "notes.txt"]       # the old run gone, the note kept


def _stage(root, name, finished=True, foreign=False):
    """A pipeline stage folder as a trainer leaves it: metrics and final/ (or a checkpoint only)."""
    tok = ByteTokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8))
    os.makedirs(root / name, exist_ok=True)
    (root / name / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    save_checkpoint(root / name / ("final" if finished else "checkpoint-3"), model, tokenizer=tok)
    if foreign:
        (root / name / ("final" if finished else "checkpoint-3") / "mine.txt").write_text("x")


def test_a_pipelines_overwrite_checks_every_stage_first_and_says_what_it_replaces(files, capsys, monkeypatch):
    out = files["dir"] / "demo"
    _stage(out, "sft")
    _stage(out, "dpo", finished=False, foreign=True)
    before = _digest(out)
    _refused(["demo", "--quick", "--output-dir", str(out), "--overwrite"], capsys, "--overwrite", "mine.txt")
    assert _digest(out) == before                                       # the sft stage was not replaced first
    os.remove(out / "dpo" / "checkpoint-3" / "mine.txt")
    monkeypatch.setattr(cli, "run_demo", lambda **kw: {k: None for k in ("before", "after", "answers", "families",
                                                                         "config", "seconds", "best_steps")})
    assert main(["demo", "--quick", "--output-dir", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"--overwrite: replacing the earlier demo run in {out}" in err
    assert f"sft: finished, its model in {out / 'sft' / 'final'}" in err and "dpo: stopped, saved" in err


# ---- 2. options accepted and ignored -------------------------------------------------------------------

INAPPLICABLE = [
    (["generate", "{ckpt}", "hi", "--top-k", "5"], ["--top-k changes nothing in greedy decoding", "--temperature"]),
    (["generate", "{ckpt}", "hi", "--top-p", "0.5"], ["--top-p changes nothing", "--temperature T with T > 0"]),
    (["generate", "{ckpt}", "hi", "--seed", "3"], ["--seed changes nothing in greedy decoding"]),
    (["generate", "{ckpt}", "hi", "--num-beams", "3", "--temperature", "1"], ["beam search (--num-beams 3)",
                                                                             "--temperature would change nothing"]),
    (["generate", "{ckpt}", "hi", "--num-beams", "2", "--top-k", "4"], ["--top-k would change nothing"]),
    (["demo", "--seeds", ""], ["--seeds: is empty"]),
    (["demo", "--seeds", "3-1"], ["--seeds: the range 3-1 runs backwards; write 1-3"]),
    (["demo", "--seeds", "0-1", "--seed", "4"], ["--seeds runs every seed it names, so --seed would change nothing"]),
    (["demo", "--seeds", "0-1", "--figures-dir", "f"], ["--seeds draws no figures", "--figures-dir"]),
    (["sft", "--model", "{ckpt}", "--n-layer", "7"], ["--n-layer sets the size of a new model", "--model {ckpt}"]),
    (["sft", "--model", "{ckpt}", "--n-embd", "16"], ["--n-embd sets the size of a new model"]),
    (["sft", "--model", "{ckpt}", "--block-size", "16"], ["--block-size sets the size of a new model"]),
    (["sft", "--data", "{sft}", "--resume", "--overwrite"], ["--resume continues the run", "--overwrite replaces it"]),
    (["dpo", "--data", "{prefs}", "--model", "{ckpt}", "--steps", "3", "--epochs", "2"],
     ["--steps fixes the run's length, so --epochs would change nothing"]),
    (["sft", "--eval-data", "{sft}"], ["--eval-data needs --data"]),
    (["sft", "--skip-invalid"], ["--skip-invalid needs --data"]),
    (["dpo", "--data", "{prefs}", "--model", "{ckpt}", "--ref", "{ckpt}", "--loss-type", "simpo"],
     ["--loss-type simpo reads no reference model, so --ref would change nothing"]),
    (["sft", "--data", "{sft}", "--block-size", "16", "--max-length", "24"],
     ["--block-size is the old name of --max-length"]),
    (["sft", "--data", "{sft}", "--steps", "2", "--save-steps", "5"],
     ["--save-steps (5) is more than the run's 2 steps, so no checkpoint would be saved"]),
    (["gridworld", "--seed", "1", "--seeds", "0-1", "--output-dir", ""], ["--seeds runs every seed it names"]),
    (["dpo", "--data", "{prefs}", "--model", "{ckpt}", "--max_steps", "3", "--num_train_epochs", "2"],
     ["--max_steps fixes the run's length, so --num_train_epochs would change nothing"]),     # TRL's words kept
]


@pytest.mark.parametrize("args, says", INAPPLICABLE, ids=[" ".join(a)[:50] for a, _ in INAPPLICABLE])
def test_an_option_that_cannot_apply_is_refused_by_name_with_what_to_do_instead(files, args, says, capsys):
    args = [a.format(**files) for a in args]
    if args[0] in ("sft", "dpo", "reward"):
        args += ["--output-dir", str(files["dir"] / "r"), *TINY[-1:]]
    _refused(args, capsys, *[s.format(**files) for s in says])
    assert not os.path.exists(files["dir"] / "r")


def test_options_that_can_apply_are_honoured(files, capsys, monkeypatch):
    """Sampling options with sampling, the demo's sizes with --seeds, --block-size as --max-length."""
    assert main(["generate", files["ckpt"], "hi", "--top-k", "5", "--temperature", "1", "--max-new-tokens", "3"]) == 0
    seen = {}
    import dpo_np.experiments.seeds as seeds_module
    monkeypatch.setattr(seeds_module, "run_seeds", lambda seeds, **kw: seen.update(kw, seeds=seeds) or {})
    assert main(["demo", "--seeds", "0-1", "--beta", "0.3", "--dpo-steps", "7", "--quick", "--output-dir",
                 str(files["dir"] / "d")]) == 0
    assert seen["seeds"] == [0, 1] and seen["beta"] == 0.3 and seen["dpo_steps"] == 7 and seen["quick"]
    capsys.readouterr()
    assert main(["sft", "--data", files["sft"], "--block-size", "24", "--steps", "1", "--output-dir",
                 str(files["dir"] / "b"), "--json", str(files["dir"] / "b.json"), *TINY[:6], "--quiet"]) == 0
    assert "--block-size is deprecated: it is --max-length now" in capsys.readouterr().err
    from dpo_np.pretrained import load_model
    assert load_model(files["dir"] / "b" / "final")[0].config.block_size == 24


def test_sft_from_a_model_without_max_length_uses_the_models_context(files):
    """The help promises the model's context (32 here), not the new-model default of 160."""
    out = files["dir"] / "s"
    assert main(["sft", "--data", files["sft"], "--model", files["ckpt"], "--steps", "1", "--output-dir", str(out),
                 "--quiet"]) == 0
    state = json.loads((out / "final" / "state.json").read_text())
    assert state["extra"]["args"]["max_length"] == 32


# ---- every option reaches what it configures -------------------------------------------------------


class Anything(dict):
    """A stand-in result: any key, index or arithmetic gives itself, it formats as 0 and holds nothing."""

    def __getitem__(self, key):
        return self

    def __format__(self, spec):
        return "0"

    def __sub__(self, other):
        return self
    __rsub__ = __add__ = __radd__ = __mul__ = __truediv__ = __sub__

    def __iter__(self):
        return iter(())

    def __eq__(self, other):
        return False
    __hash__ = dict.__hash__


def _recorder(monkeypatch, targets):
    """Replace each (module, name) by a recorder of its arguments; returns {name: [kwargs of each call]}."""
    calls = {}
    for module, name in targets:
        def record(*args, _name=name, **kwargs):
            calls.setdefault(_name, []).append({"args": args, **kwargs})
            return Anything() if _name not in ("load_model",) else (GPT(GPTConfig(vocab_size=300, block_size=64,
                                                                                  n_layer=1, n_head=1, n_embd=8)),
                                                                     ByteTokenizer())
        monkeypatch.setattr(module, name, record)
    return calls


def _walk_cases(f):
    """{command: (base argv, the functions it calls, {dest: (argv, check(calls, files) -> bool)})}: every
    option of every command with a value of its own and where that value must arrive."""
    import dpo_np.experiments.seeds as seeds_module
    from dpo_np.experiments import exact_gpt
    d = f["dir"]

    def kw(fn, key, value):
        return lambda c: c[fn][-1].get(key) == value

    data_run = lambda fn: {                                                       # noqa: E731
        "data": (["--data", f["sft"]], kw(fn, "data", f["sft"])),
        "eval_data": (["--eval-data", f["sft"]], kw(fn, "eval_data", f["sft"])),
        "steps": (["--steps", "7"], kw(fn, "steps", 7)), "epochs": (["--epochs", "5"], kw(fn, "epochs", 5)),
        "lr": (["--lr", "0.25"], kw(fn, "lr", 0.25)), "batch_size": (["--batch-size", "3"], kw(fn, "batch_size", 3)),
        "max_length": (["--max-length", "20"], kw(fn, "max_length", 20)),
        "max_prompt_length": (["--max-prompt-length", "6"], kw(fn, "max_prompt_length", 6)),
        "prompt_template": (["--prompt-template", "U: {prompt} B: "], kw(fn, "prompt_template", "U: {prompt} B: ")),
        "output_dir": (["--output-dir", str(d / "o")], kw(fn, "output_dir", str(d / "o"))),
        "seed": (["--seed", "9"], kw(fn, "seed", 9)), "save_steps": (["--save-steps", "4"], kw(fn, "save_steps", 4)),
        "resume": (["--resume"], None), "overwrite": (["--overwrite"], kw(fn, "overwrite", True)),
        "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
        "quiet": (["--quiet"], kw(fn, "show_progress", False)),
        "skip_invalid": (["--skip-invalid"], kw(fn, "skip_invalid", True)),
        "allow_large": (["--allow-large"], kw(fn, "allow_large", True)),
        "model": (["--model", f["ckpt"]], kw(fn, "model", f["ckpt"]))}
    sft = data_run("run_sft")
    sft.update({"n_layer": (["--n-layer", "2"], kw("run_sft", "n_layer", 2)),
                "n_head": (["--n-head", "2"], kw("run_sft", "n_head", 2)),
                "n_embd": (["--n-embd", "12"], kw("run_sft", "n_embd", 12)),
                "block_size": (["--block-size", "30"], kw("run_sft", "max_length", 30)),
                "prompt": (["--prompt", "q?"], kw("run_sft", "prompts", ["q?"]))})
    sft.pop("model")
    sft["model"] = (["--model", f["ckpt"]], kw("run_sft", "model", f["ckpt"]))
    dpo = data_run("run_dpo")
    dpo.update({"data": (["--data", f["prefs"]], kw("run_dpo", "data", f["prefs"])),
                "eval_data": (["--eval-data", f["prefs"]], kw("run_dpo", "eval_data", f["prefs"])),
                "ref": (["--ref", f["ckpt"]], kw("run_dpo", "ref", f["ckpt"])),
                "beta": (["--beta", "0.7"], kw("run_dpo", "beta", 0.7)),
                "loss_type": (["--loss-type", "ipo"], kw("run_dpo", "loss_type", "ipo")),
                "label_smoothing": (["--label-smoothing", "0.2"], kw("run_dpo", "label_smoothing", 0.2)),
                "prompt": (["--prompt", "q?"], kw("run_dpo", "prompts", ["q?"]))})
    reward = data_run("run_reward")
    reward.update({"data": (["--data", f["prefs"]], kw("run_reward", "data", f["prefs"])),
                   "eval_data": (["--eval-data", f["prefs"]], kw("run_reward", "eval_data", f["prefs"]))})
    ev = {"model": (["--model", f["ckpt"]], kw("run_evaluate", "model", f["ckpt"])),
          "ref": (["--ref", f["ckpt"]], kw("run_evaluate", "ref", f["ckpt"])),
          "data": (["--data", f["prefs"]], kw("run_evaluate", "data", f["prefs"])),
          "reward_model": (["--reward-model", f["ckpt"]], kw("run_evaluate", "reward_model", f["ckpt"])),
          "beta": (["--beta", "0.7"], kw("run_evaluate", "beta", 0.7)),
          "kl_samples": (["--kl-samples", "6"], kw("run_evaluate", "kl_samples", 6)),
          "prompt": (["--prompt", "q?"], kw("run_evaluate", "prompts", ["q?"])),
          "seed": (["--seed", "9"], kw("run_evaluate", "seed", 9)),
          "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
          "skip_invalid": (["--skip-invalid"], kw("run_evaluate", "skip_invalid", True)),
          "allow_large": (["--allow-large"], kw("run_evaluate", "allow_large", True))}
    demo = {"output_dir": (["--output-dir", str(d / "o")], kw("run_demo", "output_dir", str(d / "o"))),
            "figures_dir": (["--figures-dir", str(d / "f")], kw("run_demo", "figures_dir", str(d / "f"))),
            "quick": (["--quick"], kw("run_demo", "quick", True)),
            "sft_steps": (["--sft-steps", "5"], kw("run_demo", "sft_steps", 5)),
            "dpo_steps": (["--dpo-steps", "6"], kw("run_demo", "dpo_steps", 6)),
            "sft_patience": (["--sft-patience", "2"], kw("run_demo", "sft_patience", 2)),
            "beta": (["--beta", "0.7"], kw("run_demo", "beta", 0.7)), "seed": (["--seed", "9"], kw("run_demo", "seed", 9)),
            "seeds": (["--seeds", "2,4"], lambda c: c["run_seeds"][-1]["args"][0] == [2, 4]),
            "overwrite": (["--overwrite"], kw("run_demo", "overwrite", True)),
            "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
            "quiet": (["--quiet"], kw("run_demo", "show_progress", False)), "allow_large": (["--allow-large"], None)}
    toy = lambda fn, **extra: {                                                   # noqa: E731
        "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
        "quiet": (["--quiet"], lambda c: c[fn][-1].get("progress") is False), "allow_large": (["--allow-large"], None),
        **extra}
    closed = toy("run_closed_form", **{k: ([f"--{k.replace('_', '-')}", v], kw("run_closed_form", key, cast))
                                       for k, key, v, cast in (("vocab_size", "vocab_size", "2", 2),
                                                               ("length", "length", "2", 2),
                                                               ("prompts", "n_prompts", "2", 2),
                                                               ("beta", "beta", "0.7", 0.7), ("pairs", "pairs", "99", 99),
                                                               ("steps", "steps", "5", 5), ("lr", "lr", "0.3", 0.3),
                                                               ("seed", "seed", "9", 9))})
    closed.update(seeds=(["--seeds", "2,4"], lambda c: c["closed_form_seeds"][-1]["args"][0] == [2, 4]),
                  compare=[(["--no-compare"], lambda c: len(c["run_closed_form"]) == 1),
                           (["--no-compare", "--seeds", "0"], kw("closed_form_seeds", "compare", False))],
                  figure=(["--figure", str(d / "g.png")], lambda c: c["plot_closed_form"][-1]["args"][1] == str(d / "g.png")))
    grid = toy("run_gridworld", **{k: ([f"--{k.replace('_', '-')}", v], kw("run_gridworld", k, cast))
                                   for k, v, cast in (("gamma", "0.5", 0.5), ("iterations", "3", 3),
                                                      ("episodes", "4", 4), ("horizon", "5", 5), ("lr", "0.3", 0.3),
                                                      ("variance_episodes", "6", 6), ("variance_seeds", "2", 2),
                                                      ("seed", "9", 9))})
    grid.update(seeds=(["--seeds", "2,4"], lambda c: c["gridworld_seeds"][-1]["args"][0] == [2, 4]),
                output_dir=(["--output-dir", str(d / "o")],
                            lambda c: c["plot_gridworld"][-1]["args"][1] == str(d / "o" / "gridworld.png")))
    rlhf = toy("run_rlhf", **{k: ([f"--{k}", v], kw("run_rlhf", k, cast))
                              for k, v, cast in (("beta", "0.7", 0.7), ("steps", "5", 5), ("samples", "3", 3),
                                                 ("pairs", "99", 99), ("seed", "9", 9))})
    rlhf.update(quick=(["--quick"], kw("run_rlhf", "dpo_steps", 100)),
                seeds=(["--seeds", "2,4"], lambda c: c["rlhf_seeds"][-1]["args"][0] == [2, 4]),
                output_dir=(["--output-dir", str(d / "o")], lambda c: c["plot_rlhf"][-1]["args"][1] == str(d / "o")))
    exact = toy("run_exact_gpt", seeds=(["--seeds", "2,4"], kw("run_exact_gpt", "seeds", [2, 4])),
                quick=(["--quick"], kw("run_exact_gpt", "quick", True)),
                output_dir=(["--output-dir", str(d / "o")],
                            lambda c: c["plot_exact_gpt"][-1]["args"][1] == str(d / "o" / "exact_gpt.png")))
    succ = toy("run_successors", **{k: ([f"--{k}", v], kw("run_successors", k, cast))
                                    for k, v, cast in (("beta", "0.7", 0.7), ("pairs", "99", 99), ("steps", "5", 5),
                                                       ("samples", "3", 3))})
    succ.update(policy=(["--policy", "gpt"], lambda c: "run_successors_gpt" in c and "run_successors" not in c),
                seeds=(["--seeds", "2,4"], kw("run_successors", "seeds", [2, 4])),
                quick=(["--quick"], kw("run_successors", "quick", True)),
                output_dir=(["--output-dir", str(d / "o")],
                            lambda c: c["plot_successors"][-1]["args"][1] == str(d / "o" / "successors.png")))
    ppo = {"quick": (["--quick"], kw("run_ppo_gpt", "quick", True)),
           "sft_checkpoint": (["--sft-checkpoint", f["ckpt"]], kw("run_ppo_gpt", "sft_checkpoint", f["ckpt"])),
           "beta": (["--beta", "0.7"], kw("run_ppo_gpt", "beta", 0.7)),
           "ppo_steps": (["--ppo-steps", "5"], kw("run_ppo_gpt", "ppo_steps", 5)),
           "dpo_steps": (["--dpo-steps", "6"], kw("run_ppo_gpt", "dpo_steps", 6)),
           "seed": (["--seed", "9"], kw("run_ppo_gpt", "seed", 9)),
           "seeds": (["--seeds", "2,4"], lambda c: c["run_ppo_gpt_seeds"][-1]["args"][0] == [2, 4]),
           "output_dir": (["--output-dir", str(d / "o")], kw("run_ppo_gpt", "output_dir", str(d / "o"))),
           "draw_figure": (["--no-figure"], kw("run_ppo_gpt", "figure", False)),
           "overwrite": (["--overwrite"], kw("run_ppo_gpt", "overwrite", True)),
           "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
           "quiet": (["--quiet"], kw("run_ppo_gpt", "show_progress", False))}
    gen = {"model": ([], lambda c: c["load_model"][-1]["args"][0] == f["ckpt"]),
           "prompts": ([], lambda c: True),
           "max_new_tokens": (["--max-new-tokens", "3"], lambda c: c["generate"][-1]["args"][2] == 3),
           "temperature": (["--temperature", "0.5"], kw("generate", "temperature", 0.5)),
           "top_k": (["--temperature", "1", "--top-k", "4"], kw("generate", "top_k", 4)),
           "top_p": (["--temperature", "1", "--top-p", "0.5"], kw("generate", "top_p", 0.5)),
           "num_beams": (["--num-beams", "3"], kw("beam_search", "num_beams", 3)),
           "prompt_template": (["--prompt-template", "U: {prompt} B: "],
                               lambda c: c["generate"][-1]["args"][1] == ByteTokenizer().encode("U: hi B: ")),
           "seed": (["--temperature", "1", "--seed", "9"], kw("generate", "seed", 9))}
    export = {"checkpoint": ([], lambda c: c["load_model"][-1]["args"][0] == f["ckpt"]),
              "output_dir": ([], lambda c: c["save_pretrained"][-1]["args"][1] == str(d / "hf")),
              "without_tokenizer": (["--without-tokenizer"], lambda c: c["save_pretrained"][-1]["tokenizer"] is None)}
    diag = {"path": ([], lambda c: c["read_log"][-1]["args"][0] == f["sft"]),
            "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json")),
            "figure": (["--figure", str(d / "g.png")], lambda c: c["plot_diagnosis"][-1]["args"][2] == str(d / "g.png")),
            "quiet": (["--quiet"], kw("format_report", "quiet", True))}
    figures = {"output_dir": (["--output-dir", str(d / "o")], lambda c: c["make_figures"][-1]["args"][0] == str(d / "o")),
               "only": (["--only", "rlhf"], kw("make_figures", "only", ["rlhf"])),
               "quick": (["--quick"], kw("make_figures", "quick", True))}
    bench = {"what": ([], lambda c: "bench_model" in c),
             "report": ([], None),                 # only `bench table REPORT` reads it: tests/test_bench.py
             "json": (["--json", str(d / "w.json")], lambda c: os.path.isfile(d / "w.json"))}
    return {
        "sft": (["--data", f["sft"]], [(runs, "run_sft")], sft),
        "dpo": (["--data", f["prefs"], "--model", f["ckpt"]], [(runs, "run_dpo")], dpo),
        "reward": (["--data", f["prefs"], "--model", f["ckpt"]], [(runs, "run_reward")], reward),
        "evaluate": (["--model", f["ckpt"], "--ref", f["ckpt"], "--data", f["prefs"]], [(runs, "run_evaluate")], ev),
        "demo": ([], [(cli, "run_demo"), (seeds_module, "run_seeds")], demo),
        "closed-form": (["--figure", ""], [(cli, "run_closed_form"), (cli, "closed_form_seeds"),
                                           (cli, "plot_closed_form")], closed),
        "gridworld": (["--output-dir", ""], [(cli, "run_gridworld"), (cli, "gridworld_seeds"), (cli, "print_report"),
                                             (cli, "plot_gridworld")], grid),
        "rlhf": (["--output-dir", ""], [(cli, "run_rlhf"), (cli, "rlhf_seeds"), (cli, "print_rlhf_report"),
                                        (cli, "plot_rlhf")], rlhf),
        "exact-gpt": (["--output-dir", ""], [(exact_gpt, "run_exact_gpt"), (exact_gpt, "print_report"),
                                             (exact_gpt, "plot_exact_gpt")], exact),
        "successors": (["--output-dir", ""], [(cli, "run_successors"), (cli, "print_successors_report"),
                                              (cli, "plot_successors"), (cli, "run_successors_gpt"),
                                              (cli, "print_successors_gpt_report"), (cli, "plot_successors_gpt")], succ),
        "ppo-gpt": ([], [(cli, "run_ppo_gpt"), (cli, "run_ppo_gpt_seeds")], ppo),
        "generate": ([f["ckpt"], "hi"], [(cli, "load_model"), (cli, "generate"), (cli, "beam_search")], gen),
        "export": ([f["ckpt"], str(d / "hf")], [(cli, "load_model"), (cli, "save_pretrained")], export),
        "diagnose": ([f["sft"]], [(cli, "read_log"), (cli, "diagnose"), (cli, "format_report"),
                                  (cli, "plot_diagnosis")], diag),
        "figures": ([], [(cli, "make_figures")], figures),
        "bench": (["model"], [(cli, "bench_model"), (cli, "run_all")], bench),
    }


def test_every_option_of_every_command_reaches_what_it_configures(files, monkeypatch, capsys):
    """Walk the parsers: each option (but --threads, tested on its own in test_cli) is given a value of its
    own, and the function it configures must receive it. A new option with no entry here fails this test."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(files["dir"])                     # the commands' default folders land in the test's own
    cases = _walk_cases(files)
    parser = cli.build_parser()
    for command, sub in cli._subparsers(parser).items():
        dests = {a.dest for a in sub._actions if a.dest not in ("help", "threads")}
        assert command in cases and set(cases[command][2]) == dests, (command, dests ^ set(cases[command][2]))
        base, targets, options = cases[command]
        for dest, cases_of_dest in options.items():
            for extra, arrived in cases_of_dest if isinstance(cases_of_dest, list) else [cases_of_dest]:
                if arrived is None:
                    continue                                   # a flag only the checks before the start read
                calls = _recorder(monkeypatch, targets)
                if os.path.exists(files["dir"] / "w.json"):
                    os.remove(files["dir"] / "w.json")
                code = main([command, *base, *extra])
                assert code == 0, (command, dest, capsys.readouterr().err)
                assert arrived(calls), (command, dest, extra, calls)
        capsys.readouterr()


# ---- 3. messages in the user's words --------------------------------------------------------------------

def test_errors_name_the_options_as_typed_never_a_field(files, capsys):
    d = files["dir"]
    line = _refused(["sft", "--data", files["sft"], "--n-embd", "7", "--n-head", "2", "--output-dir", str(d / "r"),
                     "--quiet"], capsys, "--n-embd (7) must be divisible by --n-head (2)")
    assert "GPTConfig" not in line and "n_embd" not in line
    line = _refused(["dpo", "--data", files["prefs"], "--model", files["ckpt"], "--max-length", "500", "--output-dir",
                     str(d / "r"), "--quiet"], capsys, "--max-length (500) exceeds the context of --model (32 tokens)")
    assert "block_size" not in line and "max_length" not in line
    line = _refused(["dpo", "--data", files["prefs"], "--model", files["ckpt"], "--max_length", "500", "--output_dir",
                     str(d / "r"), "--quiet"], capsys, "--max_length (500) exceeds the context of --model")
    _refused(["gridworld", "--variance-episodes", "1", "--iterations", "1", "--output-dir", ""], capsys,
             "--variance-episodes must be >= 2")
    _refused(["rlhf", "--samples", "1", "--quick", "--output-dir", ""], capsys, "--samples must be >= 2")
    _refused(["dpo", "--data", files["prefs"], "--model", files["ckpt"], "--beta", "1e39", "--output-dir", str(d / "r"),
              "--quiet"], capsys, "--beta=1e+39 does not fit float32")
    with pytest.raises(SystemExit):
        main(["sft", "--data", files["sft"], "--per_device_train_batch_size", "0"])
    assert "argument --per_device_train_batch_size: must be a positive integer" in capsys.readouterr().err


def test_an_invalid_record_says_what_the_command_line_can_do_and_skip_invalid_does_it(files, capsys):
    d = files["dir"]
    bad = d / "bad.jsonl"
    bad.write_text(json.dumps(SFT[0]) + "\n" + '{"prompt": "a\tb", "response": "c"}\n' + json.dumps(SFT[1]) + "\n"
                   + '{"prompt": "p", "response": "r", "response": "s"}\n', encoding="utf-8")
    line = _refused(["sft", "--data", str(bad), "--output-dir", str(d / "r"), *TINY], capsys,
                    f"{bad}:2: not valid JSON (Invalid control character at column", "pass --skip-invalid to skip")
    assert "skip_invalid" not in line and "at at" not in line
    assert main(["sft", "--data", str(bad), "--skip-invalid", "--steps", "1", "--output-dir", str(d / "r"), *TINY]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: skipped 2 of 4 records (2 invalid_json); first: {bad}:2" in out


def test_paths_are_named_for_what_they_are(files, capsys, tmp_path):
    (tmp_path / "a-file").write_text("x")
    os.symlink(tmp_path / "a-file", tmp_path / "to-a-file")
    _refused(["sft", "--data", files["sft"], "--output-dir", str(tmp_path / "to-a-file"), *TINY], capsys,
             "is a symbolic link to a file", "not a directory")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    _refused(["sft", "--data", str(tmp_path / "dangling")], capsys, "--data", "is a broken symbolic link", "not a file")
    (tmp_path / "hf" / "config.json").mkdir(parents=True)
    from dpo_np.pretrained import load_pretrained
    with pytest.raises(ValueError, match=r"config.json is a directory, not a regular file"):
        load_pretrained(tmp_path / "hf")


def test_gridworld_at_the_edges_of_gamma_and_lr_runs_and_says_what_it_cannot_measure(tmp_path, capsys):
    for extra in (["--gamma", "0"], ["--lr", "1e9"]):
        assert main(["gridworld", *extra, "--iterations", "5", "--episodes", "4", "--variance-episodes", "8",
                     "--variance-seeds", "2", "--output-dir", "", "--quiet", "--json", str(tmp_path / "g.json")]) == 0
        out = capsys.readouterr().out
        assert "nan" not in out.lower() and "no variance to cut" in out
        text = (tmp_path / "g.json").read_text()
        assert "NaN" not in text and "Infinity" not in text


# ---- 4. work without bound: estimated, refused unless asked -----------------------------------------------

def test_a_new_model_too_large_for_memory_is_refused_before_allocating_naming_the_option(files, capsys):
    tracemalloc.start()
    try:
        line = _refused(["sft", "--data", files["sft"], "--n-embd", "2000000", "--output-dir", str(files["dir"] / "r"),
                         "--quiet"], capsys, "--n-embd=2000000", "GB of memory", "--allow-large")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000 and "n_embd" not in line.replace("--n-embd", "")


@pytest.mark.parametrize("args, says", [
    (["gridworld", "--horizon", "100000", "--output-dir", ""], ["--horizon 100000", "would take about"]),
    (["closed-form", "--vocab-size", "2", "--length", "24", "--figure", ""], ["--vocab-size 2, --length 24"]),
    (["demo", "--seeds", "0-999"], ["--seeds 0-999", "would take about"]),
    (["rlhf", "--samples", "100000", "--output-dir", ""], ["--samples 100000"]),
    (["evaluate", "--model", "{ckpt}", "--ref", "{ckpt}", "--data", "{prefs}", "--kl-samples", "1000000"],
     ["--kl-samples=1000000", "3,000,000 responses"]),
    (["dpo", "--data", "{prefs}", "--model", "{ckpt}", "--batch-size", "100000000", "--output-dir", "{dir}/r"],
     ["--batch-size=100000000", "GB of memory"]),
])
def test_work_far_out_of_reach_is_refused_up_front_unless_asked(files, args, says, capsys, monkeypatch):
    args = [a.format(**files) for a in args]
    _refused(args, capsys, *says, "--allow-large")
    import dpo_np.experiments.seeds as seeds_module
    monkeypatch.setattr(seeds_module, "run_seeds", lambda *a, **kw: {})
    for name in ("run_gridworld", "run_closed_form", "run_demo", "run_rlhf"):      # asked: it goes ahead
        monkeypatch.setattr(cli, name, lambda **kw: Anything())
    for name in ("print_report", "print_rlhf_report", "plot_closed_form", "plot_gridworld"):
        monkeypatch.setattr(cli, name, lambda *a, **kw: None)
    if args[0] not in ("evaluate", "dpo"):             # those two are not stood in for: asked, they would run
        assert main([*args, "--allow-large"]) == 0


# ---- 5. checks that come before the work -----------------------------------------------------------------

def test_every_path_and_option_is_checked_before_the_first_step(files, capsys, monkeypatch, tmp_path):
    d = files["dir"]
    blocked = tmp_path / "readonly"
    blocked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and os.path.abspath(p) != str(blocked))
    started = []
    monkeypatch.setattr(runs, "run_sft", lambda **kw: started.append(kw))
    _refused(["sft", "--data", files["sft"], "--json", str(blocked / "r.json")], capsys, "--json", "cannot be written")
    _refused(["sft", "--data", files["sft"], "--output-dir", str(blocked / "new" / "run")], capsys, "--output-dir",
             f"cannot be created in {blocked}")
    (tmp_path / "afile").write_text("x")
    _refused(["sft", "--data", files["sft"], "--output-dir", str(tmp_path / "afile" / "run")], capsys, "--output-dir",
             "is a file")
    if __import__("importlib").util.find_spec("matplotlib"):
        _refused(["closed-form", "--figure", str(d / "f.xyz")], capsys, "--figure", "'xyz' is not one matplotlib writes")
        _refused(["diagnose", files["sft"], "--figure", str(d / "noext")], capsys, "--figure", "has no extension")
    assert started == []


def test_a_prompt_too_long_for_the_model_is_refused_before_training(files, capsys):
    long_prompt = "a question far too long for a context of thirty-two bytes"
    out = files["dir"] / "r"
    _refused(["sft", "--data", files["sft"], "--prompt", long_prompt, "--output-dir", str(out), *TINY], capsys,
             "prompt", "no room is left for an answer")
    assert not os.path.exists(out / "metrics.jsonl")
    _refused(["generate", files["ckpt"], "hi", long_prompt], capsys, "no room is left for an answer")
    _refused(["evaluate", "--model", files["ckpt"], "--ref", files["ckpt"], "--data", files["prefs"], "--prompt",
              long_prompt], capsys, "no room is left for an answer")


# ---- 6. Ctrl-C: what is true, for commands that resume and for those that cannot ------------------------

@pytest.mark.parametrize("how", ["last step", "early stopping"])
def test_a_ctrl_c_during_the_step_a_run_ends_on_surfaces_after_the_run_is_saved(tmp_path, monkeypatch, how):
    from dpo_np.sft import SFTTrainer
    tok = ByteTokenizer()
    kw = dict(output_dir=str(tmp_path / "r"), max_steps=3, max_length=32, max_prompt_length=16, show_progress=False,
              per_device_train_batch_size=2)
    if how == "early stopping":
        kw.update(eval_steps=1, load_best_model_at_end=True, early_stopping_patience=1)
    trainer = SFTTrainer(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8)),
                         train_dataset=SFT, eval_dataset=SFT if how == "early stopping" else None, tokenizer=tok, **kw)
    update = trainer.update

    def update_and_interrupt(idx, lr):
        out = update(idx, lr)
        if how == "last step" and trainer.state["step"] == 2:         # the third step, the run's last
            signal.raise_signal(signal.SIGINT)
        return out
    monkeypatch.setattr(trainer, "update", update_and_interrupt)
    if how == "early stopping":
        def stop_now():
            signal.raise_signal(signal.SIGINT)
            return True                                              # patience ran out at this step
        monkeypatch.setattr(trainer, "_evaluate_and_keep_best", stop_now)
    with pytest.raises(training.TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.finished and os.path.isdir(tmp_path / "r" / "final")
    assert stop.value.checkpoint == str(tmp_path / "r" / "final")
    assert trainer.state["step"] == (3 if how == "last step" else 1)


def test_after_ctrl_c_a_pipeline_says_which_stages_finished_and_offers_no_resume(files, monkeypatch, capsys):
    out = files["dir"] / "p"

    def interrupted_in_dpo(**kw):
        _stage(out, "sft")
        _stage(out, "reward")
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_ppo_gpt", interrupted_in_dpo)
    assert main(["ppo-gpt", "--quick", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert "ppo-gpt has no --resume" in err and "--resume" not in err.replace("has no --resume", "")
    assert f"sft: finished, its model in {out / 'sft' / 'final'}" in err
    assert "ppo: not started" in err and "--overwrite, which replaces every stage above, finished ones too" in err
    assert f"--sft-checkpoint {out / 'sft' / 'final'}" in err
    monkeypatch.setattr(runs, "run_sft", lambda **kw: (_ for _ in ()).throw(
        training.TrainingInterrupted("the run finished", str(out / "final"), finished=True)))
    assert main(["sft", "--data", files["sft"], "--output-dir", str(files["dir"] / "s")]) == 130
    err = capsys.readouterr().err
    assert "Nothing is left to resume" in err and "Continue with" not in err
