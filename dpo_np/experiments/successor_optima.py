"""Where DPO's successors converge on an enumerated response set: each optimum derived, then computed exactly.

DPO's population loss is minimized by π*_β (``rlhf.optimal_policy``). The methods that followed
change the loss, so they change the minimizer. With every response listed, log π_θ(y|x) is one free
number per response (a tabular policy), the population of preference pairs is known exactly, and
each optimum below follows from setting the population gradient to zero. Pairs are drawn as
``toy_problem.sample_preference_pairs`` draws them: y1, y2 ~ μ = π_ref(·|x) independently, y1 wins
with probability p(y1 ≻ y2) = σ(r(x, y1) − r(x, y2)) (Bradley–Terry), so the triple (x, a, b) has
probability W(a, b) = 2 μ(a) μ(b) σ(r_a − r_b) for a ≠ b and μ(a)² for a = b (``pair_population``).

- **IPO** on per-token averages ρ̄(y) = (log π_θ(y) − log π_ref(y))/|y| (as the trainer feeds it):
  the square loss is minimized where ρ̄(y) − E_μ[ρ̄] = (P(y ≻ μ) − ½)/β, P(y ≻ μ) = Σ_b μ(b) p(y ≻ b)
  (Azar et al. 2023's IPO optimum, here with the averaging): ``ipo_optimum``.
- **SimPO** with γ = 0 is Bradley–Terry's likelihood of s(y) = (β/|y|) log π_θ(y), which fits the
  data exactly at s(y) = r(y) + c: log π(y|x) = |y| (r(x, y) + c(x))/β, whatever π_ref is. With a
  margin γ > 0 the per-pair targets s_a − s_b no longer agree (to first order in γ each pair wants
  logit p + γ(2p − 1)), and the optimum is the unique minimizer of a convex function of s:
  ``simpo_optimum``.
- **ORPO** without its odds-ratio term (λ = 0) is a cross-entropy on the chosen responses' per-token
  averages: π(y) ∝ C(y)/|y|, C(y) the probability that y is chosen (``orpo_nll_optimum``); with
  λ > 0 the stationarity condition mixes odds of averaged likelihoods and has no closed form.
- **A forward KL**: maximizing E_π[r] − β KL(π_ref ‖ π) gives π(y) = β π_ref(y)/(λ − r(y)), λ > max r
  fixed by Σ π = 1 (``forward_kl_optimum``). Applied per token, with each context held where the
  policy puts it — what GRPO's k3 term does in expectation — the stationary point is the same
  formula at every prefix s: π(a|s) = β π_ref(a|s)/(λ_s − Q(s, a)), with Q(s, a) the policy's own
  expected reward after s ⊕ a, solved from the longest prefixes back (``token_forward_kl_fixed_point``).

Every function works on (P, N) arrays over prompts × responses, in float64, and returns log-probabilities.
The tabular facts stop there: with shared parameters (one GPT for every response) a loss's minimizer
over the policies it can represent need not be any of these.
"""

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rlhf
from dpo_np.experiments.toy_problem import PAD

BISECTION_STEPS = 200          # halvings of a bracket: far below float64 rounding


# -- the response set's structure ------------------------------------------------------------

def response_lengths(responses):
    """|y|: the tokens of each response, PAD left out (an end token counts), (N,) float64."""
    responses = np.asarray(responses)
    if responses.ndim != 2:
        raise ValueError(f"responses must be a 2-D array (N, T) of token ids, got shape {responses.shape}")
    lengths = (responses != PAD).sum(axis=1)
    if not (lengths > 0).all():
        raise ValueError("responses: every response needs at least one token")
    return lengths.astype(np.float64)


