"""The demo end to end on a quick configuration, the KL estimator against the exact KL of
enumerated responses, and the metric figures."""

import importlib.util
import itertools
import math
import os

import numpy as np
import pytest

from dpo_np.experiments import toy_preferences
from dpo_np.data import format_prompt
from dpo_np.experiments.demo import QUICK, TABLE_ROWS, notes_verdict, run_demo
from dpo_np.experiments.evaluation import estimate_kl, per_token_kl, sample_responses
from dpo_np.logprobs import get_batch_logps
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import CharTokenizer
from dpo_np.training import frozen_copy

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# ---- the whole pipeline, quick --------------------------------------------------------------

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    printed = []
    result = run_demo(output_dir=str(root / "runs"), figures_dir=str(root / "figures"), quick=True,
                      show_progress=False, print_fn=printed.append)
    return result, "\n".join(printed), root


def test_quick_demo_prints_every_row_of_the_table_and_every_notes_prompt(quick):
    result, printed, _ = quick
    for _, label in TABLE_ROWS:
        assert label in printed and label in result["table"]
    for prompt in toy_preferences.NOTES_PROMPTS:
        assert f"Q: {prompt}" in printed
        a = result["answers"][prompt]
        for when in ("before", "after"):
            assert a[when + "_is"] == notes_verdict(prompt, a[when])
            assert a[when + "_is"] in ("chosen", "preferred", "rejected", "neither")


def test_quick_demo_prints_the_judges_counts_by_family_and_they_add_up_to_its_shares(quick):
    result, printed, _ = quick
    for side in ("before", "after"):
        judged = result[side]["judge"]
        counts = judged["by_family"].values()
        assert sum(sum(c.values()) for c in counts) == judged["n"]
        for j in toy_preferences.JUDGEMENTS:
            assert sum(c[j] for c in counts) / judged["n"] == pytest.approx(judged[j])
    for fam, ref in result["before"]["judge"]["by_family"].items():
        pol = result["after"]["judge"]["by_family"][fam]
        row = [line.split() for line in printed.splitlines() if line.strip().startswith(fam + " ")][-1]
        assert row == [fam, *" / ".join(str(ref[j]) for j in toy_preferences.JUDGEMENTS).split(),
                       *" / ".join(str(pol[j]) for j in toy_preferences.JUDGEMENTS).split(), str(sum(ref.values()))]


def test_quick_demo_reports_only_finite_numbers(quick):
    result, _, _ = quick
    for side in ("before", "after"):
        for key, _ in TABLE_ROWS:
            values = ([result[side][key][j] for j in toy_preferences.JUDGEMENTS] if key.startswith("judge")
                      else [result[side][key]])
            assert all(math.isfinite(v) for v in values), (side, key, result[side][key])
        assert math.isfinite(result[side]["kl_stderr"])
        assert result[side]["pairs"] == len(toy_preferences.preference_dataset(0)["eval"])
    assert all(math.isfinite(s) and s >= 0 for s in result["seconds"].values())


