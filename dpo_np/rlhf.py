"""The RLHF derivations of the notes as code, exact over an enumerated response set.

Every function takes log-probabilities (and rewards) over an explicit list of
responses: the last axis runs over the responses y, the leading axes over the
prompts x. With the whole set in hand, Z(x) is a sum rather than an
intractable integral, so each identity of the notes can be checked to rounding
error:

    P(y_w ≻ y_l)  = σ(r(x, y_w) − r(x, y_l))                       Bradley–Terry, DPO eq. 1
    L_R           = −E log σ(r(x, y_w) − r(x, y_l))                 reward-model loss, DPO eq. 2
    J(π)          = E_{y∼π}[r(x, y)] − β KL(π ‖ π_ref)              RLHF objective, DPO eq. 3
    Z(x)          = Σ_y π_ref(y|x) exp(r(x, y)/β)
    log π*(y|x)   = log π_ref(y|x) + r(x, y)/β − log Z(x)           optimal policy, DPO eq. 4
    r(x, y)       = β log π*(y|x)/π_ref(y|x) + β log Z(x)           reparameterized reward, DPO eq. 5

All of it is in log space with a shifted log-sum-exp, so β from 1e-3 to 1e3 and
rewards in the hundreds stay finite (exp(r/β) alone would overflow at r/β > 709).
Over that range (|r| ≤ 500) ``optimal_policy`` and ``log_partition`` are accurate in float32
too: they normalize in float64 and hand the result back in the caller's dtype.

Each function accepts plain arrays or autograd ``Tensor``s. The formula is
written once, with the autograd's operations; given no Tensor, the function
returns the plain array (no graph is built, since nothing requires a gradient),
given a Tensor it returns a Tensor through which gradients flow.
"""

import math

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks


# -- input checks -----------------------------------------------------------------

def _data(x):
    return x.data if isinstance(x, ag.Tensor) else x


def _any_tensor(*args):
    return any(isinstance(a, ag.Tensor) for a in args)


def _as_input(x, name):
    """``x`` as a floating backend array (a Tensor stays a Tensor); integers become floats."""
    if isinstance(x, ag.Tensor):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating values, got dtype {x.dtype}")
        return x
    xp = backend.xp()
    try:
        a = xp.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}") from None
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    elif a.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def _check_response_axis(x, name):
    shape = tuple(_data(x).shape)
    if len(shape) == 0:
        raise ValueError(f"{name} must have a response axis (the last axis), got a scalar")
    if shape[-1] == 0:
        raise ValueError(f"{name} has an empty response set: shape {shape}, the last axis must be non-empty")


def _check_same_shape(reference_name, reference, **others):
    want = tuple(_data(reference).shape)
    for name, x in others.items():
        got = tuple(_data(x).shape)
        if got != want:
            raise ValueError(f"{name} has shape {got}, but {reference_name} has shape {want}: "
                             f"they must match (prompts..., responses)")


