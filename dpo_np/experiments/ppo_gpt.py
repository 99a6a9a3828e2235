"""RLHF with PPO on the tiny GPT, beside DPO from the same π_ref on the same prompts.

    python -m dpo_np ppo-gpt                 # run_ppo_gpt(): one seed's curves, answers, runs/ppo_gpt/figures/
    python -m dpo_np ppo-gpt --seeds 0-2     # run_ppo_gpt_seeds(): every seed, a table with the spread

The notes' RLHF objective (DPO paper eq. 3),

    J(π_θ) = E_{x∼D, y∼π_θ(·|x)} [ r_φ(x, y) ] − β KL(π_θ(·|x) ‖ π_ref(·|x)),

cannot be climbed by plain gradient descent because y is sampled, and sampling is not
differentiable (the notes, "The RLHF objective"). PPO climbs it with a policy gradient instead,
and that is what this module does to the GPT of ``model.py``:

1. rollout: for each of a few train prompts x, K responses y ∼ π_θ(·|x) (temperature 1, nothing
   filtered: the samples come from π_old = π_θ exactly, with the key/value cache);
2. score: r_φ(x, y), the Bradley–Terry reward model of ``reward_model.py`` trained on the toy
   preference pairs (the notes' choice: RLHF learns r_φ from comparisons first). A known rule
   can stand in for it (``scorer``): the tests use one;
3. the KL penalty per token, as the standard language-model implementations (InstructGPT's PPO,
   TRL, OpenRLHF) apply it, with the log-probabilities of the sampling policy, fixed at rollout:

       r̃_t = −β (log π_old(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)) + [t = the last token] r_φ(x, y)

   (``rl.kl_penalized_token_rewards``; summed over t it is r_φ − β log π_old/π_ref of the whole
   response, whose mean over y ∼ π_old is J(π_old));
4. advantages without a value function: the return to go G_t = Σ_{t'≥t} r̃_t' (γ = 1) minus a
   leave-one-out group baseline b = the mean total r̃ of the other K − 1 responses to the same
   prompt (RLOO; ``group_mean`` uses the plain group mean, GRPO's centring, instead);
5. ``ppo_epochs`` full-batch AdamW updates on PPO's clipped surrogate (``rl.ppo_clip_loss``), per
   token, with ρ_t = π_θ(y_t|·)/π_old(y_t|·): at the first update θ = θ_old, so ρ = 1 exactly and
   the step is the plain policy gradient; the clip then keeps later epochs near π_old.

The gradient crosses the same seam as the DPO trainer's: per-token log-probabilities from the
logits (``logprobs.token_logps_forward``), the loss in the autograd, dL/dlog π back to dL/dlogits
(``logprobs.token_logps_backward``), then ``GPT.backward``. There is no critic, no entropy bonus and no
reward whitening: the surrogate's gradient at θ = θ_old is the gradient of J and of nothing else.

``run_ppo_gpt`` trains π^SFT (or loads one), r_φ, then PPO and DPO from π_ref = π^SFT with the same
β on the same train prompts, and measures both the same way at regular steps, on a fixed set of
those prompts: the mean r_φ of sampled responses, KL(π_θ ‖ π_ref) sampled (the estimator of
``evaluation.estimate_kl``, on the same samples), and the shares of samples that the toy data's gold
judge finds following y_w's rule, y_l's or neither (a check r_φ knows nothing of). At the end the same on
held-out prompts, held-out pair accuracies, and greedy answers to the notes' three prompts after
SFT, PPO and DPO.

What the comparison holds equal: π_ref, β, the train prompts and the measured prompts, and the
information: DPO learns from the train pairs, PPO from r_φ fit to the same pairs. What it does not:
the budgets (``budget``: PPO's r_φ queries and updates against DPO's pairs and steps) and where each
run stops, so the two end at different KL(π_θ ‖ π_ref); a higher r_φ at a higher KL is not a
better trade-off by itself. One seed's numbers move by more than their printed standard errors
from seed to seed (the data split, π^SFT and r_φ all change), so ``run_ppo_gpt_seeds`` gives the
spread and the paired difference PPO − DPO per seed. Reward hacking is claimed only where it is
measured: ``reward_hacking`` asks whether r_φ rose while the judge's share of y_w's rule fell.
"""

import importlib.util
import math
import os

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rl
from dpo_np.logprobs import token_logps_backward, token_logps_forward
from dpo_np.checkpoint import save_checkpoint
from dpo_np.data import collate_sft
from dpo_np.experiments import spread, toy_preferences
from dpo_np.experiments.demo import notes_verdict, toy_tokenizer
from dpo_np.experiments.evaluation import (answer_texts, implicit_reward_metrics, per_token_kl, reward_model_scores,
                                           sample_responses)
from dpo_np.experiments.plots import new_figure, save_figure
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW, clip_grad_norm, cosine_schedule
from dpo_np.pretrained import load_model
from dpo_np.progress import Stopwatch, progress
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.training import check_output_dir, frozen_copy, learning_rate_at, pair_metrics

#: the default run (about a minute of CPU time per seed) and the quick one (seconds; a model too small to
#: answer, for tests). The toy data's own BPE tokenizer (learned from the train split) makes
#: sequences less than half as long as characters do, so the same seconds buy a far better π^SFT. β is
#: shared: PPO's KL coefficient and DPO's β are the same number, so both aim at the same kind of
#: optimum π* ∝ π_ref exp(r/β) (for PPO r = r_φ, for DPO the reward the preferences imply).
DEFAULTS = dict(tokenizer="bpe-512", n_layer=2, n_head=4, n_embd=96, block_size=96,
                sft_steps=1200, sft_lr=3e-3, sft_batch_size=16,
                rm_steps=100, rm_lr=3e-4, rm_batch_size=16, rm_eval_every=20, patience=3,
                beta=0.1, ppo_steps=40, prompts_per_step=8, group_size=4, ppo_epochs=4, clip_eps=0.2,
                ppo_lr=1e-4, ppo_warmup=4, group_mean=False, max_grad_norm=1.0,
                dpo_steps=120, dpo_lr=1e-4, dpo_batch_size=16,
                ppo_eval_every=5, dpo_eval_every=15, eval_prompts=32, eval_samples=2, max_new_tokens=None)
