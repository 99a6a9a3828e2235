"""The DPO family beyond the paper: other losses on the same log-ratios, and the trainer-side variants.

``losses.dpo_loss`` is the one entry for every ``loss_type``. The paper's two losses (sigmoid, with
label smoothing the conservative DPO, and IPO) live there; every other member of the family lives
here, each a short function of the quantities of one batch of pairs (``Quantities``):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x),   ρ_l = log π_θ(y_l|x) − log π_ref(y_l|x),
    h   = ρ_w − ρ_l  (or f'(π_θ/π_ref) differences under an f-divergence constraint)

following the definitions of the standard open-source DPO trainer, each with its paper.

The trainer-side variants change what goes *into* the loss, and own what they need:

- LD-DPO (``ld_split_labels``, ``sequence_logps_forward``/``_backward``) re-weights the tokens of
  the longer response past the shorter one's length;
- WPO (``wpo_weights``) weights each pair by how likely the policy itself finds it;
- TR-DPO (``sync_reference``) drifts the reference toward the policy;
- BCO (``update_running_mean``) shifts the rewards by a running mean of the rewards seen.
"""

from typing import NamedTuple

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend
from dpo_np import logprobs, successors
# The paper's two formulas have one home, losses.py; it imports this module for the rest of the
# family (the package loads it first), so they are read from it at call time: losses.sigmoid_loss.
from dpo_np import losses
from dpo_np.data import LABEL_PAD_TOKEN_ID

_EXO_DEFAULT_SMOOTHING = 1e-3


class Quantities(NamedTuple):
    """One batch of pairs, as every loss of the family reads it."""
    pw: ag.Tensor        # log π_θ(y_w|x)                     (B,)
    pl: ag.Tensor        # log π_θ(y_l|x)                     (B,)
    rw: ag.Tensor        # log π_ref(y_w|x), constant         (B,)
    rl: ag.Tensor        # log π_ref(y_l|x), constant         (B,)
    rho_w: ag.Tensor     # ρ_w = log π_θ(y_w)/π_ref(y_w)      (B,)
    rho_l: ag.Tensor     # ρ_l                                (B,)
    h: ag.Tensor         # the score: ρ_w − ρ_l under reverse KL
    beta: float
    eps: float           # label smoothing ε
    bco_delta: float     # BCO's reward shift δ
    tau: float           # DiscoPOP's temperature
    lengths: object      # |y_w| (B,) Tensor or None
    simpo_gamma: float = 0.0   # SimPO's target margin γ


def family_loss(kinds, weights, pw, pl, rw, rl, beta, eps, f_divergence_type="reverse_kl", alpha=1.0,
                bco_delta=0.0, tau=0.05, lengths=None, simpo_gamma=0.0):
    """Σ_k w_k ℓ_k over the loss types ``kinds`` (checked by ``losses.dpo_loss``), per pair: (B,)."""
    rho_w, rho_l = pw - rw, pl - rl                                        # the log-ratios, (B,)
    q = Quantities(pw=pw, pl=pl, rw=rw, rl=rl, rho_w=rho_w, rho_l=rho_l,
                   h=f_divergence_score(rho_w, rho_l, f_divergence_type, alpha),
                   beta=beta, eps=eps, bco_delta=bco_delta, tau=tau, lengths=lengths, simpo_gamma=simpo_gamma)
    losses = None
    for kind, weight in zip(kinds, weights):
        term = LOSSES[kind](q)
        term = term if weight == 1.0 else term * weight
        losses = term if losses is None else losses + term
    return losses


# -- the score h under an f-divergence ----------------------------------------------

def _capped_exp(x):
    """e^x with x capped just below log(finfo.max), so a huge density ratio saturates instead of
    overflowing. The cap leaves a factor e^10 ≈ 2e4 of headroom, so the later β/α scaling stays
    finite too; beyond the cap the gradient is 0 (the score is flat there)."""
    cap = float(np.log(np.finfo(x.dtype).max)) - 10.0
    return ag.exp(ag.where(x.data > cap, cap, x))


