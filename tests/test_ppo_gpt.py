"""RLHF with PPO on the GPT: the per-token backward and the PPO gradient through the model against
central differences, the loss and the advantages computed again by hand, the first update's exact
ratio of 1, learning a known rule, and the quick run end to end (deterministic, JSON, the CLI)."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from dpo_np import autograd as ag
from dpo_np import logprobs, rl
from dpo_np.cli import blas_threads, main
from dpo_np.data import format_prompt
from dpo_np.experiments.evaluation import sample_responses
from dpo_np.experiments import ppo_gpt as pg
from dpo_np.gradcheck import parameter_gradient_errors, relative_error
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW
from dpo_np.tokenizer import CharTokenizer
from dpo_np.training import frozen_copy

TOK = CharTokenizer.from_corpus(format_prompt("") + "abc")
TINY = GPTConfig(vocab_size=TOK.vocab_size, block_size=18, n_layer=1, n_head=2, n_embd=8)
# two prompts × K = 2 responses of different lengths (so rows pad differently), each ending with eos
GROUPS = {"ab": ("abc", "c"), "cab": ("b", "bacca")}
K = 2
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _samples():
    return [(TOK.encode(format_prompt(x)), TOK.encode(y) + [TOK.eos_token_id]) for x, ys in GROUPS.items() for y in ys]


def _batch():
    return pg.rollout_batch(_samples(), TOK.pad_token_id)


def _setup(seed=0):
    """A float64 policy, a different π_ref, and a batch with scores and π_old ≠ π_θ: ratios on both
    sides of the clip range, so clipped (zero-gradient) and unclipped terms both occur."""
    rng = np.random.default_rng(seed)
    policy, ref = GPT(TINY, seed=0, dtype=np.float64), GPT(TINY, seed=3, dtype=np.float64)
    batch = _batch()
    lp, mask = pg.response_logps(policy, batch)
    old = np.where(mask, lp + rng.normal(0.0, 0.2, lp.shape), 0.0)
    ref_lp, _ = pg.response_logps(ref, batch)
    scores = rng.normal(0.0, 1.0, len(_samples()))
    return policy, batch, old, ref_lp, mask, scores


# ---- the per-token log-probabilities and their backward ----------------------------------------

def test_token_logps_backward_matches_central_differences_with_a_random_upstream():
    rng = np.random.default_rng(0)
    batch = _batch()
    logits = rng.normal(size=batch["input_ids"].shape + (TOK.vocab_size,))
    _, mask, cache = logprobs.token_logps_forward(logits, batch["labels"])
    upstream = rng.normal(size=mask.shape)
    analytic = logprobs.token_logps_backward(upstream, cache)
    numeric = np.zeros_like(logits)
    flat = logits.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + 1e-5
        up = (logprobs.token_logps_forward(logits, batch["labels"])[0] * upstream).sum()
        flat[i] = saved - 1e-5
        down = (logprobs.token_logps_forward(logits, batch["labels"])[0] * upstream).sum()
        flat[i] = saved
        numeric.reshape(-1)[i] = (up - down) / 2e-5
    assert relative_error(analytic, numeric) < 1e-7
    assert np.all(analytic[:, -1, :] == 0)                      # the last logits score no label


def test_token_logps_sum_to_the_notes_sequence_logps_and_hold_zero_off_the_response():
    from dpo_np.logprobs import get_batch_logps
    rng = np.random.default_rng(1)
    batch = _batch()
    logits = rng.normal(size=batch["input_ids"].shape + (TOK.vocab_size,))
    lp, mask, _ = logprobs.token_logps_forward(logits, batch["labels"])
    assert np.all(lp[~mask] == 0)
    np.testing.assert_allclose(lp.sum(axis=1), get_batch_logps(logits, batch["labels"]), rtol=1e-12)
    assert list(mask.sum(axis=1)) == [len(r) for _, r in _samples()]


# ---- the PPO gradient through the hand-written backward ------------------------------------------

def test_ppo_gradient_through_model_backward_matches_central_differences_for_every_parameter():
    policy, batch, old, ref_lp, mask, scores = _setup()
    adv = pg.token_advantages(scores, old, ref_lp, mask, beta=0.5, group_size=K)["advantages"]
    policy.zero_grad()
    out = pg.ppo_loss(policy, batch, old, adv, clip_eps=0.2, backward=True)
    assert 0.0 < out["clip_fraction"] < 1.0                      # both kinds of term are in the check
    analytic = {k: g.copy() for k, g in policy.grads.items()}
    errors = parameter_gradient_errors(policy.params, analytic,
                                       lambda: pg.ppo_loss(policy, batch, old, adv, clip_eps=0.2)["loss"])
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert sum(float(np.abs(g).sum()) for g in analytic.values()) > 0


# ---- the values, computed again by hand -----------------------------------------------------------

def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _by_hand(policy, samples, old, ref_lp, scores, beta, eps, leave_one_out):
    """The advantages and L^CLIP with loops over responses and tokens, from the model's logits alone."""
    n = len(samples)
    adv_rows, terms = [], []
    totals = [scores[i] - beta * sum(old[i][t] - ref_lp[i][t] for t in range(len(samples[i][1]))) for i in range(n)]
    for i, (p, r) in enumerate(samples):
        logits = policy.forward(np.array([p + r]), cache=False)[0]
        others = [totals[j] for j in range(i - i % K, i - i % K + K) if j != i or not leave_one_out]
        b = sum(others) / len(others)
        row, total = [], 0.0
        for t in range(len(r)):
            lp = _log_softmax(logits[len(p) + t - 1])[r[t]]             # log π_θ(y_t | x, y_<t)
            penalty_to_go = sum(-beta * (old[i][k] - ref_lp[i][k]) for k in range(t, len(r)))
            a = penalty_to_go + scores[i] - b                          # the score sits on the last token
            rho = math.exp(lp - old[i][t])
            total += min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
            row.append(a)
        adv_rows.append(row)
        terms.append(total)
    return adv_rows, -sum(terms) / n


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_ppo_loss_and_advantages_equal_a_computation_by_hand(leave_one_out):
    policy, batch, old, ref_lp, mask, scores = _setup(seed=2)
    samples, beta, eps = _samples(), 0.3, 0.2
    out = pg.token_advantages(scores, old, ref_lp, mask, beta, K, leave_one_out)
    # per-response lists of π_old and π_ref log-probs over the response tokens, in order
    old_rows = [list(old[i][mask[i]]) for i in range(len(samples))]
    ref_rows = [list(ref_lp[i][mask[i]]) for i in range(len(samples))]
    adv_rows, loss = _by_hand(policy, samples, old_rows, ref_rows, scores, beta, eps, leave_one_out)
    for i in range(len(samples)):
        np.testing.assert_allclose(out["advantages"][i][mask[i]], adv_rows[i], rtol=1e-12, atol=1e-12)
    assert np.all(out["advantages"][~mask] == 0)
    value = pg.ppo_loss(policy, batch, old, out["advantages"], eps)["loss"]
    assert value == pytest.approx(loss, rel=1e-12, abs=1e-12)


