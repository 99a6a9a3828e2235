"""After DPO: the losses that drop the reference model (SimPO, ORPO) or the pairs (KTO).

DPO's implicit reward is r̂(x, y) = β log π_θ(y|x)/π_ref(y|x) (DPO paper eq. 5), and its loss is
Bradley–Terry's likelihood of that reward. Each method here changes one piece of that recipe:

- **SimPO** (Meng et al. 2024, arXiv 2405.14734) scores a response by its *average* token
  log-probability, with no reference: r̂(x, y) = (β/|y|) log π_θ(y|x), and asks the winner to lead
  by a margin γ:

      ℓ_SimPO = −log σ( (β/|y_w|) log π_θ(y_w|x) − (β/|y_l|) log π_θ(y_l|x) − γ )

- **ORPO** (Hong et al. 2024, arXiv 2403.07691) adds a preference term to supervised fine-tuning,
  with no reference either. With P̄(y|x) = π_θ(y|x)^{1/|y|} (the average likelihood per token) and
  odds(y|x) = P̄/(1 − P̄):

      ℓ_ORPO = −log P̄(y_w|x) − λ log σ( log odds(y_w|x) − log odds(y_l|x) )

- **KTO** (Ethayarajh et al. 2024, arXiv 2402.01306) needs no pairs: each example is one response
  labelled desirable or undesirable, scored against a reference point z_ref, an estimate of
  KL(π_θ ‖ π_ref) that no gradient flows through:

      v(x, y) = λ_D σ(β(ρ − z_ref))  if y is desirable,   λ_U σ(β(z_ref − ρ))  if undesirable,
      ℓ_KTO   = λ_y − v(x, y),        ρ = log π_θ(y|x) − log π_ref(y|x)

SimPO and ORPO take the *average* per-token log-probability ū(y) = log π_θ(y|x)/|y| as their
input (``average_log_prob=True`` in the trainer), so here ``*_logps`` are those averages; KTO
takes summed log-probabilities, as DPO does. Inputs may be plain arrays (arrays come back) or
autograd Tensors (Tensors come back, with gradients into the policy's log-probabilities only).

The group-relative policy gradients that followed (RLOO, GRPO, Dr. GRPO) need sampled responses
and a reward, not a dataset: they live in ``rl.py``.
"""

from dpo_np import autograd as ag
from dpo_np import backend, checks


def simpo_loss(policy_chosen_logps, policy_rejected_logps, beta=2.0, gamma=0.5, label_smoothing=0.0):
    """ℓ = −log σ(β ū(y_w) − β ū(y_l) − γ), per pair: SimPO's loss (Meng et al. 2024, arXiv 2405.14734).

    policy_*_logps: ū(y) = log π_θ(y|x)/|y|, the average token log-probabilities (B,). beta: β > 0,
    which scales the length-normalised reward βū (the paper's range: 2 to 2.5). gamma: the target
    margin γ ≥ 0 in reward units. label_smoothing ε: −(1 − ε) log σ(z) − ε log σ(−z), as the
    standard CPO/SimPO trainer smooths it. With γ = 0 and ε = 0 this is DPO's loss with log π_ref ≡ 0
    and averaged log-probabilities.
    """
    beta, gamma = checks.positive(beta, "beta"), checks.number(gamma, "gamma", low=0.0)
    eps = checks.number(label_smoothing, "label_smoothing", 0.0, 1.0)
    (pw, pl), track = _log_probabilities(policy_chosen_logps=policy_chosen_logps,
                                         policy_rejected_logps=policy_rejected_logps)
    beta = checks.beta(beta, "beta", pw.dtype)                 # β·ū in the inputs' dtype
    z = (pw - pl) * beta - gamma
    losses = -ag.logsigmoid(z)
    losses = losses if eps == 0 else losses * (1.0 - eps) - ag.logsigmoid(-z) * eps
    return _finish(losses, track)


def log_odds(average_logps):
    """log odds(y|x) = ū − log(1 − e^ū), the odds P̄/(1 − P̄) of the average likelihood P̄ = e^ū.

    ``average_logps`` must be < 0: a response the policy writes with certainty (P̄ = 1) has infinite
    odds. log(1 − e^ū) is ``autograd.log1mexp``, accurate both near ū = 0 and far below it.
    """
    (u,), track = _log_probabilities(average_logps=average_logps)
    if not bool((u.data < 0).all()):
        raise ValueError("average_logps must be < 0 (an average likelihood of 1 has infinite odds), "
                         f"got a maximum of {float(backend.to_numpy(u.data.max()))}")
    return _finish(u - ag.log1mexp(u), track)


