"""The DPO loss and its family, per example, on log-probabilities of whole responses.

The notes end with the loss that replaces RLHF's reward model and PPO loop
(DPO paper eq. 7, the notes' L_DPO):

    L_DPO(π_θ; π_ref) = −E_(x, y_w, y_l) [ log σ( β log π_θ(y_w|x)/π_ref(y_w|x)
                                                − β log π_θ(y_l|x)/π_ref(y_l|x) ) ]

Everything here is written in terms of the two log-ratios

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x),    ρ_l = log π_θ(y_l|x) − log π_ref(y_l|x)

and the margin h = ρ_w − ρ_l. β·ρ is the implicit reward r(x, y) of the notes
(DPO paper eq. 5, with the β log Z(x) term dropped because it cancels between
y_w and y_l). The other losses of the family are other functions of ρ_w, ρ_l
and h, following the definitions of the standard open-source DPO trainer.

Every function accepts plain arrays (and returns plain arrays) or autograd
Tensors for the policy log-probabilities (and returns Tensors whose gradients
flow into the policy only: the reference log-probabilities are constants).
Log-sigmoids go through ``autograd.logsigmoid`` (−logaddexp(0, −z)), never
``log(sigmoid(z))``, so margins |βh| of 1e4 give finite losses and gradients.
"""

from typing import NamedTuple

import numpy as np

from . import autograd as ag
from . import backend

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "bco_pair", "nca_pair", "sppo_hard", "exo_pair",
              "apo_zero", "apo_down", "aot", "aot_unpaired", "discopop", "sigmoid_norm", "sft")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# the losses whose formula contains ε; every other loss would ignore a label smoothing silently
SMOOTHED_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "robust", "exo_pair", "aot", "aot_unpaired")
_EXO_DEFAULT_SMOOTHING = 1e-3


# -- the quantities the notes name ------------------------------------------------

def log_ratio(policy_logps, reference_logps):
    """ρ = log π_θ(y|x) − log π_ref(y|x), per example (the log of the notes' π_θ/π_ref)."""
    return ag.sub(policy_logps, reference_logps) if _any_tensor(policy_logps, reference_logps) \
        else _array(policy_logps) - _array(reference_logps)


def implicit_rewards(policy_logps, reference_logps, beta):
    """r̂(x, y) = β log π_θ(y|x)/π_ref(y|x) (DPO paper eq. 5 without β log Z(x)), as a plain array.

    The rewards are for logging and metrics (reward accuracy, margin): they are
    returned detached from any graph, so nothing can backpropagate through them.
    """
    return beta * (_values(policy_logps) - _values(reference_logps))


def log_ratio_margin(policy_chosen_logps, policy_rejected_logps,
                     reference_chosen_logps, reference_rejected_logps):
    """h = log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l), the argument of σ(β·) in L_DPO."""
    return log_ratio(policy_chosen_logps, reference_chosen_logps) - \
        log_ratio(policy_rejected_logps, reference_rejected_logps)


