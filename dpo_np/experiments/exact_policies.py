"""A response set small enough to enumerate, and policies with shared parameters scored exactly on it.

Every exact result of ``closed_form.py`` uses a table of logits, one per response: a response that
is never compared gets no gradient, and the loss is convex. A language model shares its parameters
between responses. This module puts the project's own GPT (``model.py``, its hand-written backward)
on a response set it can enumerate, so π_θ(y|x) of every response is exact:

- a prompt x is two content tokens; a response is 0 to L content tokens (ids 0..V−1) followed by
  the end token EOS = V (``toy_problem.enumerate_responses(V, L + 1, eos=True)``). A generation that
  has not ended after L content tokens is cut there, so its EOS is forced: that position is scored
  with the label −100, the project's own mask (``logprobs.get_batch_logps``). The set is then
  exactly the support of the GPT's generation with a length cap, and Σ_y π_θ(y|x) = 1 (tested).
- |y|, the length the per-token mean divides by, is the number of scored tokens: k + 1 for k < L
  content tokens (the EOS counts), L for k = L (the forced EOS does not).

Three policies, each with ``params`` (a dict AdamW updates in place) and ``forward(average)``:

- ``GPTPolicy``: the GPT, every row of the set in one forward; log π(y|x) by
  ``logprobs.batch_logps_forward`` and dL/dθ through ``batch_logps_backward`` and ``GPT.backward``
  (ARCHITECTURE.md, "The seam": the same path ``DPOTrainer`` takes);
- ``LogLinearPolicy``: π_θ(y|x) ∝ π_ref(y|x) exp(θ_x · φ(y)), with φ the token and adjacent-pair
  counts that the reward is built from (so π* lies in the family): the simplest shared-parameter case;
- ``TablePolicy``: softmax_y θ[x, y] (closed_form's), where a never-compared response's logit gets
  zero gradient (the −π_θ parts of ∇log π(y_w) and ∇log π(y_l) cancel; to rounding in floating point).

``train_dpo`` minimizes the DPO loss (``losses.dpo_loss``, DPO paper eq. 7) over a fixed set of
pairs by full-batch Adam (the mean over pairs as a count-weighted sum over distinct triples, as
closed_form does), with summed log-probabilities or, with ``average=True``, their per-token mean
(``loss_type="sigmoid_norm"``, TRL's convention for IPO and length-normalised DPO).
``length_tilted_optimum`` is the policy the averaged loss converges to instead of π*;
``table_length_experiment`` trains a table with each loss and measures where it lands (notebook 06).
"""

from dataclasses import dataclass

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, logprobs, losses, rlhf
from dpo_np.experiments import toy_problem
from dpo_np.experiments.closed_form import aggregate_pairs
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW

PROMPT_LENGTH = 2
IGNORE = -100                      # the label of a position that is not scored (logprobs' mask)


# -- the set --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResponseSet:
    """Every (prompt, response) row of the enumerated set.

    prompts (P, 2) content-token ids; responses (N, L + 1) (``toy_problem`` layout: content tokens,
    EOS = V, then PAD = −1); idx and labels (P·N, 2 + L + 1), row x·N + y, the GPT's input and the
    labels of ``get_batch_logps`` (−100 on the prompt, the padding and the forced EOS); lengths (N,)
    |y| = scored tokens; content (N,) the number of content tokens k.
    """
    vocab_size: int
    max_length: int
    prompts: np.ndarray
    responses: np.ndarray
    idx: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    content: np.ndarray

    @property
    def shape(self):
        """(P, N): prompts × responses."""
        return len(self.prompts), len(self.responses)

    @property
    def eos(self):
        return self.vocab_size


