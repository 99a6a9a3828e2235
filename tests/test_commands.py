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
from dpo_np.data import TruncationWarning, collate_preferences, format_prompt, load_preferences, tokenize_preference
from dpo_np.logprobs import get_batch_logps
from dpo_np.pretrained import load_model
from dpo_np.training import LOCK_FILE, read_metrics

SFT_LINES = [{"prompt": "Où est Paris ?", "response": "Paris est en France. ù"},
             {"prompt": "東京はどこ？", "response": "日本にあります。"},
             {"prompt": "Say hi", "response": "hi 👋"},
             {"text": "A plain text line with no prompt at all."}]
PREF_LINES = [{"prompt": "Où est Paris ?", "chosen": "Paris est en France.", "rejected": "Nulle part."},
              {"prompt": "東京はどこ？", "chosen": "日本にあります。", "rejected": "知りません。"},
              {"prompt": "Say hi", "chosen": "hi 👋", "rejected": "go away"},
              {"prompt": [{"role": "user", "content": "Wo liegt Wien?"}],            # TRL's conversational form
               "chosen": [{"role": "assistant", "content": "In Österreich."}],
               "rejected": [{"role": "assistant", "content": "Keine Ahnung."}]}]
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
              "--lr", "1e-2", "--label-smoothing", "0.1", "--output-dir", str(root / "dpo"), "--json",
              str(root / "dpo.json"), *SMALL]),
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
        lines = err.splitlines()                                # the threads' header (if it came first), the refusal
        assert lines[-1].startswith(f"error: {option}") and "Traceback" not in err
        assert len(lines) <= 2 and all(line.startswith("threads: ") for line in lines[:-1])
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
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("threads: ")]
    assert len(lines) == 1 and lines[0].startswith("interrupted: training stopped at step ")
    assert lines[0].endswith(" ".join(args) + " --resume")
    step = int(lines[0].split("at step ")[1].split()[0])
    assert os.path.isfile(tmp_path / "r" / f"checkpoint-{step}" / "state.json")


# ---- defaults that train a small file usefully and a large one boundedly -----------------------

def test_without_steps_a_small_file_trains_usefully_and_a_large_one_boundedly():
    from dpo_np.experiments.runs import STEP_BOUNDS, run_length
    low, high = STEP_BOUNDS["dpo"]
    assert run_length("dpo", [{}] * 16, "preference", 8) == (low, f"3 epochs of 2 steps raised to the minimum of {low}")
    assert run_length("dpo", [{}] * 400, "preference", 8) == (150, "3 epochs of 50 steps")
    assert run_length("dpo", [{}] * 1_000_000, "preference", 8)[0] == high
    assert run_length("dpo", [{}] * 16, "preference", 8, epochs=1) == (low, f"1 epoch of 2 steps raised to the minimum of {low}")
    assert run_length("dpo", [{}] * 16, "preference", 8, steps=7) == (7, "as asked")


