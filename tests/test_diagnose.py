"""diagnose: each finding on a run of the tiny GPT made to have it on purpose, read from our
metrics.jsonl, from a trainer_state.json in TRL's format and from a CSV; no finding on a healthy run;
every threshold just below and just above its edge; the evidence against numbers computed here from
the logged rows; the reader's errors; the command line."""

import csv
import json
import math
import os

import numpy as np
import pytest

from dpo_np import diagnose as dg
from dpo_np.cli import main
from dpo_np.data import format_prompt
from dpo_np.experiments import toy_preferences
from dpo_np.model import GPT, GPTConfig
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import frozen_copy, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG2 = math.log(2)
JUST = 1e-6          # "just below" and "just above" a threshold: a relative step this size


# ---- the runs: a tiny GPT made to show each pathology ------------------------------------------

@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory):
    """The toy arithmetic pairs ("What is 7-4?": the number beats an evasion), a character tokenizer and a
    one-layer GPT of 32 channels, with π_ref trained by SFT on both answers of every pair (notebook 07's recipe)."""
    splits = toy_preferences.preference_dataset(seed=0)
    train = [r for r in splits["train"] if r["family"] == "arithmetic"]
    held_out = [r for r in splits["eval"] if r["family"] == "arithmetic"]
    tok = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=32)
    sft = GPT(config, seed=0)
    records = [{"prompt": r["prompt"], "response": y} for r in train for y in (r["chosen"], r["rejected"])]
    SFTTrainer(sft, SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), max_steps=100, learning_rate=3e-3,
                              warmup_steps=10, max_length=80, max_prompt_length=40, per_device_train_batch_size=16,
                              show_progress=False, save_at_end=False, logging_steps=100),
               train_dataset=records, tokenizer=tok).train()
    return {"train": train, "held_out": held_out, "tok": tok, "config": config, "sft": sft}


def _dpo(out, policy, ref, train, held_out, tok, **kw):
    args = dict(output_dir=str(out), beta=0.1, max_steps=40, per_device_train_batch_size=8, logging_steps=1,
                eval_steps=5, max_length=80, max_prompt_length=40, precompute_ref_log_probs=True,
                show_progress=False, save_at_end=False)
    args.update(kw)
    trainer = DPOTrainer(policy, ref, args=DPOConfig(**args), train_dataset=train, eval_dataset=held_out, tokenizer=tok)
    trainer.train()
    return trainer


WORDS = "cat dog sun hat cup pen box car bus map egg owl fox ant bee cow".split()


@pytest.fixture(scope="module")
def runs(arithmetic, tmp_path_factory):
    """name -> the trainer of a run made to show one pathology (or none: "healthy"); every run but the
    last starts at the SFT model π_ref."""
    base = tmp_path_factory.mktemp("runs")
    a = arithmetic
    sft, data = a["sft"], (a["train"], a["held_out"], a["tok"])
    out = {}
    out["healthy"] = _dpo(base / "healthy", frozen_copy(sft), sft, *data, learning_rate=3e-5)
    out["lr0"] = _dpo(base / "lr0", frozen_copy(sft), sft, *data, learning_rate=0.0, max_steps=10)
    # TR-DPO with α = 1 and a sync every step: π_ref becomes π_θ after each update, as if they shared weights
    out["follows"] = _dpo(base / "follows", frozen_copy(sft), frozen_copy(sft), *data, learning_rate=1e-3,
                          max_steps=10, precompute_ref_log_probs=False, sync_ref_model=True,
                          ref_model_mixup_alpha=1.0, ref_model_sync_steps=1)
    out["mismatch"] = _dpo(base / "mismatch", frozen_copy(sft), GPT(a["config"], seed=1), *data,
                           learning_rate=3e-5, max_steps=10)
    out["displace"] = _dpo(base / "displace", frozen_copy(sft), sft, *data, learning_rate=1e-3, max_steps=30,
                           eval_steps=3)
    # always "yes" over "no" in training; two of the six held-out pairs the other way round
    train = [{"prompt": f"Is {w} a word?", "chosen": "yes", "rejected": "no"} for w in WORDS[:12]]
    held_out = [{"prompt": f"Is {w} a word?", "chosen": "yes", "rejected": "no"} for w in WORDS[12:]] + \
               [{"prompt": f"Is {w} a word?", "chosen": "no", "rejected": "yes"} for w in ("xq", "zzv")]
    tok = CharTokenizer.from_corpus(format_prompt("") + " ".join(WORDS) + "Is a word? yes no xqzv")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    out["overopt"] = _dpo(base / "overopt", GPT(config, seed=0), None, train, held_out, tok, beta=0.01,
                          learning_rate=1e-2, lr_scheduler_type="constant", max_steps=120,
                          per_device_train_batch_size=4, max_length=32, max_prompt_length=24,
                          precompute_ref_log_probs=False)
    return out


