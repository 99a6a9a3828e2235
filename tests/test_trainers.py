"""DPOTrainer: the step-0 identities, the end-to-end gradient against central differences, the
concatenated forward, the reference variants (precomputed, TR-DPO), the LD-DPO and WPO formulas,
learning on the toy preferences, the notes' snippet, the NaN stop, the metrics and determinism."""

import math
import os

import numpy as np
import pytest

from dpo_np import logprobs
from dpo_np.experiments import toy_preferences
from dpo_np.checkpoint import load_checkpoint
from dpo_np.data import collate_preferences, collate_sft, format_prompt, tokenize_preference
from dpo_np.gradcheck import parameter_gradient_errors, relative_error
from dpo_np.losses import LOSS_TYPES
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import CharTokenizer
from helpers import binomial_critical_accuracy
from dpo_np.training import NonFiniteLossError, TrainingConfig, read_metrics
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.variants import (ld_split_labels, sequence_logps_backward, sequence_logps_forward, sync_reference,
                             wpo_weights)

# pairs of different lengths, so the concatenated batch is padded (and y_w, y_l differ in length)
PAIRS = [
    {"prompt": "ab", "chosen": "abc", "rejected": "c"},
    {"prompt": "cab", "chosen": "b", "rejected": "bacca"},
    {"prompt": "a", "chosen": "cc", "rejected": "ab"},
    {"prompt": "bca", "chosen": "aab", "rejected": "cbab"},
]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
MAX_LENGTH, MAX_PROMPT_LENGTH = 18, 12
STANDARD_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH,
                show_progress=False,
                per_device_train_batch_size=2, per_device_eval_batch_size=3, learning_rate=1e-2)
    base.update(kw)
    return DPOConfig(**base)


def _trainer(tmp_path, dtype=np.float64, ref_seed=None, pairs=PAIRS, eval_pairs=None, **kw):
    model = GPT(TINY, seed=0, dtype=dtype)
    ref = None if ref_seed is None else GPT(TINY, seed=ref_seed, dtype=dtype)
    return DPOTrainer(model, ref, args=_args(tmp_path, **kw), train_dataset=pairs,
                      eval_dataset=eval_pairs, tokenizer=TOK)


# ---- the identities at step 0 --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step0_rewards_are_exactly_zero_and_sigmoid_loss_is_exactly_log2(tmp_path, dtype):
    trainer = _trainer(tmp_path, dtype=dtype)                 # ref_model=None: a frozen copy of π_θ
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    assert np.all(out["chosen_rewards"] == 0) and np.all(out["rejected_rewards"] == 0)
    assert out["losses"].dtype == dtype
    assert np.all(out["losses"] == dtype(math.log(2)))          # −log σ(0) = log 2, to the last bit
    # and in the logged metrics of the first step (batch of 2: the mean of two equal numbers is exact)
    trainer.args.max_steps, trainer.args.logging_steps = 1, 1
    trainer.train()
    row = trainer.state["log_history"][0]
    assert row["loss"] == float(dtype(math.log(2)))
    assert row["rewards/chosen"] == row["rewards/rejected"] == row["rewards/margins"] == 0.0
    assert row["rewards/accuracies"] == 0.0                    # a tie is not a correct ranking


# ---- the end-to-end gradient --------------------------------------------------------------

def _all_param_gradcheck(trainer, idx, h=1e-5):
    """dL/dθ through model.backward against central differences of the trainer's own loss, for
    every coordinate of every parameter; WPO's weights and BCO's δ are held at their value, as in training."""
    model = trainer.model
    model.zero_grad()
    out = trainer.batch_outputs(idx, backward=True)
    analytic = {k: g.copy() for k, g in model.grads.items()}
    weights = out["policy_weights"]
    counters = dict(trainer.state["counters"])          # BCO's δ: the measurements must not move it
    errors = parameter_gradient_errors(
        model.params, analytic, lambda: trainer.batch_outputs(idx, policy_weights=weights)["loss"], h)
    assert trainer.state["counters"] == counters
    return errors, analytic


