"""Policy gradients in the notes' symbols: the RL machinery that DPO replaces.

The notes' RL set-up: an agent in state s_t draws an action a_t ~ π_θ(·|s_t),
receives a reward r_t and moves on; the policy is good when its expected
return is high. With a discount γ,

    J(θ) = E_{τ∼π_θ} [ Σ_t γ^t r_t ],        G_t = Σ_{k≥0} γ^k r_{t+k}  (the return from step t)

and the policy-gradient theorem turns the gradient of an expectation over
sampled trajectories into an expectation of something we can sample:

    ∇J(θ) = E_τ [ Σ_t γ^t (G_t − b(s_t)) ∇ log π_θ(a_t|s_t) ]             (REINFORCE, Williams 1992)

for any baseline b(s_t) that does not depend on a_t (it adds E[∇ log π] = 0
times a constant, so no bias, only less variance). Sampling is not
differentiable (the notes, "The RLHF objective"): the estimator differentiates
log π_θ of what was sampled instead, with the returns as fixed weights.

RLHF is the one-step case: the state is the prompt x, the action the whole
response y, the episode ends after it, and the reward carries the KL term of
J_RLHF (DPO paper eq. 3):

    r̃(x, y) = r(x, y) − β (log π_θ(y|x) − log π_ref(y|x)),   E_{y∼π_θ}[r̃] = J_RLHF(π_θ)

Treating r̃ as a fixed weight still gives the exact ∇J_RLHF: the derivative of
the penalty's own log π_θ contributes −β E[∇ log π_θ] = 0.

PPO (Schulman et al. 2017) reuses each batch for several epochs. Its samples
come from π_old, so it weighs each by the ratio ρ = π_θ/π_old and clips ρ to
[1 − ε, 1 + ε] so that a step cannot move far from where the samples came from.

The group-relative methods that followed sample K responses per prompt and let the group be its
own baseline, with no value function: RLOO (the leave-one-out mean, KL in the reward), GRPO (the
group's mean and standard deviation, KL as a separate per-token k3 term), Dr. GRPO (GRPO without
the division by the standard deviation or by the response length).

Each loss takes log-probabilities as plain arrays or autograd Tensors and
returns the same kind: the first axis runs over episodes (or samples), any
further axes over time steps, which are summed. Returns, advantages and
rewards are weights, never differentiated: pass them as plain arrays.
"""

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks


def _data(x):
    return x.data if isinstance(x, ag.Tensor) else x


def _array(x, name):
    """A plain float array of ``x`` (a Tensor's data): weights and rewards are constants here."""
    a = backend.xp().asarray(_data(x))
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a.astype(np.float64) if a.dtype.kind in "iu" else a


def _check_shape(want_name, want, **others):
    for name, x in others.items():
        if x is not None and tuple(_data(x).shape) != tuple(_data(want).shape):
            raise ValueError(f"{name} has shape {tuple(_data(x).shape)}, but {want_name} has shape "
                             f"{tuple(_data(want).shape)}: they must match")


def _episode_mean(terms, mask):
    """(1/B) Σ_i Σ_t m_it · terms_it: summed over time (axes ≥ 1), averaged over episodes (axis 0)."""
    if _data(terms).ndim == 0:
        raise ValueError("the log-probabilities need an episode axis (axis 0), got a scalar")
    if mask is not None:
        terms = ag.where(backend.xp().asarray(mask, dtype=bool), terms, 0.0)
    per_episode = terms.sum(axis=tuple(range(1, terms.ndim))) if terms.ndim > 1 else terms
    return per_episode.mean()


def discounted_returns(rewards, gamma):
    """G_t = Σ_{k≥0} γ^k r_{t+k} = r_t + γ G_{t+1}, over the last axis (time), as a plain array.

    Computed backwards with the recursion, one step per time step. Steps after
    an episode's end should hold reward 0 (padding), so they add nothing.
    """
    gamma = checks.number(gamma, "gamma", low=0.0, high=1.0)
    r = _array(rewards, "rewards")
    if r.ndim == 0:
        raise ValueError("rewards need a time axis (the last axis), got a scalar")
    G = backend.xp().zeros_like(r, dtype=np.result_type(r.dtype, np.float64))
    running = 0.0
    for t in range(r.shape[-1] - 1, -1, -1):
        running = r[..., t] + gamma * running
        G[..., t] = running
    return G