def _codes(report):
    return [(f["code"], f["step"], f["metric"]) for f in report["findings"]]


def _rows(trainer):
    return read_metrics(trainer.metrics_path)


def _curve(rows, name):
    pts = [(r["step"], r[name]) for r in rows if name in r]
    return [p[0] for p in pts], np.array([p[1] for p in pts], dtype=float)


# ---- each pathology, diagnosed with its code -----------------------------------------------------

def test_a_healthy_run_has_no_finding_and_every_check_runs(runs):
    report = dg.diagnose(runs["healthy"].args.output_dir)
    assert report["findings"] == []
    assert report["checks"] == {code: "ran" for code in dg.FINDING_CODES}
    assert report["rows"] == {"total": 48, "train": 40, "eval": 8}
    assert report["columns"]["missing"] == [] and report["columns"]["unknown"] == []


def test_learning_rate_zero_is_no_learning(runs):
    rows = _rows(runs["lr0"])
    report = dg.diagnose(runs["lr0"].args.output_dir)
    assert _codes(report) == [("no_learning", 10, "rewards/chosen")]
    evidence = report["findings"][0]["evidence"]
    rewards = np.concatenate([_curve(rows, n)[1] for n in ("rewards/chosen", "rewards/rejected",
                                                           "eval/rewards/chosen", "eval/rewards/rejected")])
    assert evidence["values"] == [0.0] and np.all(rewards == 0)
    assert evidence["steps"] == [1, 10] and evidence["policy_moved"] is False
    assert np.all(_curve(rows, "loss")[1] == np.float32(LOG2))        # −log σ(0), every step


def test_a_reference_that_follows_the_policy_is_no_learning_though_the_policy_moves(runs):
    rows = _rows(runs["follows"])
    report = dg.diagnose(runs["follows"].args.output_dir)
    assert [c for c, _, _ in _codes(report)] == ["no_learning"]
    finding = report["findings"][0]
    _, logps = _curve(rows, "eval/logps/chosen")
    assert abs(logps[-1] - logps[0]) > dg.POLICY_MOVED_NATS             # π_θ moved ...
    assert finding["evidence"]["policy_moved"] is True                  # ... and the rewards did not
    assert f"from {logps[0]:.4g} to {logps[-1]:.4g}" in finding["message"]


def test_a_reference_with_other_weights_is_reference_mismatch_at_step_1(runs):
    rows = _rows(runs["mismatch"])
    report = dg.diagnose(runs["mismatch"].args.output_dir)
    assert _codes(report)[0][:2] == ("reference_mismatch", 1)
    assert [c for c, _, _ in _codes(report)].count("reference_mismatch") == 1
    evidence = report["findings"][0]["evidence"]
    first = rows[0]
    assert first["step"] == 1 and evidence["rewards"] == [first["rewards/chosen"], first["rewards/rejected"]]
    assert max(map(abs, evidence["rewards"])) > 100 * dg.START_REWARD_TOLERANCE
    assert evidence["updates_before"] == 0 and evidence["allowed"] == dg.START_REWARD_TOLERANCE