def f_divergence_score(rho_w, rho_l, kind, alpha):
    """h_f = f'(u_w) − f'(u_l) with u = π_θ/π_ref (f-DPO, Wang et al. 2023, arXiv 2309.16240).

    reverse KL   f'(u) = log u + 1               → h = ρ_w − ρ_l (standard DPO)
    JS           f'(u) = log(2u/(1 + u))         → h = ρ_w − ρ_l − (softplus ρ_w − softplus ρ_l)
    α-divergence f'(u) = (1 − u^{−α})/α          → h = (e^{−α ρ_l} − e^{−α ρ_w})/α
    forward KL   f'(u) = −1/u (α-divergence, α=1) → h = e^{−ρ_l} − e^{−ρ_w}
    """
    h = rho_w - rho_l
    if kind == "js_divergence":
        return h - (ag.softplus(rho_w) - ag.softplus(rho_l))
    if kind in ("alpha_divergence", "forward_kl"):
        a = 1.0 if kind == "forward_kl" else alpha
        return (_capped_exp(rho_l * -a) - _capped_exp(rho_w * -a)) * (1.0 / a)
    return h


# -- the family, one function per loss -------------------------------------------------

def _sigmoid(q):
    """The DPO loss inside a weighted list (RPO, MPO) or under an f-divergence: ``losses.sigmoid_loss``
    of the score h, −log σ(βh) smoothed by ε. "sigmoid_norm" is the same loss on per-token *averaged*
    log-probabilities (the caller passes ``average_log_prob=True`` results), and it has another
    optimum: with every pair compared, π ∝ π_ref exp(|y|(r + c(x))/β), not π*
    (``experiments.exact_policies.length_tilted_optimum``). Measured exactly, the averaged loss lands
    there and not on π*, and on every seed measured the tilt favours *longer* responses than π* does
    (notebook 06 §4 for a table, notebook 09 §4 for the GPT): averaging changes the target; it does
    not remove a pull toward length."""
    return losses.sigmoid_loss(q.h, q.beta, q.eps)


def _ipo(q):
    """IPO's square loss (h − 1/(2β))², ``losses.ipo_loss`` of the score h, inside a list or under an
    f-divergence."""
    return losses.ipo_loss(q.h, q.beta)


def _robust(q):
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409, the rDPO loss):
    the unbiased estimate of the clean loss under label flips with rate ε,
    ℓ = ((1 − ε)(−log σ(βh)) − ε(−log σ(−βh))) / (1 − 2ε)."""
    z = q.h * q.beta
    return (-ag.logsigmoid(z) * (1.0 - q.eps) + ag.logsigmoid(-z) * q.eps) * (1.0 / (1.0 - 2.0 * q.eps))


def _hinge(q):
    """SLiC's calibration hinge (Zhao et al. 2023, SLiC-HF, arXiv 2305.10425) on the DPO margin:
    ℓ = max(0, 1 − βh); 1/β plays SLiC's margin δ."""
    return ag.relu(1.0 - q.h * q.beta)


