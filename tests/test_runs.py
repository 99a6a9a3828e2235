"""A run owns its output directory, resumes only as the same run, stops cleanly on Ctrl-C, and
never trains on silently wrong numbers: each test here failed on the trainers before they
checked it."""

import copy
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from dpo_np.checkpoint import load_checkpoint, save_checkpoint
from dpo_np.data import format_prompt
from dpo_np.model import GPT, GPTConfig
from dpo_np.sft import SFTTrainer
from dpo_np.tokenizer import CharTokenizer
from dpo_np.trainers import DPOTrainer
from dpo_np.training import LOCK_FILE, NonFiniteLossError, TrainingInterrupted, frozen_copy, read_metrics

TOK = CharTokenizer.from_corpus(format_prompt("") + "abcd")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
SFT = [{"prompt": p, "response": r} for p, r in (("ab", "abc"), ("ca", "b"), ("a", "cc"), ("bca", "aab"))]
PAIRS = [{"prompt": "ab", "chosen": "abc", "rejected": "c"}, {"prompt": "cab", "chosen": "b", "rejected": "bacca"},
         {"prompt": "a", "chosen": "cc", "rejected": "ab"}, {"prompt": "bca", "chosen": "aab", "rejected": "cbab"}]
COMMON = dict(max_length=18, max_prompt_length=12, show_progress=False, per_device_train_batch_size=2,
              logging_steps=1, learning_rate=1e-2)


def sft(out, model=None, data=SFT, tokenizer=TOK, **kw):
    return SFTTrainer(model or GPT(TINY, seed=0), train_dataset=data, tokenizer=tokenizer,
                      output_dir=str(out), **{**COMMON, "max_steps": 4, **kw})


def dpo(out, model=None, ref=None, data=PAIRS, **kw):
    return DPOTrainer(model or GPT(TINY, seed=0), ref, train_dataset=data, tokenizer=TOK,
                      output_dir=str(out), **{**COMMON, "max_steps": 4, **kw})


# ---- 1. a run never destroys what it did not write ---------------------------------------------

def test_a_fresh_run_into_a_used_directory_refuses_and_names_the_choices(tmp_path):
    sft(tmp_path / "run").train()
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"already holds files.*new output_dir.*overwrite.*resume"):
        sft(tmp_path / "run", model=GPT(TINY, seed=1)).train()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before          # not truncated


def test_overwrite_replaces_the_earlier_runs_files_and_nothing_else(tmp_path):
    sft(tmp_path / "run", save_steps=1).train()
    (tmp_path / "run" / "notes.txt").write_text("precious")
    trainer = sft(tmp_path / "run", model=GPT(TINY, seed=1), max_steps=2, overwrite_output_dir=True)
    trainer.train()
    left = sorted(os.listdir(tmp_path / "run"))
    assert left == ["final", "metrics.jsonl", "notes.txt"]                    # checkpoint-1..4 of the old run gone
    assert (tmp_path / "run" / "notes.txt").read_text() == "precious"
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_a_live_lock_refuses_a_second_writer_and_names_its_owner(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(
            {"pid": holder.pid, "host": os.uname().nodename, "trainer": "sft", "started": "now"}))
        with pytest.raises(RuntimeError, match=rf"in use by a sft run: process {holder.pid}"):
            sft(tmp_path / "run").train()
        assert os.listdir(tmp_path / "run") == [LOCK_FILE]                     # nothing written beside it
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_is_released_at_the_end(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    sft(tmp_path / "run").train()
    assert LOCK_FILE not in os.listdir(tmp_path / "run")


def test_two_processes_on_one_output_dir_one_trains_one_is_refused(tmp_path):
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              f"import test_runs as t\n"
              f"t.sft({str(tmp_path / 'run')!r}, max_steps=3000, logging_steps=100).train()\n")
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):                                   # until the first one holds the lock
            if (tmp_path / "run" / LOCK_FILE).exists():
                break
            first.poll()
            assert first.returncode is None, first.stderr.read()
            import time
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    assert second.returncode != 0 and "in use by a sft run" in second.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(100, 3001, 100))   # not interleaved


# ---- 2. resume means the same run, or a clear refusal -------------------------------------------

def test_resuming_dpo_from_an_sft_checkpoint_is_refused(tmp_path):
    sft(tmp_path / "sft", save_steps=2).train()
    with pytest.raises(ValueError, match=r"written by a 'sft' run, not a 'dpo' one"):
        dpo(tmp_path / "dpo").train(resume_from_checkpoint=tmp_path / "sft" / "checkpoint-2")


