"""RLHF by reinforcement learning on the closed-form toy problem, beside DPO, measured against the exact π*_β.

``closed_form.py`` shows DPO reaching π* from preferences alone. This module
does what the notes say RLHF must do instead, because sampling is not
differentiable ("The RLHF objective"): sample responses from π_θ, score each
with a reward, and follow a policy gradient of

    J(π) = E_{x, y∼π}[r(x, y)] − β KL(π(·|x) ‖ π_ref(·|x))                  (DPO paper eq. 3)

on the same enumerated response sets (``closed_form.make_problem``), where
π*_β, J(π*) = β log Z and the reward–KL frontier are exact.

The policy is the same tabular softmax over whole responses that DPO trains
(π_θ(y|x) = softmax_y θ[x, y], started at π_ref), so the methods differ only in
what they learn from. Each RL step samples K responses per prompt from π_θ and
penalizes each with the KL **per sequence**:

    r̃(x, y) = r(x, y) − β (log π_old(y|x) − log π_ref(y|x))                (rl.kl_penalized_reward)

Language-model trainers (InstructGPT's PPO, TRL, OpenRLHF) put −β(log π − log π_ref)
on every token and r on the last one; with γ = 1 that sums to the same r̃
(tested in test_rl.py), and a policy over whole responses has a single action,
so per sequence is what they compute here. The baseline is the mean r̃ of the
other K − 1 samples of the same prompt (leave-one-out, as in RLOO), so the
estimate stays unbiased; the advantage is Â = r̃ − b.

- REINFORCE: one Adam step per batch on ``rl.reinforce_loss``.
- PPO: ``epochs`` passes over each batch, in ``minibatches`` pieces, on the
  clipped surrogate ``rl.ppo_clip_loss`` with ratio π_θ/π_old; Â and r̃ are
  fixed when the batch is sampled, as in PPO implementations.

Both use Adam with a cosine decay of the learning rate to 0: at a constant rate
PPO's sixteen updates per batch left θ jittering around π* (KL(π* ‖ π_θ) near
1e-2 at β = 1 and 2). At π* the penalized reward is the same β log Z(x) for
every response, so Â and the estimator's variance vanish there: the noise dies
out as the policy converges.

What each arm learns from, and what it costs. The arms that query the true r
("reinforce", "ppo") get the exact, noise-free reward of every response they
sample; DPO gets only which response of a pair won. The fair RL arms learn from
DPO's information: a tabular Bradley–Terry reward model r_φ is fit to the very
pairs DPO trains on (``fit_reward_model``), and REINFORCE and PPO climb r_φ
("reinforce_reward_model", "ppo_reward_model"). Costs are counted in units the
arms share (``costs``): reward queries (a sampled response scored by r), queries
to r_φ, comparisons (preference pairs) and Adam updates. PPO takes epochs ×
minibatches = 16 updates per batch of samples, so 16 times REINFORCE's; DPO and
r_φ take one full-batch step over every pair per update. ``equal_query_comparison``
sets REINFORCE against PPO at equal reward queries along their runs.

What this toy can and cannot test. The DPO paper's Figure 2 compares DPO and PPO
on a language model, where PPO climbs a learned reward through a network and the
loss surfaces are not convex. Here the policy is a table and DPO's loss is convex
in it, so DPO converges to the maximum-likelihood fit of its pairs, π* of that
fit's reward; PPO with the exact reward converges towards π* itself. The gap
between those two measures information (a reward on every sample against a
verdict on pairs), not the algorithms. Given the same information, PPO on r_φ
lands where DPO does. The toy tests the derivations and the estimators, not
which method wins on a language model.

``run_rlhf`` measures, on one seed's problem (``rlhf_seeds`` on several):

1. KL(π* ‖ π_θ) and J(π*) − J(π_θ) = β KL(π_θ ‖ π*) of every arm, REINFORCE and
   PPO on r and on r_φ, and DPO (DPO also at several numbers of pairs), with
   each arm's costs, and REINFORCE against PPO at equal reward queries;
2. the two-stage pipeline: r_φ fit on the pairs DPO sees, its optimum π*_r_φ
   (the limit those pairs set for DPO and for RL on r_φ alike), PPO against r_φ;
3. the reward–KL frontier E_{π*_β}[r] against KL(π*_β ‖ π_ref), and where DPO,
   PPO and PPO on r_φ land for several β;
4. KL(π*_β ‖ π_ref) over a grid of β (it falls as β grows:
   dKL/dβ = −Var_{π*_β}(r)/β³);
5. deterministic preferences (the higher-reward response always wins). With
   the default 200,000 pairs every response but each prompt's best loses some
   comparison (``only_the_best_never_loses``, true on seeds 0–2), so the mass
   DPO leaves on rejected responses is 1 − π_θ(best y): its steady fall is π_θ
   collapsing onto the best response, at every β. IPO settles, at its own
   optimum on these pairs (``ipo_optimal_policy``), not at π*_β. Conservative
   DPO has a finite optimum too (each margin where σ(βh) = 1 − ε), but at
   β = 0.1 that margin is log 9 / 0.1 ≈ 22 nats and 2,000 steps do not reach it:
   its mass on rejected responses is still falling at the end on seeds 0–2
   (from 0.44–0.51 at step 500 to 0.06–0.10 at step 2,000); at β = 0.5 and 2 it
   has settled by step 500;
6. a known fraction of flipped labels: DPO, conservative DPO (label smoothing
   ε) and robust DPO (ε = the flip rate), by KL(π* ‖ π_θ).
"""

import math
import os
import sys
import time

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rl, rlhf
from dpo_np.experiments import spread, toy_problem
from dpo_np.experiments.closed_form import aggregate_pairs, make_problem, run_closed_form
from dpo_np.experiments.plots import save_figure
from dpo_np.optim import AdamW, cosine_schedule
from dpo_np.progress import progress as progress_bar

PROBLEM = dict(vocab_size=3, length=3, n_prompts=4, reference_scale=0.5, reward_scale=0.5)   # closed-form's
DEFAULT_BETA = 0.5
DEFAULT_STEPS = 1000                # RL steps (batches sampled)
DEFAULT_SAMPLES = 64                # K responses per prompt per step: 4 × 64 = 256 reward queries a step
DEFAULT_LR = 0.05
DEFAULT_EPOCHS = 4
DEFAULT_MINIBATCHES = 4
DEFAULT_CLIP = 0.2
DEFAULT_PAIRS = 2_000_000           # DPO's and the reward model's preference pairs (closed-form's default)
DEFAULT_PAIR_GRID = (2_000, 8_000, 32_000, 128_000, 512_000)
DEFAULT_FRONTIER_BETAS = (0.125, 0.25, 0.5, 1.0, 2.0)
DEFAULT_DETERMINISTIC_BETAS = (0.1, 0.5, 2.0)
DEFAULT_DETERMINISTIC_STEPS = 2000
DEFAULT_DETERMINISTIC_PAIRS = 200_000
DEFAULT_FLIP_PAIRS = (5_000, 2_000_000)
DEFAULT_FLIPS = (0.0, 0.1, 0.2, 0.3)
DEFAULT_SMOOTHINGS = (0.0, 0.1, 0.2)
CDPO_SMOOTHING = 0.1                # conservative DPO's ε in the deterministic-preference comparison
DEFAULT_REWARD_MODEL_STEPS = 1000   # full-batch Adam steps fitting the tabular r_φ
#: the RL arms at the headline β: the true reward, or r_φ fit to DPO's own pairs (the same information as DPO)
RL_ARMS = ("reinforce", "ppo", "reinforce_reward_model", "ppo_reward_model")