def _bco_pair(q):
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization", arXiv 2404.04656): a binary
    classifier with logit r̂ − δ, chosen labelled 1 and rejected 0, where r̂ = βρ and δ is a
    running mean of the rewards (``update_running_mean``): ℓ = −log σ(βρ_w − δ) − log σ(−(βρ_l − δ))."""
    return (-ag.logsigmoid(q.rho_w * q.beta - q.bco_delta)
            - ag.logsigmoid(q.bco_delta - q.rho_l * q.beta))


def _nca_pair(q):
    """NCA on pairs (Chen et al. 2024, "Noise Contrastive Alignment", arXiv 2402.05369, K = 2):
        ℓ = −log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l).
    Each reward enters on its own, not only through the margin ρ_w − ρ_l, so the loss asks for
    a high reward of y_w itself (the paper's remedy for DPO lowering log π_θ(y_w))."""
    zw, zl = q.rho_w * q.beta, q.rho_l * q.beta
    return -ag.logsigmoid(zw) - ag.logsigmoid(-zw) * 0.5 - ag.logsigmoid(-zl) * 0.5


def _sppo_hard(q):
    """SPPO with hard win probabilities (Wu et al. 2024, "Self-Play Preference Optimization",
    arXiv 2405.00675, eq. 4.7 of Algorithm 1 with P̂(y_w ≻ π) = 1 and P̂(y_l ≻ π) = 0):
        ℓ = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²."""
    half = 0.5 / q.beta
    return (q.rho_w - half) ** 2 + (q.rho_l + half) ** 2


def _exo_pair(q):
    """EXO on pairs (Ji et al. 2024, "Efficient Exact Optimization", arXiv 2402.00856, eq. 16, K = 2):
    the reverse KL from the policy's pair distribution (σ(βh), σ(−βh)) to the smoothed labels
    (1 − ε, ε):
        ℓ = σ(βh)(log σ(βh) − log(1 − ε)) + σ(−βh)(log σ(−βh) − log ε)."""
    eps = q.eps if q.eps > 0 else _EXO_DEFAULT_SMOOTHING
    z = q.h * q.beta
    return ag.sigmoid(z) * (ag.logsigmoid(z) - float(np.log1p(-eps))) + \
        ag.sigmoid(-z) * (ag.logsigmoid(-z) - float(np.log(eps)))


def _apo_zero(q):
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", arXiv 2408.06266,
    eq. 7): ℓ = (1 − σ(βρ_w)) + σ(βρ_l): raise y_w and lower y_l, each anchored to π_ref.
    For when y_w is better than what π_θ would write."""
    return ag.sigmoid(-(q.rho_w * q.beta)) + ag.sigmoid(q.rho_l * q.beta)


def _apo_down(q):
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): ℓ = σ(βρ_w) + (1 − σ(βh)), h = ρ_w − ρ_l:
    lower both responses, y_l more. For when even y_w is worse than what π_θ would write."""
    return ag.sigmoid(q.rho_w * q.beta) + ag.sigmoid(-((q.rho_w - q.rho_l) * q.beta))


def _aot(q):
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment via Optimal
    Transport", arXiv 2406.05882): first-order stochastic dominance of the policy's margins over
    the reference's, through the 1-D optimal transport plan, which matches sorted samples:
    ℓ_i = −(1 − ε) log σ(β δ_i) − ε log σ(−β δ_i),
    δ = sort(log π_θ(y_w) − log π_θ(y_l)) − sort(log π_ref(y_w) − log π_ref(y_l)).
    The sort couples the examples of the batch."""
    return losses.sigmoid_loss(ag.sort(q.pw - q.pl) - ag.sort(q.rw - q.rl), q.beta, q.eps)


def _aot_unpaired(q):
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios should dominate the
    rejected ones as distributions: δ = sort(ρ_w) − sort(ρ_l), then the loss of ``_aot``."""
    return losses.sigmoid_loss(ag.sort(q.rho_w) - ag.sort(q.rho_l), q.beta, q.eps)


def _discopop(q):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, "Discovering Preference
    Optimization Algorithms", arXiv 2406.08414, eq. 5): with z = βh and m = σ(z/τ),
    ℓ = (1 − m)(−log σ(z)) + m e^{−z}, a blend of the logistic (DPO) and exponential losses.
    m e^{−z} is computed as e^{−z + log σ(z/τ)} so a large negative z gives 0·e^{|z|} = 0,
    not inf·0 = NaN. h is the reverse-KL log-ratio margin: neither the DiscoPOP paper nor TRL defines
    the loss with an f-divergence's score (TRL's ``discopop`` recomputes this margin and so ignores
    ``f_divergence_type``), so the combination is refused as for every loss that would ignore it."""
    z = q.h * q.beta
    scaled = z * (1.0 / q.tau)
    return -ag.logsigmoid(z) * ag.sigmoid(-scaled) + ag.exp(ag.logsigmoid(scaled) - z)


def _sft(q):
    """SFT / NLL on the chosen response: ℓ = −log π_θ(y_w|x), or −log π_θ(y_w|x)/|y_w| with
    ``chosen_lengths`` (the length-normalised NLL term of RPO, Pang et al. 2024)."""
    nll = -q.pw
    return nll if q.lengths is None else nll / q.lengths


def _simpo(q):
    """SimPO (``successors.simpo_loss``): no reference; pw, pl are per-token averages, β scales them."""
    return successors.simpo_loss(q.pw, q.pl, q.beta, q.simpo_gamma, q.eps)


def _orpo(q):
    """ORPO (``successors.orpo_loss``): no reference; pw, pl are per-token averages, β is ORPO's λ."""
    return successors.orpo_loss(q.pw, q.pl, q.beta)