def response_set(vocab_size=3, max_length=3, n_prompts=4):
    """The enumerated set: V content tokens, responses of 0..L of them then EOS, the first P two-token prompts."""
    V = checks.integer(vocab_size, "vocab_size", low=1)
    L = checks.integer(max_length, "max_length", low=1)
    P = checks.integer(n_prompts, "n_prompts", low=1, high=V ** PROMPT_LENGTH)
    prompts = toy_problem.enumerate_responses(V, PROMPT_LENGTH)[:P]                # (P, 2), lexicographic
    responses = toy_problem.enumerate_responses(V, L + 1, eos=True)                # (N, L + 1)
    N = len(responses)
    content = (responses >= 0).sum(axis=1) - 1                                     # tokens before EOS
    body = np.where(responses == toy_problem.PAD, V, responses)                    # padding: any id, masked
    scored = np.where(responses == toy_problem.PAD, IGNORE, responses)
    scored[content == L, L] = IGNORE                                               # the forced EOS
    idx = np.concatenate([np.repeat(prompts, N, axis=0), np.tile(body, (P, 1))], axis=1)
    labels = np.concatenate([np.full((P * N, PROMPT_LENGTH), IGNORE), np.tile(scored, (P, 1))], axis=1)
    lengths = (scored != IGNORE).sum(axis=1)
    return ResponseSet(V, L, prompts, responses, idx.astype(np.int64), labels.astype(np.int64), lengths, content)


def gpt_config(rs, n_layer=1, n_head=2, n_embd=8):
    """A GPT sized for the set: V + 1 tokens (content and EOS), a context of 2 + L + 1 positions."""
    return GPTConfig(vocab_size=rs.vocab_size + 1, block_size=rs.idx.shape[1], n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd)


def response_features(rs):
    """φ(y) (N, F): counts of each token (EOS included) and of each adjacent pair of tokens.

    ``toy_problem.random_rewards`` is linear in exactly these counts (per-token scores plus
    adjacent-pair bonuses), so r(x, ·) = φ w_x for some w_x and π*_β lies in the log-linear family.
    """
    V1 = rs.vocab_size + 1
    tokens = rs.responses
    real = tokens != toy_problem.PAD
    phi = np.zeros((len(tokens), V1 + V1 * V1))
    for t in range(tokens.shape[1]):
        rows = np.flatnonzero(real[:, t])
        phi[rows, tokens[rows, t]] += 1
        if t:
            rows = np.flatnonzero(real[:, t] & real[:, t - 1])
            phi[rows, V1 + tokens[rows, t - 1] * V1 + tokens[rows, t]] += 1
    return phi


# -- similarity between responses -------------------------------------------------------------

def _content_tokens(response):
    return [int(t) for t in response if t >= 0][:-1]                  # without EOS and padding


def edit_distance(a, b):
    """Levenshtein distance between two token sequences: insertions, deletions, substitutions."""
    previous = list(range(len(b) + 1))
    for i, ta in enumerate(a, 1):
        current = [i]
        for j, tb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ta != tb)))
        previous = current
    return previous[-1]


def shared_prefix(a, b):
    """How many leading tokens two sequences share."""
    n = 0
    for ta, tb in zip(a, b):
        if ta != tb:
            break
        n += 1
    return n


def similarity_matrices(rs):
    """(edit distance (N, N), shared prefix (N, N)) between the content tokens of every two responses."""
    seqs = [_content_tokens(y) for y in rs.responses]
    N = len(seqs)
    dist, prefix = np.zeros((N, N), dtype=np.int64), np.zeros((N, N), dtype=np.int64)
    for i in range(N):
        for j in range(N):
            dist[i, j] = edit_distance(seqs[i], seqs[j])
            prefix[i, j] = shared_prefix(seqs[i], seqs[j])
    return dist, prefix


# -- three policies on the set ------------------------------------------------------------------