@pytest.mark.parametrize("variant", [dict(loss_type="sigmoid"), dict(loss_type="ipo"),
                                     dict(ld_alpha=0.3), dict(use_weighting=True), dict(loss_type="bco_pair")],
                         ids=["sigmoid", "ipo", "ld_alpha", "wpo", "bco_pair"])
def test_dpo_gradient_matches_central_differences_for_every_parameter(tmp_path, variant):
    # π_ref ≠ π_θ so the margin is not 0 and σ's slope is not the trivial one; β large enough to matter
    trainer = _trainer(tmp_path, ref_seed=7, beta=0.5, **variant)
    errors, analytic = _all_param_gradcheck(trainer, np.arange(len(PAIRS)))
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert sum(float(np.abs(g).sum()) for g in analytic.values()) > 0       # not vacuous


def test_bco_running_mean_moves_only_in_a_training_step(tmp_path):
    # δ is a statistic of the training run: a measurement (backward=False) or an eval batch must leave it
    trainer = _trainer(tmp_path, ref_seed=7, beta=0.5, loss_type="bco_pair", eval_pairs=PAIRS[:2])
    idx = np.arange(2)
    before = dict(trainer.state["counters"])
    first = trainer.batch_outputs(idx)["loss"]
    trainer.batch_outputs(idx, "eval")
    assert trainer.state["counters"] == before and trainer.batch_outputs(idx)["loss"] == first
    trainer.batch_outputs(idx, backward=True)
    assert trainer.state["counters"]["bco_count"] == before["bco_count"] + 2 * len(idx)
    assert trainer.state["counters"]["bco_mean"] != before["bco_mean"]


def test_sequence_logps_backward_matches_central_differences_with_a_random_upstream():
    rng = np.random.default_rng(0)
    batch = collate_preferences([_features(p) for p in PAIRS[:3]], TOK.pad_token_id)
    logits = rng.normal(size=batch["input_ids"].shape + (TOK.vocab_size,))
    upstream = rng.normal(size=6)
    for average, ld_alpha in ((False, None), (True, None), (False, 0.25), (True, 0.6)):
        logps, cache = sequence_logps_forward(logits, batch["labels"], average, ld_alpha)
        analytic = sequence_logps_backward(upstream, cache)
        numeric = np.zeros_like(logits)
        for i in range(logits.size):
            x = logits.reshape(-1)
            saved = x[i]
            x[i] = saved + 1e-5
            up = sequence_logps_forward(logits, batch["labels"], average, ld_alpha)[0] @ upstream
            x[i] = saved - 1e-5
            down = sequence_logps_forward(logits, batch["labels"], average, ld_alpha)[0] @ upstream
            x[i] = saved
            numeric.reshape(-1)[i] = (up - down) / 2e-5
        assert relative_error(analytic, numeric) < 1e-7, (average, ld_alpha)


# ---- the forward: concatenation, averaging, LD-DPO, WPO ------------------------------------

def _features(record):
    return tokenize_preference(TOK, record, MAX_LENGTH, MAX_PROMPT_LENGTH)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_concatenated_forward_equals_separate_chosen_and_rejected_forwards(tmp_path, loss_type):
    trainer = _trainer(tmp_path, loss_type=loss_type)
    out = trainer.batch_outputs(np.arange(len(PAIRS)))
    feats = [_features(p) for p in PAIRS]
    for side, key in (("chosen", "chosen_ids"), ("rejected", "rejected_ids")):
        batch = collate_sft([{"prompt_ids": f["prompt_ids"], "response_ids": f[key]} for f in feats],
                            TOK.pad_token_id)
        logits = trainer.model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        separate = logprobs.get_batch_logps(logits, batch["labels"], average_log_prob=(loss_type == "ipo"))
        np.testing.assert_allclose(out[f"{side}_logps"], separate, rtol=1e-12, atol=1e-12)