def test_a_learning_rate_that_displaces_is_chosen_logps_falling(runs):
    rows = _rows(runs["displace"])
    report = dg.diagnose(runs["displace"].args.output_dir)
    assert _codes(report) == [("chosen_logps_falling", 30, "eval/logps/chosen")]
    evidence = report["findings"][0]["evidence"]
    steps, logps = _curve(rows, "eval/logps/chosen")
    _, margins = _curve(rows, "eval/rewards/margins")
    _, rewards = _curve(rows, "eval/rewards/chosen")
    assert evidence["steps"] == [3, 30] == [steps[0], steps[-1]]
    assert evidence["drop_nats"] == pytest.approx(logps[0] - logps[-1], rel=1e-12)
    assert evidence["drop_nats"] >= dg.CHOSEN_LOGPS_DROP
    assert evidence["margins"] == pytest.approx([margins[0], margins[-1]], rel=1e-12) and margins[-1] > margins[0]
    assert evidence["rewards_chosen_end"] == rewards[-1] < 0


def test_long_training_at_a_tiny_beta_is_over_optimization(runs):
    rows = _rows(runs["overopt"])
    report = dg.diagnose(runs["overopt"].args.output_dir)
    # the held-out y_w of the two reversed pairs is "no", which training keeps pushing down: on held-out
    # pairs the mean log π(y_w|x) falls too, a true second finding
    assert _codes(report) == [("chosen_logps_falling", 120, "eval/logps/chosen"), ("over_optimization", 120, "eval/loss")]
    evidence = report["findings"][1]["evidence"]
    steps, losses = _curve(rows, "eval/loss")
    best = int(np.argmin(losses))
    assert 0 < best < len(losses) - 1                                   # it fell first, then rose
    assert evidence["steps"] == [steps[best], 120]
    assert evidence["values"] == [losses[best], losses[-1]]
    assert evidence["rise"] == pytest.approx(losses[-1] - losses[best], rel=1e-12)
    assert evidence["rise"] >= dg.OVER_OPTIMIZATION_RISE
    msteps, margins = _curve(rows, "rewards/margins")
    astep, accuracies = _curve(rows, "rewards/accuracies")
    w = min(10, len(margins) // 5)
    before = margins[np.array(msteps) <= steps[best]][-w:]
    assert evidence["margins"] == pytest.approx([before.mean(), margins[-w:].mean()], rel=1e-12)
    assert evidence["accuracy_after"] == pytest.approx(accuracies[np.array(astep) > steps[best]].mean(), rel=1e-12)


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)       # NaN and Infinity as Python's json writes them
    return str(path)


def test_an_injected_nan_is_non_finite_from_its_step(runs, tmp_path):
    rows = _rows(runs["healthy"])
    for r in rows:                                              # a run that diverged at step 20
        if r["step"] >= 20:
            for k in r:
                if k not in ("step", "epoch"):
                    r[k] = float("nan") if k != "grad_norm" else float("inf")
    report = dg.diagnose(_write_jsonl(tmp_path / "metrics.jsonl", rows))
    assert _codes(report) == [("non_finite", 20, "loss")]
    evidence = report["findings"][0]["evidence"]
    count = sum(1 for r in rows for k, v in r.items() if k not in ("step", "epoch") and not math.isfinite(v))
    assert evidence["count"] == count and evidence["values"] == ["nan"]
    assert evidence["first_step"]["grad_norm"] == 20 and evidence["first_step"]["eval/loss"] == 20
    assert report["checks"]["still_improving"].startswith("not run")   # a broken run is not "still improving"
    assert "steps before 20" in report["notes"][-1]
    json.dumps(report, allow_nan=False)                          # the report itself is strict JSON
    assert report["metrics"]["loss"]["non_finite"] == 21 and report["metrics"]["loss"]["last_step"] == 19