# -- the loss ------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
             reference_rejected_logps=None, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
             reference_free=False, loss_weights=None, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=1.0, bco_delta=0.0, discopop_tau=0.05, chosen_lengths=None):
    """Per-example DPO-family losses and implicit rewards: (losses, chosen_rewards, rejected_rewards).

    The sigmoid loss is the notes' L_DPO (DPO paper eq. 7) before the batch mean:

        ℓ = −log σ(β h),   h = log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)

    Arguments
      policy_chosen_logps, policy_rejected_logps: log π_θ(y_w|x), log π_θ(y_l|x), shape (B,);
          plain arrays or autograd Tensors (gradients flow into these only).
      reference_chosen_logps, reference_rejected_logps: log π_ref(y_w|x), log π_ref(y_l|x), (B,);
          constants (a Tensor is detached). May be None when ``reference_free``.
      beta: β > 0, the strength of the KL constraint (the notes: typically 0.1 to 0.5).
      loss_type: one name of ``LOSS_TYPES`` or a list of them; a list gives the weighted sum
          Σ_k w_k ℓ_k with ``loss_weights`` (default all 1). ["sigmoid", "sft"] is RPO
          (Pang et al. 2024, arXiv 2404.19733); ["sigmoid", "bco_pair", "sft"] is MPO
          (Wang et al. 2024, arXiv 2411.10442).
      label_smoothing: ε, the probability that a label is flipped; [0, 0.5) for "robust",
          [0, 1) for "exo_pair" (0 there means 1e-3, as log ε must be finite), else [0, 1].
          Only the losses of ``SMOOTHED_LOSS_TYPES`` contain ε; ε ≠ 0 with any other loss
          type (alone or in a list) is an error rather than a silently ignored setting.
      reference_free: use π_ref ≡ 1 (log π_ref = 0) everywhere, so h = log π_θ(y_w) − log π_θ(y_l)
          and the rewards are β log π_θ(y); the reference arguments are ignored.
      f_divergence_type: the divergence of the constraint (f-DPO, Wang et al. 2023, "Beyond Reverse
          KL", arXiv 2309.16240: the implicit reward becomes β f'(π_θ/π_ref)): "reverse_kl"
          (standard DPO), "forward_kl", "js_divergence" or "alpha_divergence" with
          ``f_alpha_divergence_coef`` α > 0 (forward KL is α = 1).
          It reshapes h for the losses built on h (sigmoid, robust, hinge, ipo, exo_pair,
          sigmoid_norm); the other losses are defined on ρ_w, ρ_l directly and ignore it.
      bco_delta: δ, the running mean of the implicit rewards for "bco_pair" (see
          ``update_running_mean``); the caller owns this state, so the loss stays a pure function.
      discopop_tau: τ > 0, the temperature of DiscoPOP's mixing.
      chosen_lengths: |y_w| per example (B,); when given, "sft" is the per-token mean NLL
          −log π_θ(y_w|x)/|y_w| (as in RPO), else the sequence NLL −log π_θ(y_w|x).

    Input conventions the caller keeps: "ipo" and "sigmoid_norm" expect per-token *averaged*
    log-probabilities (``get_batch_logps(..., average_log_prob=True)``), as IPO's trainer does;
    all the other losses expect summed log-probabilities, as the notes and the DPO paper do.

    Returns
      losses: (B,), a Tensor when a policy input is a Tensor, else a plain array. For "aot" and
          "aot_unpaired" entry i belongs to the i-th smallest margin, not to example i (the loss
          compares sorted batches).
      chosen_rewards, rejected_rewards: β(log π_θ − log π_ref) of y_w and y_l, (B,), always
          plain arrays, detached (they are for logging; with π_θ = π_ref they are exactly 0).
    """
    kinds, weights = _check_loss_types(loss_type, loss_weights)
    beta = _check_positive("beta", beta)
    eps = _check_label_smoothing(label_smoothing, kinds)
    if f_divergence_type not in F_DIVERGENCE_TYPES:
        raise ValueError(f"f_divergence_type must be one of {F_DIVERGENCE_TYPES}, "
                         f"got {f_divergence_type!r}")
    alpha = _check_positive("f_alpha_divergence_coef", f_alpha_divergence_coef)
    tau = _check_positive("discopop_tau", discopop_tau)
    bco_delta = _check_number("bco_delta", bco_delta)
    if not np.isfinite(bco_delta):
        raise ValueError(f"bco_delta must be finite, got {bco_delta}")

    track = _any_tensor(policy_chosen_logps, policy_rejected_logps)
    pw = _as_tensor("policy_chosen_logps", policy_chosen_logps)
    pl = _as_tensor("policy_rejected_logps", policy_rejected_logps)
    _check_same_shape(("policy_chosen_logps", pw), ("policy_rejected_logps", pl))
    if reference_free:
        rw = ag.Tensor(backend.xp().zeros_like(pw.data))
        rl = rw
    else:
        if reference_chosen_logps is None or reference_rejected_logps is None:
            raise ValueError("reference_chosen_logps and reference_rejected_logps are required "
                             "unless reference_free=True")
        # constants in the policy's dtype: no gradient reaches them and no silent float64 upcast
        rw = _as_tensor("reference_chosen_logps", reference_chosen_logps)
        rl = _as_tensor("reference_rejected_logps", reference_rejected_logps)
        rw, rl = ag.Tensor(rw.data.astype(pw.dtype)), ag.Tensor(rl.data.astype(pw.dtype))
        _check_same_shape(("policy_chosen_logps", pw), ("reference_chosen_logps", rw))
        _check_same_shape(("policy_chosen_logps", pw), ("reference_rejected_logps", rl))
    lengths = None
    if chosen_lengths is not None and "sft" in kinds:
        lengths = _as_tensor("chosen_lengths", chosen_lengths)
        _check_same_shape(("policy_chosen_logps", pw), ("chosen_lengths", lengths))
        if not bool((lengths.data > 0).all()):
            raise ValueError("chosen_lengths must be positive token counts")
        # a constant in the policy's dtype, like the reference: float64 counts must not upcast ℓ
        lengths = ag.Tensor(lengths.data.astype(pw.dtype))

    rho_w, rho_l = pw - rw, pl - rl                                       # the log-ratios, (B,)
    q = _Quantities(pw=pw, pl=pl, rw=rw, rl=rl, rho_w=rho_w, rho_l=rho_l,
                    h=_f_divergence_score(rho_w, rho_l, f_divergence_type, alpha),
                    beta=beta, eps=eps, bco_delta=bco_delta, tau=tau, lengths=lengths)
    losses = None
    for kind, weight in zip(kinds, weights):
        term = _LOSSES[kind](q)
        term = term if weight == 1.0 else term * weight
        losses = term if losses is None else losses + term

    chosen_rewards = implicit_rewards(pw, rw, beta)
    rejected_rewards = implicit_rewards(pl, rl, beta)
    return (losses if track else losses.data), chosen_rewards, rejected_rewards