def test_the_per_token_penalties_sum_to_the_sequence_penalized_reward():
    _, _, old, ref_lp, mask, scores = _setup(seed=4)
    out = pg.token_advantages(scores, old, ref_lp, mask, 0.7, K)
    np.testing.assert_allclose(out["totals"], rl.kl_penalized_reward(scores, old.sum(1), ref_lp.sum(1), 0.7),
                               rtol=1e-12)
    first = mask.argmax(axis=1)                                  # G at the first response token is the total
    np.testing.assert_allclose(out["returns"][np.arange(len(first)), first], out["totals"], rtol=1e-12)


# ---- the first update: ρ = 1 exactly, so PPO's gradient is the policy gradient ---------------------

def _rule_scorer(token):
    """A known reward: the fraction of a response's tokens that are ``token``."""
    return lambda samples: np.array([sum(t == token for t in r) / len(r) for _, r in samples], dtype=np.float64)


def test_at_the_first_update_of_a_batch_the_ratio_is_exactly_one_and_the_step_is_the_policy_gradient():
    policy, batch, _, ref_lp, mask, scores = _setup(seed=5)
    old, _ = pg.response_logps(policy, batch)                      # π_old = π_θ: the batch was just sampled
    adv = pg.token_advantages(scores, old, ref_lp, mask, 0.5, K)["advantages"]
    policy.zero_grad()
    out = pg.ppo_loss(policy, batch, old, adv, 0.2, backward=True)
    assert out["ratio_min"] == out["ratio_max"] == 1.0 and out["clip_fraction"] == 0.0
    # the clipped objective equals the unclipped one, −(1/N) Σ ρÂ with ρ = 1
    assert out["loss"] == pytest.approx(-adv.sum() / len(adv), rel=1e-12, abs=1e-15)
    ppo_grads = {k: g.copy() for k, g in policy.grads.items()}
    # the REINFORCE estimate, −(1/N) Σ Â ∇ log π_θ, through the same seam
    policy.zero_grad()
    logits = policy.forward(batch["input_ids"], batch["attention_mask"])
    lp, mask, cache = logprobs.token_logps_forward(logits, batch["labels"])
    pi = ag.Tensor(lp, requires_grad=True)
    rl.reinforce_loss(pi, adv, mask=mask).backward()
    policy.backward(logprobs.token_logps_backward(pi.grad, cache))
    for k, g in policy.grads.items():
        np.testing.assert_allclose(ppo_grads[k], g, rtol=1e-10, atol=1e-13, err_msg=k)