class GPTPolicy:
    """π_θ = the project's GPT, scored on every row of the set: the seam DPOTrainer uses.

    ``forward(average)`` runs ``model.forward`` on all P·N rows, reads log π_θ(y|x) with
    ``logprobs.batch_logps_forward`` (summed, or the per-token mean) and returns it (P, N) with the
    backward: dL/dlogps (P, N) → ``batch_logps_backward`` → ``model.backward`` → ``model.grads``.
    ``token_forward()`` adds the per-token log-probabilities, for losses with a term per token.
    """

    def __init__(self, model, rs):
        self.model, self.rs = model, rs
        self.params, self.lengths = model.params, rs.lengths

    def forward(self, average=False):
        logits = self.model.forward(self.rs.idx)                                     # (P·N, T, V + 1)
        lp, cache = logprobs.batch_logps_forward(logits, self.rs.labels, average_log_prob=average)

        def backward(dlogps):
            self.model.zero_grad()
            self.model.backward(logprobs.batch_logps_backward(backend.asarray(dlogps).reshape(-1), cache))
            return self.model.grads
        return lp.reshape(self.rs.shape), backward

    def token_forward(self):
        """log π_θ(y|x) (P, N) and log π_θ(y_t|x, y_<t) (P, N, L + 1) from one forward, with the backward.

        The per-token values are ``logprobs.token_logps_forward``'s at the response's positions: 0 at
        the padding and at the forced end (label −100: probability 1 by the set's definition), so
        they sum to log π_θ(y|x) over t. ``backward(d_sequence=None, d_token=None)`` takes dL/dlog
        π_θ(y|x) (P, N) and/or dL/dlog π_θ(y_t|·) (P, N, L + 1) and returns dL/dθ: a sequence's
        log-probability is the sum of its tokens', so its gradient reaches every token, and both
        kinds go through one ``token_logps_backward`` (``batch_logps_backward``'s kernel) and one
        ``GPT.backward``.
        """
        logits = self.model.forward(self.rs.idx)                                     # (P·N, T, V + 1)
        tokens, _, cache = logprobs.token_logps_forward(logits, self.rs.labels)       # (P·N, T − 1)
        start = PROMPT_LENGTH - 1              # column t scores label t + 1: the response starts here
        per_token = tokens[:, start:].reshape(*self.rs.shape, -1)

        def backward(d_sequence=None, d_token=None):
            if d_sequence is None and d_token is None:
                raise ValueError("backward needs d_sequence or d_token: the gradient of a loss to follow")
            d = backend.xp().zeros_like(tokens)
            if d_sequence is not None:
                d[:, start:] += _upstream(d_sequence, self.rs.shape, "d_sequence", d.dtype).reshape(-1, 1)
            if d_token is not None:
                d[:, start:] += _upstream(d_token, per_token.shape, "d_token", d.dtype).reshape(d.shape[0], -1)
            self.model.zero_grad()
            self.model.backward(logprobs.token_logps_backward(d, cache))
            return self.model.grads
        return per_token.sum(axis=-1), per_token, backward

    def logprobs(self):
        """log π_θ(y|x) (P, N), summed over the scored tokens, with no activation cache."""
        logits = self.model.forward(self.rs.idx, cache=False)
        return logprobs.batch_logps_forward(logits, self.rs.labels)[0].reshape(self.rs.shape)


def _upstream(d, shape, name, dtype):
    """An upstream gradient (on the host or the device) as a device array of ``shape``, or an error naming it."""
    d = backend.asarray(d, dtype)
    if d.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {d.shape}")
    return d


class _AutogradPolicy:
    """A policy whose log π_θ(y|x) (P, N) is a formula in the autograd: ``_logits`` of the Tensor θ."""

    def __init__(self, theta, lengths):
        self.params = {"theta": backend.asarray(np.array(theta, dtype=np.float64))}     # on the device
        self.lengths = lengths

    def forward(self, average=False):
        th = ag.Tensor(self.params["theta"], requires_grad=True)
        lp = ag.log_softmax(self._logits(th), axis=-1)                              # (P, N)
        if average:
            lp = lp * (1.0 / self.lengths)                                           # get_batch_logps' mean

        def backward(dlogps):
            lp.backward(backend.asarray(dlogps))
            return {"theta": th.grad}
        return lp.data, backward

    def logprobs(self):
        return ag.log_softmax(self._logits(self.params["theta"]), axis=-1).data


class TablePolicy(_AutogradPolicy):
    """π_θ(y|x) = softmax_y θ[x, y], one logit per response (closed_form's): ``TablePolicy(θ₀, lengths)``,
    θ₀ (P, N) the starting logits (log π_ref to start at π_ref)."""

    def _logits(self, theta):
        return theta


class LogLinearPolicy(_AutogradPolicy):
    """π_θ(y|x) ∝ π_ref(y|x) exp(θ_x · φ(y)): one weight per prompt and feature, θ = 0 is π_ref."""

    def __init__(self, ref_logprobs, features, lengths):
        super().__init__(np.zeros((ref_logprobs.shape[0], features.shape[1])), lengths)
        self.ref, self.features_t = backend.to_numpy(ref_logprobs, np.float64), features.T

    def _logits(self, theta):
        return theta @ self.features_t + self.ref                                   # (P, F) @ (F, N)


