"""The DPO loss (the notes: "DPO", "Loss function"; DPO paper eq. 7), per pair of responses.

    L_DPO(π_θ; π_ref) = −E_(x, y_w, y_l) [ log σ( β log π_θ(y_w|x)/π_ref(y_w|x)
                                                − β log π_θ(y_l|x)/π_ref(y_l|x) ) ]

Written with the log-ratios ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x), ρ_l likewise, and the margin
h = ρ_w − ρ_l, the loss of one pair is −log σ(βh). β·ρ is the implicit reward r̂(x, y) of the notes
(DPO paper eq. 5, without β log Z(x), which cancels between y_w and y_l).

``dpo_loss`` is the one entry point for every ``loss_type``. The paper's losses are right here:
``sigmoid_loss`` (with label smoothing ε, the conservative DPO) and ``ipo_loss``; the rest of the
family (robust, hinge, BCO, NCA, SPPO, EXO, APO, AOT, DiscoPOP, SFT terms, f-divergences, weighted
lists) is in ``variants.py``; SimPO and ORPO, which need no reference, are loss types too, their
formulas in ``successors.py``.

Policy log-probabilities may be plain arrays (plain arrays come back) or autograd Tensors (Tensors
come back, and gradients flow into the policy only: the reference is a constant). Log-sigmoids are
−logaddexp(0, −z), never log(sigmoid(z)), so margins |βh| of 1e4 give finite losses and gradients.
"""

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks, rlhf, variants
from dpo_np.variants import update_running_mean  # noqa: F401  (BCO's δ, kept importable from here)

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "bco_pair", "nca_pair", "sppo_hard", "exo_pair",
              "apo_zero", "apo_down", "aot", "aot_unpaired", "discopop", "sigmoid_norm", "sft", "simpo", "orpo")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# the losses whose formula contains ε; every other loss would ignore a label smoothing silently
SMOOTHED_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "robust", "exo_pair", "aot", "aot_unpaired", "simpo")
# SimPO and ORPO (``successors.py``) never read log π_ref: with only these (and "sft") a trainer keeps no reference
REFERENCE_FREE_LOSS_TYPES = ("simpo", "orpo")
assert set(variants.LOSSES) == set(LOSS_TYPES) and set(SMOOTHED_LOSS_TYPES) <= set(LOSS_TYPES)


# -- the paper's losses -----------------------------------------------------------------

def sigmoid_loss(h, beta, label_smoothing=0.0):
    """ℓ = −log σ(βh): the notes' L_DPO for one pair (DPO paper eq. 7), h the log-ratio margin.

    With label smoothing ε, the conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences"): ℓ = −(1 − ε) log σ(βh) − ε log σ(−βh), the cross-entropy against a label that
    is flipped with probability ε.
    """
    z = h * beta
    loss = -ag.logsigmoid(z)
    return loss if label_smoothing == 0 else loss * (1.0 - label_smoothing) - ag.logsigmoid(-z) * label_smoothing


