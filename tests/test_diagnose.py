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
    assert _codes(report) == [("chosen_logps_falling", 120, "eval/logps/chosen"),
                              ("over_optimization", 120, "eval/loss")]
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



# ---- every threshold just below and just above its edge (rows written here) ----------------------

def _train_rows(n, **curves):
    """n training rows at steps 1..n; each curve a constant, a list of n values or a function of the step."""
    rows = []
    for s in range(1, n + 1):
        row = {"step": s}
        for name, c in curves.items():
            row[name.replace("__", "/")] = c(s) if callable(c) else c[s - 1] if isinstance(c, list) else c
        rows.append(row)
    return rows


def _eval_rows(steps, **curves):
    """Evaluation rows at ``steps``; each curve a list of values, named without its eval/ prefix."""
    return [{"step": s, **{"eval/" + k.replace("__", "/"): v[i] for k, v in curves.items()}}
            for i, s in enumerate(steps)]


def _has(rows, code):
    return code in [f["code"] for f in dg.diagnose(rows)["findings"]]


@pytest.mark.parametrize("x, found", [(dg.NO_LEARNING_REWARD_TOLERANCE * (1 - JUST), True),
                                      (dg.NO_LEARNING_REWARD_TOLERANCE * (1 + JUST), False)])
def test_no_learning_edge(x, found):
    rows = _train_rows(6, loss=LOG2, rewards__chosen=lambda s: -x if s == 4 else 0.0, rewards__rejected=0.0)
    assert _has(rows, "no_learning") is found


def test_no_learning_without_rewards_reads_the_loss_and_needs_two_steps():
    tol = dg.NO_LEARNING_LOSS_TOLERANCE
    assert _has(_train_rows(6, loss=lambda s: LOG2 + tol * (1 - JUST) * (s == 3)), "no_learning")
    assert not _has(_train_rows(6, loss=lambda s: LOG2 + tol * (1 + JUST) * (s == 3)), "no_learning")
    report = dg.diagnose(_train_rows(1, loss=LOG2, rewards__chosen=0.0, rewards__rejected=0.0))
    assert report["checks"]["no_learning"].startswith("not run")      # step 1 alone is always 0


@pytest.mark.parametrize("scale, moved", [(1 - JUST, False), (1 + JUST, True)])
def test_no_learning_says_the_policy_moved_past_its_edge(scale, moved):
    rows = _train_rows(6, loss=LOG2, rewards__chosen=0.0, rewards__rejected=0.0) + \
        _eval_rows([3, 6], logps__chosen=[-10.0, -10.0 + dg.POLICY_MOVED_NATS * scale], rewards__chosen=[0.0, 0.0],
                   rewards__rejected=[0.0, 0.0])
    (finding,) = dg.diagnose(rows)["findings"]
    assert finding["code"] == "no_learning" and finding["evidence"]["policy_moved"] is moved


@pytest.mark.parametrize("x, found", [(dg.START_REWARD_TOLERANCE * (1 - JUST), False),
                                      (dg.START_REWARD_TOLERANCE * (1 + JUST), True)])
def test_reference_mismatch_edge_at_step_1(x, found):
    rows = _train_rows(6, loss=LOG2, rewards__chosen=lambda s: x if s == 1 else 0.5 * s,
                       rewards__rejected=lambda s: 0.0 if s == 1 else -0.5 * s)
    assert _has(rows, "reference_mismatch") is found


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_reference_mismatch_edge_of_a_row_that_averages_ten_steps(scale, found):
    """First row at step 10 (9 updates in its window), the rewards then moving 0.01 per step: a reference equal
    to the starting policy explains at most 1e-3 + 3 × 9 × 0.01 = 0.271 there."""
    allowed = dg.START_REWARD_TOLERANCE + dg.START_DRIFT_FACTOR * 9 * 0.01
    x = allowed * scale
    rows = [{"step": s, "loss": 0.6, "rewards/chosen": x + 0.01 * (s - 10), "rewards/rejected": 0.0}
            for s in range(10, 70, 10)]
    report = dg.diagnose(rows)
    assert _has(rows, "reference_mismatch") is found
    if found:
        evidence = report["findings"][0]["evidence"]
        assert evidence["drift_per_step"] == pytest.approx(0.01, rel=1e-9)
        assert evidence["allowed"] == pytest.approx(allowed, rel=1e-9) and evidence["updates_before"] == 9


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_chosen_logps_falling_edge(scale, found):
    drop = dg.CHOSEN_LOGPS_DROP * scale
    rows = _eval_rows([5, 10], logps__chosen=[-10.0, -10.0 - drop], rewards__margins=[0.1, 0.5],
                      rewards__chosen=[0.0, -0.2], loss=[0.6, 0.5])
    assert _has(rows, "chosen_logps_falling") is found


