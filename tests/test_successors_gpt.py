"""The successors' comparison with the GPT as π_θ: the GPT's problem is the tabular set with a GPT π_ref,
its enumerated distribution sums to 1 with per-token conditionals that are the prefix ratios, its gradient
through the factories matches central differences for both kinds of loss, and the command reports per seed,
the same numbers alone and in company."""

import json

import numpy as np
import pytest

from dpo_np import autograd as ag
from dpo_np import gradcheck, rl, rlhf
from dpo_np.cli import main
from dpo_np.experiments import successor_optima as optima
from dpo_np.experiments import successors as S
from dpo_np.experiments import successors_gpt as G
from dpo_np.losses import dpo_loss
from dpo_np.optim import AdamW

SMALL = dict(vocab_size=2, length=3, n_prompts=2)          # 7 responses of 1 to 3 tokens, 2 prompts
#: the command's run at toy size: every number there, in seconds
TINY = dict(pairs=600, steps=6, samples=4, sft_steps=8, fit_steps=4)


def kl(p, q):
    """mean over prompts of Σ_y p (log p − log q), written out."""
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


def randomize(policy, seed, scale=0.6):
    """Weights far from the SFT fit, so that every check sees a spread-out π_θ."""
    gen = np.random.default_rng(seed)
    for v in policy.gpt.params.values():
        v += gen.normal(0.0, scale, v.shape)
    policy._forward = None


@pytest.fixture(scope="module")
def problem():
    """The command's problem of seed 0 (40 responses × 4 prompts), with a shorter SFT."""
    return G.make_gpt_problem(0, sft_steps=100)


@pytest.fixture(scope="module")
def small():
    return G.make_gpt_problem(1, sft_steps=20, **SMALL)


# -- the problem --------------------------------------------------------------------------------

def test_the_gpt_problem_is_the_tabular_problem_with_a_gpt_reference(problem):
    table = S.make_problem(0)
    for key in ("responses", "lengths", "rewards"):
        np.testing.assert_array_equal(problem[key], table[key])
    np.testing.assert_array_equal(problem["table_ref"], table["ref"])
    np.testing.assert_array_equal(problem["rs"].responses, table["responses"])
    ref = problem["ref"]
    np.testing.assert_allclose(ref, G.new_policy(problem, "gpt").logprobs(), atol=0)      # π_ref is the GPT
    np.testing.assert_allclose(problem["ref_tokens"].sum(-1), ref, atol=1e-12)
    np.testing.assert_allclose(problem["star"], rlhf.optimal_policy(ref, problem["rewards"], 0.5), atol=1e-12)
    assert problem["reference_fit_kl"] == pytest.approx(kl(table["ref"], ref), rel=1e-10)
    unfit = G.make_gpt_problem(0, sft_steps=0)                    # SFT moves the GPT onto the tabular π_ref
    assert problem["reference_fit_kl"] < unfit["reference_fit_kl"] / 5


def test_the_gpts_distribution_sums_to_one_and_its_conditionals_are_the_prefix_ratios(problem):
    policy = G.SharedGPTPolicy(problem, 1e-2)
    randomize(policy, 1)
    seq, tok = policy.sequence_logprobs(), policy.token_logprobs()
    assert np.abs(np.exp(seq).sum(axis=1) - 1).max() < 1e-13
    assert seq.std() > 1.0                                          # far from uniform: the check means something
    np.testing.assert_allclose(seq, policy.gpt.logprobs(), atol=1e-13)            # batch_logps' sum, one pass
    np.testing.assert_allclose(tok.sum(-1), seq, atol=1e-13)
    # the GPT's own next-token log-probabilities are the whole-response distribution's prefix ratios
    np.testing.assert_allclose(tok, optima.token_logprobs(seq, problem["structure"]), atol=1e-11)
    forced = problem["rs"].content == problem["rs"].max_length                     # the end after 3 tokens
    assert (tok[:, ~problem["structure"]["real"]] == 0).all() and (tok[:, forced, -1] == 0).all()


# -- the gradient through the factories --------------------------------------------------------------

def _pairs_loss(policy_logprobs, problem, triples):
    """DPO's loss over weighted triples (a Tensor), from log π_θ (P, N) as an array or a Tensor."""
    x, w, l, weight = triples
    ref, lp = problem["ref"], ag.tensor(policy_logprobs)
    losses, _, _ = dpo_loss(lp[x, w], lp[x, l], ref[x, w], ref[x, l], beta=0.5)
    return (losses * weight).sum()