def test_before_dpo_every_implicit_reward_is_exactly_zero_and_the_loss_is_log_2(quick):
    # π_θ = π_ref at step 0, so r̂ = β(log π_θ − log π_ref) is 0 exactly, every pair a tie
    before = quick[0]["before"]
    assert np.all(before["chosen_rewards"] == 0.0) and np.all(before["rejected_rewards"] == 0.0)
    assert before["implicit_reward_ties"] == before["pairs"]
    assert before["implicit_reward_accuracy"] == 0.0 and before["implicit_reward_margin"] == 0.0
    assert before["dpo_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert before["kl"] == 0.0 and np.all(before["kl_estimate"]["per_sample"] == 0.0)


def test_after_dpo_the_policy_has_moved_from_the_reference(quick):
    after = quick[0]["after"]
    assert after["implicit_reward_ties"] < after["pairs"]
    assert after["kl"] > 0.0
    # the headline accuracy is computed from the same arrays it summarises, on the learnable families only
    held_out = toy_preferences.preference_dataset(0)["eval"]
    learnable = np.array([r["family"] in toy_preferences.LEARNABLE for r in held_out])
    wins = after["chosen_rewards"] > after["rejected_rewards"]
    assert 0 < learnable.sum() < len(held_out)
    assert after["implicit_reward_accuracy"] == np.mean(wins[learnable])
    assert after["implicit_reward_accuracy_facts"] == np.mean(wins[~learnable])


def test_family_breakdown_covers_every_held_out_pair_once(quick):
    result, printed, _ = quick
    families = result["families"]
    assert "held-out accuracy by family" in printed
    for key in ("implicit_reward", "logp_before", "logp_after", "reward_model"):
        assert set(families[key]) == set(toy_preferences.FAMILIES)
        assert sum(n for _, n in families[key].values()) == result["before"]["pairs"]
    for key, headline in (("implicit_reward", "implicit_reward_accuracy"), ("reward_model", "reward_model_accuracy")):
        wins = sum(families[key][f][0] for f in toy_preferences.LEARNABLE)
        pairs = sum(families[key][f][1] for f in toy_preferences.LEARNABLE)
        assert wins / pairs == pytest.approx(result["after"][headline], abs=1e-12)


def test_quick_demo_writes_its_runs_and_figures(quick):
    result, printed, root = quick
    for run in ("sft", "dpo", "reward"):
        assert (root / "runs" / run / "metrics.jsonl").is_file()
        assert (root / "runs" / run / "final").is_dir()
    if HAVE_MATPLOTLIB:
        names = sorted(os.path.basename(p) for p in result["figures"])
        assert names == ["dpo_metrics.png", "reward_model.png", "sft_loss.png"]
        for p in result["figures"]:
            with open(p, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert not [n for n in os.listdir(root / "figures") if n.startswith(".figure-")]
    else:
        assert result["figures"] == [] and "matplotlib is not installed" in printed


def test_run_demo_names_an_unknown_argument():
    with pytest.raises(TypeError, match="dpo_stepz"):
        run_demo(quick=True, dpo_stepz=3)
    assert set(QUICK) >= {"beta", "dpo_steps", "sft_steps", "rm_steps", "kl_samples"}


def test_figures_go_under_the_runs_output_dir_unless_asked_otherwise():
    from dpo_np.experiments.demo import _figures_dir
    assert _figures_dir(None, os.path.join("runs", "demo")) == os.path.join("runs", "demo", "figures")
    assert _figures_dir("", "runs/demo") is None and _figures_dir("elsewhere", "runs/demo") == "elsewhere"


def test_the_judge_rows_are_the_judges_verdicts_on_the_models_own_answers(quick):
    # recomputed from the stored models: the same seeded samples, decoded and judged one by one
    result = quick[0]
    models, cfg = result["models"], result["config"]
    tok = models["tokenizer"]
    prompts = list(dict.fromkeys(r["prompt"] for r in toy_preferences.preference_dataset(0)["eval"]))
    for side, model in (("before", models["reference"]), ("after", models["policy"])):
        samples = sample_responses(model, tok, prompts, cfg["kl_samples"], 0, cfg["max_new_tokens"])
        verdicts = [toy_preferences.judge(prompts[i // cfg["kl_samples"]], tok.decode(r))
                    if r and r[-1] == tok.eos_token_id else "neither" for i, (_, r) in enumerate(samples)]
        for j in toy_preferences.JUDGEMENTS:
            assert result[side]["judge"][j] == verdicts.count(j) / len(verdicts)
        greedy = result[side]["greedy_answers"]
        assert list(greedy) == prompts
        counted = [toy_preferences.judge(p, a) if a is not None else "neither" for p, a in greedy.items()]
        assert result[side]["judge_greedy"]["preferred"] == counted.count("preferred") / len(prompts)


# ---- KL(π_θ ‖ π_ref) against the exact value -------------------------------------------------

TOK = CharTokenizer.from_corpus(format_prompt("") + "ab")
PROMPT = "ab"
L = 3                                              # responses of at most L tokens


def _sharp_gpt(seed, dtype=np.float64):
    # GPT-2's init gives nearly uniform next-token distributions; a larger tied embedding and a
    # random final LayerNorm bias make peaked distributions that differ from seed to seed, so the
    # KL is large and the test has power
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8),
                seed=seed, dtype=dtype)
    model.params["wte.weight"] *= 30.0
    model.params["ln_f.bias"][:] = np.random.default_rng(seed).normal(0.0, 1.0, 8)
    return model


def _every_response(V, eos):
    """Every response a sampler capped at L tokens can return: ending at its first eos, or L tokens."""
    out = []
    for k in range(1, L + 1):
        for ys in itertools.product(range(V), repeat=k):
            if eos in ys[:-1] or (k < L and ys[-1] != eos):
                continue
            out.append(list(ys))
    return out


def _sequence_logps(model, prompt_ids, responses):
    """log π(y|x) of each response from the model's logits through ``logprobs.get_batch_logps``."""
    out = []
    for k in sorted({len(r) for r in responses}):
        rows = [r for r in responses if len(r) == k]
        ids = np.array([prompt_ids + r for r in rows])
        labels = ids.copy()
        labels[:, :len(prompt_ids)] = -100
        out += list(zip(map(tuple, rows), get_batch_logps(model.forward(ids, cache=False), labels)))
    d = dict(out)
    return np.array([d[tuple(r)] for r in responses])


@pytest.fixture(scope="module")
def exact():
    policy, ref = _sharp_gpt(1), _sharp_gpt(2)
    prompt_ids = TOK.encode(format_prompt(PROMPT))
    responses = _every_response(TOK.vocab_size, TOK.eos_token_id)
    lp, lq = _sequence_logps(policy, prompt_ids, responses), _sequence_logps(ref, prompt_ids, responses)
    return policy, ref, prompt_ids, responses, lp, lq


def test_the_enumerated_responses_carry_all_the_probability(exact):
    _, _, _, _, lp, lq = exact
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-12)
    assert np.exp(lq).sum() == pytest.approx(1.0, abs=1e-12)


def test_expected_sum_of_next_token_kls_is_the_exact_sequence_kl(exact):
    # the chain rule of KL, checked exactly: Σ_y π_θ(y) Σ_t KL_t(y_<t) = Σ_y π_θ(y) log π_θ(y)/π_ref(y)
    policy, ref, prompt_ids, responses, lp, lq = exact
    kl_exact = float(np.sum(np.exp(lp) * (lp - lq)))
    terms = per_token_kl(policy, ref, [(prompt_ids, r) for r in responses], TOK.pad_token_id)
    assert kl_exact > 0.5                                            # far apart: a real test
    assert float(np.sum(np.exp(lp) * terms)) == pytest.approx(kl_exact, rel=1e-10)
    assert np.all(terms >= 0.0)


def test_estimate_kl_is_within_four_standard_errors_of_the_exact_kl(exact):
    policy, ref, _, _, lp, lq = exact
    kl_exact = float(np.sum(np.exp(lp) * (lp - lq)))
    est = estimate_kl(policy, ref, TOK, [PROMPT], n_samples=3000, seed=0, max_new_tokens=L)
    assert est["n"] == 3000 and est["stderr"] < 0.05 * kl_exact      # precise enough to mean something
    assert abs(est["kl"] - kl_exact) < 4 * est["stderr"]


def test_estimate_kl_is_exactly_zero_when_the_policy_is_the_reference():
    policy = _sharp_gpt(3, dtype=np.float32)
    est = estimate_kl(policy, frozen_copy(policy), TOK, [PROMPT, "b", "abba"], n_samples=5, seed=1,
                      max_new_tokens=6)
    assert est["kl"] == 0.0 and np.all(est["per_sample"] == 0.0) and est["n"] == 15


def test_sample_responses_are_seeded_in_prompt_order_and_stop_at_the_end_token():
    model = _sharp_gpt(4, dtype=np.float32)
    prompts = ["ab", "b", "abba", "ba"]                              # three different lengths
    a = sample_responses(model, TOK, prompts, n_samples=3, seed=5, max_new_tokens=5)
    assert a == sample_responses(model, TOK, prompts, n_samples=3, seed=5, max_new_tokens=5)
    assert len(a) == 12
    for k, (prompt_ids, response) in enumerate(a):
        assert prompt_ids == TOK.encode(format_prompt(prompts[k // 3]))
        assert 1 <= len(response) <= 5
        assert TOK.eos_token_id not in response[:-1]
        assert response[-1] == TOK.eos_token_id or len(response) == 5
    with pytest.raises(ValueError, match="n_samples"):
        sample_responses(model, TOK, prompts, n_samples=0)


def test_sample_responses_ask_in_the_models_own_prompt_template():
    tok = CharTokenizer.from_corpus("ab?:QAB \n")
    tok.prompt_template = "B: {prompt}\nA: "
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=1, n_embd=8), seed=0)
    (prompt_ids, _), = sample_responses(model, tok, ["ab"], n_samples=1, seed=0, max_new_tokens=2)
    assert tok.decode(prompt_ids) == "B: ab\nA: "


# ---- figures ---------------------------------------------------------------------------------

def test_plot_metric_curves_writes_a_png_atomically_and_names_bad_input(tmp_path):
    pytest.importorskip("matplotlib")
    from dpo_np.experiments.plots import plot_dpo_metrics, plot_metric_curves
    rows = [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.1 * s} for s in range(1, 6)]
    rows.append({"step": 5, "eval/loss": 0.66, "eval/rewards/margins": 0.4})
    path = plot_dpo_metrics(rows, tmp_path / "sub" / "dpo.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path / "sub") == ["dpo.png"]
    with pytest.raises(ValueError, match="rows"):
        plot_metric_curves([], [("loss", ("loss",))], tmp_path / "x.png")
    with pytest.raises(ValueError, match="step"):
        plot_metric_curves([{"loss": 1.0}], [("loss", ("loss",))], tmp_path / "x.png")


def test_every_panel_has_a_y_label_and_a_curve_100_times_smaller_gets_its_own_axis():
    pytest.importorskip("matplotlib")
    from dpo_np.experiments.plots import DPO_PANELS, REWARD_MODEL_PANELS, SFT_PANELS, metric_figure
    for panels in (DPO_PANELS, REWARD_MODEL_PANELS, SFT_PANELS):
        assert all(len(p) == 3 and p[2] for p in panels)
    rows = [{"step": s, "rewards/chosen": 50.0 * s, "rewards/rejected": 0.01 * s, "loss": 0.5} for s in (1, 2)]
    fig = metric_figure(rows, [("rewards", ("rewards/chosen", "rewards/rejected"), "r̂ (β·nats)"),
                               ("loss", ("loss",), "nats")])
    left, right = fig.axes[0], fig.axes[-1]
    assert left.get_ylabel() == "r̂ (β·nats)" and fig.axes[1].get_ylabel() == "nats"
    assert [line.get_label() for line in left.get_lines()] == ["rewards/chosen (train)"]
    assert [line.get_label() for line in right.get_lines()] == ["rewards/rejected (train) (right axis)"]
    assert right.get_ylabel().startswith("r̂ (β·nats)")


# ---- the demo on several seeds ------------------------------------------------------------------

def test_demo_seeds_json_holds_the_judges_shares_and_the_notes_answers_per_seed(tmp_path):
    from dpo_np.cli import main
    from dpo_np.experiments.seeds import COLUMNS, value
    path = tmp_path / "seeds.json"
    assert main(["demo", "--quick", "--seeds", "0,1", "--dpo-steps", "3", "--quiet", "--output-dir",
                 str(tmp_path / "runs"), "--json", str(path)]) == 0
    import json
    out = json.loads(path.read_text())
    assert [r["seed"] for r in out["rows"]] == [0, 1] and out["config"]["dpo_steps"] == 3   # the option reached each seed
    for row in out["rows"]:
        for key in ("judge", "judge_greedy", "judge_train"):
            assert set(row[key]) == {"reference", "policy"} and all(0 <= v <= 1 for v in row[key].values())
        assert set(row["notes_answers"]) == {"reference", "policy"}
        assert all(n in (0, 1, 2, 3) for n in row["notes_answers"].values())
        assert 0 <= row["implicit_reward_accuracy"] <= 1
    # the summary is the rows' own mean, sample s.d. and worst seed
    for key, _ in COLUMNS:
        values = np.array([value(r, key) for r in out["rows"]])
        s = out["summary"][key]
        assert s["mean"] == pytest.approx(values.mean()) and s["sd"] == pytest.approx(values.std(ddof=1))
        worst = values.max() if key == "kl" else values.min()
        assert s["worst"] == worst
    assert "notes' answers, π_ref → π_θ" in out["table"]
    # per family, the judge's counts add up to the overall shares the judge gave all answers at once
    for row in out["rows"]:
        for who in ("reference", "policy"):
            counts = [c[who] for c in row["judge_by_family"].values()]
            n = sum(sum(c.values()) for c in counts)
            assert sum(c[toy_preferences.PREFERRED] for c in counts) / n == pytest.approx(row["judge"][who])
        assert set(row["judge_by_family"]) <= set(toy_preferences.LEARNABLE)


def test_the_family_table_gives_each_familys_preferred_share_over_the_seeds():
    from dpo_np.experiments.seeds import format_family_table
    P, R, N = toy_preferences.JUDGEMENTS
    rows = [{"seed": 3, "judge_by_family": {"manners": {"reference": {P: 1, R: 2, N: 1}, "policy": {P: 3, R: 0, N: 1}},
                                            "arithmetic": {"reference": {P: 0, R: 5, N: 5}, "policy": {P: 5, R: 5, N: 0}}}},
            {"seed": 7, "judge_by_family": {"manners": {"reference": {P: 0, R: 2, N: 2}, "policy": {P: 2, R: 1, N: 1}},
                                            "arithmetic": {"reference": {P: 2, R: 4, N: 2}, "policy": {P: 8, R: 0, N: 0}}}}]
    lines = format_family_table(rows).splitlines()
    # arithmetic: π_ref 0/10, 2/8 → 0.125 ± 0.177; π_θ 5/10, 8/8 → 0.750 ± 0.354, worst 0.5 on seed 3
    assert "| arithmetic | 8–10 | 0.125 ± 0.177 | 0.750 ± 0.354 | 0.500 (3) |" in lines
    # manners: π_ref 1/4, 0/4 → 0.125 ± 0.177; π_θ 3/4, 2/4 → 0.625 ± 0.177, worst 0.5 on seed 7
    assert "| manners | 4 | 0.125 ± 0.177 | 0.625 ± 0.177 | 0.500 (7) |" in lines
    assert lines.index("| arithmetic | 8–10 | 0.125 ± 0.177 | 0.750 ± 0.354 | 0.500 (3) |") < lines.index(
        "| manners | 4 | 0.125 ± 0.177 | 0.625 ± 0.177 | 0.500 (7) |")        # the families in the data's order