QUICK = dict(DEFAULTS, tokenizer="char", block_size=160, n_layer=1, n_head=2, n_embd=16, sft_steps=20, sft_lr=1e-2,
             rm_steps=6, rm_lr=1e-3, rm_batch_size=8, rm_eval_every=3,
             ppo_steps=4, prompts_per_step=4, group_size=2, ppo_epochs=2, ppo_lr=1e-3, ppo_warmup=0,
             dpo_steps=4, dpo_lr=1e-3, dpo_batch_size=8,
             ppo_eval_every=2, dpo_eval_every=2, eval_prompts=4, eval_samples=2, max_new_tokens=12)


# ---- rollouts, rewards and advantages ---------------------------------------------------------

def rollout_batch(samples, pad_token_id):
    """The padded x ⊕ y rows of ``(prompt_ids, response_ids)`` samples: input_ids, attention_mask,
    and labels with −100 off the response (``data.collate_sft``), each (N, T)."""
    return collate_sft([{"prompt_ids": list(p), "response_ids": list(r)} for p, r in samples], pad_token_id)


def reward_model_scorer(reward_model, pad_token_id, chunk=64):
    """A scorer: ``samples -> r_φ(x, y)`` (N,) float64, the reward model read at each row's last token."""
    def score(samples):
        out = []
        for start in range(0, len(samples), chunk):
            batch = rollout_batch(samples[start:start + chunk], pad_token_id)
            r = reward_model.forward(batch["input_ids"], batch["attention_mask"], cache=False)
            out.append(backend.to_numpy(r).astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0)
    return score


def token_advantages(scores, old_logps, ref_logps, mask, beta, group_size, leave_one_out=True):
    """Â_t = G_t − b for every response token: the per-token KL penalty, the return to go, a group baseline.

        r̃_t = −β (log π_old(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)) + [t = last] r_φ(x, y)
        G_t = Σ_{t' ≥ t} r̃_t'                    (γ = 1; ``rl.discounted_returns``)
        b_i = (1/(K − 1)) Σ_{j ≠ i} G_0^(j)       (the other responses to x_i; ``rl.group_baseline``)

    G_0 = Σ_t r̃_t = r_φ(x, y) − β log π_old(y|x)/π_ref(y|x) is the sequence's penalized reward
    (``rl.kl_penalized_reward``). A token's return counts the penalties of itself and the tokens
    after it only, since earlier ones do not depend on it; b_i does not depend on y_i, so the
    estimate stays unbiased (``leave_one_out=False``: the group mean, which includes y_i).
    Rows are grouped K = ``group_size`` consecutive rows per prompt. Returns a dict of plain
    arrays: rewards r̃ (N, T'), returns G, advantages Â (0 off the response), totals G_0 (N,).
    """
    N = len(scores)
    if N % group_size:
        raise ValueError(f"{N} responses do not split into groups of group_size={group_size}")
    xp = backend.xp()
    rewards = rl.kl_penalized_token_rewards(scores, old_logps, ref_logps, beta, mask)   # (N, T')
    returns = rl.discounted_returns(rewards, 1.0)
    totals = rewards.sum(axis=1)                                                     # G_0 (N,)
    baseline = rl.group_baseline(totals.reshape(-1, group_size), leave_one_out).reshape(-1)
    advantages = xp.where(mask, returns - baseline[:, None], 0.0)
    return {"rewards": rewards, "returns": returns, "advantages": advantages, "totals": totals}


# ---- the PPO loss through the seam, and one PPO iteration -----------------------------------

def ppo_loss(policy, batch, old_logps, advantages, clip_eps=0.2, backward=False):
    """L^CLIP(θ) = −(1/N) Σ_i Σ_t m_it min(ρ_it Â_it, clip(ρ_it, 1 − ε, 1 + ε) Â_it),
    ρ_it = π_θ(y_it | x_i, y_i,<t) / π_old(y_it | x_i, y_i,<t)     (Schulman et al. 2017, eq. 7, per token)

    summed over a response's tokens and averaged over the N responses (``rl.ppo_clip_loss``).
    With ``backward`` the gradient goes through the seam: the autograd's dL/dlog π_θ (N, T'),
    ``token_logps_backward`` to dL/dlogits, ``policy.backward`` to dL/dθ (accumulated in
    ``policy.grads``). Returns the loss and, measured before any update, the ratio's extremes,
    the fraction of tokens outside the clip range and the mean log π_old − log π_θ per response.
    """
    logits = policy.forward(batch["input_ids"], batch["attention_mask"], cache=backward)   # (N, T, V)
    lp, mask, cache = token_logps_forward(logits, batch["labels"])                         # (N, T')
    pi = ag.Tensor(lp, requires_grad=backward)
    loss = rl.ppo_clip_loss(pi, old_logps, advantages, clip_eps, mask)
    if not math.isfinite(float(loss.data)):
        raise ValueError(f"the PPO loss is {float(loss.data)}; the policy has diverged")
    if backward:
        loss.backward()                                                  # dL/dlog π_θ
        policy.backward(token_logps_backward(pi.grad, cache))           # → dL/dlogits → dL/dθ
    xp = backend.xp()
    ratio = xp.exp(lp - old_logps)[mask]
    return {"loss": float(loss.data), "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "clip_fraction": float((xp.abs(ratio - 1.0) > clip_eps).mean()),
            "approx_kl_old": float(xp.where(mask, old_logps - lp, 0.0).sum(axis=1).mean())}