def ipo_loss(h, beta):
    """ℓ = (h − 1/(2β))² (IPO, Azar et al. 2023, arXiv 2310.12036, ΨPO with Ψ = identity, eq. 17).

    A square loss that pulls the margin to 1/(2β) instead of pushing it to infinity; β is the
    paper's τ. The paper writes h with log π(y|x) of whole responses; feeding it per-token
    *averaged* log-probabilities is TRL's convention (huggingface/trl PR 1265, on the IPO
    authors' advice), which ``DPOTrainer`` follows.
    """
    return (h - 0.5 / beta) ** 2


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps=None,
             reference_rejected_logps=None, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
             reference_free=False, loss_weights=None, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=1.0, bco_delta=0.0, discopop_tau=0.05, chosen_lengths=None, simpo_gamma=0.5):
    """Per-pair losses and implicit rewards: (losses (B,), chosen_rewards (B,), rejected_rewards (B,)).

    policy_*_logps: log π_θ(y_w|x), log π_θ(y_l|x); reference_*_logps: log π_ref(y_w|x),
    log π_ref(y_l|x), constants (None with ``reference_free``: log π_ref ≡ 0). beta: β > 0 (the
    notes: typically 0.1 to 0.5). loss_type: "sigmoid" (the notes' L_DPO), "ipo", any name of
    ``LOSS_TYPES`` or a list of them summed with ``loss_weights`` (["sigmoid", "sft"] is RPO).
    label_smoothing: ε, only for ``SMOOTHED_LOSS_TYPES`` (an ε another loss would ignore is an
    error). The variants' own settings (``f_divergence_type``, ``f_alpha_divergence_coef``,
    ``bco_delta``, ``discopop_tau``, ``chosen_lengths``) are described in ``variants.py``;
    ``simpo_gamma`` is SimPO's target margin γ ≥ 0 and "orpo" reads β as ORPO's λ (``successors.py``).
    "ipo", "sigmoid_norm", "simpo" and "orpo" expect per-token averaged log-probabilities (for IPO,
    TRL's convention, not the IPO paper's), the others sums.

    The rewards β(log π_θ − log π_ref) are plain arrays, detached (for logging; exactly 0 when
    π_θ = π_ref). For "aot"/"aot_unpaired" loss i belongs to the i-th smallest margin.
    """
    kinds, weights = _check_loss_types(loss_type, loss_weights)
    beta = checks.positive(beta, "beta")
    eps = _check_label_smoothing(label_smoothing, kinds)
    options = _check_variant_options(f_divergence_type, f_alpha_divergence_coef, bco_delta, discopop_tau)
    options["simpo_gamma"] = checks.number(simpo_gamma, "simpo_gamma", low=0.0)
    ignoring = [kind for kind in kinds if kind not in variants.F_DIVERGENCE_LOSS_TYPES]
    if options["f_divergence_type"] != "reverse_kl" and ignoring:
        raise ValueError(f"f_divergence_type={f_divergence_type!r} would be ignored by loss_type "
                         f"{', '.join(map(repr, ignoring))}: only {', '.join(variants.F_DIVERGENCE_LOSS_TYPES)} "
                         f"are built on the score it changes; use f_divergence_type='reverse_kl' with this loss_type")
    pw, pl, rw, rl = _log_probabilities(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                        reference_rejected_logps, checks.flag(reference_free, "reference_free"))
    beta = checks.beta(beta, "beta", pw.dtype)         # β·h, 1/(2β) in the inputs' dtype, not only in float64
    if kinds in (["sigmoid"], ["ipo"]) and weights == [1.0] and f_divergence_type == "reverse_kl":
        h = (pw - rw) - (pl - rl)                                          # the log-ratio margin, (B,)
        losses = sigmoid_loss(h, beta, eps) if kinds == ["sigmoid"] else ipo_loss(h, beta)
    else:
        lengths = _chosen_lengths(chosen_lengths, pw) if "sft" in kinds else None
        losses = variants.family_loss(kinds, weights, pw, pl, rw, rl, beta, eps, lengths=lengths, **options)
    rewards = implicit_rewards(pw, rw, beta), implicit_rewards(pl, rl, beta)
    _check_no_overflow(losses, rewards, beta)
    track = isinstance(policy_chosen_logps, ag.Tensor) or isinstance(policy_rejected_logps, ag.Tensor)
    return (losses if track else losses.data), *rewards


def _check_no_overflow(losses, rewards, beta):
    """From finite inputs and a β that fits their dtype, only an overflow of β·h or β·ρ past the dtype's
    largest number makes a loss or a reward infinite: refused by name (one host transfer)."""
    xp = backend.xp()
    finite = xp.stack([xp.isfinite(a).all() for a in (losses.data, *rewards)])
    if not backend.to_numpy(finite).all():
        raise ValueError(f"beta={beta:g} times these log-probability ratios overflows {losses.dtype.name} (past "
                         f"{float(np.finfo(losses.dtype).max):.3g}): the loss or the implicit rewards would be "
                         f"infinite; choose a smaller beta, or float64 inputs")


# -- the quantities the notes name ------------------------------------------------

def log_ratio(policy_logps, reference_logps):
    """ρ = log π_θ(y|x) − log π_ref(y|x), per example (the log of the notes' π_θ/π_ref)."""
    if isinstance(policy_logps, ag.Tensor) or isinstance(reference_logps, ag.Tensor):
        return ag.sub(policy_logps, reference_logps)
    return _array(policy_logps) - _array(reference_logps)


def implicit_rewards(policy_logps, reference_logps, beta):
    """r̂(x, y) = β log π_θ(y|x)/π_ref(y|x) (``rlhf.implicit_reward``), detached: a plain array.

    The rewards are for logging and metrics (reward accuracy, margin), so nothing can
    backpropagate through them.
    """
    return rlhf.implicit_reward(_values(policy_logps), _values(reference_logps), beta)


def log_ratio_margin(policy_chosen_logps, policy_rejected_logps,
                     reference_chosen_logps, reference_rejected_logps):
    """h = log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l), the argument of σ(β·) in L_DPO."""
    return log_ratio(policy_chosen_logps, reference_chosen_logps) - \
        log_ratio(policy_rejected_logps, reference_rejected_logps)


# -- argument checks -------------------------------------------------------------------

def _values(x):
    return x.data if isinstance(x, ag.Tensor) else _array(x)


def _array(x):
    """``x`` as a floating backend array: integers become floats; complex numbers, booleans, strings and
    objects are refused (a complex log-probability taken as its real part would be a silent error)."""
    a = backend.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"expected real numbers, got dtype {a.dtype}")
    return a if a.dtype.kind == "f" else a.astype(backend.default_dtype())


