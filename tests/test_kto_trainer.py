"""KTOTrainer on unpaired {"prompt", "completion", "label"} lines: the data rules, the step-0 closed form, every
logged value against a computation that shares none of the trainer's code (one unpadded forward per row),
the end-to-end gradient against central differences, and the arguments it refuses."""

import json
import math

import numpy as np
import pytest

from dpo_np.data import format_prompt, load_unpaired, tokenize_unpaired
from dpo_np.gradcheck import parameter_gradient_errors
from dpo_np.kto_trainer import KTOConfig, KTOTrainer
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import CharTokenizer

EXAMPLES = [{"prompt": "ab", "completion": "abc", "label": True},
            {"prompt": "cab", "completion": "b", "label": False},
            {"prompt": "a", "completion": "cca", "label": True},
            {"prompt": "bca", "completion": "aab", "label": False},
            {"prompt": "cc", "completion": "bcab", "label": True},
            {"prompt": "ba", "completion": "c", "label": False}]
EVAL = [{"prompt": "ac", "completion": "ba", "label": True}, {"prompt": "b", "completion": "c", "label": False},
        {"prompt": "cb", "completion": "abca", "label": False}]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
BETA = 0.4


def _trainer(tmp_path, ref_seed=None, dtype=np.float64, **kw):
    args = dict(output_dir=str(tmp_path / "run"), max_length=18, max_prompt_length=12, show_progress=False,
                per_device_train_batch_size=3, per_device_eval_batch_size=2, learning_rate=2e-2, beta=BETA,
                save_at_end=False, desirable_weight=1.3, undesirable_weight=0.8)
    args.update(kw)
    ref = None if ref_seed is None else GPT(TINY, seed=ref_seed, dtype=dtype)
    return KTOTrainer(GPT(TINY, seed=0, dtype=dtype), ref, args=args, train_dataset=EXAMPLES, eval_dataset=EVAL,
                      tokenizer=TOK)


def sequence_logp(model, prompt_ids, completion_ids):
    """log π(y|x) from ONE forward of x ⊕ y alone: the log-softmax of each position predicting y, summed."""
    ids = np.array([list(prompt_ids) + list(completion_ids)])
    z = model.forward(ids, cache=False)[0][len(prompt_ids) - 1:-1].astype(np.float64)
    logp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    return float(logp[np.arange(len(completion_ids)), completion_ids].sum())


def expected(trainer, features):
    """KTO on these examples, from the paper: z_ref from x_i ⊕ y_{i−1} (cyclically), then λ − v per example."""
    a, policy, ref = trainer.args, trainer.model, trainer.ref_model
    lp = np.array([sequence_logp(policy, f["prompt_ids"], f["completion_ids"]) for f in features])
    lr = np.array([sequence_logp(ref, f["prompt_ids"], f["completion_ids"]) for f in features])
    shifted = [(f["prompt_ids"], features[i - 1]["completion_ids"]) for i, f in enumerate(features)]
    z = max(0.0, float(np.mean([sequence_logp(policy, *s) - sequence_logp(ref, *s) for s in shifted])))
    good = np.array([f["label"] for f in features])
    rho = lp - lr
    sig = lambda v: 1 / (1 + np.exp(-v))                                            # noqa: E731
    losses = np.where(good, a.desirable_weight * (1 - sig(a.beta * (rho - z))),
                      a.undesirable_weight * (1 - sig(a.beta * (z - rho))))
    rewards = a.beta * rho
    return {"losses": losses, "loss": losses.mean(), "kl": z, "rewards/chosen": rewards[good].mean(),
            "rewards/rejected": rewards[~good].mean(), "rewards/margins": rewards[good].mean() - rewards[~good].mean(),
            "logps/chosen": lp[good].mean(), "logps/rejected": lp[~good].mean()}


# -- the data -------------------------------------------------------------------------------------