def test_the_gpt_policys_gradient_matches_central_differences_for_sequence_and_token_losses(small):
    """DPO's loss reads log π_θ(y|x), GRPO's log π_θ(y_t|·): each gradient, as ``successors`` computes it from
    those arrays, pushed through the GPT, against central differences of the same loss in the parameters."""
    policy = G.SharedGPTPolicy(small, 1e-2)
    randomize(policy, 2)
    gen = np.random.default_rng(3)
    x, w, l, counts = S.sampled_triples(small, 50, seed=4)
    triples = (x, w, l, counts / counts.sum())
    seq = ag.Tensor(policy.sequence_logprobs(), requires_grad=True)
    _pairs_loss(seq, small, triples).backward()
    grads = {k: v.copy() for k, v in policy.gradient(d_sequence=seq.grad).items()}
    errors = gradcheck.parameter_gradient_errors(
        policy.gpt.params, grads, lambda: float(_pairs_loss(policy.gpt.logprobs(), small, triples).data))
    assert max(errors.values()) < 1e-6, errors

    policy = G.SharedGPTPolicy(small, 1e-2)          # a fresh forward: the check above ran the model without one
    randomize(policy, 2)
    old, old_tokens = policy.sequence_logprobs(), policy.token_logprobs()
    y = np.stack([gen.choice(old.shape[1], size=3, p=np.exp(row) / np.exp(row).sum()) for row in old])
    settings = {"clip_eps": 0.2}
    d = S.group_gradient(small, "grpo", old, old_tokens, y, settings["clip_eps"])
    grads = {k: v.copy() for k, v in policy.gradient(**d).items()}
    xs, ys = np.repeat(np.arange(y.shape[0]), y.shape[1]), y.ravel()
    advantages = rl.grpo_advantages(small["rewards"][np.arange(y.shape[0])[:, None], y]).ravel()

    def grpo(tokens):                               # the batch's loss at θ, with π_old held at the start
        return float(rl.grpo_loss(ag.tensor(tokens)[xs, ys], old_tokens[xs, ys], small["ref_tokens"][xs, ys],
                                  advantages, mask=small["structure"]["real"][ys], beta=0.5, clip_eps=0.2,
                                  max_completion_length=old_tokens.shape[-1]).data)

    errors = gradcheck.parameter_gradient_errors(policy.gpt.params, grads,
                                                 lambda: grpo(policy.gpt.token_forward()[1]))
    assert max(errors.values()) < 1e-6, errors
    assert max(np.abs(g).max() for g in grads.values()) > 1e-3                    # a gradient, not zeros


def test_an_update_is_one_adamw_step_on_that_gradient_and_the_next_read_sees_it(small):
    policy = G.SharedGPTPolicy(small, 3e-2)
    d_seq = np.random.default_rng(5).standard_normal(small["ref"].shape)
    before = {k: v.copy() for k, v in policy.gpt.params.items()}
    grads = {k: v.copy() for k, v in policy.gradient(d_sequence=d_seq).items()}
    policy.update(d_sequence=d_seq)
    want = {k: v.copy() for k, v in before.items()}
    AdamW(want, lr=3e-2, weight_decay=0.0).step(grads)
    for k in want:
        np.testing.assert_allclose(policy.gpt.params[k], want[k], atol=1e-15)
    np.testing.assert_allclose(policy.sequence_logprobs(), policy.gpt.logprobs(), atol=1e-13)
    assert np.abs(policy.sequence_logprobs() - small["ref"]).max() > 1e-3
    with pytest.raises(ValueError, match="d_sequence or d_token"):
        policy.gradient()
    with pytest.raises(ValueError, match=r"d_token must have shape \(2, 7, 3\)"):
        policy.gradient(d_token=np.zeros((2, 7)))


def test_the_closest_fit_is_the_kl_it_reaches_and_shrinks_with_steps(small):
    star, ref = small["star"], small["ref"]
    assert G.closest_fit(small, star, 0, 1e-2) == pytest.approx(kl(star, ref), rel=1e-10)
    assert G.closest_fit(small, ref, 0, 1e-2) == 0.0
    assert G.closest_fit(small, star, 60, 1e-2) < kl(star, ref) / 10
    landed = G.new_policy(small, "gpt")
    landed.params["wte.weight"] += 0.3                               # any other starting point
    assert G.closest_fit(small, star, 0, 1e-2, start=landed.params) == pytest.approx(kl(star, landed.logprobs()))