def reinforce_loss(logprobs, returns, baseline=None, mask=None):
    """L(θ) = −(1/B) Σ_i Σ_t m_it (G_it − b_it) log π_θ(a_it|s_it): the score-function surrogate.

    Its gradient is minus the REINFORCE estimate of ∇J (the policy-gradient
    theorem above): ∇L = −(1/B) Σ_i Σ_t (G − b) ∇ log π_θ(a|s). Its value is not
    J; only its gradient means something. For the exact gradient of a
    discounted J, pass γ^t G_t and γ^t b(s_t) (practice often drops γ^t, which
    estimates the gradient of a different, undiscounted-in-time objective).

    logprobs: log π_θ(a|s) of the sampled actions, (B,) or (B, T), array or Tensor.
    returns, baseline: G and b, same shape (b may be None: no baseline); plain arrays.
    mask: True at real steps, False at padding after an episode ended; None: all real.
    """
    G = _array(returns, "returns")
    _check_shape("logprobs", logprobs, returns=G, baseline=baseline, mask=mask)
    weight = G if baseline is None else G - _array(baseline, "baseline")
    out = -_episode_mean(ag.tensor(logprobs) * weight, mask)
    return out if isinstance(logprobs, ag.Tensor) else out.data


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_eps=0.2, mask=None):
    """L^CLIP(θ) = −(1/B) Σ min(ρ Â, clip(ρ, 1 − ε, 1 + ε) Â),  ρ = π_θ(a|s)/π_old(a|s).

    PPO's clipped surrogate (Schulman et al. 2017, eq. 7), with ρ computed as
    exp(log π_θ − log π_old). At θ = θ_old, ρ = 1 and ∇L equals the REINFORCE
    loss's gradient with Â as the weights (∇ρ = ρ ∇ log π_θ). Where the clipped
    term is the smaller one (Â > 0 and ρ > 1 + ε, or Â < 0 and ρ < 1 − ε) the
    term is a constant and its gradient is exactly 0: no sample can pull π_θ
    further from π_old than the clip allows. Elsewhere the gradient is Â ∇ρ.

    logprobs: log π_θ(a|s), (B,) or (B, T), array or Tensor; old_logprobs: log π_old(a|s) of
    the same actions when they were sampled (constants); advantages: Â, same shape; mask as in
    ``reinforce_loss``.
    """
    old, A = _array(old_logprobs, "old_logprobs"), _array(advantages, "advantages")
    _check_shape("logprobs", logprobs, old_logprobs=old, advantages=A, mask=mask)
    out = -_episode_mean(_clipped_terms(logprobs, old, A, clip_eps), mask)
    return out if isinstance(logprobs, ag.Tensor) else out.data


def _clipped_terms(logprobs, old, A, clip_eps):
    """min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â) elementwise, ρ = exp(log π_θ − log π_old): a Tensor."""
    eps = checks.number(clip_eps, "clip_eps", low=0.0, low_open=True)
    ratio = ag.exp(ag.tensor(logprobs) - old)                               # ρ
    clipped = backend.xp().clip(ratio.data, 1.0 - eps, 1.0 + eps) * A      # a constant where it binds
    # take the clipped value only where it is strictly smaller; where ρ is inside the clip range
    # the two are equal and the unclipped term keeps the gradient
    return ag.where(clipped < ratio.data * A, clipped, ratio * A)


def kl_penalized_reward(rewards, logprobs, ref_logprobs, beta):
    """r̃(x, y) = r(x, y) − β (log π(y|x) − log π_ref(y|x)): the KL penalty per sequence.

    The sampled form of J_RLHF (DPO paper eq. 3): E_{y∼π}[r̃] = E[r] − β KL(π ‖ π_ref).
    log π is the sampling policy's, fixed at sampling time, as PPO implementations
    compute it once per batch. Returned as a plain array: in the policy gradient
    it is a weight (see the module docstring for why that is still exact).
    All three inputs have the same shape: one entry per sampled (x, y).
    """
    r, lp, ref = _array(rewards, "rewards"), _array(logprobs, "logprobs"), _array(ref_logprobs, "ref_logprobs")
    beta = checks.beta(beta, "beta", lp.dtype)
    _check_shape("rewards", r, logprobs=lp, ref_logprobs=ref)
    return r - beta * (lp - ref)