def update_running_mean(mean, count, chosen_rewards, rejected_rewards):
    """BCO's reward shift δ: the mean of every implicit reward seen so far, updated with one batch.

    Jung et al. 2024 (BCO) shift the rewards by δ, a running mean of the rewards
    of chosen and rejected responses, so the binary classifier's decision boundary
    sits at the typical reward. Returns the new (mean, count); start from (0.0, 0).
    Update with the current batch before computing its loss, then pass the mean as
    ``dpo_loss(..., bco_delta=mean)``. Every reward counts once, so with equal batch sizes
    this is also the average of the batch means.
    """
    batch = np.concatenate([backend.to_numpy(_values(chosen_rewards)).ravel(),
                            backend.to_numpy(_values(rejected_rewards)).ravel()]).astype(np.float64)
    if batch.size == 0:
        return float(mean), int(count)
    total = int(count) + batch.size
    return float(mean) + (float(batch.mean()) - float(mean)) * batch.size / total, total


# -- the score h under an f-divergence ----------------------------------------------

def _capped_exp(x):
    """e^x with x capped just below log(finfo.max), so a huge density ratio saturates instead of
    overflowing. The cap leaves a factor e^10 ≈ 2e4 of headroom, so the later β/α scaling stays
    finite too; beyond the cap the gradient is 0 (the score is flat there)."""
    cap = float(np.log(np.finfo(x.dtype).max)) - 10.0
    return ag.exp(ag.where(x.data > cap, cap, x))


def _f_divergence_score(rho_w, rho_l, kind, alpha):
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