#: seconds instead of a minute: every measurement, on far less data and far fewer steps (a first look, and tests)
QUICK = dict(steps=60, samples=8, pairs=20_000, pair_grid=(2_000,), dpo_steps=100, frontier_betas=(0.5, 2.0),
             deterministic_betas=(0.5, 2.0), deterministic_steps=100, deterministic_pairs_n=5_000,
             flip_pairs=(2_000,), flips=(0.0, 0.2), smoothings=(0.0, 0.1))


# -- sampling and the policy-gradient step --------------------------------------------

def sample_responses(logprobs, k, gen):
    """K responses per prompt from π(·|x): (P, K) indices, by inverse CDF on uniform draws.

    ``logprobs`` (P, N) log π(y|x); ``gen`` a NumPy generator (``backend.rng``).
    """
    cdf = np.cumsum(np.exp(backend.to_numpy(logprobs)), axis=1)              # (P, N)
    u = gen.random((cdf.shape[0], k))                                       # (P, K)
    # the number of CDF entries below u is the sampled index; the clip guards a last entry a rounding below 1
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=-1), cdf.shape[1] - 1)


def advantages(rewards, old_logprobs, ref_logprobs, y, beta):
    """Â = r̃ − b for a batch y (P, K): r̃ the KL-penalized reward per sequence, b the leave-one-out mean."""
    x = np.arange(y.shape[0])[:, None]
    r_tilde = rl.kl_penalized_reward(rewards[x, y], old_logprobs[x, y], ref_logprobs[x, y], beta)   # (P, K)
    return r_tilde - rl.group_baseline(r_tilde)


def surrogate(theta, y, old_logprobs, adv, method, clip_eps=DEFAULT_CLIP, rows=None):
    """The loss a step descends: REINFORCE's or PPO's over the samples y (P, K), or over the flat ``rows``.

    ``theta`` (P, N) Tensor; ``old_logprobs`` (P, N) log π_old, the sampling policy; ``adv`` Â (P, K).
    """
    x = np.repeat(np.arange(y.shape[0]), y.shape[1])
    yf, Af = y.ravel(), adv.ravel()
    if rows is not None:
        x, yf, Af = x[rows], yf[rows], Af[rows]
    logp = ag.log_softmax(theta, axis=-1)[x, yf]                             # log π_θ(y|x) of each sample
    if method == "reinforce":
        return rl.reinforce_loss(logp, Af)
    return rl.ppo_clip_loss(logp, old_logprobs[x, yf], Af, clip_eps)


def train_policy_gradient(ref_logprobs, rewards, beta, method="ppo", steps=DEFAULT_STEPS, samples=DEFAULT_SAMPLES,
                          lr=DEFAULT_LR, epochs=DEFAULT_EPOCHS, minibatches=DEFAULT_MINIBATCHES,
                          clip_eps=DEFAULT_CLIP, seed=0, log_every=5, star_logprobs=None, true_rewards=None):
    """Maximize J(π_θ) with sampled responses scored by ``rewards``: REINFORCE or PPO, from π_θ = π_ref.

    ``rewards`` (P, N) is what each query returns: the true r, or a reward model r_φ.
    ``star_logprobs`` and ``true_rewards`` (default: π*_β of ``rewards``, and ``rewards``)
    are only used to measure. Returns a dict: ``queries``, ``kl`` (mean_x KL(π* ‖ π_θ)),
    ``suboptimality`` (mean_x β KL(π_θ ‖ π*) = J(π*) − J(π_θ), J of the true reward),
    ``reward`` (mean_x E_{π_θ}[true r]), ``kl_ref`` (mean_x KL(π_θ ‖ π_ref)), lists over the
    logged steps; ``logprobs`` (P, N) of the final π_θ; ``updates`` (Adam steps taken).
    """
    method = checks.choice(method, "method", ("reinforce", "ppo"))
    beta = checks.positive(beta, "beta")
    steps = checks.integer(steps, "steps", low=1)
    samples = checks.integer(samples, "samples", low=2)          # the leave-one-out baseline needs 2
    lr = checks.positive(lr, "lr")
    epochs = checks.integer(epochs, "epochs", low=1)
    minibatches = checks.integer(minibatches, "minibatches", low=1)
    clip_eps = checks.positive(clip_eps, "clip_eps")
    log_every = checks.integer(log_every, "log_every", low=1)
    # the tables, samples and measurements live on the host; π_θ's parameters on the device
    ref, r = backend.to_numpy(ref_logprobs, np.float64), backend.to_numpy(rewards, np.float64)
    star = backend.to_numpy(rlhf.optimal_policy(ref, r, beta) if star_logprobs is None else star_logprobs)
    truth = r if true_rewards is None else backend.to_numpy(true_rewards)
    P, N = ref.shape
    if method == "ppo" and minibatches > P * samples:
        raise ValueError(f"minibatches={minibatches} is more than the {P * samples} samples of a batch")
    passes = epochs * minibatches if method == "ppo" else 1
    total_updates = steps * passes
    gen = backend.rng(seed)
    theta = backend.asarray(ref.copy())                           # π_θ starts at π_ref exactly (on the device)
    adam = AdamW({"theta": theta}, lr=lr, weight_decay=0.0)
    history = {"queries": [], "kl": [], "suboptimality": [], "reward": [], "kl_ref": []}

    def measure(queries):
        logp = backend.to_numpy(ag.log_softmax(theta, axis=-1).data, np.float64)
        history["queries"].append(queries)
        history["kl"].append(float(rlhf.kl_divergence(star, logp).mean()))
        history["suboptimality"].append(float(rlhf.suboptimality(logp, star, beta).mean()))
        history["reward"].append(float((np.exp(logp) * truth).sum(axis=-1).mean()))
        history["kl_ref"].append(float(rlhf.kl_divergence(logp, ref).mean()))

    update = 0
    for step in range(steps):
        if step % log_every == 0:
            measure(step * P * samples)
        old = backend.to_numpy(ag.log_softmax(theta, axis=-1).data, np.float64)   # π_old: the policy that samples
        y = sample_responses(old, samples, gen)                   # (P, K): P·K reward queries
        adv = advantages(r, old, ref, y, beta)
        for _ in range(epochs if method == "ppo" else 1):
            order = gen.permutation(P * samples) if method == "ppo" else None
            for rows in (np.array_split(order, minibatches) if method == "ppo" else (None,)):
                th = ag.Tensor(theta, requires_grad=True)
                surrogate(th, y, old, adv, method, clip_eps, rows).backward()
                adam.step({"theta": th.grad}, lr=cosine_schedule(update, lr, 0, total_updates))
                update += 1
    measure(steps * P * samples)
    logp = backend.to_numpy(ag.log_softmax(theta, axis=-1).data, np.float64)
    return {**history, "logprobs": logp, "updates": update}


def fit_reward_model(prompt, chosen, rejected, counts, shape, steps=DEFAULT_REWARD_MODEL_STEPS, lr=DEFAULT_LR):
    """A tabular reward model r_φ(x, y) fit by maximum likelihood on preference triples (DPO paper eq. 2).

    ``prompt``, ``chosen``, ``rejected``, ``counts``: the distinct triples and how often each
    occurs (``closed_form.aggregate_pairs``); full-batch Adam on the count-weighted
    Bradley–Terry loss from r_φ = 0. Bradley–Terry sees only differences within a prompt,
    so each prompt's free constant is set to a mean of 0. Returns r_φ, ``shape`` (P, N).
    """
    phi = backend.xp().zeros(shape)
    adam = AdamW({"phi": phi}, lr=lr, weight_decay=0.0)
    for _ in range(checks.integer(steps, "steps", low=1)):
        r_phi = ag.Tensor(phi, requires_grad=True)
        rlhf.bradley_terry_loss(r_phi[prompt, chosen], r_phi[prompt, rejected], weights=counts).backward()
        adam.step({"phi": r_phi.grad})
    phi = backend.to_numpy(phi)
    return phi - phi.mean(axis=1, keepdims=True)