# -- the run and the command ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run():
    return G.run_successors_gpt(seeds=[0, 1], progress=False, **TINY)


def test_every_method_reports_per_seed_for_the_gpt_and_the_table(tiny_run):
    json.dumps(tiny_run, allow_nan=False)
    cfg = tiny_run["config"]
    assert cfg["seeds"] == [0, 1] and cfg["steps"] == 6 and cfg["samples"] == 4 and cfg["lr"] == G.DEFAULTS["gpt_lr"]
    assert tiny_run["table"]["config"]["lr"] == cfg["table_lr"] == S.DEFAULTS["lr"]
    for m in S.METHODS:
        for run in (tiny_run, tiny_run["table"]):
            for key in ("final_kl", "suboptimality", "kl_ref", "reward", "frontier_gap"):
                values = run[m][key]["per_seed"]
                assert len(values) == 2 and run[m][key]["mean"] == pytest.approx(np.mean(values))
            assert (run[m]["kl_to_own_optimum"] is None) == (S.OPTIMA[m] is None)
        assert (tiny_run[m]["representable_kl"] is None) == (S.OPTIMA[m] is None)
        assert tiny_run[m]["final_kl"]["per_seed"] != tiny_run["table"][m]["final_kl"]["per_seed"]
    assert len(tiny_run["reference_fit_kl"]["per_seed"]) == 2


def test_each_seed_gives_the_same_numbers_alone_and_in_company(tiny_run):
    alone = G.run_successors_gpt(seeds=[1], progress=False, methods=("ipo", "dr_grpo"), **TINY)
    for m in ("ipo", "dr_grpo"):
        for key in ("final_kl", "kl_to_own_optimum", "representable_kl"):
            assert alone[m][key]["per_seed"] == tiny_run[m][key]["per_seed"][1:]
        assert alone["table"][m]["final_kl"]["per_seed"] == tiny_run["table"][m]["final_kl"]["per_seed"][1:]


def test_the_reported_numbers_are_the_runs_measured_again(tiny_run):
    """Seed 1's DPO and RLOO trained again by hand through the two factories: the same landing, measured
    independently of ``successors.measure``."""
    settings = {**S.DEFAULTS, **{k: v for k, v in TINY.items() if k in S.DEFAULTS},
                "lr": G.DEFAULTS["gpt_lr"], "rl_lr": G.DEFAULTS["gpt_rl_lr"]}
    problem = G.make_gpt_problem(1, sft_steps=TINY["sft_steps"])
    triples = S.sampled_triples(problem, TINY["pairs"], seed=3)                  # run_successors' seed s + 2
    for m in ("dpo", "rloo"):
        lp, _ = S.run_method(m, problem, triples, settings, 1, G.SharedGPTPolicy)
        assert tiny_run[m]["final_kl"]["per_seed"][1] == pytest.approx(kl(problem["star"], lp), rel=1e-9)
        gap = 0.5 * kl(lp, problem["star"])                            # J(π*) − J(π) = β KL(π ‖ π*)
        assert tiny_run[m]["suboptimality"]["per_seed"][1] == pytest.approx(gap, rel=1e-6)


def test_the_command_runs_the_policies_asked_for_and_prints_what_it_writes(tmp_path, capsys):
    path = tmp_path / "gpt.json"
    assert main(["successors", "--policy", "gpt", "--quick", "--seeds", "2", "--steps", "5", "--pairs", "500",
                 "--json", str(path), "--output-dir", "", "--quiet"]) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert "dpo" not in saved and saved["options"]["policy"] == "gpt"
    assert saved["gpt"]["config"]["seeds"] == [2] and saved["gpt"]["config"]["steps"] == 5
    for m in S.METHODS:
        assert f"{saved['gpt'][m]['final_kl']['mean']:.2e}" in out
    path = tmp_path / "table.json"
    assert main(["successors", "--policy", "table", "--quick", "--seeds", "2", "--json", str(path),
                 "--output-dir", "", "--quiet"]) == 0
    saved = json.loads(path.read_text())
    assert "gpt" not in saved and saved["dpo"]["seeds"] == [2]
    with pytest.raises(SystemExit):
        main(["successors", "--policy", "transformer"])
    assert "--policy" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown setting"):
        G.run_successors_gpt(seeds=[0], nope=1)
    with pytest.raises(ValueError, match="fit_steps"):
        G.run_successors_gpt(seeds=[0], fit_steps=-1)