def kl_penalized_token_rewards(score, logprobs, ref_logprobs, beta, mask=None):
    """The KL penalty per token, as RLHF trainers for language models apply it, (B, T).

        r̃_t = −β (log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)) + [t is y's last token] r(x, y)

    score: r(x, y), (B,); logprobs, ref_logprobs: per-token log-probabilities (B, T);
    mask: True at real response tokens (None: all). With γ = 1 the sum over t is
    ``kl_penalized_reward`` of the summed log-probabilities, so a policy over
    whole responses sees the same thing either way; per token, a value function
    can credit the penalty to the token that paid it.
    """
    lp, ref = _array(logprobs, "logprobs"), _array(ref_logprobs, "ref_logprobs")
    beta = checks.beta(beta, "beta", lp.dtype)
    _check_shape("logprobs", lp, ref_logprobs=ref, mask=mask)
    if lp.ndim != 2:
        raise ValueError(f"logprobs must be per token, shape (B, T), got {tuple(lp.shape)}")
    s = _array(score, "score")
    if s.shape != lp.shape[:1]:
        raise ValueError(f"score has shape {tuple(s.shape)}, expected ({lp.shape[0]},): one r(x, y) per response")
    xp = backend.xp()
    real = xp.ones(lp.shape, dtype=bool) if mask is None else xp.asarray(mask, dtype=bool)
    if not bool(real.any(axis=1).all()):
        raise ValueError("mask has a response with no real token: a score needs a token to sit on")
    out = xp.where(real, -beta * (lp - ref), 0.0)
    last = real.shape[1] - 1 - xp.argmax(real[:, ::-1], axis=1)            # each row's last real token
    out[xp.arange(lp.shape[0]), last] += s
    return out


def group_baseline(rewards, leave_one_out=True):
    """b_i = mean of the other K − 1 rewards in sample i's group (last axis): RLOO's baseline.

    K responses sampled for the same prompt form a group. Leaving sample i out
    makes b_i independent of y_i, so the estimator stays unbiased; the plain
    group mean (``leave_one_out=False``, GRPO's centring) includes r_i itself
    and shrinks the expected gradient by a factor (1 − 1/K).
    """
    checks.flag(leave_one_out, "leave_one_out")
    r = _array(rewards, "rewards")
    if r.ndim == 0:
        raise ValueError("rewards need a group axis (the last axis), got a scalar")
    K = r.shape[-1]
    total = r.sum(axis=-1, keepdims=True)
    if not leave_one_out:
        return backend.xp().broadcast_to(total / K, r.shape).copy()
    if K < 2:
        raise ValueError(f"a leave-one-out baseline needs groups of at least 2 samples, got {K}")
    return (total - r) / (K - 1)


# -- group-relative policy gradients: RLOO, GRPO, Dr. GRPO ---------------------------------

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def rloo_advantages(rewards):
    """Â_i = r_i − (1/(K − 1)) Σ_{j≠i} r_j over each group of K samples (the last axis): RLOO's advantage
    (Ahmadian et al. 2024, arXiv 2402.14740), REINFORCE with the leave-one-out ``group_baseline``.

    With ``rewards`` the KL-penalized r̃ of ``kl_penalized_reward`` (as RLOO uses them), E[Â ∇log π_θ]
    is exactly ∇J_RLHF: the baseline does not depend on the sample it is subtracted from.
    """
    r = _array(rewards, "rewards")
    return r - group_baseline(r)


def grpo_advantages(rewards, scale_rewards=True, eps=1e-4):
    """Â_i = (r_i − mean_j r_j) / (std_j r_j + ε) over each group (the last axis): GRPO's outcome
    advantage (Shao et al. 2024, arXiv 2402.03300, §4.1.2), every token of o_i getting Â_i.

    std is the sample standard deviation (divisor K − 1) and ε = 1e-4, as the standard GRPO trainer
    computes them. ``scale_rewards=False`` keeps Â_i = r_i − mean_j r_j: Dr. GRPO (Liu et al. 2025,
    arXiv 2503.20783), which shows the division favours prompts whose samples agree. The mean
    includes r_i itself, so E[Â ∇log π_θ] is (1 − 1/K) times the policy gradient (``group_baseline``).
    """
    checks.flag(scale_rewards, "scale_rewards")
    eps = checks.number(eps, "eps", low=0.0)
    r = _array(rewards, "rewards")
    centred = r - group_baseline(r, leave_one_out=False)
    if not scale_rewards:
        return centred
    if r.shape[-1] < 2:
        raise ValueError(f"a group standard deviation needs groups of at least 2 samples, got {r.shape[-1]}")
    std = backend.xp().sqrt((centred ** 2).sum(axis=-1, keepdims=True) / (r.shape[-1] - 1))
    return centred / (std + eps)