# -- the frontier and β -------------------------------------------------------------------

def frontier_point(ref_logprobs, rewards, beta):
    """(mean_x KL(π*_β ‖ π_ref), mean_x E_{π*_β}[r]): where the optimum for β sits in the reward–KL plane."""
    star = backend.to_numpy(rlhf.optimal_policy(ref_logprobs, rewards, beta))
    return (float(rlhf.kl_divergence(star, ref_logprobs).mean()),
            float((np.exp(star) * backend.to_numpy(rewards)).sum(axis=-1).mean()))


def frontier_reward(kl, ref_logprobs, rewards, low=1e-4, high=1e4):
    """The most expected reward any policy reaches with mean_x KL(π ‖ π_ref) = ``kl``.

    π*_β maximizes E[r] − β KL, so among policies with its KL none has more reward:
    the frontier is the curve β ↦ (KL(π*_β ‖ π_ref), E_{π*_β}[r]). The KL falls
    monotonically in β, so the β with the asked KL is found by bisection on log β.
    A KL beyond the frontier's largest (β = ``low``) gets that end's reward.
    """
    kl = checks.number(kl, "kl", low=0.0)
    lo, hi = math.log(low), math.log(high)
    if kl >= frontier_point(ref_logprobs, rewards, low)[0]:
        return frontier_point(ref_logprobs, rewards, low)[1]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if frontier_point(ref_logprobs, rewards, math.exp(mid))[0] > kl:
            lo = mid                                                # too much KL: a larger β
        else:
            hi = mid
    return frontier_point(ref_logprobs, rewards, math.exp(0.5 * (lo + hi)))[1]


def frontier_gap(logprobs, ref_logprobs, rewards):
    """(KL(π ‖ π_ref), E_π[r], frontier reward at that KL − E_π[r] ≥ 0), means over prompts."""
    kl_ref = float(rlhf.kl_divergence(logprobs, ref_logprobs).mean())
    reward = float((np.exp(backend.to_numpy(logprobs)) * backend.to_numpy(rewards)).sum(axis=-1).mean())
    return kl_ref, reward, frontier_reward(kl_ref, ref_logprobs, rewards) - reward


def kl_of_optimum(ref_logprobs, rewards, betas):
    """mean_x KL(π*_β ‖ π_ref) for each β: it falls as β grows (dKL/dβ = −Var_{π*_β}(r)/β³)."""
    return [frontier_point(ref_logprobs, rewards, checks.positive(b, "beta"))[0] for b in betas]


# -- preference data with known defects ---------------------------------------------------

def deterministic_pairs(ref_logprobs, rewards, n_pairs, seed):
    """Pairs y1, y2 ~ π_ref labelled by the reward alone: the higher r(x, y) always wins.

    The same pair is always preferred the same way (P(y_w ≻ y_l) = 1, Bradley–Terry with
    an infinite reward scale). Pairs of one response with itself tell nothing and are dropped.
    """
    d = toy_problem.sample_preference_pairs(ref_logprobs, rewards, n_pairs, seed=seed)
    x, a, b = (np.asarray(backend.to_numpy(d[k])) for k in ("prompt", "chosen", "rejected"))
    rewards = backend.to_numpy(rewards)
    first = rewards[x, a] > rewards[x, b]
    keep = rewards[x, a] != rewards[x, b]
    return {"prompt": x[keep], "chosen": np.where(first, a, b)[keep], "rejected": np.where(first, b, a)[keep]}


def flip_labels(data, fraction, seed):
    """The same pairs with each label swapped independently with probability ``fraction``."""
    fraction = checks.number(fraction, "fraction", low=0.0, high=1.0)
    w, l = (np.asarray(backend.to_numpy(data[k])) for k in ("chosen", "rejected"))
    flip = backend.rng(seed).random(len(w)) < fraction
    return {"prompt": np.asarray(backend.to_numpy(data["prompt"])),
            "chosen": np.where(flip, l, w), "rejected": np.where(flip, w, l)}


def rejected_mass(policy, data):
    """mean_x Σ_{y rejected in some pair for x} π(y|x): the probability left on responses that lose."""
    P, N = policy.shape
    ever = np.zeros((P, N), dtype=bool)
    ever[np.asarray(data["prompt"]), np.asarray(data["rejected"])] = True
    return float((policy * ever).sum(axis=1).mean())


def best_response_mass(policy, rewards):
    """mean_x π(argmax_y r(x, y) | x): the probability on each prompt's best response."""
    return float(policy[np.arange(policy.shape[0]), np.asarray(rewards).argmax(axis=1)].mean())


def ipo_optimal_policy(ref_logprobs, data, beta):
    """log π (P, N) of the tabular policy that minimizes IPO's loss on the pairs ``data``.

    IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17) minimizes the mean over pairs of (h − τ)²,
    τ = 1/(2β), h = ρ(y_w) − ρ(y_l) with ρ = log π_θ − log π_ref (the softmax's normalizer cancels
    inside a prompt). Setting ∂/∂ρ(y) = 0 gives, per prompt, a graph-Laplacian system

        L ρ = τ d,   L = Σ_pairs c (e_w − e_l)(e_w − e_l)ᵀ,   d = Σ_pairs c (e_w − e_l),

    c counting how often each (y_w, y_l) occurs: a least-squares fit of every margin to τ. When
    the pairs connect all of a prompt's responses, ρ is unique up to one constant, which the
    normalization removes: log π = log_softmax(log π_ref + ρ). Unlike π*_β, this optimum depends
    on which pairs were drawn and how often, not on the reward's size. A prompt whose responses
    the pairs do not all connect has no unique optimum (the mass between the pieces is free, as
    notebook 05 shows for DPO): ValueError naming it.
    """
    ref = np.asarray(backend.to_numpy(ref_logprobs), dtype=np.float64)
    beta = checks.positive(beta, "beta")
    P, N = ref.shape
    x, w, l, c = (np.asarray(backend.to_numpy(a)) for a in aggregate_pairs(data["prompt"], data["chosen"],
                                                                            data["rejected"], N))
    c = c.astype(np.float64)
    L, d = np.zeros((P, N, N)), np.zeros((P, N))
    for i, j, sign in ((w, w, 1.0), (l, l, 1.0), (w, l, -1.0), (l, w, -1.0)):
        np.add.at(L, (x, i, j), sign * c)
    np.add.at(d, (x, w), c)
    np.add.at(d, (x, l), -c)
    rho = np.zeros((P, N))
    for p in range(P):
        reached = _connected_to_first(L[p] != 0)
        if not reached.all():
            raise ValueError(f"ipo_optimal_policy: the pairs of prompt {p} leave {int((~reached).sum())} of its "
                             f"{N} responses unconnected to the rest, so no unique optimum exists")
        rho[p, 1:] = np.linalg.solve(L[p, 1:, 1:], (0.5 / beta) * d[p, 1:])   # ρ(y_0) = 0 fixes the constant
    logits = ref + rho
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def _connected_to_first(adjacent):
    """Which nodes of an undirected graph (N, N) bool adjacency a walk from node 0 reaches."""
    reached = np.zeros(adjacent.shape[0], dtype=bool)
    reached[0] = True
    while True:
        grown = reached | adjacent[reached].any(axis=0)
        if (grown == reached).all():
            return reached
        reached = grown