@pytest.mark.parametrize("change, field", [
    (dict(beta=0.5), "beta=0.1.*beta=0.5"), (dict(loss_type="ipo"), "loss_type='sigmoid'.*loss_type='ipo'"),
    (dict(learning_rate=5e-3), "learning_rate"), (dict(max_length=17), "max_length=18.*max_length=17"),
    (dict(data=[dict(PAIRS[0], chosen="abcd")] + PAIRS[1:]), "the data differs"),
    (dict(ref=GPT(TINY, seed=5)), "the reference model differs"),
])
def test_resuming_after_a_change_is_refused_naming_the_field_and_both_values(tmp_path, change, field):
    dpo(tmp_path / "a", save_steps=2).train()
    with pytest.raises(ValueError, match=field):
        dpo(tmp_path / "b", **change).train(resume_from_checkpoint=tmp_path / "a" / "checkpoint-2")


def test_a_setting_newer_than_the_checkpoint_counts_as_its_default(tmp_path):
    dpo(tmp_path / "a", save_steps=2).train()
    state = tmp_path / "a" / "checkpoint-2" / "state.json"
    saved = json.loads(state.read_text())
    del saved["extra"]["args"]["drop_identical_pairs"]        # as written before the setting existed
    state.write_text(json.dumps(saved))
    dpo(tmp_path / "b").train(resume_from_checkpoint=tmp_path / "a" / "checkpoint-2")
    with pytest.raises(ValueError, match="drop_identical_pairs=False.*drop_identical_pairs=True"):
        dpo(tmp_path / "c", drop_identical_pairs=True).train(resume_from_checkpoint=tmp_path / "a" / "checkpoint-2")


def test_resuming_with_another_tokenizer_is_refused(tmp_path):
    sft(tmp_path / "a", save_steps=2).train()
    other = CharTokenizer.from_corpus(format_prompt("") + "abce")          # as many tokens, one other
    with pytest.raises(ValueError, match="the tokenizer differs"):
        sft(tmp_path / "b", tokenizer=other).train(resume_from_checkpoint=tmp_path / "a" / "checkpoint-2")


def test_resuming_beyond_max_steps_is_an_error_not_a_silent_no_op(tmp_path):
    sft(tmp_path / "a", save_steps=3).train()
    with pytest.raises(ValueError, match=r"at step 3, beyond this run's 2 steps"):
        sft(tmp_path / "b", max_steps=2).train(resume_from_checkpoint=tmp_path / "a" / "checkpoint-3")


def test_resume_last_continues_from_the_newest_checkpoint_in_the_output_dir(tmp_path):
    import shutil
    straight = sft(tmp_path / "a", max_steps=6, save_steps=2)
    straight.train()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        sft(tmp_path / "c", max_steps=6).train(resume_from_checkpoint="last")
    (tmp_path / "b").mkdir()                        # what a run stopped after step 4 leaves behind
    for step in (2, 4):
        shutil.copytree(tmp_path / "a" / f"checkpoint-{step}", tmp_path / "b" / f"checkpoint-{step}")
    resumed = sft(tmp_path / "b", max_steps=6)
    resumed.train(resume_from_checkpoint="last")
    assert [r["step"] for r in resumed.state["log_history"]] == [5, 6]
    for name, p in straight.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], p)


def test_ctrl_c_saves_a_checkpoint_between_steps_and_the_run_resumes_exactly(tmp_path):
    straight = dpo(tmp_path / "a", max_steps=5)
    straight.train()
    stopped = dpo(tmp_path / "b", max_steps=5)
    stopped.on_step_end = lambda: os.kill(os.getpid(), signal.SIGINT) if stopped.state["step"] == 2 else None
    before = signal.getsignal(signal.SIGINT)           # SIG_IGN where the tests run in the background
    with pytest.raises(TrainingInterrupted, match="stopped at step 2 of 5") as err:
        stopped.train()
    assert err.value.checkpoint.endswith("checkpoint-2") and load_checkpoint(err.value.checkpoint)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before                             # handler restored
    assert LOCK_FILE not in os.listdir(tmp_path / "b")
    resumed = dpo(tmp_path / "b", max_steps=5)
    resumed.train(resume_from_checkpoint="last")
    assert read_metrics(tmp_path / "b") == straight.state["log_history"]
    for name, p in straight.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], p)


# ---- 3. no silent numerical nonsense -------------------------------------------------------------