def test_ipo_reads_per_token_mean_and_sigmoid_the_sum(tmp_path):
    sums = _trainer(tmp_path, loss_type="sigmoid").batch_outputs(np.arange(4))
    means = _trainer(tmp_path, loss_type="ipo").batch_outputs(np.arange(4))
    lengths = np.array([len(p["chosen"]) + 1 for p in PAIRS])               # characters + eos
    np.testing.assert_allclose(means["chosen_logps"], sums["chosen_logps"] / lengths, rtol=1e-13)


def test_ld_split_puts_the_first_shared_length_tokens_in_front_and_the_rest_behind():
    batch = collate_preferences([_features(p) for p in PAIRS], TOK.pad_token_id)
    labels = batch["labels"]
    front, rear = ld_split_labels(labels, 0.5)
    is_response = labels != -100
    # a partition of the response tokens
    assert np.array_equal((front != -100) | (rear != -100), is_response)
    assert not np.any((front != -100) & (rear != -100))
    n = is_response.sum(axis=1)
    B = len(PAIRS)
    public = np.minimum(n[:B], n[B:])
    np.testing.assert_array_equal((front != -100).sum(axis=1), np.concatenate([public, public]))
    for row in range(2 * B):                                  # the front part comes first in each row
        positions = np.flatnonzero(is_response[row])
        assert np.all(front[row, positions[:public[row % B]]] == labels[row, positions[:public[row % B]]])


def test_ld_alpha_one_is_plain_dpo_and_zero_ignores_the_excess_tokens():
    rng = np.random.default_rng(1)
    batch = collate_preferences([_features(p) for p in PAIRS], TOK.pad_token_id)
    logits = rng.normal(size=batch["input_ids"].shape + (TOK.vocab_size,))
    plain, _ = sequence_logps_forward(logits, batch["labels"])
    one, _ = sequence_logps_forward(logits, batch["labels"], ld_alpha=1.0)
    np.testing.assert_allclose(one, plain, rtol=1e-13)
    zero, _ = sequence_logps_forward(logits, batch["labels"], ld_alpha=0.0)
    front, _ = ld_split_labels(batch["labels"], 0.0)
    np.testing.assert_allclose(zero, logprobs.get_batch_logps(logits, front), rtol=1e-13)
    # with α = 0, y_w and y_l of a pair are scored on the same number of tokens
    n_front = (front[:, 1:] != -100).sum(axis=1)
    assert np.array_equal(n_front[:4], n_front[4:])


def test_wpo_weights_follow_the_formula_written_with_probabilities():
    rng = np.random.default_rng(2)
    batch = collate_preferences([_features(p) for p in PAIRS], TOK.pad_token_id)
    logits = 3.0 * rng.normal(size=batch["input_ids"].shape + (TOK.vocab_size,))
    got = wpo_weights(logits, batch["labels"])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mean = []
    for row in range(8):
        terms = [np.log(p[row, t - 1, y]) - np.log((p[row, t - 1] ** 2).sum())
                 for t, y in enumerate(batch["labels"][row]) if y != -100]
        mean.append(np.mean(terms))
    expected = np.minimum(1.0, np.exp(np.array(mean[:4]) + np.array(mean[4:])))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all((got > 0) & (got <= 1))


# ---- the reference: precomputed, synced ------------------------------------------------------

def test_precomputed_reference_logps_give_the_same_losses_as_on_the_fly(tmp_path):
    runs = []
    for precompute in (False, True):
        trainer = _trainer(tmp_path / str(precompute), ref_seed=3, eval_pairs=PAIRS[:3], max_steps=4,
                           logging_steps=1, save_at_end=False, precompute_ref_log_probs=precompute)
        trainer.train()
        runs.append([trainer.state["log_history"], trainer.evaluate()])
    (live, live_eval), (pre, pre_eval) = runs
    assert len(live) == len(pre) == 4
    for a, b in zip(live, pre):
        for name in STANDARD_NAMES:
            assert b[name] == pytest.approx(a[name], rel=1e-10, abs=1e-12), name
    for name in live_eval:
        assert pre_eval[name] == pytest.approx(live_eval[name], rel=1e-10, abs=1e-12), name