def _log_probabilities(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free):
    """The four (B,) inputs as checked Tensors; the reference ones constants in the policy's dtype."""
    pw = _as_tensor("policy_chosen_logps", policy_chosen)
    pl = _as_tensor("policy_rejected_logps", policy_rejected)
    _check_same_shape(("policy_chosen_logps", pw), ("policy_rejected_logps", pl))
    if reference_free:
        _check_finite(policy_chosen_logps=pw, policy_rejected_logps=pl)
        zero = ag.Tensor(backend.xp().zeros_like(pw.data))
        return pw, pl, zero, zero
    if reference_chosen is None or reference_rejected is None:
        raise ValueError("reference_chosen_logps and reference_rejected_logps are required "
                         "unless reference_free=True")
    # constants in the policy's dtype: no gradient reaches them and no silent float64 upcast
    rw = _as_tensor("reference_chosen_logps", reference_chosen)
    rl = _as_tensor("reference_rejected_logps", reference_rejected)
    rw, rl = (ag.Tensor(r.data.astype(pw.dtype, copy=False)) for r in (rw, rl))
    _check_same_shape(("policy_chosen_logps", pw), ("reference_chosen_logps", rw))
    _check_same_shape(("policy_chosen_logps", pw), ("reference_rejected_logps", rl))
    _check_finite(policy_chosen_logps=pw, policy_rejected_logps=pl, reference_chosen_logps=rw,
                  reference_rejected_logps=rl)
    return pw, pl, rw, rl


def _chosen_lengths(chosen_lengths, pw):
    """|y_w| per pair as a constant in the policy's dtype (float64 counts must not upcast ℓ), or None."""
    if chosen_lengths is None:
        return None
    lengths = _as_tensor("chosen_lengths", chosen_lengths)
    _check_same_shape(("policy_chosen_logps", pw), ("chosen_lengths", lengths))
    _check_finite(chosen_lengths=lengths)
    if not bool((lengths.data > 0).all()):
        raise ValueError("chosen_lengths must be positive token counts")
    return ag.Tensor(lengths.data.astype(pw.dtype))


def _as_tensor(name, x):
    """``x`` as a Tensor (a given Tensor is kept, so its graph is kept), checked: (B,)."""
    if isinstance(x, ag.Tensor) and x.dtype.kind in "fiu":
        t = x if x.dtype.kind == "f" else ag.Tensor(x.data.astype(backend.default_dtype()))
    else:
        try:
            t = ag.Tensor(_array(x.data if isinstance(x, ag.Tensor) else x))
        except (TypeError, ValueError) as err:
            kind = getattr(getattr(x, "dtype", None), "name", type(x).__name__)
            raise TypeError(f"{name} must be an array of real numbers of shape (B,), got {kind}") from err
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (B,) (one log-probability per example), got {t.shape}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: a batch of pairs needs at least one pair (B ≥ 1)")
    return t


def _check_finite(**tensors):
    """Each named Tensor finite: one host transfer for all of them; an error names the first bad one."""
    xp = backend.xp()
    finite = backend.to_numpy(xp.stack([xp.isfinite(t.data).all() for t in tensors.values()]))
    for (name, t), ok in zip(tensors.items(), finite):
        if not ok:
            bad = int((~xp.isfinite(t.data)).sum())
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf); "
                             f"log-probabilities must be finite")


def _check_same_shape(a, b):
    (name_a, ta), (name_b, tb) = a, b
    if ta.shape != tb.shape:
        raise ValueError(f"{name_a} has shape {ta.shape} but {name_b} has shape {tb.shape}; "
                         f"they must match")


def _check_loss_types(loss_type, loss_weights):
    if isinstance(loss_type, str):
        kinds = [loss_type]
    elif isinstance(loss_type, (list, tuple)):       # a dict or a set would pass as its keys, in no set order
        kinds = list(loss_type)
    else:
        raise TypeError(f"loss_type must be a name of LOSS_TYPES or a list of them, got {loss_type!r} "
                        f"({type(loss_type).__name__})")
    if not kinds:
        raise ValueError(f"loss_type must name at least one of {LOSS_TYPES}")
    for kind in kinds:
        if not isinstance(kind, str) or kind not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {kind!r}; valid loss types: {', '.join(LOSS_TYPES)}")
    if loss_weights is None:
        return kinds, [1.0] * len(kinds)
    try:
        weights = [checks.number(w, "loss_weights") for w in np.atleast_1d(np.asarray(loss_weights, dtype=object))]
    except (TypeError, ValueError):
        raise TypeError(f"loss_weights must be finite numbers, one per loss type, got {loss_weights!r}") from None
    if len(weights) != len(kinds):
        raise ValueError(f"loss_weights has {len(weights)} entries but loss_type names {len(kinds)} "
                         f"losses ({kinds}); give one weight per loss")
    return kinds, weights


def _check_label_smoothing(eps, kinds):
    eps = checks.number(eps, "label_smoothing")
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


def _check_variant_options(f_divergence_type, alpha, bco_delta, tau):
    """The settings only some variants read, checked on every call so a bad one never waits."""
    return {"f_divergence_type": checks.choice(f_divergence_type, "f_divergence_type", F_DIVERGENCE_TYPES),
            "alpha": checks.positive(alpha, "f_alpha_divergence_coef"),
            "bco_delta": checks.number(bco_delta, "bco_delta"),
            "tau": checks.positive(tau, "discopop_tau")}