def test_chosen_logps_falling_needs_a_growing_margin_and_y_w_below_the_reference():
    base = dict(logps__chosen=[-10.0, -13.0], rewards__margins=[0.1, 0.5], rewards__chosen=[0.0, -0.2])
    assert _has(_eval_rows([5, 10], **base), "chosen_logps_falling")
    assert not _has(_eval_rows([5, 10], **{**base, "rewards__margins": [0.5, 0.5]}), "chosen_logps_falling")
    assert not _has(_eval_rows([5, 10], **{**base, "rewards__chosen": [0.0, 0.0]}), "chosen_logps_falling")


def test_chosen_logps_falling_on_training_rows_compares_window_means():
    """No held-out rows: the mean of the first and of the last n // 5 rows (each batch holds other pairs)."""
    lp = [-10.0, -11.0, -9.0, -10.0, -12.0] + [-11.0] * 10 + [-11.5, -12.5, -10.5, -11.5, -13.0]
    rows = _train_rows(20, loss=0.5, logps__chosen=lp, rewards__margins=lambda s: 0.1 * s,
                       rewards__chosen=-0.1, rewards__accuracies=1.0)
    (finding,) = [f for f in dg.diagnose(rows)["findings"] if f["code"] == "chosen_logps_falling"]
    assert finding["evidence"]["rows_averaged"] == 4
    assert finding["evidence"]["values"] == [np.mean(lp[:4]), np.mean(lp[-4:])]
    assert finding["evidence"]["drop_nats"] == pytest.approx(np.mean(lp[:4]) - np.mean(lp[-4:]), rel=1e-12)


def _overopt_rows(rise, accuracy):
    train = _train_rows(20, loss=0.3, rewards__margins=lambda s: 0.1 * s, rewards__accuracies=accuracy,
                        rewards__chosen=0.1, rewards__rejected=lambda s: -0.1 * s)
    return train + _eval_rows([5, 10, 15, 20], loss=[0.6, 0.5, 0.52, 0.5 + rise])


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_over_optimization_edge_of_the_rise(scale, found):
    assert _has(_overopt_rows(dg.OVER_OPTIMIZATION_RISE * scale, 1.0), "over_optimization") is found


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_over_optimization_edge_of_the_saturated_accuracy(scale, found):
    assert _has(_overopt_rows(0.1, min(1.0, dg.ACCURACY_SATURATED * scale)), "over_optimization") is found


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_over_optimization_from_a_kl_estimate_edge(scale, found):
    """No held-out loss, TRL's objective/kl: it must grow 2× after the accuracy saturates (at step 4, the
    end of the first 4-row window averaging ≥ 0.9)."""
    kl = lambda s: 1.0 if s <= 4 else 1.0 + (dg.OVER_OPTIMIZATION_KL_RATIO * scale - 1.0) * (s - 4) / 16  # noqa: E731
    rows = _train_rows(20, loss=0.3, rewards__margins=lambda s: 0.1 * s, rewards__accuracies=1.0,
                       rewards__chosen=0.1, rewards__rejected=-0.1, objective__kl=kl)
    findings = [f for f in dg.diagnose(rows)["findings"] if f["code"] == "over_optimization"]
    assert bool(findings) is found
    if found:
        assert findings[0]["metric"] == "kl" and findings[0]["evidence"]["steps"] == [4, 20]
        assert findings[0]["evidence"]["values"] == [1.0, pytest.approx(2.0, rel=2e-6)]