def test_a_ppo_iteration_samples_scores_and_starts_each_batch_at_ratio_one():
    policy, reference = GPT(TINY, seed=0), GPT(TINY, seed=0)
    cfg = dict(pg.QUICK, group_size=3, beta=0.1, max_new_tokens=4)
    a = TOK.encode("a")[0]
    out = pg.ppo_iteration(policy, reference, _rule_scorer(a), AdamW(policy.params, lr=1e-2), TOK,
                           ["ab", "c"], cfg, seed=0, lrs=[1e-2, 1e-2, 1e-2])
    first, later = out["updates"][0], out["updates"][1:]
    assert first["ratio_min"] == first["ratio_max"] == 1.0 and first["approx_kl_old"] == 0.0
    assert all(u["ratio_min"] < 1.0 < u["ratio_max"] for u in later)        # the updates moved π_θ off π_old
    assert out["log_ratio_ref"] == 0.0 and 1 <= out["length"] <= 4          # π_old = π_ref at the start


@pytest.mark.parametrize("group_mean", [False, True])
def test_a_ppo_iteration_uses_the_baseline_its_config_names(group_mean):
    """cfg["group_mean"] picks the plain group mean (GRPO's centring) over the leave-one-out baseline; at
    the first update ρ = 1, so the loss is −(1/N) Σ Â of the advantages that baseline gives, computed
    here again from the same samples, and the other baseline's loss differs."""
    a = TOK.encode("a")[0]
    cfg = dict(pg.QUICK, group_size=3, beta=0.1, max_new_tokens=4, group_mean=group_mean)
    policy, reference = GPT(TINY, seed=0, dtype=np.float64), GPT(TINY, seed=1, dtype=np.float64)
    start = frozen_copy(policy)
    out = pg.ppo_iteration(policy, reference, _rule_scorer(a), AdamW(policy.params, lr=1e-2), TOK,
                           ["ab", "c"], cfg, seed=0, lrs=[1e-2])
    samples = sample_responses(start, TOK, ["ab", "c"], 3, 0, 4)              # the same draws
    batch = pg.rollout_batch(samples, TOK.pad_token_id)
    old, mask = pg.response_logps(start, batch)
    ref, _ = pg.response_logps(reference, batch)
    loss = {loo: -pg.token_advantages(_rule_scorer(a)(samples), old, ref, mask, 0.1, 3, loo)["advantages"].sum()
            / len(samples) for loo in (True, False)}
    assert out["updates"][0]["loss"] == pytest.approx(loss[not group_mean], rel=1e-10, abs=1e-14)
    assert loss[True] != pytest.approx(loss[False], rel=1e-6)