def test_a_non_finite_gradient_stops_the_run_naming_the_tensor(tmp_path):
    trainer = sft(tmp_path / "run")
    real_step = trainer.training_step

    def poisoned(idx):
        metrics = real_step(idx)
        trainer.model.grads["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return metrics
    trainer.training_step = poisoned
    before = {k: p.copy() for k, p in trainer.model.params.items()}
    with pytest.raises(NonFiniteLossError, match=r"step 1: the gradient of 'h.0.mlp.c_fc.weight' is not finite"):
        trainer.train()
    assert all(np.array_equal(before[k], p) for k, p in trainer.model.params.items())     # no update


def test_a_parameter_made_non_finite_by_an_update_stops_the_run_naming_it(tmp_path):
    trainer = sft(tmp_path / "run", save_steps=1)
    real = trainer.optimizer.step

    def step(grads, lr=None):
        real(grads, lr=lr)
        if trainer.state["step"] == 1:
            trainer.model.params["ln_f.bias"][2] = np.nan
    trainer.optimizer.step = step
    with pytest.raises(NonFiniteLossError, match=r"step 2: the update made parameter 'ln_f.bias' non-finite.*"
                                                 r"checkpoint-1, is untouched"):
        trainer.train()
    assert np.isfinite(load_checkpoint(tmp_path / "run" / "checkpoint-1")["model"].params["ln_f.bias"]).all()


@pytest.mark.parametrize("make_ref", [copy.copy, lambda m: _sharing(m)], ids=["copy.copy", "ref.params = model.params"])
def test_a_reference_sharing_arrays_with_the_policy_is_refused(tmp_path, make_ref):
    model = GPT(TINY, seed=0)
    with pytest.raises(ValueError, match="shares memory with model.params"):
        dpo(tmp_path / "run", model=model, ref=make_ref(model))
    dpo(tmp_path / "run", model=model, ref=frozen_copy(model))                   # its own arrays: fine


def _sharing(model):
    ref = GPT(TINY, seed=3)
    ref.params = model.params
    return ref


def test_load_best_model_at_end_keeps_the_best_evaluation_and_early_stopping_stops(tmp_path):
    trainer = dpo(tmp_path / "run", max_steps=12, eval_steps=2, learning_rate=0.3, beta=2.0,
                  load_best_model_at_end=True, early_stopping_patience=2, eval_dataset=PAIRS[:2])
    trainer.train()
    evals = [r for r in trainer.state["log_history"] if "eval/loss" in r]
    losses = [r["eval/loss"] for r in evals]
    best = int(np.argmin(losses))
    counters = trainer.state["counters"]
    assert counters["best_step"] == evals[best]["step"] and counters["best_metric"] == losses[best]
    stopped_early = trainer.state["step"] < 12
    assert stopped_early == (len(losses) - 1 - best >= 2)
    final = load_checkpoint(tmp_path / "run" / "final")["model"].params
    best_params = load_checkpoint(tmp_path / "run" / "best")["model"].params
    for name, p in final.items():
        np.testing.assert_array_equal(p, best_params[name])
    assert trainer.evaluate()["eval/loss"] == losses[best]                       # the model in memory is the best


def test_saving_a_checkpoint_over_a_foreign_directory_inside_a_run_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-2" / "thesis.tex").write_text("precious")
    trainer = sft(tmp_path / "run", save_steps=2, overwrite_output_dir=True)
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        trainer.train()
    assert (tmp_path / "run" / "checkpoint-2" / "thesis.tex").read_text() == "precious"
    save_checkpoint(tmp_path / "elsewhere", trainer.model)                        # the model itself is fine


# ---- what a refusal says to do -------------------------------------------------------------------

@pytest.mark.parametrize("max_steps", [2, 8])
def test_a_resume_that_would_change_the_runs_length_says_how_to_end_the_run_where_it_stopped(tmp_path, max_steps):
    """Ctrl-C at step 4 of 6, then "finish at step 2 (or 8) instead": not the same run (its learning
    rate decays to 0 at its own end), so it is refused, and the refusal names the checkpoint as a model."""
    sft(tmp_path / "run", max_steps=6, save_steps=4).train()
    with pytest.raises(ValueError) as err:
        sft(tmp_path / "run", max_steps=max_steps, save_steps=4).train(resume_from_checkpoint="last")
    checkpoint = os.path.join(tmp_path / "run", "checkpoint-4")
    assert f"use the checkpoint as it is, a whole model (on the command line: --model {checkpoint})" in str(err.value)


def test_lock_holder_names_a_live_owner_and_ignores_a_stale_lock(tmp_path):
    from dpo_np.training import lock_holder
    os.makedirs(tmp_path / "run")
    assert lock_holder(tmp_path / "run") is None
    lock = tmp_path / "run" / LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "trainer": "sft"}))
    assert lock_holder(tmp_path / "run")["pid"] == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname()}))
    assert lock_holder(tmp_path / "run") is None
