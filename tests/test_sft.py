"""Supervised fine-tuning and the shared training loop: the loss counts response tokens only, its
gradient matches central differences, a resumed run repeats the uninterrupted one bit for bit,
the schedules, the logs and the checkpoint, and a tiny model learns to answer."""

import math
import os

import numpy as np
import pytest

from dpo_np.checkpoint import load_checkpoint
from dpo_np.data import collate_sft, format_prompt, tokenize_sft
from dpo_np.gradcheck import parameter_gradient_errors
from dpo_np.model import GPT, GPTConfig
from dpo_np.experiments.runs import run_sft
from dpo_np.generate import greedy_answer
from dpo_np.sft import SFTConfig, SFTTrainer, sft_loss_backward, sft_loss_forward
from dpo_np.tokenizer import CharTokenizer
from dpo_np.training import NonFiniteLossError, TrainingConfig, learning_rate_at, read_metrics

RECORDS = [
    {"prompt": "ab", "response": "abc"},
    {"prompt": "cab", "response": "b"},
    {"prompt": "a", "response": "cca"},
    {"prompt": "bca", "response": "aab"},
    {"prompt": "b", "response": "cbab"},
    {"prompt": "cc", "response": "ba"},
]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
MAX_LENGTH, MAX_PROMPT_LENGTH = 18, 12


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH,
                show_progress=False, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=2,
                logging_steps=1)
    base.update(kw)
    return SFTConfig(**base)


def _batch(records):
    feats = [tokenize_sft(TOK, r, MAX_LENGTH, MAX_PROMPT_LENGTH) for r in records]
    return collate_sft(feats, TOK.pad_token_id)


# ---- the loss --------------------------------------------------------------------------------

def test_sft_loss_is_the_mean_nll_of_response_tokens_only():
    rng = np.random.default_rng(0)
    batch = _batch(RECORDS[:3])
    labels = batch["labels"]
    logits = rng.normal(size=labels.shape + (TOK.vocab_size,))
    loss, n, cache = sft_loss_forward(logits, labels)
    # written out: −log softmax(z_{t−1})[y_t] averaged over the response positions
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = [-logp[b, t - 1, labels[b, t]] for b in range(3) for t in range(1, labels.shape[1])
           if labels[b, t] != -100]
    assert n == len(nll) == sum(len(r["response"]) + 1 for r in RECORDS[:3])       # characters + eos
    assert loss == pytest.approx(np.mean(nll), rel=1e-13)
    # the logits that predict prompt tokens or padding neither change the loss nor get a gradient
    dlogits = sft_loss_backward(cache)
    scored = np.zeros(labels.shape, bool)
    scored[:, :-1] = labels[:, 1:] != -100
    shifted = logits.copy()
    shifted[~scored] += rng.normal(size=shifted[~scored].shape) * 10
    assert sft_loss_forward(shifted, labels)[0] == pytest.approx(loss, rel=1e-13)
    assert np.all(dlogits[~scored] == 0) and np.all(np.abs(dlogits[scored]).sum(-1) > 0)


def test_sft_gradient_matches_central_differences_for_every_parameter():
    model = GPT(TINY, seed=0, dtype=np.float64)
    batch = _batch(RECORDS[:4])                               # right-padded rows of different lengths

    def loss():
        logits = model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        return sft_loss_forward(logits, batch["labels"])[0]

    model.zero_grad()
    logits = model.forward(batch["input_ids"], batch["attention_mask"])
    _, _, cache = sft_loss_forward(logits, batch["labels"])
    model.backward(sft_loss_backward(cache))
    errors = parameter_gradient_errors(model.params, model.grads, loss)
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


# ---- the loop: resume, schedule, logs, checkpoint ----------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_bitwise(tmp_path, dtype):
    k = 5          # 6 records in batches of 4: epochs of 2 steps, so the resume lands mid-epoch
    straight = SFTTrainer(GPT(TINY, seed=0, dtype=dtype), _args(tmp_path / "a", max_steps=2 * k, save_steps=k),
                          train_dataset=RECORDS, tokenizer=TOK)
    straight.train()
    ckpt = tmp_path / "a" / "run" / f"checkpoint-{k}"

    fresh = load_checkpoint(ckpt)["model"]                   # a new model object, parameters from disk
    resumed = SFTTrainer(fresh, _args(tmp_path / "b", max_steps=2 * k, save_steps=k),
                         train_dataset=RECORDS, tokenizer=TOK)
    resumed.train(resume_from_checkpoint=ckpt)

    tail = [r for r in straight.state["log_history"] if r["step"] > k]
    assert [r["step"] for r in resumed.state["log_history"]] == list(range(k + 1, 2 * k + 1))
    assert resumed.state["log_history"] == tail                  # loss, lr, grad_norm, tokens: every bit
    for name, p in straight.model.params.items():
        assert np.array_equal(resumed.model.params[name], p), name


def test_resuming_into_the_same_output_dir_keeps_the_log_consistent(tmp_path):
    args = _args(tmp_path, max_steps=4, save_steps=2)
    first = SFTTrainer(GPT(TINY, seed=0), args, train_dataset=RECORDS, tokenizer=TOK)
    first.train()
    again = SFTTrainer(GPT(TINY, seed=3), args, train_dataset=RECORDS, tokenizer=TOK)
    again.train(resume_from_checkpoint=tmp_path / "run" / "checkpoint-2")
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows == first.state["log_history"]