def test_an_injected_loss_spike_is_found_at_its_step(runs, tmp_path):
    rows = _rows(runs["healthy"])
    train = [r for r in rows if "loss" in r]
    train[29]["loss"] = 4.0                                      # step 30: "the loss went to 0.5, then jumped to 4"
    report = dg.diagnose(_write_jsonl(tmp_path / "metrics.jsonl", rows))
    assert _codes(report) == [("loss_spike", 30, "loss")]
    evidence = report["findings"][0]["evidence"]
    window = np.array([r["loss"] for r in train[19:29]])
    median = np.median(window)
    assert evidence["steps"] == [20, 29, 30] and evidence["values"] == [median, 4.0]
    assert evidence["jump"] == pytest.approx(4.0 - median, rel=1e-12)
    assert evidence["robust_sd"] == pytest.approx(1.4826 * np.median(np.abs(window - median)), rel=1e-12)
    assert evidence["recent_range"] == [window.min(), window.max()]


# ---- the same findings from TRL's trainer_state.json and from a CSV -------------------------------

def trl_state(rows, logging_steps=1):
    """Our rows as a Hugging Face Trainer (TRL) writes ``trainer_state.json``: evaluation metrics prefixed
    ``eval_`` with the evaluation's timings, the learning rate as ``learning_rate``, TRL's extra metrics,
    a last row of run totals, and the Trainer's state fields around ``log_history``."""
    history = []
    for r in rows:
        if any(k.startswith("eval/") for k in r):
            row = {"eval_" + k[5:] if k.startswith("eval/") else k: v for k, v in r.items()}
            row.update(eval_runtime=0.1023, eval_samples_per_second=29.3, eval_steps_per_second=9.77,
                       eval_entropy=5.5, eval_num_tokens=415.0)
        else:
            row = {"learning_rate" if k == "lr" else k: v for k, v in r.items()}
            row.update(entropy=5.5, mean_token_accuracy=0.3, num_tokens=169.0)
        history.append(row)
    last = rows[-1]
    history.append({"epoch": last["epoch"], "step": last["step"], "total_flos": 35769600.0, "train_loss": 0.44,
                    "train_runtime": 6.18, "train_samples_per_second": 6.48, "train_steps_per_second": 3.24})
    return {"best_global_step": None, "best_metric": None, "best_model_checkpoint": None, "epoch": last["epoch"],
            "eval_steps": 5, "global_step": last["step"], "is_hyper_param_search": False,
            "is_local_process_zero": True, "is_world_process_zero": True, "log_history": history,
            "logging_steps": logging_steps, "max_steps": last["step"], "num_input_tokens_seen": 0,
            "num_train_epochs": 1, "save_steps": 500, "stateful_callbacks": {}, "total_flos": 35769600.0,
            "train_batch_size": 8, "trial_name": None, "trial_params": None}


def _write_csv(path, rows, rename=lambda k: k):
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([rename(k) for k in names])
        writer.writerows([[repr(r[k]) if k in r else "" for k in names] for r in rows])
    return str(path)


@pytest.mark.parametrize("name", ["healthy", "lr0", "follows", "mismatch", "displace", "overopt"])
def test_trls_trainer_state_and_a_csv_give_the_same_findings(runs, tmp_path, name):
    rows = _rows(runs[name])
    ours = dg.diagnose(runs[name].args.output_dir)
    checkpoint = tmp_path / "trl" / f"checkpoint-{rows[-1]['step']}"
    checkpoint.mkdir(parents=True)
    (tmp_path / "trl" / "checkpoint-1").mkdir()                 # an older checkpoint: the newest is read
    with open(checkpoint / "trainer_state.json", "w") as f:
        json.dump(trl_state(rows), f, indent=2, sort_keys=True)  # as transformers' TrainerState.save_to_json
    trl = dg.diagnose(tmp_path / "trl")
    assert trl["source"]["file"] == str(checkpoint / "trainer_state.json")
    as_csv = dg.diagnose(_write_csv(tmp_path / "rows.csv", rows, lambda k: k.replace("eval/", "eval_")))
    from_list = dg.diagnose(runs[name].state["log_history"])     # what a notebook passes
    for other in (trl, as_csv, from_list):
        assert _codes(other) == _codes(ours)
        assert [f["evidence"] for f in other["findings"]] == [f["evidence"] for f in ours["findings"]]
    assert trl["columns"]["unknown"] == [] and "eval_runtime" in trl["columns"]["ignored"]
    assert trl["rows"] == ours["rows"]                            # the totals row holds no metric: not a row