# -- training ------------------------------------------------------------------------------------

def pair_weights(pairs, n_responses):
    """(x, y_w, y_l, weight): the distinct triples of ``pairs`` and each one's share of the mean loss.

    ``pairs`` holds index arrays "prompt", "chosen", "rejected" (sampled pairs: repeated triples are
    merged and counted, ``closed_form.aggregate_pairs``) and optionally "weight", one weight per
    triple (an expectation over every pair, ``population_pairs``), used as given after normalizing.
    """
    if "weight" in pairs:
        weight = backend.to_numpy(pairs["weight"], np.float64)
        return (*(backend.to_numpy(pairs[k]) for k in ("prompt", "chosen", "rejected")),
                weight / weight.sum())
    x, w, l, counts = (backend.to_numpy(a) for a in aggregate_pairs(pairs["prompt"], pairs["chosen"],
                                                                     pairs["rejected"], n_responses))
    return x, w, l, counts / counts.sum()


def population_pairs(proposal_logprobs, rewards):
    """Every ordered pair (x, y₁, y₂), y₁ ≠ y₂, weighted by the chance that sampling draws it, y₁ winning.

    weight = μ(y₁|x) μ(y₂|x) σ(r(x, y₁) − r(x, y₂)) / P: x uniform, y₁ and y₂ drawn from
    μ = exp(proposal_logprobs), the label by Bradley–Terry under r (DPO paper eq. 1). A pair of one
    response with itself carries no DPO gradient and is left out. The DPO loss with these weights
    (normalized, ``pair_weights``) is the expected loss over sampled pairs: the limit of infinitely
    many pairs. Returns {"prompt", "chosen", "rejected", "weight"}, P·N·(N − 1) of each.
    """
    mu = np.exp(backend.to_numpy(proposal_logprobs, np.float64))
    r = backend.to_numpy(rewards, np.float64)
    P, N = mu.shape
    x, a, b = np.meshgrid(np.arange(P), np.arange(N), np.arange(N), indexing="ij")
    keep = (a != b).ravel()
    x, a, b = x.ravel()[keep], a.ravel()[keep], b.ravel()[keep]
    weight = mu[x, a] * mu[x, b] * backend.to_numpy(rlhf.bradley_terry(r[x, a], r[x, b])) / P
    return {"prompt": x, "chosen": a, "rejected": b, "weight": weight}


def dpo_objective(policy, triples, ref_logprobs, beta, average=False, grad=True):
    """The DPO loss of ``policy`` on weighted triples, its summed log π_θ and, with ``grad``, dL/dθ.

    L = Σ_m weight_m · (−log σ(β(ρ_w − ρ_l))), ρ = log π_θ(y|x) − log π_ref(y|x) (DPO paper eq. 7,
    ``losses.dpo_loss``), over ``triples`` = (x, y_w, y_l, weight) from ``pair_weights``. With
    ``average`` both log-probabilities are divided by |y| (``loss_type="sigmoid_norm"``, the per-token
    mean of ``get_batch_logps``). Returns (loss, log π_θ (P, N) summed, grads dict or None).
    """
    x, w, l, weight = triples
    ref = backend.to_numpy(ref_logprobs, np.float64)
    if average:
        ref = ref / policy.lengths
    lp, backward = policy.forward(average)
    pi = ag.Tensor(lp, requires_grad=grad)
    per_triple, _, _ = losses.dpo_loss(pi[x, w], pi[x, l], ref[x, w], ref[x, l], beta=beta,
                                       loss_type="sigmoid_norm" if average else "sigmoid")
    loss = (per_triple * weight).sum()
    lp = backend.to_numpy(lp, np.float64)                                          # the logged path: host tables
    summed = lp * policy.lengths if average else lp.copy()
    if not grad:
        return float(loss.data), summed, None
    loss.backward()
    return float(loss.data), summed, backward(pi.grad)