def prefix_structure(responses):
    """The prefixes of an enumerated response set, to read per-token log-probabilities off a whole-response one.

    Returns a dict: ``prefixes`` (a list of tuples, the empty prefix first), ``member`` (K, N) bool:
    response n starts with prefix k; ``upto`` and ``before`` (N, T) int: the index of the prefix y_≤t
    and of y_<t (0 = the empty prefix; 0 at PAD positions too); ``real`` (N, T) bool: not PAD.
    """
    responses = np.asarray(responses)
    response_lengths(responses)                       # checks the shape and that no response is empty
    N, T = responses.shape
    index = {(): 0}
    upto, before = np.zeros((N, T), np.int64), np.zeros((N, T), np.int64)
    real = responses != PAD
    for n in range(N):
        for t in range(int(real[n].sum())):
            key = tuple(int(v) for v in responses[n, :t + 1])
            upto[n, t] = index.setdefault(key, len(index))
            before[n, t] = index[key[:-1]]
    prefixes = list(index)
    member = np.array([[tuple(int(v) for v in row[:len(p)]) == p and len(p) <= real[i].sum()
                        for i, row in enumerate(responses)] for p in prefixes])
    return {"prefixes": prefixes, "member": member, "upto": upto, "before": before, "real": real}


def token_logprobs(logprobs, structure):
    """log π(y_t | x, y_<t) = log P(y_≤t) − log P(y_<t), (P, N, T), 0 at PAD, from log π(y|x) (P, N).

    P(prefix) = Σ of π over the responses that start with it: any distribution over whole responses
    is also an autoregressive one, and its conditionals are these ratios. Their sum over t is
    log π(y|x) again. A Tensor gives a Tensor, with the gradient of every conditional.
    """
    lp = ag.tensor(logprobs)
    member = structure["member"]
    # log P(prefix) by a log-sum-exp over its members: (P, K); the empty prefix has log P = 0
    masked = ag.where(member[None, :, :], lp[:, None, :], -np.inf)
    log_prefix = ag.logsumexp(masked, axis=-1)
    out = ag.where(structure["real"][None], log_prefix[:, structure["upto"]] - log_prefix[:, structure["before"]], 0.0)
    if isinstance(logprobs, ag.Tensor):
        return out
    return backend.to_numpy(out.data) if isinstance(logprobs, np.ndarray) else out.data     # a host table stays one


# -- the population of preference pairs --------------------------------------------------------

def pair_population(ref_logprobs, rewards):
    """W[x, a, b]: the probability that a sampled pair for prompt x is (chosen a, rejected b), (P, N, N).

    2 μ(a) μ(b) σ(r_a − r_b) for a ≠ b, μ(a)² for a = b, with μ = π_ref(·|x): y1, y2 ~ μ, y1 labelled
    chosen with probability σ(r(y1) − r(y2)). Each prompt's slice sums to 1.
    """
    mu = np.exp(np.asarray(ref_logprobs, dtype=np.float64))
    r = np.asarray(rewards, dtype=np.float64)
    win = backend.to_numpy(ag.sigmoid(r[:, :, None] - r[:, None, :]).data)  # p(a ≻ b), a host table
    W = 2.0 * mu[:, :, None] * mu[:, None, :] * win
    idx = np.arange(mu.shape[1])
    W[:, idx, idx] = mu ** 2
    return W


def win_rate(ref_logprobs, rewards):
    """P(y ≻ μ) = Σ_b μ(b) σ(r(y) − r(b)), μ = π_ref(·|x): how often y beats a reference sample, (P, N)."""
    mu = np.exp(np.asarray(ref_logprobs, dtype=np.float64))
    r = np.asarray(rewards, dtype=np.float64)
    return (backend.to_numpy(ag.sigmoid(r[:, :, None] - r[:, None, :]).data) * mu[:, None, :]).sum(axis=-1)


# -- the optima --------------------------------------------------------------------------------