def orpo_loss(policy_chosen_logps, policy_rejected_logps, lam=0.1):
    """ℓ = −ū(y_w) − λ log σ(log odds(y_w|x) − log odds(y_l|x)), per pair: ORPO (Hong et al. 2024,
    arXiv 2403.07691), the supervised NLL of y_w plus λ times the odds-ratio term.

    policy_*_logps: ū(y) = log π_θ(y|x)/|y| (B,), each < 0. lam: λ ≥ 0 (the paper's and the standard
    trainer's default 0.1; the standard ORPO trainer calls it ``beta``). The NLL here is the paper's,
    the mean over y_w's tokens per pair; the standard trainer averages it over all chosen tokens of a
    batch, prompt tokens included, which weighs long pairs more.
    """
    lam = checks.number(lam, "lam", low=0.0)
    (pw, pl), track = _log_probabilities(policy_chosen_logps=policy_chosen_logps,
                                         policy_rejected_logps=policy_rejected_logps)
    ratio = log_odds(pw) - log_odds(pl)
    return _finish(-pw - ag.logsigmoid(ratio) * lam, track)


def kto_reference_point(policy_kl_logps, reference_kl_logps):
    """z_ref = max(0, mean_i [log π_θ(y'_i|x_i) − log π_ref(y'_i|x_i)]), a plain float (no gradient).

    KTO's reference point (Ethayarajh et al. 2024, §4): an estimate of KL(π_θ ‖ π_ref) from a batch.
    The standard KTO trainer scores mismatched pairs (x_i with the completion y'_i of another example
    of the batch) under both models, and clips the mean at 0, since a KL is never negative.
    """
    (p, r), _ = _log_probabilities(policy_kl_logps=policy_kl_logps, reference_kl_logps=reference_kl_logps)
    return max(0.0, float(backend.to_numpy((p.data - r.data).mean())))


def kto_loss(policy_logps, reference_logps, desirable, reference_point, beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0):
    """ℓ = λ_y − v(x, y) per example: KTO's loss (Ethayarajh et al. 2024, arXiv 2402.01306, §4).

        v(x, y) = λ_D σ(β(ρ − z_ref)) for a desirable y,  λ_U σ(β(z_ref − ρ)) for an undesirable one,
        ρ = log π_θ(y|x) − log π_ref(y|x)

    policy_logps, reference_logps: summed log-probabilities (B,); desirable: (B,) booleans (the
    ``label`` of each example); reference_point: z_ref, a number (``kto_reference_point``, or an
    exact KL on an enumerated problem), held constant. beta: β > 0 (the standard default 0.1);
    desirable_weight, undesirable_weight: λ_D, λ_U > 0 (the paper balances them so that
    λ_D n_D / (λ_U n_U) lies in [1, 4/3]).
    """
    beta = checks.positive(beta, "beta")
    lam_d, lam_u = checks.positive(desirable_weight, "desirable_weight"), \
        checks.positive(undesirable_weight, "undesirable_weight")
    z = checks.number(reference_point, "reference_point")
    (p, r), track = _log_probabilities(policy_logps=policy_logps, reference_logps=reference_logps)
    beta = checks.beta(beta, "beta", p.dtype)                  # β(ρ − z_ref) in the inputs' dtype
    good = backend.xp().asarray(desirable.data if isinstance(desirable, ag.Tensor) else desirable)
    if good.dtype.kind != "b" or good.shape != p.shape:
        raise ValueError(f"desirable must be booleans of shape {p.shape} (one label per example), "
                         f"got dtype {good.dtype} and shape {good.shape}")
    rho = p - r.data                                                     # the reference is a constant
    losses = ag.where(good, ag.sigmoid((rho - z) * -beta) * lam_d, ag.sigmoid((rho - z) * beta) * lam_u)
    return _finish(losses, track)


# -- argument checks -------------------------------------------------------------------

def _log_probabilities(**named):
    """The named (B,) inputs as float Tensors of one shape, finite; and whether any came as a Tensor."""
    out, shape = [], None
    for name, x in named.items():
        t = x if isinstance(x, ag.Tensor) else ag.Tensor(backend.xp().asarray(x))
        if t.dtype.kind not in "f":
            raise TypeError(f"{name} must hold floating log-probabilities, got dtype {t.dtype}")
        if t.ndim != 1 or (shape is not None and t.shape != shape):
            raise ValueError(f"{name} must have shape (B,) like the others, got {t.shape}")
        if t.shape[0] == 0:
            raise ValueError(f"{name} is empty: a batch needs at least one example (B ≥ 1)")
        if not bool(backend.xp().isfinite(t.data).all()):
            raise ValueError(f"{name} holds a non-finite value (NaN or inf); log-probabilities must be finite")
        shape = t.shape
        out.append(t)
    return out, any(isinstance(x, ag.Tensor) for x in named.values())


def _finish(losses, track):
    return losses if track else losses.data