def train_dpo(policy, pairs, ref_logprobs, beta, steps, lr, average=False, log_every=None):
    """Minimize the DPO loss of ``pairs`` over ``policy`` by full-batch Adam; return the logged path.

    ``pairs``: {"prompt", "chosen", "rejected"} index arrays (and optionally "weight", see
    ``pair_weights``); ``ref_logprobs`` (P, N) summed log π_ref; ``average``: the per-token-mean loss
    (``dpo_objective``). Adam without weight decay, so the loss is the whole objective. Returns
    {"step", "loss", "logprobs"}: the logged steps (every ``log_every``, and the last), the loss there
    and the summed log π_θ (P, N) there, before that step's update (the last: after every update).
    """
    beta, lr = checks.positive(beta, "beta"), checks.positive(lr, "lr")
    steps = checks.integer(steps, "steps", low=0)
    log_every = checks.integer((steps or 1) if log_every is None else log_every, "log_every", low=1)
    triples = pair_weights(pairs, np.shape(ref_logprobs)[1])
    adam = AdamW(policy.params, lr=lr, weight_decay=0.0)
    path = {"step": [], "loss": [], "logprobs": []}
    for step in range(steps + 1):
        last = step == steps
        loss, logprobs_, grads = dpo_objective(policy, triples, ref_logprobs, beta, average, grad=not last)
        if step % log_every == 0 or last:
            path["step"].append(step)
            path["loss"].append(loss)
            path["logprobs"].append(logprobs_)
        if not last:
            adam.step(grads)
    return path


def train_sft(policy, counts, steps, lr):
    """Supervised fine-tuning on sampled responses: minimize −Σ counts·log π_θ(y|x) / Σ counts·|y|.

    The mean negative log-likelihood per response token of the samples (``sft.sft_loss_forward``'s
    loss), with each distinct (x, y) scored once and weighted by how often it was drawn.
    ``counts`` (P, N). Returns the loss before each step and after the last.
    """
    counts = backend.to_numpy(counts, np.float64)
    tokens = float((counts * policy.lengths).sum())
    adam = AdamW(policy.params, lr=checks.positive(lr, "lr"), weight_decay=0.0)
    history = []
    for step in range(checks.integer(steps, "steps", low=0) + 1):
        lp, backward = policy.forward()
        history.append(-float((counts * backend.to_numpy(lp, np.float64)).sum()) / tokens)
        if step < steps:
            adam.step(backward(-counts / tokens))
    return history


def sample_counts(logprobs_, n_per_prompt, seed):
    """How often each response is drawn in ``n_per_prompt`` samples per prompt from exp(logprobs) (P, N)."""
    p = np.exp(backend.to_numpy(logprobs_, np.float64))
    gen = backend.rng(seed)
    return np.stack([gen.multinomial(n_per_prompt, row / row.sum()) for row in p]).astype(np.float64)


# -- the optimum of the per-token-averaged loss ------------------------------------------------

def length_tilted_optimum(ref_logprobs, rewards, beta, lengths, iterations=200):
    """The policy the per-token-averaged DPO loss converges to, and its per-prompt constant c(x).

    With log-probabilities divided by |y|, the implicit reward is s(y) = β (log π(y|x) − log
    π_ref(y|x)) / |y|. Bradley–Terry pairs labelled by r are fit best (with every pair covered and
    a policy free to take any value on each response) when σ(s(y₁) − s(y₂)) = σ(r(x, y₁) −
    r(x, y₂)) for all pairs, i.e. s(y) = r(x, y) + c(x). Solving for π:

        π(y|x) = π_ref(y|x) exp(|y| (r(x, y) + c(x)) / β),

    with c(x) the one value that makes it sum to 1: g(c) = log Σ_y π_ref exp(|y|(r + c)/β) is
    convex and strictly increasing in c (|y| ≥ 1), so the root of g(c) = 0 is unique; it is found
    by bisection to float64 resolution. π* instead has exp(r/β) with no |y|: the two agree only when
    every response has |y| = 1. Returns (log π (P, N), c (P,)).
    """
    ref = backend.to_numpy(ref_logprobs, np.float64)
    r = backend.to_numpy(rewards, np.float64)
    if ref.ndim != 2 or r.shape != ref.shape:
        raise ValueError(f"ref_logprobs and rewards must both have shape (P, N), got {ref.shape} and {r.shape}")
    rlhf.check_logprobs(ref, "ref_logprobs")
    rlhf.check_rewards(r)
    beta = rlhf.check_beta(beta)
    n = np.broadcast_to(np.asarray(lengths, dtype=np.float64), ref.shape)
    if not (n >= 1).all():
        raise ValueError("lengths must all be >= 1 (a response scores at least its end token)")

    def g(c):                                                         # (P,) for c (P,)
        return ag.logsumexp_array(ref + n * (r + c[:, None]) / beta, axis=-1)

    # at c = −max r the exponents are ≤ 0 and g ≤ 0; at c = −min r + β·(−min log π_ref) + β, g > 0
    lo = -r.max(axis=1)
    hi = -r.min(axis=1) + beta * (1.0 - np.where(np.isfinite(ref), ref, 0).min(axis=1))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = g(mid) < 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    c = 0.5 * (lo + hi)
    logits = ref + n * (r + c[:, None]) / beta
    return ag.log_softmax_array(logits), c


