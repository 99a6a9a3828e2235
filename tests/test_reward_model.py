"""The Bradley–Terry reward model: its gradient (scalar head → model.backward_body) against central
differences, the reward read at the last real token whatever the padding, initialisation from an
SFT policy, checkpoints, and held-out pair accuracy above chance after a short run."""


import numpy as np
import pytest

from dpo_np.experiments import toy_preferences
from dpo_np.data import collate_preferences, format_prompt, tokenize_preference
from dpo_np.gradcheck import parameter_gradient_errors, relative_error
from dpo_np.model import GPT, GPTConfig
from dpo_np.reward_model import RewardModel, RewardTrainer, load_reward_model, score_backward, score_forward
from dpo_np.rlhf import bradley_terry_loss
from dpo_np.tokenizer import CharTokenizer
from helpers import binomial_critical_accuracy
from dpo_np.training import read_metrics

PAIRS = [
    {"prompt": "ab", "chosen": "abc", "rejected": "c"},
    {"prompt": "cab", "chosen": "b", "rejected": "bacca"},
    {"prompt": "a", "chosen": "cc", "rejected": "ab"},
]
TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)


def _batch(pairs=PAIRS):
    return collate_preferences([tokenize_preference(TOK, p, 18, 12) for p in pairs], TOK.pad_token_id)


def test_reward_model_gradient_matches_central_differences_for_every_parameter():
    rm = RewardModel(TINY, seed=0, dtype=np.float64)
    rm.head["score.weight"][...] = np.random.default_rng(1).normal(size=TINY.n_embd)   # a head that matters
    rm.head["score.bias"][...] = 0.3
    batch = _batch()                           # 2B = 6 right-padded rows of different lengths
    B = len(PAIRS)

    def loss():
        r = rm.forward(batch["input_ids"], batch["attention_mask"], cache=False)
        return float(bradley_terry_loss(r[:B], r[B:]))

    from dpo_np.autograd import Tensor
    rm.zero_grad()
    r = Tensor(rm.forward(batch["input_ids"], batch["attention_mask"]), requires_grad=True)
    bradley_terry_loss(r[:B], r[B:]).backward()
    rm.backward(r.grad)
    # r(x, y) + c leaves σ(r_w − r_l) unchanged, so the bias gets no gradient at all (the same reason
    # β log Z(x) cancels in DPO); its finite differences are pure rounding noise, checked apart
    assert abs(float(rm.grads["score.bias"][0])) < 1e-12
    errors = parameter_gradient_errors(rm.params, rm.grads, loss, skip=("score.bias",))
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert np.abs(rm.grads["h.0.attn.c_attn.weight"]).sum() > 0       # the gradient reached the body


def test_score_head_backward_matches_central_differences_with_a_random_upstream():
    rng = np.random.default_rng(2)
    h, w, b = rng.normal(size=(4, 5, 3)), rng.normal(size=3), rng.normal(size=1)
    last = np.array([4, 0, 2, 3])
    dr = rng.normal(size=4)
    _, cache = score_forward(h, last, w, b)
    dh, dw, db = score_backward(dr, cache)
    for x, analytic in ((h, dh), (w, dw), (b, db)):
        numeric = np.zeros_like(x)
        for i in range(x.size):
            saved = x.reshape(-1)[i]
            x.reshape(-1)[i] = saved + 1e-5
            up = score_forward(h, last, w, b)[0] @ dr
            x.reshape(-1)[i] = saved - 1e-5
            down = score_forward(h, last, w, b)[0] @ dr
            x.reshape(-1)[i] = saved
            numeric.reshape(-1)[i] = (up - down) / 2e-5
        assert relative_error(analytic, numeric) < 1e-8


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    rm = RewardModel(TINY, seed=0, dtype=np.float64)
    batch = _batch()
    r = rm.forward(batch["input_ids"], batch["attention_mask"], cache=False)
    for row in range(6):
        n = int(batch["attention_mask"][row].sum())
        alone = rm.forward(batch["input_ids"][row:row + 1, :n], cache=False)   # unpadded, no mask
        assert alone[0] == pytest.approx(r[row], rel=1e-12, abs=1e-14)
    other_pads = batch["input_ids"].copy()
    other_pads[batch["attention_mask"] == 0] = 3                  # whatever sits in the padding
    np.testing.assert_allclose(rm.forward(other_pads, batch["attention_mask"], cache=False), r, rtol=1e-12)


def test_reward_model_initialised_from_an_sft_policy_copies_its_body():
    policy = GPT(TINY, seed=5)
    rm = RewardModel(policy, seed=0)
    for k, p in policy.params.items():
        assert np.array_equal(rm.params[k], p) and rm.params[k] is not p
    assert set(rm.params) - set(policy.params) == {"score.weight", "score.bias"}
    rm.params["wte.weight"][0, 0] += 1.0                          # training it leaves the policy alone
    assert rm.params["wte.weight"][0, 0] != policy.params["wte.weight"][0, 0]


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    kw = dict(output_dir=str(tmp_path / "rm"), max_length=18, max_prompt_length=12, show_progress=False,
              per_device_train_batch_size=2, learning_rate=1e-2, logging_steps=1)
    straight = RewardTrainer(RewardModel(TINY, seed=0), max_steps=4, save_steps=2, train_dataset=PAIRS,
                             tokenizer=TOK, **kw)
    straight.train()
    saved = load_reward_model(tmp_path / "rm" / "final")
    batch = _batch()
    np.testing.assert_array_equal(saved["model"].forward(batch["input_ids"], batch["attention_mask"], cache=False),
                                  straight.model.forward(batch["input_ids"], batch["attention_mask"], cache=False))
    kw["output_dir"] = str(tmp_path / "rm2")
    resumed = RewardTrainer(RewardModel(TINY, seed=9), max_steps=4, train_dataset=PAIRS, tokenizer=TOK, **kw)
    resumed.train(resume_from_checkpoint=tmp_path / "rm" / "checkpoint-2")
    assert resumed.state["log_history"] == [r for r in straight.state["log_history"] if r["step"] > 2]


def test_reward_model_on_toy_preferences_ranks_heldout_pairs_above_chance(tmp_path):
    tok = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    data = toy_preferences.preference_dataset(seed=0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=toy_preferences.MAX_SEQUENCE_LENGTH,
                       n_layer=2, n_head=2, n_embd=32)
    trainer = RewardTrainer(RewardModel(config, seed=0), output_dir=str(tmp_path / "rm"), max_steps=150,
                            learning_rate=3e-3, per_device_train_batch_size=8, per_device_eval_batch_size=32,
                            max_length=toy_preferences.MAX_SEQUENCE_LENGTH, max_prompt_length=64, logging_steps=10,
                            show_progress=False, train_dataset=data["train"], eval_dataset=data["eval"],
                            tokenizer=tok)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval/accuracy"] >= binomial_critical_accuracy(len(data["eval"]))
    assert metrics["eval/margin"] > 0
    rows = read_metrics(tmp_path / "rm")
    assert {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"} <= set(rows[-1])