def _first_bad(mask):
    """The index (a tuple) of the first True in ``mask``."""
    flat = int(np.argmax(backend.to_numpy(mask).reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


def _check_no_nan_or_plus_inf(a, name):
    bad = backend.array_module(a).isnan(a) | (a == np.inf)           # a host table or a device array
    if bool(bad.any()):
        idx = _first_bad(bad)
        raise ValueError(f"{name} must be log-probabilities (finite or -inf), got {a[idx]} at index {idx}")


def normalization_tolerance(dtype):
    """How far log Σ_y π(y|x) may sit from 0 and still count as normalized: √ε of the dtype
    (3.5e-4 in float32, 1.5e-8 in float64), room for rounding in a sum over many responses."""
    return math.sqrt(float(np.finfo(dtype).eps))


def check_logprobs(logprobs, name="logprobs"):
    """Raise ValueError unless ``logprobs`` is a log-probability distribution over the last axis.

    Entries may be −inf (a response the policy never produces) but not NaN or +inf,
    and log Σ_y exp(logprobs) must be 0 within ``normalization_tolerance`` for
    every prompt; the error names the first prompt index that fails.
    """
    _check_response_axis(logprobs, name)
    a = _data(logprobs)
    _check_no_nan_or_plus_inf(a, name)
    # the log-sum-exp of each prompt's row, in float64 so the check does not add its own rounding
    total = backend.to_numpy(ag.logsumexp(a.astype(np.float64), axis=-1).data)
    off = ~(np.abs(total) <= normalization_tolerance(a.dtype))      # catches a row of all −inf too
    if off.any():
        idx = tuple(int(i) for i in np.argwhere(off)[0])
        prompt = idx[0] if len(idx) == 1 else idx
        raise ValueError(f"{name} do not normalize over the last axis (the responses): at prompt {prompt}, "
                         f"log Σ_y exp({name}) = {float(total[idx]):.3e}, expected 0 within "
                         f"{normalization_tolerance(a.dtype):.1e} for {a.dtype}")


def check_rewards(rewards, name="rewards"):
    """Raise ValueError if any reward is NaN or ±inf (a reward must be a real number)."""
    a = _data(rewards)
    xp = backend.array_module(a)                                    # a host table or a device array
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        idx = _first_bad(bad) if a.ndim else ()
        raise ValueError(f"{name} must be finite, got {a[idx]} at index {idx}")


def check_beta(beta, name="beta"):
    """β as a Python float: a number > 0 whose 1/β is finite in float64, where the exact quantities are
    computed (``checks.beta``: a subnormal β would make r/β infinite); a Tensor is refused, β is a fixed
    hyper-parameter."""
    if isinstance(beta, ag.Tensor):
        raise TypeError(f"{name} must be a number, not a Tensor (β is a fixed hyper-parameter)")
    return checks.beta(beta, name)


def _check_broadcast(r_w, r_l):
    try:
        np.broadcast_shapes(_data(r_w).shape, _data(r_l).shape)
    except ValueError:
        raise ValueError(f"r_l has shape {tuple(_data(r_l).shape)}, which does not broadcast with r_w's "
                         f"shape {tuple(_data(r_w).shape)}") from None


def _finish(out, *inputs):
    """A Tensor if any input was one, else the plain array."""
    return out if _any_tensor(*inputs) else out.data


# -- Bradley–Terry (notes: "The Bradley-Terry model"; DPO paper eqs. 1–2) ---------

def bradley_terry(r_w, r_l):
    """P(y_w ≻ y_l) = e^{r_w} / (e^{r_w} + e^{r_l}) = σ(r_w − r_l).

    DPO paper eq. 1; the notes derive the sigmoid form by dividing through by e^{r_w}.
    Only the difference of the rewards enters, so a constant shared by both
    (β log Z(x), say) cancels. Computed as σ of the difference, which never
    exponentiates a large number. r_w and r_l broadcast against each other.
    """
    r_w, r_l = _as_input(r_w, "r_w"), _as_input(r_l, "r_l")
    _check_broadcast(r_w, r_l)
    check_rewards(r_w, "r_w")
    check_rewards(r_l, "r_l")
    return _finish(ag.sigmoid(ag.sub(r_w, r_l)), r_w, r_l)


def bradley_terry_loss(r_w, r_l, weights=None):
    """L_R = −mean log σ(r(x, y_w) − r(x, y_l)): the reward model's negative log-likelihood.

    DPO paper eq. 2 (the notes: "Deriving the loss function of the reward model").
    log σ is evaluated as −logaddexp(0, −z), so it stays finite for any difference.
    ``weights`` (optional, ≥ 0, one per pair) make it the weighted mean Σ w ℓ / Σ w: a
    pair that occurs k times can be passed once with weight k.
    """
    r_w, r_l = _as_input(r_w, "r_w"), _as_input(r_l, "r_l")
    _check_broadcast(r_w, r_l)
    if _data(r_w).size == 0 or _data(r_l).size == 0:
        raise ValueError("r_w and r_l are empty: the loss is a mean over at least one pair")
    check_rewards(r_w, "r_w")
    check_rewards(r_l, "r_l")
    per_pair = -ag.logsigmoid(ag.sub(r_w, r_l))
    if weights is None:
        return _finish(per_pair.mean(), r_w, r_l)
    w = _as_input(weights, "weights")
    if isinstance(w, ag.Tensor) or tuple(w.shape) != tuple(per_pair.shape):
        raise ValueError(f"weights must be an array of shape {tuple(per_pair.shape)} (one per pair), "
                         f"got {'a Tensor' if isinstance(w, ag.Tensor) else tuple(w.shape)}")
    if not bool(backend.xp().all(backend.xp().isfinite(w) & (w >= 0))) or not float(w.sum()) > 0:
        raise ValueError("weights must be finite and >= 0 with a positive sum")
    w = (w / w.sum()).astype(_data(per_pair).dtype, copy=False)
    return _finish((per_pair * w).sum(), r_w, r_l)


# -- the RLHF objective and its optimum (notes: "The RLHF objective", "The optimal policy") --

def _policy_inputs(ref_logprobs, rewards, beta):
    ref_logprobs = _as_input(ref_logprobs, "ref_logprobs")
    rewards = _as_input(rewards, "rewards")
    _check_response_axis(ref_logprobs, "ref_logprobs")
    _check_same_shape("ref_logprobs", ref_logprobs, rewards=rewards)
    check_logprobs(ref_logprobs, "ref_logprobs")
    check_rewards(rewards)
    beta = check_beta(beta)
    a = _data(rewards)
    largest = float(backend.to_numpy(backend.xp().abs(a).max())) if a.size else 0.0
    if not math.isfinite(largest / beta):
        raise ValueError(f"r/β overflows float64: β = {beta:g} with rewards up to {largest:g} in size; π* and Z(x) "
                         f"cannot be computed, choose a larger beta")
    return ref_logprobs, rewards, beta


def _scaled_logits(ref_logprobs, rewards, beta):
    """log π_ref(y|x) + r(x, y)/β in float64, whatever the inputs' dtype.

    At β = 1e-3 a reward of 500 is 5e5, where float32 steps by 0.03: a float32 sum would already
    have rounded away the differences between responses that decide π* and Z(x).
    """
    return ag.astype(ref_logprobs, np.float64) + ag.astype(rewards, np.float64) * (1.0 / beta)


def _in_dtype_of(out, logprobs):
    """The result in the dtype of the log-probabilities (float32 stays float32), not the rewards'."""
    return ag.astype(out, _data(logprobs).dtype)


def log_partition(ref_logprobs, rewards, beta):
    """log Z(x) = log Σ_y π_ref(y|x) exp(r(x, y)/β), one value per prompt.

    The normalizer of the optimal policy (DPO paper, below eq. 4): a log-sum-exp of
    log π_ref + r/β over the response axis, shifted by its maximum, so it is
    finite even when r/β is in the hundreds of thousands. Shape: ref_logprobs'
    shape without its last axis; dtype: ref_logprobs' (computed in float64).
    """
    ref_logprobs, rewards, beta = _policy_inputs(ref_logprobs, rewards, beta)
    log_z = ag.logsumexp(_scaled_logits(ref_logprobs, rewards, beta), axis=-1)
    return _finish(_in_dtype_of(log_z, ref_logprobs), ref_logprobs, rewards)


def optimal_policy(ref_logprobs, rewards, beta):
    """log π*(y|x) = log π_ref(y|x) + r(x, y)/β − log Z(x): the maximizer of J (DPO paper eq. 4).

    The notes' "optimal policy" slide, in log space: the log-softmax of
    log π_ref + r/β over the responses, which is the same expression with
    log Z(x) computed by a shifted log-sum-exp. Computed in float64, returned in
    ref_logprobs' dtype, so a float32 π* sums to 1 to float32 rounding even at β = 1e-3.
    """
    ref_logprobs, rewards, beta = _policy_inputs(ref_logprobs, rewards, beta)
    log_star = ag.log_softmax(_scaled_logits(ref_logprobs, rewards, beta), axis=-1)
    return _finish(_in_dtype_of(log_star, ref_logprobs), ref_logprobs, rewards)


def _kl(logprobs_p, logprobs_q):
    # Σ_y p (log p − log q) with 0·log 0 = 0: where p = 0 the term is dropped with
    # ``where`` (0 · (−inf) would be NaN), which also keeps NaN out of the gradient.
    p = ag.exp(logprobs_p)
    xp = backend.xp()
    support = _data(p) > 0
    with np.errstate(invalid="ignore"):         # (−inf) − (−inf) off the support; replaced just below
        difference = logprobs_p - logprobs_q
    ratio = ag.where(support, difference, xp.zeros((), dtype=p.dtype))
    return (p * ratio).sum(axis=-1)


def kl_divergence(logprobs_p, logprobs_q):
    """KL(p ‖ q) = Σ_y p(y|x) log(p(y|x)/q(y|x)), exact over the set, one value per prompt.

    The penalty in the RLHF objective (DPO paper eq. 3) with p = π_θ, q = π_ref.
    Responses with p(y|x) = 0 contribute 0; one with p > 0 and q = 0 makes it +inf.
    """
    logprobs_p = _as_input(logprobs_p, "logprobs_p")
    logprobs_q = _as_input(logprobs_q, "logprobs_q")
    _check_response_axis(logprobs_p, "logprobs_p")
    _check_same_shape("logprobs_p", logprobs_p, logprobs_q=logprobs_q)
    check_logprobs(logprobs_p, "logprobs_p")
    check_logprobs(logprobs_q, "logprobs_q")
    return _finish(_kl(ag.tensor(logprobs_p), ag.tensor(logprobs_q)), logprobs_p, logprobs_q)


def rlhf_objective(logprobs, ref_logprobs, rewards, beta):
    """J(π) = E_{y∼π(·|x)}[r(x, y)] − β KL(π(·|x) ‖ π_ref(·|x)), one value per prompt.

    The objective RLHF maximizes (DPO paper eq. 3; the notes' J_RLHF), exact
    because the expectation is a sum over the enumerated responses. Its maximum,
    reached at π*, is β log Z(x); and J(π*) − J(π) = β KL(π ‖ π*) for every π.
    """
    logprobs = _as_input(logprobs, "logprobs")
    ref_logprobs, rewards, beta = _policy_inputs(ref_logprobs, rewards, beta)
    _check_same_shape("ref_logprobs", ref_logprobs, logprobs=logprobs)
    check_logprobs(logprobs, "logprobs")
    if not isinstance(rewards, ag.Tensor):
        # the result's dtype follows the log-probabilities (float32 stays float32), not the rewards'
        rewards = rewards.astype(_data(ref_logprobs).dtype, copy=False)
    lp = ag.tensor(logprobs)
    expected_reward = (ag.exp(lp) * rewards).sum(axis=-1)
    return _finish(expected_reward - _kl(lp, ag.tensor(ref_logprobs)) * beta, logprobs, ref_logprobs, rewards)


def suboptimality(logprobs, star_logprobs, beta):
    """J(π*) − J(π) = β KL(π ‖ π*), one value per prompt: how much objective π leaves on the table.

    The identity follows from J(π) = β log Z(x) − β KL(π ‖ π*) (substitute r = β log π*/π_ref +
    β log Z into J; notebook 04). It is the error measure the toy experiments report beside
    KL(π* ‖ π): in reward units, and exact wherever π* is known. ``star_logprobs`` is log π*_β
    for the same β (``optimal_policy``).
    """
    return kl_divergence(logprobs, star_logprobs) * check_beta(beta)


def implicit_reward(logprobs, ref_logprobs, beta):
    """r̂(x, y) = β log π(y|x)/π_ref(y|x): the reward a policy implies (DPO paper eq. 5, §5).

    For π = π*, r(x, y) = r̂(x, y) + β log Z(x): the reward up to a per-prompt constant, which
    Bradley–Terry never sees. These are the "rewards" DPO logs. The inputs are log-probabilities
    of the same responses under both policies — a whole enumerated set, or a batch of sequences
    (so they need not sum to one). A response both policies give probability 0 has no implicit
    reward (ValueError).
    """
    logprobs = _as_input(logprobs, "logprobs")
    ref_logprobs = _as_input(ref_logprobs, "ref_logprobs")
    _check_response_axis(logprobs, "logprobs")
    _check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    beta = check_beta(beta)
    xp = backend.xp()
    lp, ref = _data(logprobs), _data(ref_logprobs)
    undefined = xp.isneginf(lp) & xp.isneginf(ref)
    # one host transfer when the inputs are good (a training step's case); bad ones are then named
    if bool((xp.isnan(lp) | xp.isnan(ref) | (lp == np.inf) | (ref == np.inf) | undefined).any()):
        _check_no_nan_or_plus_inf(lp, "logprobs")
        _check_no_nan_or_plus_inf(ref, "ref_logprobs")
        idx = _first_bad(undefined)
        raise ValueError(f"implicit reward undefined at index {idx}: logprobs and ref_logprobs are both -inf "
                         f"there (π/π_ref = 0/0)")
    return _finish((ag.tensor(logprobs) - ref_logprobs) * beta, logprobs, ref_logprobs)