def test_sync_reference_is_the_convex_mixture():
    rng = np.random.default_rng(3)
    ref = {"w": rng.normal(size=(3, 4))}
    pol = {"w": rng.normal(size=(3, 4))}
    r0 = ref["w"].copy()
    sync_reference(ref, pol, 0.25)
    np.testing.assert_allclose(ref["w"], 0.25 * pol["w"] + 0.75 * r0, rtol=1e-15)
    sync_reference(ref, pol, 1.0)
    np.testing.assert_array_equal(ref["w"], pol["w"])


def test_trdpo_mixes_the_reference_toward_the_policy_every_n_steps(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, sync_ref_model=True, ref_model_mixup_alpha=0.4,
                       ref_model_sync_steps=2, save_at_end=False)
    ref0 = {k: p.copy() for k, p in trainer.ref_model.params.items()}
    seen = []
    original = trainer.on_step_end

    def record():
        original()
        seen.append(({k: p.copy() for k, p in trainer.model.params.items()},
                     {k: p.copy() for k, p in trainer.ref_model.params.items()}))
    trainer.on_step_end = record
    trainer.train()
    (pol1, ref1), (pol2, ref2), (pol3, ref3) = seen
    for k in ref0:
        np.testing.assert_array_equal(ref1[k], ref0[k])                    # step 1: no sync
        np.testing.assert_allclose(ref2[k], 0.4 * pol2[k] + 0.6 * ref0[k], rtol=1e-14, atol=1e-16)
        np.testing.assert_array_equal(ref3[k], ref2[k])                    # step 3: no sync
    assert any(not np.array_equal(ref2[k], ref0[k]) for k in ref0)


def test_trdpo_with_precomputed_reference_is_an_error():
    with pytest.raises(ValueError, match="sync_ref_model"):
        DPOConfig(sync_ref_model=True, precompute_ref_log_probs=True)


# ---- the loop ------------------------------------------------------------------------------

def test_notes_snippet_runs_as_written(tmp_path):
    training_args = DPOConfig(output_dir=str(tmp_path / "snippet"), max_steps=2, max_length=MAX_LENGTH,
                              max_prompt_length=MAX_PROMPT_LENGTH, show_progress=False)
    model = GPT(TINY, seed=0)
    model_ref = GPT(TINY, seed=0)
    train_dataset = PAIRS
    tokenizer = TOK

    dpo_trainer = DPOTrainer(
        model,
        model_ref,
        args=training_args,
        beta=0.1,
        train_dataset=train_dataset,
        tokenizer=tokenizer,
    )
    dpo_trainer.train()

    assert dpo_trainer.args.beta == 0.1 and dpo_trainer.state["step"] == 2
    assert dpo_trainer.ref_model is model_ref
    assert os.path.isdir(tmp_path / "snippet" / "final")


def test_ld_split_refuses_an_odd_number_of_rows_naming_labels():
    labels = np.array([[-100, 1, 2], [-100, 3, -100], [-100, 2, 2]])     # 3 rows: not chosen then rejected
    with pytest.raises(ValueError, match=r"labels .*\(3, 3\).*2B"):
        ld_split_labels(labels, 0.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(2B, T\)"):
        ld_split_labels(labels[0], 0.5)


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, dtype=np.float32, max_steps=6, save_steps=2)
    original = trainer.training_step

    def poisoned(idx):
        if trainer.state["step"] == 2:                       # while computing step 3
            trainer.model.params["ln_f.bias"][0] = np.nan
        return original(idx)
    trainer.training_step = poisoned
    ckpt = tmp_path / "run" / "checkpoint-2"
    with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is nan") as err:
        trainer.train()
    assert str(ckpt) in str(err.value)
    saved = load_checkpoint(ckpt)
    assert saved["step"] == 2
    assert all(np.isfinite(p).all() for p in saved["model"].params.values())
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-2", "metrics.jsonl"]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("loss_type", LOSS_TYPES + ("reference_free", "rpo"))
def test_every_loss_type_trains_with_finite_metrics(tmp_path, loss_type):
    kw = {"reference_free": dict(reference_free=True), "rpo": dict(loss_type=["sigmoid", "sft"],
                                                                    loss_weights=[1.0, 0.5])}
    trainer = _trainer(tmp_path, dtype=np.float32, max_steps=3, logging_steps=1, save_at_end=False,
                       eval_pairs=PAIRS[:2], **kw.get(loss_type, dict(loss_type=loss_type)))
    trainer.train()
    rows = trainer.state["log_history"] + [trainer.evaluate()]
    assert all(math.isfinite(v) for r in rows for v in r.values())