def windowed(rows, k):
    """The log a trainer writes with logging_steps=k (TRL's default is 10): each training row the mean of
    k steps' metrics, at the window's last step; the evaluation rows as they were."""
    train = [r for r in rows if "loss" in r]
    out = [r for r in rows if "loss" not in r]
    for j in range(0, len(train), k):
        w = train[j:j + k]
        out.append({"step": w[-1]["step"], **{key: float(np.mean([r[key] for r in w])) for key in w[0]
                                              if key != "step"}})
    return sorted(out, key=lambda r: r["step"])


def test_a_first_row_averaging_several_steps_keeps_the_mismatch_and_the_healthy_run_clean(runs):
    healthy = dg.diagnose(windowed(_rows(runs["healthy"]), 10))    # 40 steps: 4 rows, too few for trends
    assert _codes(healthy) == [("too_few_steps", 40, "loss")] and healthy["checks"]["reference_mismatch"] == "ran"
    assert dg.diagnose(windowed(_rows(runs["healthy"]), 5))["findings"] == []
    mismatch = dg.diagnose(windowed(_rows(runs["mismatch"]), 5))
    (finding,) = [f for f in mismatch["findings"] if f["code"] == "reference_mismatch"]
    assert finding["step"] == 5 and finding["evidence"]["updates_before"] == 4


def test_a_trainer_state_written_by_trl_itself_is_read(tmp_path):
    """TRL's DPOTrainer at learning rate 0 on an exported GPT: its own trainer_state.json says no_learning."""
    for module in ("torch", "transformers", "trl", "datasets"):
        pytest.importorskip(module)
    import transformers
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig, DPOTrainer as TRLTrainer
    from dpo_np.pretrained import save_pretrained
    from dpo_np.tokenizer import ByteTokenizer

    save_pretrained(GPT(GPTConfig(vocab_size=258, block_size=64, n_layer=1, n_head=2, n_embd=16), seed=0),
                    tmp_path / "model", tokenizer=ByteTokenizer())
    records = [{"prompt": format_prompt(p), "chosen": c, "rejected": r} for p, c, r in
               [("What is 2+2?", "4", "5"), ("Name a cat.", "Tom", "a dog"), ("Say hi.", "hi", "bye")] * 2]
    args = TRLConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=4, beta=0.1,
                     learning_rate=0.0, max_length=64, logging_steps=1, eval_strategy="steps", eval_steps=2,
                     report_to=[], save_strategy="no", use_cpu=True, bf16=False, dataset_num_proc=None,
                     disable_tqdm=True)
    trainer = TRLTrainer(model=transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model"), args=args,
                         train_dataset=Dataset.from_list(records), eval_dataset=Dataset.from_list(records[:3]),
                         processing_class=transformers.AutoTokenizer.from_pretrained(tmp_path / "model"))
    trainer.train()
    trainer.save_state()
    report = dg.diagnose(tmp_path / "trl")
    assert [f["code"] for f in report["findings"]] == ["too_few_steps", "no_learning"]
    assert report["rows"] == {"total": 6, "train": 4, "eval": 2}
    assert report["metrics"]["eval/loss"]["n"] == 2 and report["columns"]["unknown"] == []