def _spike_rows(window, spike):
    return _train_rows(len(window) + 1, loss=list(window) + [spike], rewards__chosen=0.1, rewards__rejected=-0.1)


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_loss_spike_edge_of_the_jump_in_nats(scale, found):
    window = [0.25, 0.26, 0.24, 0.25, 0.26, 0.24, 0.25, 0.26, 0.24, 0.25]   # median 0.25, 10 s.d. ≈ 0.15
    assert _has(_spike_rows(window, 0.25 + dg.LOSS_SPIKE_MIN_JUMP * scale), "loss_spike") is found


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_loss_spike_edge_in_robust_standard_deviations(scale, found):
    window = [0.0, 0.1] * 5                                       # median 0.05, MAD 0.05: 10 s.d. = 0.7413 > 0.5
    sd = 1.4826 * 0.05
    assert _has(_spike_rows(window, 0.05 + dg.LOSS_SPIKE_MADS * sd * scale), "loss_spike") is found


def test_loss_spike_compares_with_the_last_ten_rows_only():
    """After a plateau at 3, ten rows at 0.25: a loss of 0.8 is a spike against those ten (over twenty rows
    the median would be 1.625, and it would not be)."""
    rows = _train_rows(21, loss=[3.0] * 10 + [0.25] * 10 + [0.8])
    assert [f["step"] for f in dg.diagnose(rows)["findings"] if f["code"] == "loss_spike"] == [21]


def test_loss_spike_needs_five_rows_before_it_and_counts_a_run_of_spikes_once():
    assert not _has(_spike_rows([0.25] * 4, 5.0), "loss_spike")
    assert _has(_spike_rows([0.25] * 5, 5.0), "loss_spike")
    rows = _train_rows(14, loss=[0.25] * 10 + [4.0, 4.1, 0.25, 0.25])
    assert [f["step"] for f in dg.diagnose(rows)["findings"] if f["code"] == "loss_spike"] == [11]


@pytest.mark.parametrize("scale, found", [(1 - JUST, False), (1 + JUST, True)])
def test_still_improving_edge(scale, found):
    """The last fall at least 1% of the last value: 0.6 → x with 0.6 − x = 0.01·x at the edge."""
    x = 0.6 / (1 + dg.STILL_IMPROVING_DROP * scale)
    rows = _train_rows(10, loss=0.5) + _eval_rows([4, 7, 10], loss=[0.7, 0.6, x])
    assert _has(rows, "still_improving") is found


def test_still_improving_needs_each_of_the_last_evaluations_to_fall():
    rows = _train_rows(10, loss=0.5) + _eval_rows([4, 7, 10], loss=[0.55, 0.6, 0.5])
    assert not _has(rows, "still_improving")


@pytest.mark.parametrize("n, found", [(dg.MIN_TREND_ROWS - 1, True), (dg.MIN_TREND_ROWS, False)])
def test_too_few_steps_edge(n, found):
    report = dg.diagnose(_train_rows(n, loss=0.5, rewards__chosen=0.1, rewards__rejected=-0.1))
    assert ("too_few_steps" in [f["code"] for f in report["findings"]]) is found
    assert report["checks"]["loss_spike"].startswith("not run")          # it needs 6 rows


def test_non_finite_names_the_first_step_and_every_metric_hit():
    rows = _train_rows(8, loss=lambda s: float("nan") if s == 6 else 0.5,
                       grad_norm=lambda s: math.inf if s == 3 else 1.0)
    report = dg.diagnose(rows)
    assert _codes(report)[0] == ("non_finite", 3, "grad_norm")
    evidence = report["findings"][0]["evidence"]
    assert evidence["values"] == ["inf"] and evidence["first_step"] == {"grad_norm": 3, "loss": 6}
    assert evidence["count"] == 2
    assert report["metrics"]["grad_norm"]["curve"][2] == "×"


# ---- reading: what is read, what is reported, what is refused --------------------------------------

def test_unknown_and_missing_columns_are_reported_not_fatal(tmp_path):
    rows = [{"step": s, "loss": 0.6, "rewards/chosen": 0.1 * s, "my_metric": 3, "run_name": "a string"}
            for s in range(1, 4)]
    report = dg.diagnose(_write_jsonl(tmp_path / "log.jsonl", rows))
    assert report["columns"]["unknown"] == ["my_metric", "run_name"]
    assert report["columns"]["read"] == ["loss", "rewards/chosen"]
    assert "rewards/rejected" in report["columns"]["missing"] and "eval/loss" in report["columns"]["missing"]
    assert report["checks"]["reference_mismatch"] == \
        "not run: needs rewards/chosen and rewards/rejected in the same rows"
    text = dg.format_report(report)
    assert "unknown columns: my_metric, run_name" in text and "not checked: " in text