def mean_length(logprobs_, lengths):
    """mean over prompts of E_{y∼π}|y|, the number of scored tokens."""
    return float((np.exp(logprobs_) * lengths).sum(axis=1).mean())


def table_length_experiment(seed, vocab_size=3, max_length=3, n_prompts=4, beta=0.5, steps=2000, lr=0.1,
                            reference_scale=1.0, reward_scale=0.5):
    """The per-token-averaged DPO loss against the summed one on a table of logits, exactly: where each lands.

    One seed's problem on ``response_set`` (responses of 0..L content tokens and an end token):
    π_ref an autoregressive model (``toy_problem.random_reference_table``: every token, the end token
    included, costs probability, so a long response is improbable as under a language model);
    r(x, y) of token and adjacent-pair scores (``toy_problem.random_rewards``); the pairs are every
    ordered pair weighted by its chance under a uniform proposal, labelled by Bradley–Terry under r
    (``population_pairs``): the limit of infinitely many pairs, every pair compared. A
    ``TablePolicy`` starts at π_ref and is trained by ``train_dpo`` with each loss for ``steps``
    full-batch Adam steps. The table can take any value on every response, so each loss can reach
    its own minimizer: π*_β (DPO paper eq. 4) for the sum, ``length_tilted_optimum`` for the mean.

    Returns log-probabilities (P, N) "reference", "pi_star", "tilted", "averaged", "summed" (the two
    trained tables), "c" (P,) the tilted optimum's constant, "lengths" (N,) |y|; "kl" {"averaged",
    "summed"}: {"to_pi_star": KL(π*‖π_θ), "to_tilted": KL(π_tilted‖π_θ)} (means over prompts),
    "kl_pi_star_to_tilted", "mean_length" {policy: E|y|} and "loss" {rule: the last DPO loss}.
    """
    rs = response_set(vocab_size, max_length, n_prompts)
    P, N = rs.shape
    table = toy_problem.random_reference_table(P, rs.vocab_size, rs.max_length + 1, seed=2 * seed, eos=True,
                                               scale=reference_scale)
    ref = toy_problem.sequence_logprobs(table, rs.responses)
    r = toy_problem.random_rewards(rs.responses, P, rs.vocab_size, seed=2 * seed + 1, scale=reward_scale)
    star = rlhf.optimal_policy(ref, r, beta)
    tilted, c = length_tilted_optimum(ref, r, beta, rs.lengths)
    pairs = population_pairs(np.full(ref.shape, -np.log(N)), r)
    out = {"reference": ref, "rewards": r, "pi_star": star, "tilted": tilted, "c": c, "lengths": rs.lengths,
           "kl": {}, "loss": {}}
    for rule, average in (("averaged", True), ("summed", False)):
        path = train_dpo(TablePolicy(ref, rs.lengths), pairs, ref, beta, steps, lr, average=average)
        out[rule], out["loss"][rule] = path["logprobs"][-1], path["loss"][-1]
        out["kl"][rule] = {"to_pi_star": float(rlhf.kl_divergence(star, out[rule]).mean()),
                           "to_tilted": float(rlhf.kl_divergence(tilted, out[rule]).mean())}
    out["kl_pi_star_to_tilted"] = float(rlhf.kl_divergence(star, tilted).mean())
    out["mean_length"] = {name: mean_length(out[name], rs.lengths)
                          for name in ("reference", "pi_star", "tilted", "averaged", "summed")}
    return out