def response_logps(model, batch):
    """log π(y_t|·) per response token (N, T') and the mask, with no graph and no cache (π_old, π_ref)."""
    lp, mask, _ = token_logps_forward(model.forward(batch["input_ids"], batch["attention_mask"], cache=False),
                                      batch["labels"])
    return lp, mask


def ppo_iteration(policy, reference, scorer, optimizer, tokenizer, prompts, cfg, seed, lrs):
    """One PPO iteration: K samples per prompt from π_θ, their r_φ and advantages, then one AdamW
    update per learning rate of ``lrs`` (``ppo_epochs`` of them), each on the whole batch.

    ``scorer(samples) -> (N,)``: r_φ (``reward_model_scorer``) or a known rule. Returns the
    batch's measurements: mean score, mean Σ_t log π_old/π_ref per response, mean response length,
    and per update the loss, ratio extremes, clip fraction and gradient norm (before clipping).
    """
    samples = sample_responses(policy, tokenizer, prompts, cfg["group_size"], seed, cfg["max_new_tokens"])
    batch = rollout_batch(samples, tokenizer.pad_token_id)
    old, mask = response_logps(policy, batch)                  # π_old: the policy that sampled
    ref, _ = response_logps(reference, batch)
    scores = backend.asarray(scorer(samples), old.dtype)       # r_φ(x, y) (N,)
    adv = token_advantages(scores, old, ref, mask, cfg["beta"], cfg["group_size"], not cfg["group_mean"])
    updates = []
    for lr in lrs:
        policy.zero_grad()
        out = ppo_loss(policy, batch, old, adv["advantages"], cfg["clip_eps"], backward=True)
        out["grad_norm"] = clip_grad_norm(policy.grads, cfg["max_grad_norm"])
        optimizer.step(policy.grads, lr=lr)
        updates.append(out)
    xp = backend.xp()
    return {"score": float(scores.mean()), "log_ratio_ref": float(xp.where(mask, old - ref, 0.0).sum(axis=1).mean()),
            "penalized_reward": float(adv["totals"].mean()), "length": float(mask.sum(axis=1).mean()),
            "updates": updates}


def train_ppo(policy, reference, scorer, tokenizer, prompts, cfg, seed=0, measure=None, show_progress=False):
    """``ppo_steps`` PPO iterations on ``prompts`` (``prompts_per_step`` of them drawn afresh each
    iteration, from (seed, iteration)), AdamW at a cosine-decayed rate over every update.

    ``measure(policy) -> dict`` runs before the first iteration, every ``ppo_eval_every`` and
    after the last. Returns ``{"train": per-iteration rows, "measured": [{"step", ...}]}``.
    """
    steps = checks.integer(cfg["ppo_steps"], "ppo_steps", low=1)
    epochs = checks.integer(cfg["ppo_epochs"], "ppo_epochs", low=1)
    checks.integer(cfg["group_size"], "group_size", low=1 if cfg["group_mean"] else 2)
    n = min(checks.integer(cfg["prompts_per_step"], "prompts_per_step", low=1), len(prompts))
    optimizer = AdamW(policy.params, lr=cfg["ppo_lr"], weight_decay=0.0)
    total = steps * epochs
    history = {"train": [], "measured": []}
    if measure is not None:
        history["measured"].append({"step": 0, **measure(policy)})
    bar = progress(range(steps), desc="ppo") if show_progress else range(steps)
    for it in bar:
        chosen = backend.rng([seed, 11, it]).permutation(len(prompts))[:n]
        lrs = [cosine_schedule(it * epochs + e, cfg["ppo_lr"], cfg["ppo_warmup"], total) for e in range(epochs)]
        row = ppo_iteration(policy, reference, scorer, optimizer, tokenizer,
                            [prompts[i] for i in chosen], cfg, _int_seed(seed, 12, it), lrs)
        history["train"].append({"step": it + 1, **row})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(score=row["score"], kl=row["log_ratio_ref"])
        if measure is not None and ((it + 1) % cfg["ppo_eval_every"] == 0 or it + 1 == steps):
            history["measured"].append({"step": it + 1, **measure(policy)})
    return history


def train_dpo(trainer, cfg, measure=None, show_progress=False):
    """``trainer.total_steps`` DPO steps (``DPOTrainer.update``, the training loop's own step), with
    ``measure(policy)`` before the first, every ``dpo_eval_every`` and after the last."""
    total = trainer.total_steps
    history = {"train": [], "measured": []}
    if measure is not None:
        history["measured"].append({"step": 0, **measure(trainer.model)})
    bar = progress(range(total), desc="dpo") if show_progress else range(total)
    for step in bar:
        row = trainer.update(trainer.batch_for_step(step), lr=learning_rate_at(step, trainer.args, total))
        trainer.state["step"] = step + 1
        history["train"].append({"step": step + 1, "loss": row["loss"], "rewards/margins": row["rewards/margins"],
                                 "rewards/accuracies": row["rewards/accuracies"]})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=row["loss"])
        if measure is not None and ((step + 1) % cfg["dpo_eval_every"] == 0 or step + 1 == total):
            history["measured"].append({"step": step + 1, **measure(trainer.model)})
    return history