def test_trl_and_weights_and_biases_spellings_read_as_ours():
    assert [dg.canonical_name(n) for n in ("eval_loss", "eval_rewards/chosen", "learning_rate", "train/loss",
                                           "train/global_step", "eval/logps/chosen", "objective/kl")] == \
        ["eval/loss", "eval/rewards/chosen", "lr", "loss", "step", "eval/logps/chosen", "kl"]


def test_a_log_without_steps_uses_row_numbers_and_rows_out_of_order_are_sorted(tmp_path):
    report = dg.diagnose(_write_jsonl(tmp_path / "a.jsonl", [{"loss": 0.7}, {"loss": 0.6}]))
    assert report["steps"] == {"first": 1, "last": 2} and "row number" in report["notes"][0]
    log = dg.read_log(_write_jsonl(tmp_path / "b.jsonl", [{"step": 2, "loss": 0.6}, {"step": 1, "loss": 0.7}]))
    assert [r["step"] for r in log["rows"]] == [1, 2] and "out of step order" in log["notes"][0]


@pytest.mark.parametrize("name, text, message", [
    ("a.jsonl", '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": \n', "a.jsonl line 2: not JSON"),
    ("b.jsonl", '{"step": 1, "loss": 0.5}\n\n[1, 2]\n', "b.jsonl line 3: expected an object of metric names"),
    ("c.jsonl", '{"step": 1, "loss": "abc"}\n', "c.jsonl line 1: 'loss' is 'abc', not a number"),
    ("d.jsonl", '{"step": 1, "loss": true}\n', "d.jsonl line 1: 'loss' is True, not a number"),
    ("e.jsonl", '{"step": 1, "loss": 0.5}\n{"loss": 0.4}\n', "e.jsonl line 2: no step, though other rows have one"),
    ("f.csv", "step,loss\n1,0.5\n2,0.4,9\n", "f.csv line 3: 3 cells, the header has 2"),
    ("g.csv", "step,eval_loss\n1,0.5\n2,oops\n", "g.csv line 3: 'eval_loss' is 'oops', not a number"),
    ("h.json", '{"log_history": [\n{"step": 1,\n "loss": }]}', "h.json line 3: not JSON"),
    ("i.json", '{"global_step": 3}', "i.json: expected a Trainer state (an object with a 'log_history' list)"),
    ("j.json", '{"log_history": [{"step": 1, "loss": 0.5}, 7]}', "j.json: log_history[1] is a int"),
    ("k.jsonl", '{"step": 1, "accuracy": 0.5, "margin": 1.0}\n',
     "k.jsonl: none of the known metric names in its columns ['step', 'accuracy', 'margin']; expected some of "
     "loss, rewards/chosen"),
    ("l.txt", "loss\n0.5\n", "l.txt: expected a run directory, a trainer_state.json, a .jsonl or a .csv file"),
])
def test_a_bad_file_is_refused_naming_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        dg.diagnose(tmp_path / name)
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0].split(" line")[0]))
    assert message in str(err.value)