def k3_kl(logprobs, ref_logprobs):
    """k3 = π_ref/π_θ − log(π_ref/π_θ) − 1 per token: GRPO's KL term as written (Shao et al. 2024,
    §4.1.1; the "k3" estimator of Schulman 2020, "Approximating KL divergence").

    k3 ≥ 0, = 0 where π_θ = π_ref, and E_{a∼π_θ}[k3] = KL(π_θ ‖ π_ref) at each context. Its *gradient*
    is another matter: E_{a∼π_θ}[∇ k3] = Σ_a (π_θ − π_ref) ∇log π_θ = ∇ KL(π_ref ‖ π_θ), the forward KL,
    at each context held fixed (see notebook 10). A Tensor ``logprobs`` gives a Tensor.
    """
    ref = _array(ref_logprobs, "ref_logprobs")
    _check_shape("logprobs", logprobs, ref_logprobs=ref)
    d = ref - ag.tensor(logprobs)                                        # log π_ref/π_θ
    out = ag.exp(d) - d - 1.0
    return out if isinstance(logprobs, ag.Tensor) else out.data


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask=None, beta=0.04, clip_eps=0.2,
              loss_type="grpo", max_completion_length=None):
    """GRPO's surrogate (Shao et al. 2024, arXiv 2402.03300, §4.1.1), per token and then aggregated:

        ℓ_it = −min(ρ_it Â_i, clip(ρ_it, 1 − ε, 1 + ε) Â_i) + β k3_it,   ρ_it = π_θ(o_it|·)/π_old(o_it|·)

        "grpo":    (1/G) Σ_i (1/|o_i|) Σ_t ℓ_it                   the paper's: each response's token mean
        "bnpo":    Σ_i Σ_t ℓ_it / Σ_i |o_i|                       one mean over every token of the batch
        "dr_grpo": Σ_i Σ_t ℓ_it / (G · max_completion_length)    Dr. GRPO (Liu et al. 2025): a constant

    logprobs: log π_θ of each sampled token (G, T), array or Tensor; old_logprobs, ref_logprobs:
    log π_old and log π_ref of the same tokens, constants (ref_logprobs may be None when β = 0);
    advantages: Â_i, one per response (G,) (``grpo_advantages``); mask: True at real tokens (None:
    all); max_completion_length: Dr. GRPO's constant (default T).
    """
    loss_type = checks.choice(loss_type, "loss_type", GRPO_LOSS_TYPES)
    beta = checks.number(beta, "beta", low=0.0)
    old = _array(old_logprobs, "old_logprobs")
    A = _array(advantages, "advantages")
    _check_shape("logprobs", logprobs, old_logprobs=old, mask=mask)
    if old.ndim != 2 or A.shape != old.shape[:1]:
        raise ValueError(f"logprobs must be per token (G, T) and advantages one per response (G,), got "
                         f"{tuple(old.shape)} and {tuple(A.shape)}")
    xp = backend.xp()
    m = xp.ones(old.shape, dtype=bool) if mask is None else xp.asarray(mask, dtype=bool)
    terms = -_clipped_terms(logprobs, old, xp.broadcast_to(A[:, None], old.shape), clip_eps)
    if beta:
        if ref_logprobs is None:
            raise ValueError("ref_logprobs are required when beta > 0 (the KL term compares with π_ref)")
        terms = terms + k3_kl(ag.tensor(logprobs), ref_logprobs) * beta
    per_response = ag.where(m, terms, 0.0).sum(axis=-1)                   # (G,)
    if loss_type == "grpo":
        out = (per_response / xp.maximum(m.sum(axis=-1), 1)).mean()
    elif loss_type == "bnpo":
        out = per_response.sum() / max(int(m.sum()), 1)
    else:
        length = old.shape[-1] if max_completion_length is None else \
            checks.integer(max_completion_length, "max_completion_length", low=1)
        out = per_response.sum() / (old.shape[0] * length)
    return out if isinstance(logprobs, ag.Tensor) else out.data