def test_ppo_raises_a_known_reward_on_a_tiny_problem_while_the_kl_stays_finite():
    # the reward is a rule (the fraction of 'a' tokens): nothing learned stands between PPO and the truth
    policy, reference = GPT(TINY, seed=1), GPT(TINY, seed=1)
    a = TOK.encode("a")[0]
    scorer = _rule_scorer(a)
    cfg = dict(pg.QUICK, ppo_steps=15, prompts_per_step=2, group_size=8, ppo_epochs=4, ppo_lr=1e-2, ppo_warmup=0,
               beta=0.05, max_new_tokens=4, ppo_eval_every=15)

    def measure(model):
        m = pg.measure_policy(model, reference, scorer, TOK, ["ab", "c", "ba"], 16, seed=9, max_new_tokens=4,
                              judge=False)
        return {"reward": m["reward"], "kl": m["kl"]}

    history = pg.train_ppo(policy, reference, scorer, TOK, ["ab", "c", "ba", "cab"], cfg, seed=0, measure=measure)
    start, end = history["measured"][0], history["measured"][-1]
    assert start["kl"] == 0.0
    assert end["reward"] > start["reward"] + 0.3, (start, end)
    assert 0.0 < end["kl"] < 20.0


# ---- the quick run end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def command_threads():
    """Every run here at the BLAS thread count the command runs at, so a run in this process and the
    same run through ``main`` agree to the last bit."""
    with blas_threads(None):
        yield


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_gpt")
    printed = []
    result = pg.run_ppo_gpt(seed=0, quick=True, output_dir=str(root / "a"), show_progress=False,
                            print_fn=printed.append)
    return result, "\n".join(printed), root


def _numbers(result):
    return {k: v for k, v in result.items() if k not in ("models", "seconds", "figure")}


def test_quick_run_is_deterministic_for_a_seed_and_json_serializable(quick):
    result, _, root = quick
    again = pg.run_ppo_gpt(seed=0, quick=True, output_dir=str(root / "b"), show_progress=False,
                           print_fn=lambda *_: None, figure=False)
    assert _numbers(again) == _numbers(result)
    text = json.dumps({k: v for k, v in result.items() if k != "models"}, allow_nan=False)
    assert json.loads(text)["config"]["seed"] == 0


def test_quick_run_measures_both_methods_from_the_same_reference(quick):
    result, printed, _ = quick
    ppo, dpo, cfg = result["ppo"], result["dpo"], result["config"]
    assert ppo["step"] == [0, 2, 4] and dpo["step"] == [0, 2, 4]
    # both start at π_ref, measured on the same prompts from the same seed: the same numbers, KL exactly 0
    assert {k: v[0] for k, v in ppo.items() if k != "train"} == {k: v[0] for k, v in dpo.items() if k != "train"}
    assert ppo["kl"][0] == 0.0 and ppo["kl"][-1] > 0 and dpo["kl"][-1] > 0
    assert ppo["train"]["first_ratio_min"] == ppo["train"]["first_ratio_max"] == [1.0] * cfg["ppo_steps"]
    assert len(dpo["train"]["loss"]) == cfg["dpo_steps"]
    assert result["held_out"]["sampled"]["sft"]["kl"] == 0.0
    for prompt, a in result["answers"].items():
        assert f"Q: {prompt}" in printed
        assert {a[m + "_is"] for m in ("sft", "ppo", "dpo")} <= {"chosen", "preferred", "rejected", "neither"}
    assert all(math.isfinite(s) and s >= 0 for s in result["seconds"].values())


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="needs matplotlib")
def test_quick_run_draws_reward_and_kl_for_ppo_beside_dpo(quick):
    result, _, root = quick
    assert result["figure"] and os.path.getsize(result["figure"]) > 0
    path = pg.plot_ppo_gpt(result, str(root / "again.png"))
    assert os.path.getsize(path) > 0