def normalize_per_token(base, lengths):
    """base + |y| c(x), with c(x) the one number that makes each prompt's row a log-distribution.

    Σ_y exp(base_y + |y| c) rises strictly in c (every |y| > 0), so c is found by bisection; (P, N).
    """
    base = np.asarray(base, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    total = lambda c: ag.logsumexp_array(base + lengths * c[:, None], axis=-1)     # noqa: E731
    lo, hi = np.full(base.shape[0], -1.0), np.full(base.shape[0], 1.0)
    while (total(lo) > 0).any():
        lo = np.where(total(lo) > 0, 2 * lo, lo)
    while (total(hi) < 0).any():
        hi = np.where(total(hi) < 0, 2 * hi, hi)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = total(mid) > 0
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    out = base + lengths * (0.5 * (lo + hi))[:, None]
    return ag.log_softmax_array(out)               # the last rounding


def ipo_optimum(ref_logprobs, rewards, lengths, beta):
    """log π of IPO's population minimizer on per-token averages, pairs from π_ref with BT labels, (P, N).

    (log π(y) − log π_ref(y))/|y| = (P(y ≻ μ) − ½)/β + c(x): the square loss (h̄ − 1/(2β))² summed over
    W is a least-squares fit of the averaged margins h̄ = ρ̄_a − ρ̄_b to (2p(a ≻ b) − 1)/(2β), whose
    solution is unique up to c(x), which normalization fixes.
    """
    beta = rlhf.check_beta(beta)
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    return normalize_per_token(ref + lengths * (win_rate(ref, rewards) - 0.5) / beta, lengths)


def simpo_optimum(rewards, lengths, beta, gamma=0.0, weights=None, tol=1e-13, max_iter=100):
    """log π of SimPO's population minimizer on a tabular policy, (P, N); no π_ref anywhere in it.

    γ = 0: (β/|y|) log π(y) = r(y) + c(x), i.e. log π(y) = |y| (r(y) + c)/β. γ > 0: s = (β/|y|) log π
    minimizes Σ_ab W(a, b) softplus(−(s_a − s_b − γ)), convex in s with a graph-Laplacian Hessian;
    Newton's method on s (its one flat direction, a shift, pinned), then c(x) by normalization.
    ``weights`` W (P, N, N): ``pair_population``, needed for γ > 0 only (the optimum then depends on μ).
    """
    beta = rlhf.check_beta(beta)
    gamma = checks.number(gamma, "gamma", low=0.0)
    r = np.asarray(rewards, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if gamma == 0.0:
        return normalize_per_token(lengths * r / beta, lengths)
    if weights is None:
        raise ValueError("simpo_optimum with gamma > 0 needs weights (pair_population): the optimum depends on them")
    s = r - r.mean(axis=1, keepdims=True)                 # γ = 0's answer: a start near the minimum
    for _ in range(max_iter):
        step = _simpo_newton_step(s, np.asarray(weights), gamma)
        s = s - step
        if np.abs(step).max() < tol:
            break
    return normalize_per_token(lengths * s / beta, lengths)


def _simpo_newton_step(s, W, gamma):
    """H⁻¹ g of Σ_ab W_ab softplus(−(s_a − s_b − γ)) per prompt, with s_0 held (the loss is shift-invariant)."""
    d = s[:, :, None] - s[:, None, :] - gamma                              # (P, N, N)
    q = backend.to_numpy(ag.sigmoid(-d).data)                               # −∂ softplus(−d)/∂d
    g = -(W * q).sum(axis=2) + (W * q).sum(axis=1)                          # ∂/∂s_c: as winner, as loser
    c = W * q * (1.0 - q)                                                    # curvature of each pair
    C = c + c.transpose(0, 2, 1)
    H = -C + np.eye(s.shape[1])[None] * C.sum(axis=2)[:, :, None]            # the weighted Laplacian
    step = np.zeros_like(s)
    step[:, 1:] = np.linalg.solve(H[:, 1:, 1:], g[:, 1:, None])[..., 0]
    return step


def orpo_nll_optimum(ref_logprobs, rewards, lengths):
    """log π minimizing ORPO's supervised term alone (λ = 0): π(y) ∝ C(y)/|y|, (P, N).

    −Σ_y C(y) log π(y)/|y|, with C(y) = Σ_b W(y, b) how often y is the chosen response, is a
    cross-entropy against the weights C(y)/|y|, so its minimizer is those weights normalized: the
    chosen responses' distribution, tilted toward short ones by the per-token average. ORPO's λ > 0
    moves the optimum from here toward the odds-ratio term's; that mix has no closed form.
    """
    chosen = pair_population(ref_logprobs, rewards).sum(axis=2)                # C(y)
    out = np.log(chosen) - np.log(np.asarray(lengths, dtype=np.float64))
    return ag.log_softmax_array(out)


def _solve_forward_kl(weights, values):
    """λ with Σ_a w_a/(λ − v_a) = 1, λ > max v (w > 0, Σ w = β): the sum falls from +∞ to ≤ 1 on
    (max v, max v + β], so bisection there; one λ per row of (rows, A) inputs, −inf values skipped."""
    top = np.max(values, axis=-1)
    lo, hi = top, top + weights.sum(axis=-1)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        with np.errstate(divide="ignore"):
            total = np.where(weights > 0, weights / np.maximum(mid[:, None] - values, 1e-300), 0.0).sum(axis=-1)
        lo, hi = np.where(total > 1, mid, lo), np.where(total > 1, hi, mid)
    return hi


def forward_kl_optimum(ref_logprobs, rewards, beta):
    """log π of argmax_π E_π[r] − β KL(π_ref ‖ π): π(y) = β π_ref(y)/(λ − r(y)), (P, N).

    The stationarity condition r(y) + β π_ref(y)/π(y) = λ (a Lagrange multiplier for Σ π = 1) gives
    the formula; λ > max r keeps every π(y) positive and is unique. Unlike π*_β = π_ref e^{r/β}/Z it
    is heavy-tailed: a low reward lowers π only in proportion, never exponentially.
    """
    beta = rlhf.check_beta(beta)
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    lam = _solve_forward_kl(beta * np.exp(ref), r)
    out = np.log(beta) + ref - np.log(lam[:, None] - r)
    return ag.log_softmax_array(out)


def token_forward_kl_fixed_point(ref_logprobs, rewards, responses, beta):
    """log π(y|x) of the policy whose per-token forward-KL update is stationary, (P, N).

    At every prefix s: π(a|s) = β π_ref(a|s)/(λ_s − Q(s, a)), Σ_a π(a|s) = 1, where Q(s, a) is r(x, y)
    when s ⊕ a completes the response y and the policy's own value V(s ⊕ a) = λ_{s⊕a} − β otherwise.
    Solved from the longest prefixes back to the empty one. For one-token responses it is
    ``forward_kl_optimum``.
    """
    beta = rlhf.check_beta(beta)
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    structure = prefix_structure(responses)
    prefixes, member = structure["prefixes"], structure["member"]
    log_prefix = np.stack([ag.logsumexp_array(np.where(m, ref, -np.inf), axis=-1) for m in member], axis=1)
    last = structure["real"].sum(axis=1) - 1
    complete = {int(structure["upto"][n, last[n]]): n for n in range(len(last))}   # prefix → the response it ends
    children = {}
    for k, p in enumerate(prefixes[1:], start=1):
        children.setdefault(prefixes.index(p[:-1]), []).append(k)
    value = np.zeros((ref.shape[0], len(prefixes)))                          # V(s), filled leaves first
    log_cond = np.zeros((ref.shape[0], len(prefixes)))                       # log π(last token of s | rest)
    for k in sorted(range(len(prefixes)), key=lambda k: -len(prefixes[k])):
        if k in complete:
            value[:, k] = r[:, complete[k]]
            continue
        kids = children[k]
        q = value[:, kids]                                                    # Q(s, a) for each child
        w = beta * np.exp(log_prefix[:, kids] - log_prefix[:, [k]])           # β π_ref(a|s)
        lam = _solve_forward_kl(w, q)
        log_cond[:, kids] = np.log(w) - np.log(lam[:, None] - q)
        value[:, k] = lam - beta
    out = np.zeros_like(ref)
    for t in range(structure["upto"].shape[1]):
        out += np.where(structure["real"][:, t], log_cond[:, structure["upto"][:, t]], 0.0)
    return ag.log_softmax_array(out)