#: the losses built on the score h, which an f-divergence replaces; the others read ρ_w, ρ_l alone
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "exo_pair", "sigmoid_norm")

LOSSES = {"sigmoid": _sigmoid, "robust": _robust, "hinge": _hinge, "ipo": _ipo,
          "bco_pair": _bco_pair, "nca_pair": _nca_pair, "sppo_hard": _sppo_hard,
          "exo_pair": _exo_pair, "apo_zero": _apo_zero, "apo_down": _apo_down, "aot": _aot,
          "aot_unpaired": _aot_unpaired, "discopop": _discopop, "sigmoid_norm": _sigmoid,
          "sft": _sft, "simpo": _simpo, "orpo": _orpo}


# -- BCO: the running mean of the rewards ---------------------------------------------

def update_running_mean(mean, count, chosen_rewards, rejected_rewards):
    """BCO's reward shift δ: the mean of every implicit reward seen so far, updated with one batch.

    Jung et al. 2024 (BCO) shift the rewards by δ, a running mean of the rewards
    of chosen and rejected responses, so the binary classifier's decision boundary
    sits at the typical reward. Returns the new (mean, count); start from (0.0, 0).
    Update with the current batch before computing its loss, then pass the mean as
    ``dpo_loss(..., bco_delta=mean)``. Every reward counts once, so with equal batch sizes
    this is also the average of the batch means.
    """
    values = [backend.to_numpy(r.data if isinstance(r, ag.Tensor) else backend.asarray(r)).ravel()
              for r in (chosen_rewards, rejected_rewards)]
    batch = np.concatenate(values).astype(np.float64)
    if batch.size == 0:
        return float(mean), int(count)
    total = int(count) + batch.size
    return float(mean) + (float(batch.mean()) - float(mean)) * batch.size / total, total


# -- LD-DPO: the excess length of the longer response counts with weight α ---------------

def ld_split_labels(labels, ld_alpha, label_pad_token_id=LABEL_PAD_TOKEN_ID):
    """LD-DPO's split of each response into its "public" part and the rest: two label arrays.

    Rows 0..B−1 are x ⊕ y_w, rows B..2B−1 are x ⊕ y_l (``collate_preferences``). For pair i the
    public length is ℓ_p = min(|y_w|, |y_l|) response tokens. ``front`` keeps the labels of the
    first ℓ_p response tokens of each row, ``rear`` those after (the others set to the pad id), so

        log π̂(y|x) = Σ_{t ≤ ℓ_p} log π(y_t|·) + α Σ_{t > ℓ_p} log π(y_t|·)
                   = logps(front) + α · logps(rear)

    (Liu et al. 2024, "LD-DPO: Length Desensitization in Direct Preference Optimization": the
    excess length of the longer response counts only with weight α, so the margin can no longer
    grow from length alone). As in the standard implementation, only π_θ's log-probs are
    re-weighted; log π_ref stays the plain sum.
    """
    xp = backend.xp()
    labels = xp.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (2B, T) (chosen rows, then rejected rows), "
                         f"got {tuple(labels.shape)}")
    if labels.shape[0] % 2:
        raise ValueError(f"labels has shape {tuple(labels.shape)}: LD-DPO pairs row i with row B + i, "
                         f"so the rows must be 2B (B chosen, then B rejected), an even number")
    is_response = labels != label_pad_token_id                         # (2B, T)
    position = xp.cumsum(is_response, axis=1)                          # 1-based response position
    n = is_response.sum(axis=1)                                        # (2B,) response lengths
    B = labels.shape[0] // 2
    public = xp.minimum(n[:B], n[B:])                                  # (B,) ℓ_p of each pair
    public = xp.concatenate([public, public])[:, None]                 # (2B, 1)
    front = xp.where(is_response & (position <= public), labels, label_pad_token_id)
    rear = xp.where(is_response & (position > public), labels, label_pad_token_id)
    return front, rear