def test_dpo_on_a_few_pairs_trains_its_minimum_of_steps_and_says_so(pipeline, tmp_path, capsys):
    root, _, prefs = pipeline
    from dpo_np.experiments.runs import STEP_BOUNDS
    low = STEP_BOUNDS["dpo"][0]
    assert main(["dpo", "--data", prefs, "--model", str(root / "sft" / "final"), "--output-dir", str(tmp_path / "d"),
                 "--max-length", "64", "--quiet", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert f"{low} steps (3 epochs of 1 step raised to the minimum of {low})" in out          # was: 1 step
    assert json.loads((tmp_path / "d.json").read_text())["steps"] == low


# ---- held-out metrics: logged, and reported in one place ----------------------------------------

def test_held_out_metrics_are_logged_and_the_json_reports_the_model_the_run_ends_with(pipeline):
    root, _, _ = pipeline
    evals = [r for r in read_metrics(root / "dpo") if "eval/loss" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4]                       # every tenth of 4 steps: each
    assert {"eval/rewards/accuracies", "eval/rewards/margins"} <= set(evals[0])
    report = json.loads((root / "dpo.json").read_text())
    assert "eval_loss" not in report                                         # one place: report["eval"]
    best = min(evals, key=lambda r: r["eval/loss"])
    assert report["best_step"] == best["step"]
    assert report["eval"]["eval/loss"] == pytest.approx(best["eval/loss"], rel=1e-6)    # final/ is best/
    assert report["eval"]["eval/rewards/margins"] == pytest.approx(best["eval/rewards/margins"], rel=1e-6)
    state = json.loads((root / "dpo" / "final" / "state.json").read_text())
    assert state["extra"]["args"]["label_smoothing"] == 0.1                   # --label-smoothing reached the loss
    reward = json.loads((root / "reward.json").read_text())
    assert any("eval/accuracy" in r for r in read_metrics(root / "reward")) and "eval/accuracy" in reward["eval"]


# ---- what the length limits cut ---------------------------------------------------------------

def test_what_the_length_limits_cut_is_counted_printed_and_warned(pipeline, tmp_path, capsys):
    root, _, _ = pipeline
    long = {"prompt": "Wo liegt die Stadt, in der Mozart geboren wurde, und wie weit ist sie von Wien?",
            "chosen": "Salzburg liegt in Österreich, ungefähr dreihundert Kilometer westlich von Wien.",
            "rejected": "Keine Ahnung."}
    data = _jsonl(tmp_path / "long.jsonl", [long, PREF_LINES[2]])
    with pytest.warns(TruncationWarning, match="cut 1 of 2 records"):
        assert main(["dpo", "--data", data, "--model", str(root / "sft" / "final"), "--max-length", "64",
                     "--max-prompt-length", "32", "--steps", "1", "--quiet", "--output-dir", str(tmp_path / "d"),
                     "--json", str(tmp_path / "d.json")]) == 0
    # the byte tokenizer: a token per UTF-8 byte, the end token closing each response
    n = [[len(format_prompt(r["prompt"]).encode()), len(r["chosen"].encode()) + 1, len(r["rejected"].encode()) + 1]
         for r in (long, PREF_LINES[2])]
    kept = [min(p, 32) for p, _, _ in n]
    removed = [max(0, size - (64 - k)) for (_, c, r), k in zip(n, kept) for size in (c, r)]
    report = json.loads((tmp_path / "d.json").read_text())["truncation"]["train"]
    assert report == {"records": 2, "records_cut": 1, "prompts_cut": 1, "prompt_tokens_removed": n[0][0] - 32,
                      "prompt_tokens": n[0][0] + n[1][0], "responses_cut": 1, "response_tokens_removed": sum(removed),
                      "response_tokens": sum(c + r for _, c, r in n)}
    assert f"cut 1 of 2 records (1 prompt lost {n[0][0] - 32} of" in capsys.readouterr().out


# ---- the prompt template --------------------------------------------------------------------------

def test_a_chosen_prompt_template_is_trained_saved_and_used_by_every_later_command(tmp_path, capsys):
    from dpo_np.pretrained import chat_template
    template = "User: {prompt}\nBot: "
    data, prefs = _jsonl(tmp_path / "s.jsonl", SFT_LINES), _jsonl(tmp_path / "p.jsonl", PREF_LINES)
    assert main(["sft", "--data", data, "--prompt-template", "User: {prompt}\\nBot: ", "--n-layer", "1", "--n-head",
                 "2", "--n-embd", "16", "--output-dir", str(tmp_path / "sft"), *SMALL]) == 0
    sft = str(tmp_path / "sft" / "final")
    assert load_model(sft)[1].prompt_template == template
    assert main(["dpo", "--data", prefs, "--model", sft, "--output-dir", str(tmp_path / "dpo"), *SMALL]) == 0
    assert f"prompt template {template!r} (the model's)" in capsys.readouterr().out
    assert load_model(tmp_path / "dpo" / "final")[1].prompt_template == template
    assert main(["generate", sft, "Say hi", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("User: Say hi\nBot: ")
    assert main(["evaluate", "--model", sft, "--ref", sft, "--data", prefs, "--json", str(tmp_path / "e.json")]) == 0
    # the KL's samples are asked in the model's own template too: π_θ = π_ref here, so it is exactly 0
    assert json.loads((tmp_path / "e.json").read_text())["kl"] == 0.0
    assert main(["export", sft, str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat_template(template)
    assert load_model(tmp_path / "hf")[1].prompt_template == template           # and back


# ---- refusals that say what to do --------------------------------------------------------------

def test_a_run_live_in_the_output_dir_is_named_before_overwrite_or_resume_is_offered(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    base = ["sft", "--data", data, "--output-dir", str(tmp_path / "r"), "--n-embd", "16", "--n-head", "2",
            "--n-layer", "1", *SMALL]
    assert main(base) == 0
    (tmp_path / "r" / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(),
                                                        "trainer": "sft", "started": "now"}))
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert f"--output-dir {tmp_path / 'r'} is in use by a sft run: process {os.getpid()}" in err
        assert "pass --overwrite" not in err and "holds no checkpoint" not in err


def test_a_resume_that_would_end_elsewhere_says_how_to_finish_early(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    base = ["sft", "--data", data, "--output-dir", str(tmp_path / "r"), "--n-embd", "16", "--n-head", "2",
            "--n-layer", "1", "--batch-size", "2", "--max-length", "64", "--quiet", "--save-steps", "2"]
    assert main(base + ["--steps", "4"]) == 0
    assert main(base + ["--steps", "3", "--resume"]) == 2
    assert f"--model {tmp_path / 'r' / 'checkpoint-4'}" in capsys.readouterr().err


def test_one_step_is_one_step_and_the_last_loss_says_which_steps_it_averages(tmp_path, capsys):
    data = _jsonl(tmp_path / "s.jsonl", SFT_LINES)
    base = ["sft", "--data", data, "--n-embd", "16", "--n-head", "2", "--n-layer", "1", "--batch-size", "2",
            "--max-length", "64", "--quiet"]
    assert main(base + ["--steps", "1", "--output-dir", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert "1 step (as asked)" in out and "1 step in" in out and "1 steps" not in out
    assert main(base + ["--steps", "3", "--output-dir", str(tmp_path / "three")]) == 0
    out = capsys.readouterr().out
    (row,) = [r for r in read_metrics(tmp_path / "three") if "loss" in r]        # sft logs every 10 steps
    assert f"last logged training loss {row['loss']:.4f} (mean of steps 1–3)" in out


def test_evaluate_judges_the_toy_datas_answers_by_their_rules_and_nothing_else(tmp_path, pipeline):
    from dpo_np.experiments import toy_preferences
    from dpo_np.experiments.evaluation import answer_texts, sample_responses
    toy = [r for r in toy_preferences.preference_dataset(0)["eval"] if r["family"] in ("arithmetic", "manners")][:6]
    data = _jsonl(tmp_path / "toy.jsonl", toy)
    assert main(["sft", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--output-dir", str(tmp_path / "sft"),
                 "--max-length", "96", "--steps", "3", "--quiet"]) == 0
    model = str(tmp_path / "sft" / "final")
    assert main(["evaluate", "--model", model, "--ref", model, "--data", data, "--kl-samples", "3", "--seed", "5",
                 "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    policy, tok = load_model(model)
    prompts = list(dict.fromkeys(r["prompt"] for r in toy))
    texts = answer_texts(sample_responses(policy, tok, prompts, 3, 5), tok)
    verdicts = [toy_preferences.judge(prompts[i // 3], t) if t is not None else "neither" for i, t in enumerate(texts)]
    for name in ("judge_policy", "judge_reference"):        # the same weights: the same judged samples
        assert report[name] == {j: verdicts.count(j) / len(verdicts) for j in toy_preferences.JUDGEMENTS}
    assert set(report["judge_greedy_policy"]) == set(toy_preferences.JUDGEMENTS)
    own = json.loads((pipeline[0] / "evaluate.json").read_text())     # a file of one's own has no rule to judge by
    assert not [k for k in own if k.startswith("judge")]