def test_dpo_resumed_from_a_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    # the reference is the frozen copy of the model the trainer was built with: build the resumed
    # trainer from the same initial policy and its π_ref is the same, so every number repeats
    straight = _trainer(tmp_path / "a", dtype=np.float32, max_steps=4, save_steps=2, logging_steps=1)
    straight.train()
    resumed = _trainer(tmp_path / "b", dtype=np.float32, max_steps=4, logging_steps=1)
    resumed.train(resume_from_checkpoint=tmp_path / "a" / "run" / "checkpoint-2")
    assert resumed.state["log_history"] == [r for r in straight.state["log_history"] if r["step"] > 2]


def test_metrics_file_holds_the_standard_names_for_training_and_eval(tmp_path):
    trainer = _trainer(tmp_path, eval_pairs=PAIRS[:3], max_steps=2, logging_steps=1, eval_steps=2)
    trainer.train()
    rows = read_metrics(tmp_path / "run")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and [r["step"] for r in eval_rows] == [2]
    for r in train_rows:
        assert set(STANDARD_NAMES + ("lr", "grad_norm", "step", "epoch")) <= set(r)
        assert all(math.isfinite(v) for v in r.values())
    assert {"eval/" + n for n in STANDARD_NAMES} <= set(eval_rows[0])
    assert rows == trainer.state["log_history"]


def test_same_seed_gives_identical_metrics(tmp_path):
    logs = []
    for run in ("a", "b"):
        trainer = _trainer(tmp_path / run, dtype=np.float32, max_steps=4, logging_steps=1, save_at_end=False)
        trainer.train()
        logs.append(trainer.state["log_history"])
    assert logs[0] == logs[1]
    other = _trainer(tmp_path / "c", dtype=np.float32, max_steps=4, logging_steps=1, save_at_end=False, seed=1)
    other.train()
    assert [r["loss"] for r in other.state["log_history"]] != [r["loss"] for r in logs[0]]


@pytest.mark.parametrize("field, value", [
    ("beta", -1.0), ("beta", 0.0), ("loss_type", "nope"), ("label_smoothing", 2.0), ("ld_alpha", 1.5),
    ("learning_rate", -1e-3), ("per_device_train_batch_size", 0), ("lr_scheduler_type", "step"),
    ("max_prompt_length", 20), ("ref_model_mixup_alpha", 2.0), ("ref_model_sync_steps", 0),
    ("loss_weights", [1.0, 2.0]), ("max_grad_norm", float("nan")), ("adam_epsilon", float("inf")),
    ("adam_epsilon", 0.0), ("adam_beta1", 1.0), ("adam_beta2", -0.1), ("weight_decay", -1e-2),
])
def test_a_bad_config_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DPOConfig(**{"max_length": 16, "max_prompt_length": 8, field: value})


@pytest.mark.parametrize("field, value", [
    ("beta", True), ("reference_free", "False"), ("use_weighting", "yes"), ("precompute_ref_log_probs", 1),
    ("learning_rate", "1e-3"), ("seed", 1.5), ("max_steps", True), ("ld_alpha", "0.5"), ("save_at_end", None),
])
def test_a_config_value_of_the_wrong_kind_is_a_type_error_naming_the_field(field, value):
    """True is not the number 1 and "False" is not a flag: nothing is coerced silently."""
    with pytest.raises(TypeError, match=field):
        DPOConfig(**{"max_length": 16, "max_prompt_length": 8, field: value})