def equal_query_comparison(reinforce, ppo, queries_per_step, passes):
    """REINFORCE against PPO at the same number of reward queries, along their logged curves.

    Returns the fraction of logged points (after the start) where REINFORCE's KL(π* ‖ π_θ) is
    the lower; the first query count from which PPO's stays lower to the end (None if it never
    does); and PPO's learning rate there, as a fraction of its peak (cosine decay over its
    ``passes`` updates per step).
    """
    q = np.asarray(ppo["queries"])
    a, b = np.asarray(reinforce["kl"])[q > 0], np.asarray(ppo["kl"])[q > 0]
    q = q[q > 0]
    not_ahead = np.nonzero(~(b < a))[0]
    first = int(not_ahead[-1]) + 1 if len(not_ahead) else 0
    total = int(q[-1]) // queries_per_step * passes
    ahead_from = int(q[first]) if first < len(q) else None
    return {"reinforce_ahead_fraction": float(np.mean(a < b)), "ppo_ahead_from_queries": ahead_from,
            "ppo_ahead_from_fraction_of_run": None if ahead_from is None else ahead_from / float(q[-1]),
            "ppo_lr_fraction_then": None if ahead_from is None else
            cosine_schedule(ahead_from // queries_per_step * passes, 1.0, 0, total)}


# -- the experiment -----------------------------------------------------------------------

def _kl(p_logprobs, q_logprobs):
    return float(rlhf.kl_divergence(p_logprobs, q_logprobs).mean())


def run_rlhf(seed=0, beta=DEFAULT_BETA, steps=DEFAULT_STEPS, samples=DEFAULT_SAMPLES, lr=DEFAULT_LR,
             epochs=DEFAULT_EPOCHS, minibatches=DEFAULT_MINIBATCHES, clip_eps=DEFAULT_CLIP, pairs=DEFAULT_PAIRS,
             pair_grid=DEFAULT_PAIR_GRID, dpo_steps=1000, frontier_betas=DEFAULT_FRONTIER_BETAS,
             deterministic_betas=DEFAULT_DETERMINISTIC_BETAS, deterministic_steps=DEFAULT_DETERMINISTIC_STEPS,
             deterministic_pairs_n=DEFAULT_DETERMINISTIC_PAIRS, flip_pairs=DEFAULT_FLIP_PAIRS, flips=DEFAULT_FLIPS,
             smoothings=DEFAULT_SMOOTHINGS, progress=True):
    """Every measurement of the module docstring on the problem of ``seed``; returns a JSON-ready dict.

    Keys: config; final_kl {reinforce, ppo, dpo}: mean_x KL(π*_β ‖ π_θ) at the end; queries {reinforce,
    ppo: reward queries, dpo: comparisons}; final_kl_all and final_suboptimality (mean_x β KL(π_θ ‖ π*_β)
    = J(π*) − J(π_θ)) for every arm of ``RL_ARMS`` and dpo; costs {arm: {information, reward_queries,
    reward_model_queries, comparisons, updates}}; equal_queries (``equal_query_comparison``);
    curves {each arm of ``RL_ARMS``: {queries, kl, suboptimality, reward, kl_ref}, dpo: {pairs, kl}};
    two_stage {...}; frontier {curve: {beta, kl, reward}, points:
    [{method, beta, kl_ref, reward, gap, kl_star}], trajectories}; beta_direction {beta, kl,
    decreasing, strictly, large_beta_variance, small_beta_limit};
    deterministic {pairs, steps, never_rejected (responses per prompt that lose no pair),
    only_the_best_never_loses, rows: [{loss, beta, label_smoothing, step, rejected_mass and
    best_response_mass (per logged step), optimal_rejected_mass (π*_β's), ipo_optimal_rejected_mass
    (IPO's own optimum's; None when the pairs leave it undetermined), kl_to_ipo_optimum}]};
    label_flips {rows: [{pairs, flip, loss, label_smoothing, kl}]};
    seconds (per kind of run, and the total). The pairs are drawn with seeds ``seed`` + 2 (as
    ``run_closed_form`` draws them, so DPO and the reward model see the same ones), + 3
    (deterministic), + 4 and + 5 (flips); the RL samples with ``seed`` + 10.
    With ``progress``, one indicator on stderr counts the runs.
    """
    start = time.perf_counter()
    seed = checks.integer(seed, "seed", low=0)
    beta = checks.positive(beta, "beta")
    checks.flag(progress, "progress")
    pairs = checks.integer(pairs, "pairs", low=1)
    checks.integer(samples, "samples", low=2)        # the RL arms' check, here before the DPO runs take their time
    dpo_steps = checks.integer(dpo_steps, "dpo_steps", low=1)
    pair_grid = sorted({checks.integer(n, "pair_grid", low=1) for n in pair_grid if n != pairs})
    frontier_betas = sorted({checks.positive(b, "frontier_betas") for b in frontier_betas} | {beta})
    deterministic_betas = [checks.positive(b, "deterministic_betas") for b in deterministic_betas]
    deterministic_steps = checks.integer(deterministic_steps, "deterministic_steps", low=1)
    deterministic_pairs_n = checks.integer(deterministic_pairs_n, "deterministic_pairs_n", low=1)
    flip_pairs = [checks.integer(n, "flip_pairs", low=1) for n in flip_pairs]
    flips = [checks.number(f, "flips", low=0.0, high=0.5, high_open=True) for f in flips]
    smoothings = [checks.number(e, "smoothings", low=0.0, high=0.5, high_open=True) for e in smoothings]
    rl_kwargs = dict(steps=steps, samples=samples, lr=lr, epochs=epochs, minibatches=minibatches,
                     clip_eps=clip_eps)
    dpo_kwargs = dict(**PROBLEM, seed=seed, steps=dpo_steps, progress=False, log_every=max(1, dpo_steps // 100))

    _, ref, r, _ = make_problem(PROBLEM["vocab_size"], PROBLEM["length"], PROBLEM["n_prompts"], beta, seed,
                                PROBLEM["reference_scale"], PROBLEM["reward_scale"])
    ref, r = backend.to_numpy(ref, np.float64), backend.to_numpy(r, np.float64)      # host tables
    star = {b: backend.to_numpy(rlhf.optimal_policy(ref, r, b)) for b in frontier_betas}
    pair_data = toy_problem.sample_preference_pairs(ref, r, pairs, seed=seed + 2)   # what DPO samples too
    x, w, l, counts = aggregate_pairs(pair_data["prompt"], pair_data["chosen"], pair_data["rejected"], r.shape[1])
    det_data = deterministic_pairs(ref, r, deterministic_pairs_n, seed + 3)
    flip_base = {n: toy_problem.sample_preference_pairs(ref, r, n, seed=seed + 4) for n in flip_pairs}

    results, seconds = {}, {}

    def timed(name, fn):
        def run():
            t = time.perf_counter()
            results[name] = fn()
            kind = name.split(":")[0]                   # seconds per kind of run, summed
            seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - t
        return name, run

    def policy_gradient(method, b, rewards):
        return lambda: train_policy_gradient(ref, rewards(), b, method, seed=seed + 10, star_logprobs=star[b],
                                             true_rewards=r, **rl_kwargs)

    jobs = [timed("reward_model", lambda: fit_reward_model(x, w, l, counts, r.shape))]
    for b in frontier_betas:
        jobs.append(timed(f"dpo:{b}", lambda b=b: run_closed_form(beta=b, pairs=pairs, **dpo_kwargs)))
        for method in ("reinforce", "ppo") if b == beta else ("ppo",):
            jobs.append(timed(f"{method}:{b}", policy_gradient(method, b, lambda: r)))
        jobs.append(timed(f"ppo_reward_model:{b}", policy_gradient("ppo", b, lambda: results["reward_model"])))
        if b == beta:
            jobs.append(timed(f"reinforce_reward_model:{b}",
                              policy_gradient("reinforce", b, lambda: results["reward_model"])))
    jobs += [timed(f"dpo_pairs:{n}", lambda n=n: run_closed_form(beta=beta, pairs=n, **dpo_kwargs)) for n in pair_grid]
    for b in deterministic_betas:
        for loss, eps in (("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", CDPO_SMOOTHING)):
            jobs.append(timed(f"deterministic:{loss}:{eps}:{b}", lambda b=b, loss=loss, eps=eps: run_closed_form(
                beta=b, data=det_data, loss_type=loss, label_smoothing=eps, log_policies=True,
                **{**dpo_kwargs, "steps": deterministic_steps, "log_every": max(1, deterministic_steps // 40)})))
    for n in flip_pairs:
        for f in flips:
            data = flip_labels(flip_base[n], f, seed + 5)
            for eps in smoothings:
                jobs.append(timed(f"flips:{n}:{f}:sigmoid:{eps}", lambda data=data, eps=eps: run_closed_form(
                    beta=beta, data=data, label_smoothing=eps, **dpo_kwargs)))
            if f > 0:
                jobs.append(timed(f"flips:{n}:{f}:robust:{f}", lambda data=data, f=f: run_closed_form(
                    beta=beta, data=data, loss_type="robust", label_smoothing=f, **dpo_kwargs)))
    bar = progress_bar(jobs, desc="rlhf", file=sys.stderr) if progress else jobs
    for name, run in bar:
        if progress:
            bar.set_postfix(run=name)
        run()

    # 1. the three methods at β, against what each consumed
    dpo = results[f"dpo:{beta}"]
    curves = {m: {k: results[f"{m}:{beta}"][k] for k in ("queries", "kl", "suboptimality", "reward", "kl_ref")}
              for m in RL_ARMS}
    grid = sorted([(n, results[f"dpo_pairs:{n}"]["kl"][-1]) for n in pair_grid] + [(pairs, dpo["kl"][-1])])
    curves["dpo"] = {"pairs": [n for n, _ in grid], "kl": [k for _, k in grid]}
    final_kl = {"reinforce": curves["reinforce"]["kl"][-1], "ppo": curves["ppo"]["kl"][-1], "dpo": dpo["kl"][-1]}
    queries = {"reinforce": curves["reinforce"]["queries"][-1], "ppo": curves["ppo"]["queries"][-1], "dpo": pairs}
    # the same error for every arm, and what each consumed, in the units they share
    final_kl_all = {**{m: curves[m]["kl"][-1] for m in RL_ARMS}, "dpo": dpo["kl"][-1]}
    final_suboptimality = {**{m: curves[m]["suboptimality"][-1] for m in RL_ARMS}, "dpo": dpo["suboptimality"][-1]}
    rm_steps = DEFAULT_REWARD_MODEL_STEPS
    costs = {m: {"information": "true reward" if m in ("reinforce", "ppo") else "comparisons, through r_φ",
                 "reward_queries": results[f"{m}:{beta}"]["queries"][-1] if m in ("reinforce", "ppo") else 0,
                 "reward_model_queries": results[f"{m}:{beta}"]["queries"][-1] if m.endswith("reward_model") else 0,
                 "comparisons": pairs if m.endswith("reward_model") else 0,
                 "updates": results[f"{m}:{beta}"]["updates"] + (rm_steps if m.endswith("reward_model") else 0)}
             for m in RL_ARMS}
    costs["dpo"] = {"information": "comparisons", "reward_queries": 0, "reward_model_queries": 0,
                    "comparisons": pairs, "updates": dpo_steps}
    equal_queries = equal_query_comparison(curves["reinforce"], curves["ppo"], PROBLEM["n_prompts"] * samples,
                                           epochs * minibatches)

    # 2. two stages against one: both aim at π* of the fitted reward, π*_{r_φ} = π_ref e^{r_φ/β}/Z
    r_phi = results["reward_model"]
    rm_star = backend.to_numpy(rlhf.optimal_policy(ref, r_phi, beta))
    dpo_logp = np.log(dpo["policy"])
    ppo_rm_logp = results[f"ppo_reward_model:{beta}"]["logprobs"]
    centred = r - r.mean(axis=1, keepdims=True)
    two_stage = {"pairs": pairs, "distinct_triples": int(len(counts)),
                 "reward_model_error": float(np.sqrt(np.mean((r_phi - centred) ** 2))),
                 "kl_star_to_reward_model_optimum": _kl(star[beta], rm_star),
                 "kl_star_to_ppo_reward_model": curves["ppo_reward_model"]["kl"][-1],
                 "kl_star_to_dpo": final_kl["dpo"],
                 "kl_reward_model_optimum_to_dpo": _kl(rm_star, dpo_logp),
                 "kl_reward_model_optimum_to_ppo_reward_model": _kl(rm_star, ppo_rm_logp),
                 "reward_queries": curves["ppo_reward_model"]["queries"][-1]}

    # 3. the frontier, and where each method's final policy lands
    curve_betas = np.logspace(-2, 1.5, 80)
    curve = [frontier_point(ref, r, b) for b in curve_betas]
    points = []
    for b in frontier_betas:
        for method, logp in (("dpo", np.log(results[f"dpo:{b}"]["policy"])),
                             ("ppo", results[f"ppo:{b}"]["logprobs"]),
                             ("ppo_reward_model", results[f"ppo_reward_model:{b}"]["logprobs"])):
            kl_ref, reward, gap = frontier_gap(logp, ref, r)
            points.append({"method": method, "beta": b, "kl_ref": kl_ref, "reward": reward, "gap": gap,
                           "kl_star": _kl(star[b], logp)})
    trajectories = {f"{m}:{b}": {"kl_ref": results[f"{m}:{b}"]["kl_ref"], "reward": results[f"{m}:{b}"]["reward"]}
                    for b in frontier_betas for m in ("dpo", "ppo")}
    frontier = {"curve": {"beta": curve_betas.tolist(), "kl": [c[0] for c in curve], "reward": [c[1] for c in curve]},
                "points": points, "trajectories": trajectories}

    # 4. β's direction
    direction_betas = np.logspace(-2, 2, 41)
    kls = kl_of_optimum(ref, r, direction_betas)
    # the two ends: KL ≈ Var_π_ref(r)/2β² for large β; −log π_ref(argmax r) as β → 0 (ties aside)
    variance = float(((np.exp(ref) * (r - (np.exp(ref) * r).sum(1, keepdims=True)) ** 2).sum(1)).mean())
    # "decreasing": never rises; "strictly": falls at every step of the grid (at β so small that π*_β
    # already sits on the best response, KL changes by less than rounding and the steps are flat)
    beta_direction = {"beta": direction_betas.tolist(), "kl": kls, "decreasing": bool(np.all(np.diff(kls) <= 0)),
                      "strictly": bool(np.all(np.diff(kls) < 0)),
                      "large_beta_variance": variance,
                      "small_beta_limit": float(-ref[np.arange(len(r)), r.argmax(1)].mean())}

    # 5. deterministic preferences
    det_rows = []
    for b in deterministic_betas:
        optimal = rejected_mass(np.exp(backend.to_numpy(rlhf.optimal_policy(ref, r, b))), det_data)
        try:
            ipo_optimum = np.exp(ipo_optimal_policy(ref, det_data, b))
        except ValueError:                      # too few pairs to connect every response: no unique optimum
            ipo_optimum = None
        for loss, eps in (("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", CDPO_SMOOTHING)):
            run = results[f"deterministic:{loss}:{eps}:{b}"]
            name = {"sigmoid": "dpo" if eps == 0 else "cdpo", "ipo": "ipo"}[loss]
            det_rows.append({"loss": name, "beta": b, "label_smoothing": eps, "step": run["step"],
                             "rejected_mass": [rejected_mass(p, det_data) for p in run["policies"]],
                             "best_response_mass": [best_response_mass(p, r) for p in run["policies"]],
                             "optimal_rejected_mass": optimal,
                             "ipo_optimal_rejected_mass": None if ipo_optimum is None else
                             rejected_mass(ipo_optimum, det_data),
                             "kl_to_ipo_optimum": None if ipo_optimum is None else
                             _kl(np.log(ipo_optimum), np.log(run["policy"]))})
    rejected = np.zeros(r.shape, dtype=bool)
    rejected[det_data["prompt"], det_data["rejected"]] = True
    # when only the best response never loses, the mass left on losers is 1 − π(best): its fall is a collapse
    deterministic = {"pairs": int(len(det_data["prompt"])), "steps": deterministic_steps, "rows": det_rows,
                     "never_rejected": (~rejected).sum(axis=1).tolist(),
                     "only_the_best_never_loses": bool(np.all(~rejected == (r == r.max(axis=1, keepdims=True))))}

    # 6. flipped labels
    flip_rows = []
    for n in flip_pairs:
        for f in flips:
            for eps in smoothings:
                flip_rows.append({"pairs": n, "flip": f, "loss": "dpo" if eps == 0 else "cdpo", "label_smoothing": eps,
                                  "kl": results[f"flips:{n}:{f}:sigmoid:{eps}"]["kl"][-1]})
            if f > 0:
                flip_rows.append({"pairs": n, "flip": f, "loss": "robust", "label_smoothing": f,
                                  "kl": results[f"flips:{n}:{f}:robust:{f}"]["kl"][-1]})

    seconds["total"] = time.perf_counter() - start
    return {
        "config": {"problem": PROBLEM, "seed": seed, "beta": beta, **rl_kwargs, "pairs": pairs,
                   "pair_grid": pair_grid, "dpo_steps": dpo_steps, "frontier_betas": frontier_betas,
                   "deterministic_betas": deterministic_betas, "deterministic_steps": deterministic_steps,
                   "deterministic_pairs": deterministic_pairs_n, "flip_pairs": flip_pairs, "flips": flips,
                   "smoothings": smoothings, "kl_penalty": "per sequence", "baseline": "leave-one-out group mean"},
        "final_kl": final_kl,
        "queries": queries,
        "final_kl_all": final_kl_all,
        "final_suboptimality": final_suboptimality,
        "costs": costs,
        "equal_queries": equal_queries,
        "curves": curves,
        "two_stage": two_stage,
        "frontier": frontier,
        "beta_direction": beta_direction,
        "deterministic": deterministic,
        "label_flips": {"rows": flip_rows},
        "seconds": seconds,
    }


#: the per-seed table of ``rlhf_seeds``: (row key, title, format)
SEED_COLUMNS = (("kl_reinforce", "REINFORCE", ".2e"), ("kl_ppo", "PPO", ".2e"), ("kl_dpo", "DPO", ".3e"),
                ("kl_ppo_reward_model", "PPO on r_φ", ".3e"), ("kl_reinforce_reward_model", "REINFORCE on r_φ", ".3e"),
                ("kl_pairs_limit", "KL(π*‖π*_r_φ)", ".3e"), ("reinforce_ahead_fraction", "REINFORCE ahead", ".2f"))


def seed_row(result):
    """One seed's numbers as a flat dict: every arm's KL(π* ‖ π_θ) and J(π*) − J(π_θ), the limit the pairs
    set, the equal-query comparison, and each deterministic run's rejected mass at a quarter of its steps
    and at the end (does it still fall?)."""
    row = {f"kl_{m}": v for m, v in result["final_kl_all"].items()}
    row.update({f"suboptimality_{m}": v for m, v in result["final_suboptimality"].items()})
    row["kl_pairs_limit"] = result["two_stage"]["kl_star_to_reward_model_optimum"]
    row["reinforce_ahead_fraction"] = result["equal_queries"]["reinforce_ahead_fraction"]
    for d in result["deterministic"]["rows"]:
        name = f"{d['loss']}_beta{d['beta']:g}"
        row[f"{name}_rejected_mass_quarter"] = d["rejected_mass"][(len(d["rejected_mass"]) - 1) // 4]
        row[f"{name}_rejected_mass_end"] = d["rejected_mass"][-1]
    return row


def rlhf_seeds(seeds, print_fn=None, **settings):
    """``run_rlhf`` on every seed (each its own problem, pairs and samples).

    Returns {seeds, final_kl: {reinforce, ppo, dpo}, each method's *worst* (largest) final
    KL(π* ‖ π_θ) over the seeds; final_kl_per_seed: {method: [one per seed]}; per_seed (rows of
    ``seed_row``); spread (per column: n, mean, sd, se, min, max); table (Markdown); runs (every
    seed's full result)}.
    """
    rows, results = spread.over_seeds(seeds, lambda seed: run_rlhf(seed=seed, progress=False, **settings),
                                      seed_row, print_fn)
    per_seed = {m: [r["final_kl"][m] for r in results] for m in ("reinforce", "ppo", "dpo")}
    return {"seeds": list(seeds), "final_kl": {m: max(v) for m, v in per_seed.items()}, "final_kl_per_seed": per_seed,
            "per_seed": rows, "spread": spread.spreads(rows, [k for k in rows[0] if k != "seed"]),
            "table": "final KL(π*‖π_θ) per seed, and the fraction of logged points where REINFORCE's is below PPO's "
                     "at equal reward queries\n" + spread.seed_table(rows, SEED_COLUMNS),
            "runs": results}


# -- printing ---------------------------------------------------------------------------------

def print_rlhf_report(result, file=None):
    """The measured numbers of ``run_rlhf`` as tables."""
    out = sys.stdout if file is None else file
    cfg = result["config"]
    P = cfg["problem"]
    print(f"RLHF on the closed-form toy problem: V={P['vocab_size']}, L={P['length']} → "
          f"{P['vocab_size'] ** P['length']} responses × {P['n_prompts']} prompts, β = {cfg['beta']:g}, "
          f"seed {cfg['seed']}", file=out)
    print(f"KL penalty {cfg['kl_penalty']}; baseline: {cfg['baseline']}; {cfg['samples']} samples per prompt "
          f"per step, {cfg['steps']} steps; PPO: {cfg['epochs']} epochs × {cfg['minibatches']} minibatches, "
          f"clip {cfg['clip_eps']:g}", file=out)
    print(f"\n{'method':<20} {'learns from':<26} {'true-r queries':>14} {'r_φ queries':>11} {'comparisons':>11} "
          f"{'updates':>7} {'KL(π*‖π_θ)':>11} {'J(π*) − J(π_θ)':>14}", file=out)
    labels = {"reinforce": "REINFORCE", "ppo": "PPO", "reinforce_reward_model": "REINFORCE on r_φ",
              "ppo_reward_model": "PPO on r_φ", "dpo": "DPO"}
    for name, label in labels.items():
        c = result["costs"][name]
        print(f"{label:<20} {c['information']:<26} {c['reward_queries']:>14,} {c['reward_model_queries']:>11,} "
              f"{c['comparisons']:>11,} {c['updates']:>7,} {result['final_kl_all'][name]:>11.3e} "
              f"{result['final_suboptimality'][name]:>14.3e}", file=out)
    print("(updates: Adam steps; PPO takes epochs × minibatches of them per batch of samples, DPO and r_φ one "
          "full-batch step over every pair; the arms on r_φ add r_φ's own fit)", file=out)
    e = result["equal_queries"]
    print(f"at equal reward queries, REINFORCE's KL is the lower at {e['reinforce_ahead_fraction']:.0%} of the logged "
          f"points; " + (f"PPO's stays lower from {e['ppo_ahead_from_queries']:,} queries on "
                         f"({e['ppo_ahead_from_fraction_of_run']:.0%} of the run), when its learning rate has "
                         f"decayed to {e['ppo_lr_fraction_then']:.1%} of its peak" if e["ppo_ahead_from_queries"]
                         else "PPO's is never the lower to the end"), file=out)

    c = result["curves"]
    print("\nKL(π*‖π_θ) against what was consumed: DPO one run per number of comparisons; RL along its run, "
          "at the last logged point within that many reward queries", file=out)
    print(f"{'queries or pairs':>16} {'DPO':>10} {'REINFORCE':>10} {'PPO':>10} {'REINFORCE on r_φ':>17} "
          f"{'PPO on r_φ':>11}", file=out)
    rl_queries = np.asarray(c["ppo"]["queries"])
    dpo_kl = dict(zip(c["dpo"]["pairs"], c["dpo"]["kl"]))
    for n in sorted(set(dpo_kl) | {int(rl_queries[-1])}):
        i = int(np.searchsorted(rl_queries, n, side="right")) - 1
        cells = [f"{dpo_kl[n]:>10.3e}" if n in dpo_kl else f"{'—':>10}"]
        cells += [f"{c[m]['kl'][i]:>{w}.3e}" if n <= rl_queries[-1] else f"{'—':>{w}}"
                  for m, w in (("reinforce", 10), ("ppo", 10), ("reinforce_reward_model", 17),
                               ("ppo_reward_model", 11))]
        print(f"{n:>16,} " + " ".join(cells), file=out)

    t = result["two_stage"]
    print(f"\ntwo stages against one, on the same {t['pairs']:,} pairs ({t['distinct_triples']:,} distinct):",
          file=out)
    print(f"  reward model r_φ: RMS error against r (each centred per prompt) {t['reward_model_error']:.4f}", file=out)
    print(f"  KL(π* ‖ π*_r_φ) = {t['kl_star_to_reward_model_optimum']:.3e}   the limit the pairs set for both",
          file=out)
    print(f"  KL(π* ‖ PPO on r_φ) = {t['kl_star_to_ppo_reward_model']:.3e} ({t['reward_queries']:,} queries to r_φ); "
          f"KL(π* ‖ DPO) = {t['kl_star_to_dpo']:.3e}", file=out)
    print(f"  how far each is from the fitted reward's optimum π*_r_φ: KL(π*_r_φ ‖ DPO) = "
          f"{t['kl_reward_model_optimum_to_dpo']:.1e}, KL(π*_r_φ ‖ PPO on r_φ) = "
          f"{t['kl_reward_model_optimum_to_ppo_reward_model']:.1e}", file=out)

    print("\nthe reward–KL frontier: final policies against π*_β (gap = frontier reward at the policy's KL − "
          "its reward)", file=out)
    print(f"{'β':>6} {'method':<17} {'KL(π‖π_ref)':>12} {'E_π[r]':>9} {'gap':>10} {'KL(π*_β‖π)':>11}", file=out)
    for p in result["frontier"]["points"]:
        print(f"{p['beta']:>6g} {p['method']:<17} {p['kl_ref']:>12.5f} {p['reward']:>9.5f} {p['gap']:>10.2e} "
              f"{p['kl_star']:>11.2e}", file=out)

    d = result["beta_direction"]
    print(f"\nKL(π*_β ‖ π_ref) over {len(d['beta'])} β from {d['beta'][0]:g} to {d['beta'][-1]:g}: "
          f"{d['kl'][0]:.4f} → {d['kl'][-1]:.2e}, " + ("falling at every step" if d["strictly"] else
          "never rising" if d["decreasing"] else "NOT monotone"), file=out)

    det = result["deterministic"]
    print(f"\ndeterministic preferences ({det['pairs']:,} pairs, the higher reward always wins): probability left on "
          f"rejected responses, mean over prompts", file=out)
    steps = det["rows"][0]["step"]
    cols = sorted(set(np.linspace(0, len(steps) - 1, 5).astype(int)))
    print(f"{'β':>6} {'loss':<6} " + " ".join(f"{'step ' + str(steps[i]):>11}" for i in cols)
          + f" {'π*_β':>8} {'IPO opt.':>8} {'π_θ(best y)':>11}", file=out)
    for row in det["rows"]:
        print(f"{row['beta']:>6g} {row['loss']:<6} " + " ".join(f"{row['rejected_mass'][i]:>11.3e}" for i in cols)
              + f" {row['optimal_rejected_mass']:>8.3f} {_maybe(row['ipo_optimal_rejected_mass']):>8}"
              f" {row['best_response_mass'][-1]:>11.3f}", file=out)
    if det["only_the_best_never_loses"]:
        print("  every response but each prompt's best loses at least once, so the mass left on losers is "
              "1 − π_θ(best y): DPO's fall is a collapse onto the best response", file=out)

    print("\nflipped labels: KL(π* ‖ π_θ) after DPO (ε = 0), conservative DPO (label smoothing ε) and robust DPO "
          "(ε = flip rate)", file=out)
    rows = result["label_flips"]["rows"]
    for n in cfg["flip_pairs"]:
        print(f"  {n:,} pairs", file=out)
        for f in cfg["flips"]:
            cells = [f"{r['loss']} ε={r['label_smoothing']:g}: {r['kl']:.3e}" for r in rows
                     if r["pairs"] == n and r["flip"] == f]
            print(f"    flip {f:<4g} " + "   ".join(cells), file=out)


def _maybe(value, fmt=".3f"):
    return "—" if value is None else f"{value:{fmt}}"


# -- figures ----------------------------------------------------------------------------------

def _figure(ncols, width=5.0, height=4.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError('plotting needs matplotlib: pip install "dpo-np[plot]"') from err
    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _floor(values, floor=1e-12):
    return np.maximum(np.asarray(values, dtype=float), floor)      # a log axis cannot show 0 (or −1e−17)


def plot_rlhf(result, output_dir="runs/rlhf"):
    """Write the five figures of ``run_rlhf`` under ``output_dir``; returns their paths."""
    cfg = result["config"]
    paths = []

    # 1. convergence against cost
    fig, (ax,) = _figure(1, 7.5, 5)
    c = result["curves"]
    for name, label, ls in (("reinforce", "REINFORCE (true r)", "-"), ("ppo", "PPO (true r)", "-"),
                            ("reinforce_reward_model", f"REINFORCE on r_φ (fit on DPO's {cfg['pairs']:,} pairs)", "--"),
                            ("ppo_reward_model", f"PPO on r_φ (fit on DPO's {cfg['pairs']:,} pairs)", "--")):
        q = np.asarray(c[name]["queries"])
        ax.loglog(q[q > 0], _floor(c[name]["kl"])[q > 0], linestyle=ls, label=label)
    ax.loglog(c["dpo"]["pairs"], _floor(c["dpo"]["kl"]), "o-", color="black",
              label="DPO (one run per number of comparisons)")
    ax.axhline(result["two_stage"]["kl_star_to_reward_model_optimum"], color="grey", linestyle=":",
               label=f"KL(π* ‖ π*_r_φ): the limit of {cfg['pairs']:,} pairs")
    ax.axhline(c["reinforce"]["kl"][0], color="grey", linewidth=0.8, label="π_ref, where every method starts")
    ax.set_xlabel("reward queries (RL, to r or to r_φ) or comparisons (DPO), count")
    ax.set_ylabel("mean over prompts of KL(π*_β ‖ π_θ) (nats)")
    ax.set_title(f"RLHF by sampling vs DPO, β = {cfg['beta']:g}, seed {cfg['seed']}\n"
                 f"(dashed: the same information as DPO; solid: the exact reward, which DPO never sees)",
                 fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(output_dir, "rlhf_convergence.png")))

    # 2. the frontier (the gaps are ~1e−4 of the rewards: their own axis)
    fig, (ax, ax_gap) = _figure(2, 6.5, 4.8)
    fr = result["frontier"]
    ax.plot(fr["curve"]["kl"], fr["curve"]["reward"], color="black", linewidth=1.5, label="π*_β: the exact frontier")
    markers = {"dpo": ("o", "DPO"), "ppo": ("s", "PPO (true r)"), "ppo_reward_model": ("^", "PPO on r_φ")}
    for m, (marker, label) in markers.items():
        pts = [p for p in fr["points"] if p["method"] == m]
        ax.scatter([p["kl_ref"] for p in pts], [p["reward"] for p in pts], marker=marker, s=40,
                   facecolors="none", edgecolors=f"C{list(markers).index(m)}", label=f"{label}, final")
        ax_gap.semilogy([p["beta"] for p in pts], _floor([p["gap"] for p in pts], 1e-10), marker=marker,
                        label=label)
    for key, tr in fr["trajectories"].items():
        m = key.split(":")[0]
        ax.plot(tr["kl_ref"], tr["reward"], color=f"C{list(markers).index(m)}", linewidth=0.6, alpha=0.6)
    ax.set_xlabel("mean over prompts of KL(π ‖ π_ref) (nats)")
    ax.set_ylabel("mean over prompts of E_π[r] (reward units)")
    ax.set_title(f"reward vs KL, β ∈ {{{', '.join(f'{b:g}' for b in cfg['frontier_betas'])}}} (thin: training paths)",
                 fontsize="medium")
    ax.legend(fontsize="small")
    ax_gap.set_xscale("log")
    ax_gap.set_xticks(cfg["frontier_betas"], [f"{b:g}" for b in cfg["frontier_betas"]])
    ax_gap.minorticks_off()
    ax_gap.set_xlabel("β")
    ax_gap.set_ylabel("gap below the frontier (reward units)")
    ax_gap.set_title("distance below the frontier (floored at 1e−10)", fontsize="medium")
    ax_gap.legend(fontsize="small")
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(output_dir, "rlhf_frontier.png")))

    # 3. β's direction
    fig, (ax,) = _figure(1, 6.5, 4.5)
    d = result["beta_direction"]
    ax.loglog(d["beta"], d["kl"], marker=".", label="mean over prompts of KL(π*_β ‖ π_ref)")
    b = np.asarray(d["beta"])
    ax.loglog(b, d["large_beta_variance"] / (2 * b ** 2), color="grey", linestyle="--", linewidth=1,
              label="β → ∞: Var_π_ref(r) / 2β²")
    ax.axhline(d["small_beta_limit"], color="grey", linestyle=":", linewidth=1,
               label="β → 0: −log π_ref(best y), all mass on the best response")
    ax.set_ylim(min(d["kl"]) / 2, d["small_beta_limit"] * 2)
    ax.set_xlabel("β (strength of the KL penalty)")
    ax.set_ylabel("KL(π*_β ‖ π_ref) (nats)")
    ax.set_title("a larger β keeps the optimum closer to π_ref")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(output_dir, "beta_direction.png")))

    # 4. deterministic preferences
    det = result["deterministic"]
    betas = cfg["deterministic_betas"]
    fig, axes = _figure(len(betas), 4.6, 4.2)
    styles = {"dpo": ("-", "C0", "DPO"), "ipo": ("--", "C1", "IPO"),
              "cdpo": (":", "C2", f"cDPO (ε = {CDPO_SMOOTHING:g})")}
    for ax, b in zip(axes, betas):
        rows = [row for row in det["rows"] if row["beta"] == b]
        for row in rows:
            ls, color, label = styles[row["loss"]]
            ax.semilogy(row["step"], _floor(row["rejected_mass"]), linestyle=ls, color=color, label=label)
        ax.axhline(rows[0]["optimal_rejected_mass"], color="black", linewidth=0.8, label="π*_β of the true r")
        if rows[0]["ipo_optimal_rejected_mass"] is not None:
            ax.axhline(rows[0]["ipo_optimal_rejected_mass"], color="C1", linewidth=6, alpha=0.25,
                       label="IPO's own optimum on these pairs")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mass on losers = 1 − π_θ(best y)" if det.get("only_the_best_never_loses")
                      else "mass on rejected responses")
        ax.set_title(f"β = {b:g}", fontsize="medium")
        ax.legend(fontsize="small")
    fig.suptitle(f"deterministic preferences ({det['pairs']:,} pairs, the higher reward always wins): "
                 f"DPO's mass collapses onto the best response; IPO reaches its own optimum, not π*_β")
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(output_dir, "deterministic_preferences.png")))

    # 5. flipped labels
    rows = result["label_flips"]["rows"]
    fig, axes = _figure(len(cfg["flip_pairs"]), 5.2, 4.2)
    for ax, n in zip(axes, cfg["flip_pairs"]):
        variants = sorted({(r["loss"], r["label_smoothing"]) for r in rows if r["pairs"] == n and r["loss"] != "robust"},
                          key=lambda v: v[1])                       # DPO (ε = 0) first
        for loss, eps in variants:
            pts = [r for r in rows if r["pairs"] == n and r["loss"] == loss and r["label_smoothing"] == eps]
            ax.semilogy([r["flip"] for r in pts], [r["kl"] for r in pts], marker="o",
                        label="DPO" if loss == "dpo" else f"cDPO, ε = {eps:g}")
        pts = [r for r in rows if r["pairs"] == n and r["loss"] == "robust"]
        ax.semilogy([r["flip"] for r in pts], [r["kl"] for r in pts], marker="s", color="black", linestyle="--",
                    label="robust DPO, ε = flip rate")
        ax.set_xlabel("fraction of labels flipped")
        ax.set_ylabel("KL(π*_β ‖ π_θ) (nats)")
        ax.set_title(f"{n:,} pairs", fontsize="medium")
        ax.legend(fontsize="small")
    fig.suptitle(f"label noise: Bradley–Terry pairs with a known fraction flipped (β = {cfg['beta']:g})")
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(output_dir, "label_flips.png")))
    return paths