def test_unpaired_lines_load_with_boolean_labels_and_bad_ones_are_named_by_line(tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in EXAMPLES) + "\n")
    assert load_unpaired(str(path)) == EXAMPLES
    for bad, message in (({"prompt": "a", "completion": "b", "label": 1}, "'label' must be true or false, got int"),
                         ({"prompt": "a", "completion": "b"}, "missing key 'label'"),
                         ({"prompt": "a", "completion": " ", "label": True}, "'completion' is empty")):
        path.write_text(json.dumps(EXAMPLES[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=f"kto.jsonl:2: {message}"):
            load_unpaired(str(path))
    records, report = load_unpaired(EXAMPLES + [EXAMPLES[0], {"prompt": "a", "completion": "b", "label": "yes"}],
                                    skip_invalid=True)
    assert records == EXAMPLES and report["skipped"] == {"duplicate": 1, "not_a_boolean": 1}


def test_prompt_and_completion_are_tokenized_separately_and_the_label_is_kept():
    f = tokenize_unpaired(TOK, EXAMPLES[1], 18, 12)
    assert f["prompt_ids"] == TOK.encode(format_prompt("cab")) and f["label"] is False
    assert f["completion_ids"] == TOK.encode("b") + [TOK.eos_token_id]


# -- values --------------------------------------------------------------------------------------------

def test_at_step0_every_log_ratio_and_z_ref_is_zero_and_each_loss_is_half_its_weight(tmp_path):
    trainer = _trainer(tmp_path)                                   # π_ref: a frozen copy of π_θ
    out = trainer.batch_outputs(np.arange(len(EXAMPLES)))
    good = np.array([r["label"] for r in EXAMPLES])
    assert out["kl"] == 0.0 and np.all(out["rewards"] == 0)
    np.testing.assert_allclose(out["losses"], np.where(good, 1.3, 0.8) / 2, rtol=1e-14)


def test_every_logged_value_and_the_evaluation_match_an_independent_computation(tmp_path):
    trainer = _trainer(tmp_path, ref_seed=5, max_steps=4)
    seen = []
    original = trainer.training_step

    def step(idx):
        seen.append(expected(trainer, [trainer.train_features[int(i)] for i in idx]))
        return original(idx)

    trainer.training_step = step
    trainer.train()
    rows = [r for r in trainer.state["log_history"] if "loss" in r]
    assert len(rows) == len(seen) == 4
    for row, want in zip(rows, seen):
        for key in ("loss", "kl") + tuple(k for k in want if "/" in k and k in row):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert any(r["kl"] > 0 for r in rows) and rows[-1]["loss"] != rows[0]["loss"]
    # the evaluation: batches of 2 and 1, the lone last example joined to the batch before it
    want = expected(trainer, trainer.eval_features)
    got = trainer.evaluate()
    assert got["eval/loss"] == pytest.approx(want["loss"], rel=1e-9) and got["eval/kl"] == pytest.approx(want["kl"])


def test_the_kto_gradient_matches_central_differences_for_every_parameter(tmp_path):
    trainer = _trainer(tmp_path, ref_seed=7)
    idx = np.arange(4)
    trainer.model.zero_grad()
    z = trainer.batch_outputs(idx, backward=True)["kl"]
    assert z > 0                                                    # not the clipped, constant case
    analytic = {k: g.copy() for k, g in trainer.model.grads.items()}
    # z_ref is a constant of the step (no gradient flows through it), so the differences hold it too
    errors = parameter_gradient_errors(trainer.model.params, analytic,
                                       lambda: trainer.batch_outputs(idx, reference_point=z)["loss"])
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert sum(float(np.abs(g).sum()) for g in analytic.values()) > 0


def test_kto_learns_to_raise_the_desirable_and_lower_the_undesirable(tmp_path):
    trainer = _trainer(tmp_path, max_steps=30, learning_rate=3e-2, per_device_train_batch_size=6)
    trainer.train()
    last = trainer.state["log_history"][-1]
    assert last["rewards/chosen"] > 0 > last["rewards/rejected"] and math.isfinite(last["loss"])


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="per_device_train_batch_size must be at least 2"):
        KTOConfig(per_device_train_batch_size=1)
    with pytest.raises(ValueError, match="undesirable_weight"):
        KTOConfig(undesirable_weight=0.0)
    with pytest.raises(TypeError, match="unknown KTOConfig field"):
        _trainer(tmp_path, loss_type="sigmoid")
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="at least 2 examples"):
        trainer.batch_outputs(np.arange(1))
