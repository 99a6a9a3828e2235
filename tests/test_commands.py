"""One's own data from the command line: sft → dpo → reward → evaluate on JSONL files in any
language, the numbers each command prints written to --json, and every bad option, path or
interruption answered with one line that names what to change."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dpo_np.cli import main
from dpo_np.data import collate_preferences, load_preferences, tokenize_preference
from dpo_np.logprobs import get_batch_logps
from dpo_np.pretrained import load_model

SFT_LINES = [{"prompt": "Où est Paris ?", "response": "Paris est en France. ù"},
             {"prompt": "東京はどこ？", "response": "日本にあります。"},
             {"prompt": "Say hi", "response": "hi 👋"},
             {"text": "A plain text line with no prompt at all."}]
PREF_LINES = [{"prompt": "Où est Paris ?", "chosen": "Paris est en France.", "rejected": "Nulle part."},
              {"prompt": "東京はどこ？", "chosen": "日本にあります。", "rejected": "知りません。"},
              {"prompt": "Say hi", "chosen": "hi 👋", "rejected": "go away"}]
SMALL = ["--steps", "4", "--batch-size", "2", "--max-length", "64", "--quiet"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """sft → dpo → reward → evaluate on a file the character tokenizer could not read."""
    root = tmp_path_factory.mktemp("own")
    sft, prefs = _jsonl(root / "sft.jsonl", SFT_LINES), _jsonl(root / "prefs.jsonl", PREF_LINES)
    codes = [
        main(["sft", "--data", sft, "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--output-dir",
              str(root / "sft"), "--json", str(root / "sft.json"), "--prompt", "Say hi", *SMALL]),
        main(["dpo", "--data", prefs, "--model", str(root / "sft" / "final"), "--eval-data", prefs, "--beta", "0.5",
              "--lr", "1e-2", "--output-dir", str(root / "dpo"), "--json", str(root / "dpo.json"), *SMALL]),
        main(["reward", "--data", prefs, "--model", str(root / "sft" / "final"), "--eval-data", prefs,
              "--output-dir", str(root / "reward"), "--json", str(root / "reward.json"), *SMALL]),
        main(["evaluate", "--model", str(root / "dpo" / "final"), "--ref", str(root / "sft" / "final"),
              "--data", prefs, "--beta", "0.5", "--reward-model", str(root / "reward" / "final"),
              "--prompt", "東京はどこ？", "--json", str(root / "evaluate.json")]),
    ]
    return root, codes, prefs


def test_own_data_in_any_language_trains_through_every_command(pipeline):
    root, codes, _ = pipeline
    assert codes == [0, 0, 0, 0]
    for name in ("sft", "dpo", "reward"):
        assert os.path.isdir(root / name / "final")
    sft = json.loads((root / "sft.json").read_text())
    assert sft["options"]["seed"] == 0 and sft["steps"] == 4 and "Say hi" in sft["answers"]


def test_evaluate_reports_the_implicit_reward_accuracy_a_direct_computation_gives(pipeline):
    root, _, prefs = pipeline
    report = json.loads((root / "evaluate.json").read_text())
    policy, tok = load_model(root / "dpo" / "final")
    ref, _ = load_model(root / "sft" / "final")
    records = load_preferences(prefs)
    feats = [tokenize_preference(tok, r, 64, 32) for r in records]
    batch = collate_preferences(feats, tok.pad_token_id)
    B = len(records)
    lp = [get_batch_logps(m.forward(batch["input_ids"], batch["attention_mask"], cache=False), batch["labels"])
          for m in (policy, ref)]
    rewards = 0.5 * (lp[0] - lp[1])
    assert report["pairs"] == B
    assert report["implicit_reward_accuracy"] == pytest.approx(float(np.mean(rewards[:B] > rewards[B:])))
    assert report["implicit_reward_margin"] == pytest.approx(float(np.mean(rewards[:B] - rewards[B:])), rel=1e-5)
    h = rewards[:B] - rewards[B:]
    assert report["dpo_loss"] == pytest.approx(float(np.mean(np.logaddexp(0, -h))), rel=1e-5)
    assert report["kl"] >= 0 and 0 <= report["reward_model_accuracy"] <= 1
    assert "東京はどこ？" in report["answers"]


def test_dpo_without_a_model_says_how_to_get_one(tmp_path, capsys):
    prefs = _jsonl(tmp_path / "p.jsonl", PREF_LINES)
    assert main(["dpo", "--data", prefs, "--output-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "needs a model" in err and "python -m dpo_np sft --data" in err and "--model runs/sft/final" in err


@pytest.mark.parametrize("args, message", [
    (["sft", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["sft", "--steps", "0"], "--steps: must be a positive integer"),
    (["dpo", "--data", "x", "--beta", "nan"], "--beta: must be a number > 0"),
    (["demo", "--seed", "1.5"], "--seed: must be a non-negative integer"),
    (["generate", "m", "q", "--top-p", "2"], "--top-p: must be a number > 0 and <= 1"),
])
def test_bad_option_values_name_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_lengths_that_cannot_work_together_name_both_options_not_a_config_field(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    assert main(["sft", "--data", data, "--max-length", "8", "--max-prompt-length", "10",
                 "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--max-prompt-length (10) must be smaller than --max-length (8)" in err
    assert "max_prompt_length" not in err.replace("--max-prompt-length", "")
    assert not os.path.exists(tmp_path / "r")                            # checked before anything ran


def test_unwritable_paths_are_refused_before_the_run_starts(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [(["--output-dir", str(tmp_path / "afile")], "--output-dir"),
             (["--output-dir", str(tmp_path / "afile" / "below")], "--output-dir"),
             (["--json", str(tmp_path / "adir"), "--output-dir", str(tmp_path / "r")], "--json")]
    for extra, option in cases:
        start = time.perf_counter()
        assert main(["sft", "--data", data, *extra, *SMALL]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {option}") and "Traceback" not in err
        assert time.perf_counter() - start < 30                         # not after a training run
    assert main(["demo", "--quick", "--figures-dir", str(tmp_path / "afile"), "--output-dir", str(tmp_path / "d")]) == 2
    assert "--figures-dir" in capsys.readouterr().err and not os.path.exists(tmp_path / "d")


def test_a_used_output_dir_needs_overwrite_or_resume(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    base = ["sft", "--data", data, "--output-dir", str(tmp_path / "r"), "--n-embd", "16", "--n-head", "2",
            "--n-layer", "1", *SMALL]
    assert main(base) == 0
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "choose a new --output-dir, pass --overwrite" in err and "--resume" in err
    assert main(base + ["--resume"]) == 2 and "holds no checkpoint" in capsys.readouterr().err
    assert main(base + ["--overwrite"]) == 0


def test_generate_on_a_run_directory_or_a_reward_model_says_what_to_pass(pipeline, capsys):
    root, _, _ = pipeline
    assert main(["generate", str(root / "sft"), "Say hi"]) == 2
    assert f"{root / 'sft'} is a run directory, not a checkpoint; try {root / 'sft' / 'final'}" in capsys.readouterr().err
    assert main(["generate", str(root / "reward" / "final"), "Say hi"]) == 2
    assert "is a reward-model checkpoint" in capsys.readouterr().err
    assert main(["generate", str(root / "sft" / "final"), "Say hi", "--max-new-tokens", "5"]) == 0


def test_ctrl_c_saves_a_checkpoint_and_prints_one_line_that_says_how_to_resume(tmp_path):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    args = ["sft", "--data", data, "--output-dir", str(tmp_path / "r"), "--steps", "100000", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "16", "--max-length", "64", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dpo_np", *args], stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "r" / "metrics.jsonl"
    for _ in range(1200):                                  # until it has trained a few steps
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: training stopped at step ")
    assert lines[0].endswith(" ".join(args) + " --resume")
    step = int(lines[0].split("at step ")[1].split()[0])
    assert os.path.isfile(tmp_path / "r" / f"checkpoint-{step}" / "state.json")