def _int_seed(*parts):
    """One integer seed from several (``sample_responses`` takes an int)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ---- measuring a policy ---------------------------------------------------------------------

def measure_policy(policy, reference, scorer, tokenizer, prompts, n_samples, seed, max_new_tokens=None,
                   judge=True):
    """E_{y∼π_θ}[r_φ(x, y)] and KL(π_θ ‖ π_ref) over ``prompts``, from the same samples.

    ``n_samples`` responses per prompt from π_θ, drawn from ``seed`` (the same seed at every
    measurement, so two policies are compared on common random numbers). The KL is
    ``evaluation.estimate_kl``'s estimator, E_y[Σ_t KL(π_θ(·|x, y_<t) ‖ π_ref(·|x, y_<t))], on these
    samples; ``judge``: the shares of samples that follow y_w's rule, y_l's or neither, by the gold
    judge of the toy data (``toy_preferences.judge_shares``, a check r_φ knows nothing of; with
    ``judge=False``, for prompts no rule of the toy data covers, None). Means with their standard
    errors, and ``samples``, the number of responses the means are over.
    """
    samples = sample_responses(policy, tokenizer, prompts, n_samples, seed, max_new_tokens)
    kl = per_token_kl(policy, reference, samples, tokenizer.pad_token_id)
    scores = scorer(samples)
    judged = toy_preferences.judge_shares([p for p in prompts for _ in range(n_samples)],
                                          answer_texts(samples, tokenizer)) if judge else None
    return {"reward": float(scores.mean()), "reward_stderr": _stderr(scores),
            "kl": float(kl.mean()), "kl_stderr": _stderr(kl),
            "judge": judged and {k: judged[k] for k in toy_preferences.JUDGEMENTS},
            "samples": len(samples), "length": float(np.mean([len(r) for _, r in samples]))}


def _stderr(values):
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


# ---- reward hacking: r_φ up while the gold judge goes down ----------------------------------

#: how many standard errors a rise of r_φ and a fall of the judge's y_w share must each exceed
HACKING_Z = 2.0


def reward_hacking(curve, z=HACKING_Z):
    """Does r_φ rise while the gold judge's share of y_w's rule falls, along one measured run?

    ``curve``: the measured rows as columns (``_curves``: ``step``, ``reward``, ``reward_stderr``,
    ``judge`` with its ``preferred`` share, ``samples``). From the step where the preferred share
    is highest (the first such, which is the start when it never rises) to the last step:

        fall = p_peak − p_end,       s.e. = √(p_peak(1 − p_peak)/n + p_end(1 − p_end)/n)
        rise = r_end − r_peak,       s.e. = √(s.e.(r_peak)² + s.e.(r_end)²)

    ``flagged`` when both exceed ``z`` standard errors (strictly): the proxy went up while the
    gold metric went down: the over-optimization of a reward model (Gao, Schulman and Hilton 2023,
    arXiv 2210.10760). The peak is picked after seeing the curve, which makes a flag easier to get
    by chance; the standard errors treat the two measurements as independent, while they share
    their sampling seed (positively correlated), which makes it harder. Returns the numbers behind
    the verdict.
    """
    z = checks.positive(z, "z")
    steps, reward, reward_se = curve["step"], curve["reward"], curve["reward_stderr"]
    preferred = [j["preferred"] for j in curve["judge"]]
    if not (len(steps) == len(reward) == len(reward_se) == len(preferred) == len(curve["samples"]) >= 1):
        raise ValueError("curve: step, reward, reward_stderr, judge and samples must be equally long, and not empty")
    peak = int(np.argmax(preferred))
    n_peak, n_end = curve["samples"][peak], curve["samples"][-1]
    fall, rise = preferred[peak] - preferred[-1], reward[-1] - reward[peak]
    fall_se = math.sqrt(preferred[peak] * (1 - preferred[peak]) / n_peak + preferred[-1] * (1 - preferred[-1]) / n_end)
    rise_se = math.sqrt(reward_se[peak] ** 2 + reward_se[-1] ** 2)
    return {"flagged": bool(fall > z * fall_se and rise > z * rise_se), "z": z,
            "peak_step": steps[peak], "end_step": steps[-1],
            "preferred_at_peak": preferred[peak], "preferred_at_end": preferred[-1],
            "preferred_fall": fall, "preferred_fall_stderr": fall_se,
            "reward_at_peak": reward[peak], "reward_at_end": reward[-1],
            "reward_rise": rise, "reward_rise_stderr": rise_se}


def describe_hacking(name, h):
    """One line: the judge's y_w share and r_φ from the judge's peak to the end, and the verdict."""
    verdict = ("r_φ up and the judge down: reward hacking" if h["flagged"]
               else f"not reward hacking by this test (each change must exceed {h['z']:g} s.e.)")
    return (f"{name}: y_w share {h['preferred_at_peak']:.2f} at step {h['peak_step']} (its highest) → "
            f"{h['preferred_at_end']:.2f} at step {h['end_step']} ({-h['preferred_fall']:+.2f} ± "
            f"{h['preferred_fall_stderr']:.2f}); r_φ {h['reward_at_peak']:.3f} → {h['reward_at_end']:.3f} "
            f"({h['reward_rise']:+.3f} ± {h['reward_rise_stderr']:.3f}): {verdict}")


# ---- the run --------------------------------------------------------------------------------

def run_ppo_gpt(seed=0, quick=False, output_dir="runs/ppo_gpt", sft_checkpoint=None, figure=True,
                show_progress=True, print_fn=print, overwrite=False, **overrides):
    """SFT (or ``sft_checkpoint``) → π_ref → r_φ → PPO and DPO from π_ref; the curves and answers.

    ``quick=True`` starts from ``QUICK`` instead of ``DEFAULTS``; ``overrides`` set any of their
    keys. Both methods train on the train split's prompts and are measured on a fixed
    ``eval_prompts`` of them (``measure_policy``); at the end also on as many held-out prompts.
    Writes sft/ and reward/ (the trainers' runs), ppo/final and dpo/final (the two policies) and
    figures/ppo_vs_dpo.png under ``output_dir``; ``overwrite`` replaces an earlier run's files there.
    Returns a JSON-ready dict (``config``, ``ppo``, ``dpo``, ``answers``, ``held_out``, ``seconds``,
    ``figure``) plus ``models`` (the policies, π_ref, r_φ, the tokenizer).
    """
    cfg = _config(quick, seed, overrides, sft_checkpoint)
    clock = Stopwatch()
    data = toy_preferences.preference_dataset(seed)
    dirs = {stage: os.path.join(output_dir, stage) for stage in ("sft", "reward", "ppo", "dpo")}
    for path in dirs.values():                       # refuse a used directory now, not after SFT
        check_output_dir(path, overwrite)
    sft_model, tokenizer = _sft_stage(data, cfg, dirs["sft"], sft_checkpoint, show_progress, overwrite, print_fn)
    reference = frozen_copy(sft_model)               # π_ref = π^SFT, frozen; both methods start from it
    clock.lap("sft")
    rm = _reward_stage(reference, tokenizer, data, cfg, dirs["reward"], show_progress, overwrite)
    scorer = reward_model_scorer(rm.model, tokenizer.pad_token_id)
    clock.lap("reward_model")
    measure = _measurer(reference, scorer, tokenizer, data, cfg, "train")
    print_fn(f"ppo-gpt: PPO, {cfg['ppo_steps']} iterations of {cfg['prompts_per_step']} prompts × "
             f"{cfg['group_size']} samples, {cfg['ppo_epochs']} updates each, β = {cfg['beta']:g}")
    ppo_policy = frozen_copy(sft_model)
    ppo = train_ppo(ppo_policy, reference, scorer, tokenizer, _prompts(data["train"]), cfg, seed, measure,
                    show_progress)
    clock.lap("ppo")
    print_fn(f"ppo-gpt: DPO, {cfg['dpo_steps']} steps of {cfg['dpo_batch_size']} pairs, β = {cfg['beta']:g}")
    dpo_trainer = _dpo_trainer(frozen_copy(sft_model), reference, tokenizer, data, cfg, dirs["dpo"], seed)
    dpo = train_dpo(dpo_trainer, cfg, measure, show_progress)
    clock.lap("dpo")
    policies = {"sft": reference, "ppo": ppo_policy, "dpo": dpo_trainer.model}
    held_out_measure = _measurer(reference, scorer, tokenizer, data, cfg, "eval")
    held_out = _held_out(policies, dpo_trainer, rm, held_out_measure, data, cfg)
    answers = _answers(policies, tokenizer, cfg)
    for name in ("ppo", "dpo"):
        save_checkpoint(os.path.join(dirs[name], "final"), policies[name], tokenizer=tokenizer,
                        extra={"trainer": name, "config": cfg})
    clock.lap("measure")
    result = {"config": cfg, "ppo": _curves(ppo), "dpo": _curves(dpo), "answers": answers, "held_out": held_out,
              "budget": _budget(cfg, len(_prompts(data["train"])), dpo_trainer, rm), "seconds": clock.seconds(),
              "figure": None}
    result["reward_hacking"] = {name: reward_hacking(result[name]) for name in ("ppo", "dpo")}
    print_fn(format_report(result))
    if figure and importlib.util.find_spec("matplotlib") is not None:
        result["figure"] = plot_ppo_gpt(result, os.path.join(output_dir, "figures", "ppo_vs_dpo.png"))
        print_fn(f"ppo-gpt: figure written to {result['figure']}")
    result["models"] = {**policies, "reference": reference, "reward_model": rm.model, "tokenizer": tokenizer}
    return result


# ---- several seeds --------------------------------------------------------------------------

#: who a seed row measures (π_ref, and both methods trained from it) and on which prompts
METHODS = ("reference", "ppo", "dpo")
SPLITS = ("train", "held_out")


def run_ppo_gpt_seeds(seeds, quick=False, output_dir="runs/ppo_gpt", figure=True, show_progress=True, print_fn=print,
                      overwrite=False, **overrides):
    """``run_ppo_gpt`` on every seed, each under ``output_dir/seed-<n>`` with its own data split,
    π^SFT, r_φ, PPO and DPO runs and samples; then one row per seed and the spread.

    Returns {seeds, config (without the seed), per_seed (``seed_row`` of each run), spread (of each
    column of ``flat_row``: n, mean, sd, se, min, max), reward_hacking {ppo, dpo}: the seeds each
    is flagged on, table (Markdown, printed), runs (every seed's result, without its models), figure}.
    With ``figure``, every seed's curves in one figure, ``output_dir/figures/ppo_vs_dpo.png``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: give at least one seed")

    def run(seed):
        result = run_ppo_gpt(seed=seed, quick=quick, output_dir=os.path.join(output_dir, f"seed-{seed}"), figure=False,
                             show_progress=show_progress, print_fn=print_fn, overwrite=overwrite, **overrides)
        result.pop("models")
        return result

    rows, results = spread.over_seeds(seeds, run, lambda r: {k: v for k, v in seed_row(r).items() if k != "seed"},
                                      print_fn)
    flat = [flat_row(r) for r in rows]
    out = {"seeds": seeds, "config": {k: v for k, v in results[0]["config"].items() if k != "seed"},
           "per_seed": rows, "spread": spread.spreads(flat, [k for k in flat[0] if k != "seed"]),
           "reward_hacking": {m: [r["seed"] for r in rows if r["reward_hacking"][m]["flagged"]]
                              for m in ("ppo", "dpo")},
           "table": format_seed_table(rows), "runs": results, "figure": None}
    print_fn(out["table"])
    if figure and importlib.util.find_spec("matplotlib") is not None:
        out["figure"] = plot_ppo_gpt(out, os.path.join(output_dir, "figures", "ppo_vs_dpo.png"))
        print_fn(f"ppo-gpt: figure written to {out['figure']}")
    return out


def seed_row(result):
    """One run's final numbers: for π_ref, PPO and DPO, on the train prompts both methods trained on
    (π_ref: the first measurement, the same for both runs) and on held-out prompts, E[r_φ] and
    KL(π_θ‖π_ref) of sampled answers with their standard errors, the gold ``judge``'s shares, the
    mean length and the number of samples; each method's ``reward_hacking`` check; the ``budget``."""
    def at(curve, k):
        return {key: curve[key][k] for key in curve if key != "train"}

    held = result["held_out"]["sampled"]
    measured = {"reference": (at(result["ppo"], 0), held["sft"]), "ppo": (at(result["ppo"], -1), held["ppo"]),
                "dpo": (at(result["dpo"], -1), held["dpo"])}
    row = {"seed": result["config"]["seed"]}
    for method, (train, held_out) in measured.items():
        row[method] = {"train": {k: train[k] for k in held_out}, "held_out": dict(held_out)}
    return {**row, "reward_hacking": result["reward_hacking"], "budget": result["budget"]}


def flat_row(row):
    """A ``seed_row`` as flat numbers, "method.split.measure" (the judge's: "method.split.judge.preferred"),
    with the paired differences "ppo_minus_dpo.split.reward" and ".kl" of the same seed."""
    out = {"seed": row["seed"]}
    for method in METHODS:
        for split in SPLITS:
            m = row[method][split]
            out.update({f"{method}.{split}.{key}": m[key] for key in ("reward", "kl", "length")})
            out.update({f"{method}.{split}.judge.{k}": m["judge"][k] for k in toy_preferences.JUDGEMENTS})
    for split in SPLITS:
        for key in ("reward", "kl"):
            out[f"ppo_minus_dpo.{split}.{key}"] = row["ppo"][split][key] - row["dpo"][split][key]
    return out


def format_seed_table(rows):
    """The per-seed tables (train prompts, held-out prompts) with the spread, and the reward-hacking checks."""
    flat = [flat_row(r) for r in rows]
    lines = []
    for split, title in (("train", "train prompts (both methods trained on them)"),
                         ("held_out", "held-out prompts (never trained on)")):
        columns = [(f"{m}.{split}.reward", f"r_φ {label}", ".3f") for m, label in
                   (("reference", "π_ref"), ("ppo", "PPO"), ("dpo", "DPO"))]
        columns += [(f"{m}.{split}.kl", f"KL {label}", ".3f") for m, label in (("ppo", "PPO"), ("dpo", "DPO"))]
        columns += [(f"{m}.{split}.judge.preferred", f"y_w {label}", ".3f") for m, label in
                    (("reference", "π_ref"), ("ppo", "PPO"), ("dpo", "DPO"))]
        columns += [(f"ppo_minus_dpo.{split}.reward", "r_φ PPO − DPO", "+.3f"),
                    (f"ppo_minus_dpo.{split}.kl", "KL PPO − DPO", "+.3f")]
        lines += [f"\n{title}: E[r_φ] and KL(π_θ‖π_ref) (nats) of sampled answers, the judge's share of y_w's rule",
                  spread.seed_table(flat, columns)]
    lines.append("\nalong training, on the train prompts (r_φ up while the judge's y_w share falls?):")
    lines += [f"  seed {r['seed']} " + describe_hacking(m.upper(), r["reward_hacking"][m]) for r in rows
              for m in ("ppo", "dpo")]
    return "\n".join(lines).lstrip("\n")


def _prompts(records):
    """The distinct prompts of ``records``, in their (seeded, shuffled) order."""
    return list(dict.fromkeys(r["prompt"] for r in records))


def _measurer(reference, scorer, tokenizer, data, cfg, split):
    """``measure(policy)``: ``measure_policy`` on the first ``eval_prompts`` prompts of ``split``,
    always from the same seed."""
    prompts, seed = _prompts(data[split])[:cfg["eval_prompts"]], _int_seed(cfg["seed"], 13)
    return lambda policy: measure_policy(policy, reference, scorer, tokenizer, prompts, cfg["eval_samples"], seed,
                                         cfg["max_new_tokens"])


def _config(quick, seed, overrides, sft_checkpoint):
    cfg = dict(QUICK if quick else DEFAULTS)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise TypeError(f"run_ppo_gpt: unknown argument(s) {unknown}; expected some of {sorted(cfg)}")
    cfg.update(overrides, seed=checks.integer(seed, "seed", low=0), quick=bool(quick),
               sft_checkpoint=None if sft_checkpoint is None else os.fspath(sft_checkpoint))
    checks.positive(cfg["beta"], "beta")
    return cfg


def _common(cfg, output_dir, seed, show_progress, overwrite):
    """The TrainingConfig fields every stage shares."""
    return dict(output_dir=output_dir, max_length=cfg["block_size"], max_prompt_length=min(64, cfg["block_size"] - 1),
                seed=seed, show_progress=show_progress, overwrite_output_dir=overwrite, group_by_length=True)


def _sft_stage(data, cfg, output_dir, checkpoint, show_progress, overwrite, print_fn):
    """π^SFT: loaded from ``checkpoint`` (its tokenizer and size replace the config's), or trained for
    ``sft_steps`` on both answers of every train pair (``toy_preferences.sft_corpus``). No early
    stop on the validation loss: π_ref should say the train answers, which RLHF then ranks."""
    if checkpoint is not None:
        model, tokenizer = load_model(checkpoint)
        cfg.update(tokenizer=type(tokenizer).__name__, **{k: getattr(model.config, k) for k in
                                                          ("n_layer", "n_head", "n_embd", "block_size")})
        print_fn(f"ppo-gpt: π_ref = π^SFT from {checkpoint} ({model.num_params():,} parameters)")
        return model, tokenizer
    seed, tokenizer = cfg["seed"], toy_tokenizer(cfg["tokenizer"], cfg["seed"])
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"]), seed=seed)
    print_fn(f"ppo-gpt: seed {seed}; SFT of a GPT {cfg['n_layer']} layers × {cfg['n_embd']} channels "
             f"({model.num_params():,} parameters, {cfg['tokenizer']} tokens), {cfg['sft_steps']} steps")
    SFTTrainer(model, SFTConfig(max_steps=cfg["sft_steps"], learning_rate=cfg["sft_lr"],
                                per_device_train_batch_size=cfg["sft_batch_size"], logging_steps=10,
                                warmup_steps=min(20, cfg["sft_steps"] // 10),
                                **_common(cfg, output_dir, seed, show_progress, overwrite)),
               train_dataset=toy_preferences.sft_corpus(seed, "train"), tokenizer=tokenizer).train()
    return model, tokenizer


def _reward_stage(reference, tokenizer, data, cfg, output_dir, show_progress, overwrite):
    """r_φ: the Bradley–Terry reward model on the SFT body, fit to the train pairs (DPO paper eq. 2)."""
    seed = cfg["seed"]
    rm = RewardTrainer(RewardModel(reference, seed=seed), RewardConfig(
        max_steps=cfg["rm_steps"], learning_rate=cfg["rm_lr"], per_device_train_batch_size=cfg["rm_batch_size"],
        warmup_steps=min(10, cfg["rm_steps"] // 10), logging_steps=1, eval_steps=cfg["rm_eval_every"],
        metric_for_best_model="eval/loss", load_best_model_at_end=True, early_stopping_patience=cfg["patience"],
        **_common(cfg, output_dir, seed, show_progress, overwrite)),
        train_dataset=data["train"], eval_dataset=data["validation"], tokenizer=tokenizer)
    rm.train()
    return rm


def _dpo_trainer(policy, reference, tokenizer, data, cfg, output_dir, seed):
    return DPOTrainer(policy, reference, DPOConfig(
        max_steps=cfg["dpo_steps"], learning_rate=cfg["dpo_lr"], beta=cfg["beta"],
        per_device_train_batch_size=cfg["dpo_batch_size"], warmup_steps=min(10, cfg["dpo_steps"] // 10),
        precompute_ref_log_probs=True, **_common(cfg, output_dir, seed, False, True)),
        train_dataset=data["train"], tokenizer=tokenizer)


def _answers(policies, tokenizer, cfg):
    """Greedy answers to the notes' three prompts under each policy, and what each answer is."""
    out = {}
    for prompt in toy_preferences.NOTES_PROMPTS:
        out[prompt] = {}
        for name, model in policies.items():
            answer = greedy_answer(model, tokenizer, prompt, cfg["max_new_tokens"])
            out[prompt][name] = answer
            out[prompt][name + "_is"] = notes_verdict(prompt, answer)
    return out


def _held_out(policies, dpo_trainer, rm, measure, data, cfg):
    """On the held-out split: r_φ(y_w) > r_φ(y_l), the implicit reward β log π_θ/π_ref of each policy
    (RLHF's optimum satisfies the same identity as DPO's, DPO paper eq. 5; before training every
    r̂ is 0, a tie), and ``measure`` of π_ref and of both policies on held-out prompts."""
    records = data["eval"]
    out = {"pairs": len(records), "reward_model_accuracy": pair_metrics(*reward_model_scores(rm, records))["accuracy"]}
    for name in ("ppo", "dpo"):
        trainer = DPOTrainer(policies[name], dpo_trainer.ref_model, DPOConfig(
            output_dir=dpo_trainer.args.output_dir, beta=cfg["beta"], max_length=dpo_trainer.args.max_length,
            max_prompt_length=dpo_trainer.args.max_prompt_length, show_progress=False), tokenizer=dpo_trainer.tokenizer)
        m = implicit_reward_metrics(trainer, records)
        out[f"{name}_implicit_reward_accuracy"] = m["implicit_reward_accuracy"]
        out[f"{name}_logp_accuracy"] = m["logp_accuracy"]
    out["sampled"] = {name: measure(model) for name, model in policies.items()}
    return out


def _budget(cfg, n_prompts, dpo_trainer, rm):
    """What each method consumed: PPO's r_φ queries and AdamW updates, DPO's pairs and steps, r_φ's own fit.

    Both learn from the same train pairs: DPO directly, PPO through r_φ, which was fit to them."""
    iterations, per_iteration = cfg["ppo_steps"], min(cfg["prompts_per_step"], n_prompts) * cfg["group_size"]
    return {"ppo": {"iterations": iterations, "reward_queries": iterations * per_iteration,
                    "updates": iterations * cfg["ppo_epochs"], "train_prompts": n_prompts},
            "dpo": {"updates": dpo_trainer.total_steps,
                    "pairs_seen": _examples_seen(dpo_trainer, dpo_trainer.total_steps),
                    "distinct_pairs": len(dpo_trainer.train_features)},
            "reward_model": {"steps": rm.state["step"], "best_step": rm.state["counters"].get("best_step"),
                             "pairs_seen": _examples_seen(rm, rm.state["step"]),
                             "distinct_pairs": len(rm.train_features)}}


def _examples_seen(trainer, steps):
    """How many examples the first ``steps`` batches of ``trainer`` hold (an epoch's last batch may be short)."""
    return sum(len(trainer.batch_for_step(step)) for step in range(steps))


def _curves(history):
    """The measured rows as columns ({"step": [...], "reward": [...], ...}), and the training rows."""
    rows = history["measured"]
    out = {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}
    train = [{k: v for k, v in row.items() if k != "updates"} for row in history["train"]]
    for row, src in zip(train, history["train"]):
        if "updates" in src:          # PPO: the first and the last update of the iteration
            first, last = src["updates"][0], src["updates"][-1]
            row.update(loss=first["loss"], first_ratio_min=first["ratio_min"], first_ratio_max=first["ratio_max"],
                       clip_fraction=last["clip_fraction"], grad_norm=first["grad_norm"])
    out["train"] = {key: [row[key] for row in train] for key in (train[0] if train else {})}
    return out


# ---- the report and the figure --------------------------------------------------------------

def format_report(result):
    """The printed summary of ``run_ppo_gpt`` (a string): each curve's ends, the held-out numbers, answers."""
    cfg, h = result["config"], result["held_out"]
    lines = [f"\nβ = {cfg['beta']:g}; sampled at temperature 1, {cfg['eval_samples']} responses to each of "
             f"{cfg['eval_prompts']} prompts; y_w, y_l, neither: the shares of samples that follow y_w's rule, "
             f"y_l's or neither, by the toy data's gold judge",
             f"  {'':<22}{'step':>6}{'E[r_φ] ± s.e.':>18}{'KL(π_θ‖π_ref), nats':>22}{'y_w':>7}{'y_l':>7}{'neither':>9}"]

    def row(label, step, m):
        j = m["judge"]
        return (f"  {label:<22}{step:>6}{m['reward']:>10.3f} ± {m['reward_stderr']:<5.3f}"
                f"{m['kl']:>14.3f} ± {m['kl_stderr']:<5.3f}{j['preferred']:>7.2f}{j['rejected']:>7.2f}{j['neither']:>9.2f}")

    lines.append("train prompts (what both methods train on):")
    for name in ("ppo", "dpo"):
        c = result[name]
        for k, label in ((0, "π_ref (start)"), (len(c["step"]) - 1, name.upper())):
            lines.append(row(label, c["step"][k], {key: c[key][k] for key in c if key != "train"}))
    lines.append("held-out prompts (never trained on), at the end:")
    for name in ("sft", "ppo", "dpo"):
        lines.append(row("π_ref" if name == "sft" else name.upper(), "", h["sampled"][name]))
    lines.append(f"held-out pairs ({h['pairs']}): r_φ accuracy {h['reward_model_accuracy']:.3f}; implicit-reward "
                 f"accuracy β log π_θ/π_ref: PPO {h['ppo_implicit_reward_accuracy']:.3f}, "
                 f"DPO {h['dpo_implicit_reward_accuracy']:.3f}")
    b = result["budget"]
    lines.append(f"budgets: PPO {b['ppo']['reward_queries']:,} r_φ queries, {b['ppo']['updates']} updates; DPO "
                 f"{b['dpo']['pairs_seen']:,} pairs seen ({b['dpo']['distinct_pairs']} distinct), "
                 f"{b['dpo']['updates']} updates; r_φ, which PPO learns through, was fit on the same "
                 f"{b['reward_model']['distinct_pairs']} pairs ({b['reward_model']['steps']} steps)")
    lines.append("along training, on the train prompts:")
    lines += ["  " + describe_hacking(name.upper(), result["reward_hacking"][name]) for name in ("ppo", "dpo")]
    lines.append("greedy answers to the notes' prompts:")
    for prompt, a in result["answers"].items():
        lines.append(f"  Q: {prompt}")
        for name in ("sft", "ppo", "dpo"):
            lines.append(f"     {name.upper():<4} {a[name]!r:<64} [{a[name + '_is']}]")
    s = result["seconds"]
    lines.append(f"ppo-gpt: {s['total']:.0f} s (SFT {s['sft']:.0f} s, reward model {s['reward_model']:.0f} s, "
                 f"PPO {s['ppo']:.0f} s, DPO {s['dpo']:.0f} s, held-out measures and answers {s['measure']:.0f} s)")
    if cfg.get("quick"):
        lines.append("(--quick trains a one-layer model with 16 channels for a few steps: it shows the pipeline, "
                     "not the result)")
    return "\n".join(lines)


def plot_ppo_gpt(result, path="runs/ppo_gpt/figures/ppo_vs_dpo.png"):
    """Reward, KL and the gold judge against training step, PPO beside DPO (a column each), to ``path``.

    Rows: E_{y∼π_θ}[r_φ(x, y)] on the measured train prompts, KL(π_θ ‖ π_ref) in nats from the same
    samples, and the judge's share of those samples that follow y_w's rule, each ± one standard
    error (a share's: √(p(1 − p)/n)). ``result``: one ``run_ppo_gpt`` result, or a
    ``run_ppo_gpt_seeds`` result, whose seeds are drawn one colour each. Returns ``path``.
    """
    runs = result.get("runs") or [result]
    fig, axes = new_figure(3, 2, panel_size=(4.6, 3.1))
    xlabels = {"ppo": "PPO iteration (one batch of samples)", "dpo": "DPO step (one batch of pairs)"}
    rows = (("reward", "E[r_φ(x, y)] (reward-model units)", "reward"),
            ("kl", "KL(π_θ‖π_ref) (nats per response)", "KL to π_ref"),
            ("preferred", "share following y_w's rule", "gold judge: y_w's rule"))
    for col, name in enumerate(("ppo", "dpo")):
        for i, run in enumerate(runs):
            c = run[name]
            step = np.asarray(c["step"])
            p, n = np.array([j["preferred"] for j in c["judge"]]), np.asarray(c["samples"])
            curves = {"reward": (np.asarray(c["reward"]), np.asarray(c["reward_stderr"])),
                      "kl": (np.asarray(c["kl"]), np.asarray(c["kl_stderr"])),
                      "preferred": (p, np.sqrt(p * (1 - p) / n))}
            color = f"C{i if len(runs) > 1 else col}"
            for row, (key, ylabel, title) in enumerate(rows):
                ax = axes[2 * row + col]
                y, e = curves[key]
                ax.plot(step, y, marker="o", markersize=3, color=color,
                        label=f"seed {run['config']['seed']}" if len(runs) > 1 else None)
                ax.fill_between(step, y - e, y + e, color=color, alpha=0.15, linewidth=0)
                ax.set_xlabel(xlabels[name])
                ax.set_ylabel(ylabel, fontsize="small")
                ax.set_title(f"{name.upper()}: {title}", fontsize="medium")
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    cfg, seeds = runs[0]["config"], [r["config"]["seed"] for r in runs]
    fig.suptitle(f"RLHF by PPO vs DPO on the tiny GPT (β = {cfg['beta']:g}, seed{'s' if len(seeds) > 1 else ''} "
                 f"{', '.join(map(str, seeds))}; {cfg['eval_prompts']} train prompts × {cfg['eval_samples']} samples)",
                 fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)