def sequence_logps_forward(logits, labels, average_log_prob=False, ld_alpha=None):
    """log π(y|x) per row from logits (B', T, V) and labels (B', T): returns (logps (B',), cache).

    Without ``ld_alpha`` this is ``logprobs.batch_logps_forward`` (the notes' ``get_batch_logps``:
    a masked sum of next-token log-probs, or their mean). With it, LD-DPO's α-weighted sum
    ``logps(front) + α·logps(rear)`` (``ld_split_labels``), divided by the response length when
    ``average_log_prob``. Needs the pairs layout (chosen rows, then rejected rows) for ``ld_alpha``.
    """
    if ld_alpha is None:
        logps, cache = logprobs.batch_logps_forward(logits, labels, average_log_prob)
        return logps, ("plain", cache)
    front, rear = ld_split_labels(labels, ld_alpha)
    logps_front, cache_front = logprobs.batch_logps_forward(logits, front)
    logps_rear, cache_rear = logprobs.batch_logps_forward(logits, rear)
    # the mean divides by the whole response length |y|, front and rear together
    scale = logprobs.row_scale(logprobs.response_mask(labels), logits.dtype) if average_log_prob else 1.0
    logps = (logps_front + ld_alpha * logps_rear) * scale
    return logps, ("ld", cache_front, cache_rear, ld_alpha, scale)


# the forward was logps = s·(front + α·rear) with s = 1 or 1/|y|; both parts are plain masked sums,
# so the backward is each part's own backward at dL/dlogps·s and dL/dlogps·s·α, summed.
def sequence_logps_backward(dlogps, cache):
    """dL/dlogits (B', T, V) from dL/dlogps (B',), the backward of ``sequence_logps_forward``."""
    if cache[0] == "plain":
        return logprobs.batch_logps_backward(dlogps, cache[1])
    _, cache_front, cache_rear, ld_alpha, scale = cache
    d = backend.xp().asarray(dlogps) * scale
    dlogits = logprobs.batch_logps_backward(d, cache_front)
    dlogits += logprobs.batch_logps_backward(d * ld_alpha, cache_rear)
    return dlogits


# -- WPO: weight each pair by how on-policy it is ------------------------------------------

def wpo_weights(logits, labels):
    """WPO's weight of each pair (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization", eq. 2, with the standard implementation's normalisation), a constant (no
    gradient flows through it):

        w(x, y_w, y_l) = min(1, exp(ℓ̄(y_w) + ℓ̄(y_l))),
        ℓ̄(y) = (1/|y|) Σ_t [ log π_θ(y_t|x, y_<t) − log Σ_v π_θ(v|x, y_<t)² ]

    The second term is the log-probability of the policy's own sampling under its own
    distribution, so a pair the policy would write itself gets weight near 1 (on-policy), an
    unlikely one near 0. logits (2B, T, V) of the concatenated rows; returns (B,).
    """
    xp = backend.xp()
    per_token, mask = logprobs.get_per_token_logps(logits, labels)          # (2B, T')
    z = xp.asarray(logits)[:, :-1, :]                                       # (2B, T', V)
    # log Σ_v p_v² = log Σ_v e^{2z_v} − 2 log Σ_v e^{z_v}
    log_sum_p2 = ag.logsumexp_array(2.0 * z) - 2.0 * ag.logsumexp_array(z)   # (2B, T')
    mean_adjusted = (xp.where(mask, per_token - log_sum_p2, 0.0).sum(axis=1)
                     * logprobs.row_scale(mask, per_token.dtype))           # (2B,) ℓ̄(y)
    B = logits.shape[0] // 2
    return xp.minimum(1.0, xp.exp(mean_adjusted[:B] + mean_adjusted[B:])).astype(logits.dtype)


# -- TR-DPO: a reference that follows the policy -------------------------------------------

def sync_reference(ref_params, policy_params, alpha):
    """TR-DPO's soft update of the reference (Gorbatovski et al. 2024, "Learn Your Reference
    Model for Real Good Alignment", soft update):  θ_ref ← α·θ + (1 − α)·θ_ref, in place.
    α = 1 is the hard update (the reference becomes the policy); α = 0 leaves it."""
    alpha = float(alpha)
    for k, p in ref_params.items():
        p *= 1.0 - alpha
        p += alpha * policy_params[k]