def test_resuming_with_another_batch_size_is_refused(tmp_path):
    SFTTrainer(GPT(TINY), _args(tmp_path, max_steps=2, save_steps=2), train_dataset=RECORDS, tokenizer=TOK).train()
    other = SFTTrainer(GPT(TINY), _args(tmp_path, max_steps=2, per_device_train_batch_size=3),
                       train_dataset=RECORDS, tokenizer=TOK)
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        other.train(resume_from_checkpoint=tmp_path / "run" / "checkpoint-2")


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warms_up_linearly_then_follows_its_shape(kind):
    args = TrainingConfig(learning_rate=0.1, warmup_steps=4, lr_scheduler_type=kind)
    lrs = [learning_rate_at(s, args, 20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])          # never 0, peak at the last warmup step
    assert lrs[4] == pytest.approx(0.1)
    if kind == "constant":
        assert lrs[4:] == pytest.approx([0.1] * 16)
    else:
        assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))             # strictly decaying
        mid = 4 + 8                                                     # halfway through the decay
        assert lrs[mid] == pytest.approx(0.05)                          # both shapes pass lr/2 there
        if kind == "cosine":
            assert lrs[5] == pytest.approx(0.05 * (1 + math.cos(math.pi / 16)))


def test_metrics_log_loss_lr_grad_norm_and_the_running_token_count(tmp_path):
    trainer = SFTTrainer(GPT(TINY), _args(tmp_path, max_steps=3), train_dataset=RECORDS, tokenizer=TOK)
    trainer.train()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"loss", "lr", "grad_norm", "tokens", "step", "epoch"} <= set(r) for r in rows)
    per_step = [int((_batch([RECORDS[i] for i in trainer.batch_for_step(s)])["labels"][:, 1:] != -100).sum())
                for s in range(3)]
    assert [r["tokens"] for r in rows] == list(np.cumsum(per_step))
    assert rows[0]["loss"] == pytest.approx(math.log(TOK.vocab_size), rel=0.05)     # a fresh model: ~uniform


def test_the_final_checkpoint_holds_the_trained_model_and_tokenizer(tmp_path):
    trainer = SFTTrainer(GPT(TINY), _args(tmp_path, max_steps=2), train_dataset=RECORDS, tokenizer=TOK)
    trainer.train()
    saved = load_checkpoint(tmp_path / "run" / "final")
    assert saved["step"] == 2 and saved["tokenizer"] == TOK
    assert all(np.array_equal(saved["model"].params[k], p) for k, p in trainer.model.params.items())
    assert saved["extra"]["trainer"] == "sft"


def test_a_diverged_model_stops_training_at_that_step_and_keeps_the_last_checkpoint(tmp_path):
    # NaN logits are refused by the log-prob code; the trainer turns them into its clean non-finite stop
    trainer = SFTTrainer(GPT(TINY), _args(tmp_path, max_steps=5, save_steps=2), train_dataset=RECORDS,
                         eval_dataset=RECORDS, tokenizer=TOK)
    original = trainer.training_step

    def poisoned(idx):
        if trainer.state["step"] == 2:                       # while computing step 3
            trainer.model.params["ln_f.bias"][0] = np.nan
        return original(idx)
    trainer.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is nan") as err:
        trainer.train()
    assert str(tmp_path / "run" / "checkpoint-2") in str(err.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoint-2")["step"] == 2
    assert math.isnan(trainer.evaluate()["eval/loss"])


def test_evaluate_reports_the_token_level_loss_independent_of_batching(tmp_path):
    model = GPT(TINY, seed=1, dtype=np.float64)
    losses = [SFTTrainer(model, _args(tmp_path, per_device_eval_batch_size=bs), train_dataset=RECORDS,
                         eval_dataset=RECORDS, tokenizer=TOK).evaluate()["eval/loss"] for bs in (1, 4, 6)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-12)


@pytest.mark.parametrize("field, value", [("learning_rate", -1.0), ("warmup_steps", -1), ("max_steps", -2),
                                          ("per_device_train_batch_size", 0), ("lr_scheduler_type", "cyclic"),
                                          ("max_prompt_length", 200), ("logging_steps", 0),
                                          ("weight_decay", float("inf")), ("save_steps", 0)])
def test_a_bad_config_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SFTConfig(**{field: value})


# ---- learning ----------------------------------------------------------------------------------

def test_a_tiny_model_learns_to_answer_its_training_prompts(tmp_path):
    records = [{"prompt": "ab", "response": "ccb"}, {"prompt": "ba", "response": "a"},
               {"prompt": "cc", "response": "bab"}]
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(config, seed=0)
    trainer = SFTTrainer(model, _args(tmp_path, max_steps=60, learning_rate=1e-2, max_length=16,
                                      max_prompt_length=10, per_device_train_batch_size=3),
                         train_dataset=records, tokenizer=TOK)
    result = trainer.train()
    assert result["metrics"]["loss"] < 0.05 * math.log(TOK.vocab_size)
    for r in records:
        assert greedy_answer(model, TOK, r["prompt"]) == r["response"]


def test_run_sft_trains_saves_and_answers_the_notes_prompts(tmp_path):
    printed = []
    out = run_sft(output_dir=str(tmp_path / "sft"), steps=2, n_layer=1, n_embd=16, n_head=2,
                  show_progress=False, print_fn=printed.append)
    assert os.path.isdir(out["checkpoint"]) and load_checkpoint(out["checkpoint"])["step"] == 2
    assert len(out["answers"]) == 3 and all(isinstance(a, str) for a in out["answers"].values())
    assert any("What is 2+2?" in line for line in printed)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_steps'\]"):
        run_sft(output_dir=str(tmp_path / "sft2"), max_steps=2)