def test_the_command_runs_the_quick_configuration_from_a_checkpoint_and_writes_its_numbers(quick, tmp_path, capsys):
    _, _, root = quick
    out, checkpoint = tmp_path / "numbers.json", str(root / "a" / "sft" / "final")
    code = main(["ppo-gpt", "--quick", "--seed", "1", "--quiet", "--json", str(out), "--sft-checkpoint", checkpoint,
                 "--output-dir", str(tmp_path / "run"), "--no-figure"])
    assert code == 0
    numbers = json.loads(out.read_text())
    assert numbers["command"] == "ppo-gpt" and numbers["config"]["seed"] == 1
    assert numbers["config"]["sft_checkpoint"] == checkpoint and not os.path.exists(tmp_path / "run" / "sft")
    assert len(numbers["ppo"]["reward"]) == len(numbers["ppo"]["kl"]) == 3
    assert "greedy answers" in capsys.readouterr().out
    # the same directory again is refused by name, not overwritten (and the figure is on by default)
    assert main(["ppo-gpt", "--quick", "--quiet", "--output-dir", str(tmp_path / "run")]) == 2
    assert "already holds an earlier ppo-gpt run" in capsys.readouterr().err


def test_the_quick_run_states_its_budgets_and_checks_for_reward_hacking_along_training(quick):
    result, printed, _ = quick
    cfg, b = result["config"], result["budget"]
    # QUICK: 4 iterations of 4 prompts × 2 samples, 2 updates each; DPO 4 steps of 8 pairs
    assert b["ppo"] == {"iterations": 4, "reward_queries": 4 * 4 * 2, "updates": 4 * 2,
                        "train_prompts": b["ppo"]["train_prompts"]} and b["ppo"]["train_prompts"] >= 4
    assert b["dpo"]["updates"] == cfg["dpo_steps"] == 4 and b["dpo"]["pairs_seen"] == 4 * 8
    assert b["reward_model"]["distinct_pairs"] == b["dpo"]["distinct_pairs"] > 0      # r_φ fit on DPO's pairs
    assert 1 <= b["reward_model"]["steps"] <= cfg["rm_steps"]
    for name in ("ppo", "dpo"):
        assert result["reward_hacking"][name] == pg.reward_hacking(result[name])
        assert result[name]["samples"] == [cfg["eval_prompts"] * cfg["eval_samples"]] * 3
    assert "budgets: PPO 32 r_φ queries, 8 updates; DPO 32 pairs seen" in printed
    assert printed.count("not reward hacking by this test") == 2


# ---- reward hacking: r_φ up while the judge's share of y_w's rule goes down -------------------------

def _curve(preferred, reward, reward_stderr=0.05, samples=64):
    n = len(preferred)
    return {"step": [5 * i for i in range(n)], "reward": list(reward), "reward_stderr": [reward_stderr] * n,
            "judge": [{"preferred": p, "rejected": 0.0, "neither": 1 - p} for p in preferred], "samples": [samples] * n}