class _Quantities(NamedTuple):
    pw: ag.Tensor        # log π_θ(y_w|x)                     (B,)
    pl: ag.Tensor        # log π_θ(y_l|x)                     (B,)
    rw: ag.Tensor        # log π_ref(y_w|x), constant         (B,)
    rl: ag.Tensor        # log π_ref(y_l|x), constant         (B,)
    rho_w: ag.Tensor     # ρ_w = log π_θ(y_w)/π_ref(y_w)      (B,)
    rho_l: ag.Tensor     # ρ_l                                (B,)
    h: ag.Tensor         # the score: ρ_w − ρ_l under reverse KL
    beta: float
    eps: float
    bco_delta: float
    tau: float
    lengths: object      # |y_w| (B,) Tensor or None


def _smoothed_logistic(z, eps):
    """−(1 − ε) log σ(z) − ε log σ(−z): the cross-entropy of σ(z) against a label that is flipped
    with probability ε; ε = 0 leaves the logistic loss −log σ(z)."""
    loss = -ag.logsigmoid(z)
    return loss if eps == 0 else loss * (1.0 - eps) - ag.logsigmoid(-z) * eps


def _sigmoid(q):
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7); with label smoothing ε, the conservative
    DPO of Mitchell (2023, "A note on DPO with noisy preferences"):
        ℓ = −(1 − ε) log σ(βh) − ε log σ(−βh),
    the cross-entropy against a label that is flipped with probability ε. ε = 0 is the notes' L_DPO.

    "sigmoid_norm" is this same loss on length-normalised log-ratios: h is built from per-token
    *averaged* log-probabilities (the caller passes ``average_log_prob=True`` results), which
    removes DPO's pull towards longer responses at the price of changing β's scale."""
    return _smoothed_logistic(q.h * q.beta, q.eps)


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


def _ipo(q):
    """IPO (Azar et al. 2023, arXiv 2310.12036, ΨPO with Ψ = identity, eq. 17):
        ℓ = (h − 1/(2β))²,
    a square loss that pulls the margin to 1/(2β) instead of pushing it to infinity; β is the
    paper's τ. The caller passes per-token averaged log-probabilities (as the standard trainer
    does for IPO)."""
    return (q.h - 0.5 / q.beta) ** 2


def _bco_pair(q):
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization", arXiv 2404.04656): a binary
    classifier with logit r̂ − δ, chosen labelled 1 and rejected 0, where r̂ = βρ and δ is a
    running mean of the rewards: ℓ = −log σ(βρ_w − δ) − log σ(−(βρ_l − δ))."""
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
    return _smoothed_logistic((ag.sort(q.pw - q.pl) - ag.sort(q.rw - q.rl)) * q.beta, q.eps)


def _aot_unpaired(q):
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios should dominate the
    rejected ones as distributions: δ = sort(ρ_w) − sort(ρ_l), then the loss of ``_aot``."""
    return _smoothed_logistic((ag.sort(q.rho_w) - ag.sort(q.rho_l)) * q.beta, q.eps)


def _discopop(q):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, "Discovering Preference
    Optimization Algorithms", arXiv 2406.08414, eq. 5): with z = βh and m = σ(z/τ),
    ℓ = (1 − m)(−log σ(z)) + m e^{−z}, a blend of the logistic (DPO) and exponential losses.
    m e^{−z} is computed as e^{−z + log σ(z/τ)} so a large negative z gives 0·e^{|z|} = 0,
    not inf·0 = NaN."""
    z = (q.rho_w - q.rho_l) * q.beta
    scaled = z * (1.0 / q.tau)
    return -ag.logsigmoid(z) * ag.sigmoid(-scaled) + ag.exp(ag.logsigmoid(scaled) - z)


def _sft(q):
    """SFT / NLL on the chosen response: ℓ = −log π_θ(y_w|x), or −log π_θ(y_w|x)/|y_w| with
    ``chosen_lengths`` (the length-normalised NLL term of RPO, Pang et al. 2024)."""
    nll = -q.pw
    return nll if q.lengths is None else nll / q.lengths