def test_a_directory_without_a_log_and_a_missing_path_say_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no metrics.jsonl, trainer_state.json or checkpoint-<step>"):
        dg.diagnose(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        dg.diagnose(tmp_path / "nothing.jsonl")
    with pytest.raises(TypeError, match="a path, a list of row dicts"):
        dg.diagnose(42)


# ---- the text ---------------------------------------------------------------------------------

def test_sparklines_use_the_eight_blocks_from_lowest_to_highest():
    assert dg.sparkline(range(8)) == "▁▂▃▄▅▆▇█"
    assert dg.sparkline([3.0, 3.0, 3.0]) == "▄▄▄"
    assert dg.sparkline([0.0, float("nan"), 7.0]) == "▁×█"
    assert dg.sparkline([]) == ""
    assert dg.sparkline([0.0] * 40 + [7.0] * 40, width=40) == "▁" * 20 + "█" * 20   # 80 values, chunks of 2
    assert dg.sparkline([0.0, 1.0, 2.0, 7.0], width=2) == "▁█"                      # means 0.5 and 4.5


def test_the_report_text_gives_each_finding_its_evidence_meaning_remedy_and_reading(runs):
    report = dg.diagnose(runs["displace"].args.output_dir)
    text = dg.format_report(report)
    finding = report["findings"][0]
    for part in (f"[chosen_logps_falling] step 30, eval/logps/chosen", "evidence: " + finding["message"],
                 "usually means: " + finding["meaning"], "try: " + finding["try"],
                 'read: notebooks/07_dpo_end_to_end.ipynb §6 "Both likelihoods fall while the margin grows"',
                 "findings: 1", report["metrics"]["eval/logps/chosen"]["curve"]):
        assert part in text, part
    assert dg.format_report(report, quiet=True) == \
        f"chosen_logps_falling at step 30 (eval/logps/chosen): {finding['message']}"
    assert dg.format_report(dg.diagnose(runs["healthy"].args.output_dir), quiet=True) == "no findings"


def _headings(notebook):
    with open(os.path.join(ROOT, notebook), encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    return {line.strip() for c in cells if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines() if line.startswith("## ")}


def test_every_finding_points_to_a_notebook_section_that_exists():
    for code in dg.FINDING_CODES:
        sections = dg.EXPLANATIONS[code]["see"]
        assert sections and all(dg.EXPLANATIONS[code][k] for k in ("meaning", "to_try"))
        for notebook, number, title in sections:
            if notebook == dg.NB09 and not os.path.exists(os.path.join(ROOT, notebook)):
                continue                                      # being written; named for its exact failure modes
            assert os.path.exists(os.path.join(ROOT, notebook)), notebook
            if number is not None:
                assert f"## {number}. {title}" in _headings(notebook), (code, notebook, number, title)


# ---- the command line -----------------------------------------------------------------------------

def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def test_the_command_prints_the_report_and_writes_its_json(runs, tmp_path, capsys):
    run_dir = runs["mismatch"].args.output_dir
    assert main(["diagnose", run_dir, "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    data = _strict_json(tmp_path / "report.json")
    assert data["command"] == "diagnose" and data["options"]["path"] == run_dir
    assert data["findings"] == json.loads(json.dumps(dg.diagnose(run_dir)["findings"]))
    assert {"code", "step", "metric", "evidence"} <= set(data["findings"][0])
    assert {"source", "rows", "steps", "columns", "metrics", "checks"} <= set(data)
    assert "[reference_mismatch] step 1, rewards/" in out and "numbers written to" in out


def test_the_command_refuses_to_write_over_the_file_it_reads(runs, capsys):
    metrics = runs["healthy"].metrics_path
    before = open(metrics, "rb").read()
    for target in (runs["healthy"].args.output_dir, metrics):
        for option in ("--json", "--figure"):
            assert main(["diagnose", target, option, metrics]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {option} {metrics} ") and f"PATH {target}" in err, err
    assert open(metrics, "rb").read() == before


def test_the_command_quiet_prints_one_line_per_finding_and_a_bad_file_exits_2(runs, tmp_path, capsys):
    assert main(["diagnose", runs["overopt"].args.output_dir, "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" at step")[0] for line in lines] == ["chosen_logps_falling", "over_optimization"]
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 0.5}\nnot json\n', encoding="utf-8")
    assert main(["diagnose", str(tmp_path / "bad.jsonl")]) == 2
    assert f"error: {tmp_path / 'bad.jsonl'} line 2: not JSON" in capsys.readouterr().err


def test_the_figure_marks_each_finding_at_its_step_in_the_panel_of_its_metric(runs):
    pytest.importorskip("matplotlib")
    from dpo_np.experiments.plots import DPO_PANELS, diagnosis_figure
    log = dg.read_log(runs["displace"].args.output_dir)
    fig = diagnosis_figure(log["rows"], dg.diagnose(log))
    marked = {title: [line.get_xdata()[0] for line in ax.get_lines() if line.get_color() == "red"]
              for ax, (title, _, _) in zip(fig.axes, DPO_PANELS)}
    assert marked.pop("logps/chosen vs logps/rejected") == [30]
    assert not any(marked.values())
    assert [t.get_text() for t in fig.axes[4].texts] == ["chosen_logps_falling"]


def test_the_command_draws_the_curves_with_the_findings_marked(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "diagnosis.png"
    assert main(["diagnose", runs["displace"].args.output_dir, "--figure", str(figure), "--quiet"]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure written to {figure}" in capsys.readouterr().out