def test_an_unknown_override_is_a_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match="betta"):
        DPOTrainer(GPT(TINY), args=_args(tmp_path), train_dataset=PAIRS, tokenizer=TOK, betta=0.1)


def test_max_length_beyond_the_block_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_length"):
        DPOTrainer(GPT(TINY), args=_args(tmp_path, max_length=40), train_dataset=PAIRS, tokenizer=TOK)


def test_a_plain_training_config_is_accepted_as_args(tmp_path):
    base = TrainingConfig(output_dir=str(tmp_path / "t"), max_length=MAX_LENGTH,
                          max_prompt_length=MAX_PROMPT_LENGTH, max_steps=1,
                          show_progress=False)
    trainer = DPOTrainer(GPT(TINY), args=base, beta=0.3, train_dataset=PAIRS, tokenizer=TOK)
    assert isinstance(trainer.args, DPOConfig) and trainer.args.beta == 0.3 and trainer.args.max_steps == 1


# ---- learning --------------------------------------------------------------------------------

def test_dpo_on_toy_preferences_raises_heldout_reward_accuracy_above_chance(tmp_path):
    tok = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    data = toy_preferences.preference_dataset(seed=0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=toy_preferences.MAX_SEQUENCE_LENGTH,
                       n_layer=1, n_head=2, n_embd=32)
    trainer = DPOTrainer(GPT(config, seed=0), args=DPOConfig(
        output_dir=str(tmp_path / "toy"), max_steps=40, learning_rate=3e-3, beta=0.1,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, max_length=toy_preferences.MAX_SEQUENCE_LENGTH,
        max_prompt_length=64, logging_steps=10, show_progress=False, save_at_end=False),
        train_dataset=data["train"], eval_dataset=data["eval"], tokenizer=tok)
    before = trainer.evaluate()
    assert before["eval/rewards/accuracies"] == 0.0              # π_θ = π_ref: every reward is 0
    trainer.train()
    after = trainer.evaluate()
    n = len(data["eval"])
    assert after["eval/rewards/accuracies"] >= binomial_critical_accuracy(n)
    assert after["eval/rewards/margins"] > 0


def test_config_names_a_loss_weight_that_is_not_a_number():
    with pytest.raises(TypeError, match=r"DPOConfig: .*loss_weights"):
        DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=["a", 1.0])


@pytest.mark.parametrize("kind", ["dpo", "sft", "reward"])
def test_trls_processing_class_is_the_tokenizer_and_two_different_ones_are_refused(tmp_path, kind):
    """DPOTrainer(..., processing_class=tok) as TRL writes it tokenizes exactly as tokenizer=tok."""
    from dpo_np.reward_model import RewardModel, RewardTrainer
    from dpo_np.sft import SFTTrainer

    def make(**tokenizers):
        args = dict(output_dir=str(tmp_path / kind), max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH,
                    show_progress=False)
        if kind == "dpo":
            return DPOTrainer(GPT(TINY, seed=0), None, args, train_dataset=PAIRS, **tokenizers)
        if kind == "reward":
            return RewardTrainer(RewardModel(TINY), args, train_dataset=PAIRS, **tokenizers)
        return SFTTrainer(GPT(TINY, seed=0), args, train_dataset=[{"prompt": "ab", "response": "c"}], **tokenizers)

    assert make(processing_class=TOK).train_features == make(tokenizer=TOK).train_features
    assert make(processing_class=TOK, tokenizer=CharTokenizer.from_corpus(format_prompt("") + "abc")).tokenizer == TOK
    with pytest.raises(ValueError, match="tokenizer and processing_class are two names for one argument"):
        make(processing_class=TOK, tokenizer=CharTokenizer.from_corpus(format_prompt("") + "abcd"))