_LOSSES = {"sigmoid": _sigmoid, "robust": _robust, "hinge": _hinge, "ipo": _ipo,
           "bco_pair": _bco_pair, "nca_pair": _nca_pair, "sppo_hard": _sppo_hard,
           "exo_pair": _exo_pair, "apo_zero": _apo_zero, "apo_down": _apo_down, "aot": _aot,
           "aot_unpaired": _aot_unpaired, "discopop": _discopop, "sigmoid_norm": _sigmoid,
           "sft": _sft}
assert set(_LOSSES) == set(LOSS_TYPES) and set(SMOOTHED_LOSS_TYPES) <= set(LOSS_TYPES)


# -- argument checks -------------------------------------------------------------------

def _any_tensor(*xs):
    return any(isinstance(x, ag.Tensor) for x in xs)


def _values(x):
    return x.data if isinstance(x, ag.Tensor) else _array(x)


def _array(x):
    a = backend.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(backend.default_dtype())


def _as_tensor(name, x):
    """``x`` as a Tensor (a given Tensor is kept, so its graph is kept), checked: (B,), finite."""
    if isinstance(x, ag.Tensor):
        t = x if x.dtype.kind == "f" else ag.Tensor(x.data.astype(backend.default_dtype()))
    else:
        try:
            t = ag.Tensor(_array(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a numeric array of shape (B,), "
                            f"got {type(x).__name__}") from err
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (B,) (one log-probability per example), got {t.shape}")
    xp = backend.xp()
    if not bool(xp.isfinite(t.data).all()):
        bad = int((~xp.isfinite(t.data)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf); "
                         f"log-probabilities must be finite")
    return t


def _check_same_shape(a, b):
    (name_a, ta), (name_b, tb) = a, b
    if ta.shape != tb.shape:
        raise ValueError(f"{name_a} has shape {ta.shape} but {name_b} has shape {tb.shape}; "
                         f"they must match")


def _check_number(name, value):
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})") from err


def _check_positive(name, value):
    v = _check_number(name, value)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_loss_types(loss_type, loss_weights):
    if isinstance(loss_type, str):
        kinds = [loss_type]
    else:
        try:
            kinds = list(loss_type)
        except TypeError:
            raise TypeError(f"loss_type must be a name of LOSS_TYPES or a list of them, "
                            f"got {loss_type!r}") from None
    if not kinds:
        raise ValueError(f"loss_type must name at least one of {LOSS_TYPES}")
    for kind in kinds:
        if not isinstance(kind, str) or kind not in _LOSSES:
            raise ValueError(f"unknown loss_type {kind!r}; valid loss types: {', '.join(LOSS_TYPES)}")
    if loss_weights is None:
        return kinds, [1.0] * len(kinds)
    try:
        weights = [float(w) for w in np.atleast_1d(loss_weights)]
    except (TypeError, ValueError):
        raise TypeError(f"loss_weights must be numbers, one per loss type, got {loss_weights!r}") from None
    if len(weights) != len(kinds):
        raise ValueError(f"loss_weights has {len(weights)} entries but loss_type names {len(kinds)} "
                         f"losses ({kinds}); give one weight per loss")
    if not all(np.isfinite(w) for w in weights):
        raise ValueError(f"loss_weights must be finite, got {weights}")
    return kinds, weights


def _check_label_smoothing(eps, kinds):
    eps = _check_number("label_smoothing", eps)
    if "robust" in kinds and not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type 'robust' "
                         f"(it divides by 1 − 2ε), got {eps}")
    if "exo_pair" in kinds and not 0.0 <= eps < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1) for loss_type 'exo_pair' "
                         f"(it takes log(1 − ε)), got {eps}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    ignoring = [kind for kind in kinds if kind not in SMOOTHED_LOSS_TYPES]
    if eps != 0.0 and ignoring:
        raise ValueError(f"label_smoothing={eps} would be ignored by loss_type "
                         f"{', '.join(map(repr, ignoring))}: only {', '.join(SMOOTHED_LOSS_TYPES)} "
                         f"contain ε; use label_smoothing=0 with this loss_type")
    return eps