def test_reward_hacking_is_measured_from_the_judges_highest_point_to_the_end():
    # the judge first rises (0.2 → 0.6) and then falls to 0.3 while r_φ keeps rising: from the start the
    # judge gained, so only a check from its highest point sees the over-optimization
    h = pg.reward_hacking(_curve([0.2, 0.6, 0.3], [0.0, 1.0, 2.0]))
    assert (h["peak_step"], h["end_step"]) == (5, 10)
    assert h["preferred_fall"] == pytest.approx(0.3) and h["reward_rise"] == pytest.approx(1.0)
    assert h["preferred_fall_stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 64 + 0.3 * 0.7 / 64), rel=1e-12)
    assert h["reward_rise_stderr"] == pytest.approx(0.05 * math.sqrt(2), rel=1e-12)
    assert h["flagged"]


@pytest.mark.parametrize("preferred, reward", [
    ([0.2, 0.4, 0.6], [0.0, 1.0, 2.0]),        # both rise: the proxy and the gold agree
    ([0.6, 0.3, 0.3], [0.0, 0.0, 0.0]),        # the judge falls, r_φ does not move
    ([0.3, 0.3, 0.3], [0.0, 1.0, 2.0]),        # r_φ rises, the judge does not move
    ([0.6, 0.4, 0.3], [2.0, 1.0, 0.0]),        # both fall
    ([0.0, 0.0, 0.0], [0.0, 1.0, 2.0]),        # a share of 0 throughout: no fall, standard error 0
])
def test_reward_hacking_needs_r_phi_up_and_the_judge_down_together(preferred, reward):
    assert not pg.reward_hacking(_curve(preferred, reward))["flagged"]


def test_reward_hacking_flags_exactly_above_z_standard_errors_of_each_change():
    curve = _curve([0.6, 0.45], [0.0, 0.2])
    h = pg.reward_hacking(curve)
    fall_z, rise_z = h["preferred_fall"] / h["preferred_fall_stderr"], h["reward_rise"] / h["reward_rise_stderr"]
    assert 1.5 < fall_z < rise_z                                # the judge's fall is the binding edge here
    assert pg.reward_hacking(curve, z=fall_z * (1 - 1e-9))["flagged"]
    assert not pg.reward_hacking(curve, z=fall_z * (1 + 1e-9))["flagged"]
    steep = _curve([0.9, 0.1], [0.0, 0.2])                      # now r_φ's rise is the binding edge
    h = pg.reward_hacking(steep)
    rise_z = h["reward_rise"] / h["reward_rise_stderr"]
    assert rise_z < h["preferred_fall"] / h["preferred_fall_stderr"]
    assert pg.reward_hacking(steep, z=rise_z * (1 - 1e-9))["flagged"]
    assert not pg.reward_hacking(steep, z=rise_z * (1 + 1e-9))["flagged"]


def test_reward_hacking_refuses_a_ragged_or_empty_curve():
    curve = _curve([0.5, 0.4], [0.0, 1.0])
    curve["samples"] = [64]
    with pytest.raises(ValueError, match="equally long"):
        pg.reward_hacking(curve)
    with pytest.raises(ValueError, match="equally long"):
        pg.reward_hacking(_curve([], []))
    with pytest.raises(ValueError, match="z"):
        pg.reward_hacking(_curve([0.5], [0.0]), z=0)


# ---- several seeds -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeds_run(quick, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_gpt_seeds")
    path = root / "seeds.json"
    assert main(["ppo-gpt", "--quick", "--seeds", "0,1", "--quiet", "--no-figure", "--json", str(path),
                 "--output-dir", str(root / "run")]) == 0
    one = pg.run_ppo_gpt(seed=1, quick=True, output_dir=str(root / "one"), show_progress=False,
                         print_fn=lambda *_: None, figure=False)
    return json.loads(path.read_text()), {0: quick[0], 1: one}, root


def test_seeds_json_holds_every_method_and_split_per_seed_with_the_judge(seeds_run):
    numbers, _, root = seeds_run
    assert numbers["command"] == "ppo-gpt" and numbers["seeds"] == [0, 1]
    assert [row["seed"] for row in numbers["per_seed"]] == [0, 1]
    for row in numbers["per_seed"]:
        for method in ("reference", "ppo", "dpo"):
            for split in ("train", "held_out"):
                m = row[method][split]
                assert {"reward", "reward_stderr", "kl", "kl_stderr", "judge", "length", "samples"} <= set(m)
                assert set(m["judge"]) == {"preferred", "rejected", "neither"}
                assert sum(m["judge"].values()) == pytest.approx(1.0)
        assert row["reference"]["train"]["kl"] == row["reference"]["held_out"]["kl"] == 0.0
        assert set(row["reward_hacking"]) == {"ppo", "dpo"} and set(row["budget"]) == {"ppo", "dpo", "reward_model"}
    assert {os.path.basename(p) for p in (root / "run").iterdir()} == {"seed-0", "seed-1"}
    assert len(numbers["runs"]) == 2 and numbers["reward_hacking"] == {"ppo": [], "dpo": []}


def test_each_seeds_row_is_what_a_single_seed_run_gives(seeds_run):
    numbers, single, _ = seeds_run
    for row, seed in zip(numbers["per_seed"], (0, 1)):
        r = single[seed]
        assert row["ppo"]["train"]["reward"] == r["ppo"]["reward"][-1]
        assert row["ppo"]["train"]["kl"] == r["ppo"]["kl"][-1]
        assert row["dpo"]["train"]["judge"] == r["dpo"]["judge"][-1]
        assert row["reference"]["train"]["reward"] == r["ppo"]["reward"][0] == r["dpo"]["reward"][0]
        for method, name in (("reference", "sft"), ("ppo", "ppo"), ("dpo", "dpo")):
            assert row[method]["held_out"] == r["held_out"]["sampled"][name]
        assert row["reward_hacking"] == r["reward_hacking"] and row["budget"] == r["budget"]
        assert numbers["runs"][seed]["ppo"] == r["ppo"]


def test_the_seeds_spread_and_paired_differences_come_from_the_rows(seeds_run):
    numbers, _, _ = seeds_run
    rows = numbers["per_seed"]
    for key, values in (("ppo.train.reward", [r["ppo"]["train"]["reward"] for r in rows]),
                        ("dpo.held_out.judge.preferred", [r["dpo"]["held_out"]["judge"]["preferred"] for r in rows]),
                        ("ppo_minus_dpo.held_out.kl", [r["ppo"]["held_out"]["kl"] - r["dpo"]["held_out"]["kl"]
                                                       for r in rows])):
        s = numbers["spread"][key]
        assert s["n"] == 2 and s["mean"] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-15)
        assert s["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12, abs=1e-15)
        assert (s["min"], s["max"]) == (min(values), max(values))
    assert "| 1 |" in numbers["table"] and "held-out prompts" in numbers["table"]
    assert numbers["table"].count("not reward hacking by this test") == 4


@pytest.mark.parametrize("extra, message", [
    (["--seed", "1"], "--seeds runs every seed it names, so --seed would change nothing"),
    (["--sft-checkpoint", "somewhere"], "--sft-checkpoint and --seeds"),
    (["--seeds", "2-1"], "--seeds: the range 2-1 runs backwards"),
])
def test_ppo_gpt_refuses_what_seeds_cannot_mean_before_anything_runs(extra, message, tmp_path, capsys):
    seeds = [] if "--seeds" in extra else ["--seeds", "0-1"]
    assert main(["ppo-gpt", "--quick", *seeds, *extra, "--quiet", "--output-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_seed_directory_of_an_earlier_run_is_refused(seeds_run, capsys):
    _, _, root = seeds_run
    assert main(["ppo-gpt", "--quick", "--seeds", "1-2", "--quiet", "--output-dir", str(root / "run")]) == 2
    assert "already holds an earlier ppo-gpt run" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="needs matplotlib")
def test_the_seeds_figure_draws_every_seeds_curves(seeds_run, tmp_path):
    numbers, _, _ = seeds_run
    path = pg.plot_ppo_gpt(numbers, str(tmp_path / "seeds.png"))
    assert os.path.getsize(path) > 0
