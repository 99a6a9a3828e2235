"""log π(y|x) of whole responses from a model's logits (the notes: "Computing the log probabilities").

A decoder-only model's logits at position t score the token at t + 1, so the
log-probability of a response is the sum, over its tokens, of the log-softmax of
the previous position's logits at the token that came next:

    log π(y|x) = Σ_t log softmax(z_{t−1})[y_t]     (the "product of next-token
                                                     probabilities", in log space)

Labels hold the ids of the sequence with every position that is not part of the
response (prompt, padding) set to ``label_pad_token_id`` (−100); those positions
are masked out. This is exactly the notes' ``get_batch_logps``: shift the labels
left and drop the last logit (unless encoder–decoder), mask = labels ≠ pad,
replace the pad labels by a dummy id 0 before the gather (on a copy), then a
masked sum or mean per sequence.

Two paths share that first half (``get_per_token_logps``):
- the formula side: ``get_batch_logps`` on an autograd Tensor of logits builds
  the graph from ``log_softmax`` and ``gather`` (a plain array gives a plain array);
- the model side: ``batch_logps_forward``/``batch_logps_backward``, a
  hand-written pair that hands dL/dlogits back to the model's own backward.

A sequence with no unmasked token (a response truncated to nothing) has
log-probability 0.0 for the sum and 0.0 for the mean — never 0/0 = NaN — and
passes no gradient. Non-finite logits (a diverged model) are refused with a
ValueError naming the first bad (row, position), never turned into NaN log-probs.

The pieces other modules share live here once: ``response_mask`` (which label
positions count) and ``row_scale`` (the 1/n_b of the per-token mean).
"""


from . import autograd as ag
from . import backend


def get_per_token_logps(logits, labels, label_pad_token_id=-100, is_encoder_decoder=False):
    """log π(y_t | x, y_<t) at every response position, and the mask of those positions.

    logits: (B, T, V) plain array or autograd Tensor; labels: (B, T) integers.
    Returns (per_token_logps, loss_mask), both (B, T') with T' = T − 1 for a decoder-only
    model (the shift) and T' = T for an encoder–decoder. per_token_logps at masked
    positions holds the log-probability of the dummy token 0 — multiply by the mask (or
    use ``get_batch_logps``) before summing. A Tensor in gives a Tensor out.
    """
    data = logits.data if isinstance(logits, ag.Tensor) else backend.asarray(logits)
    labels, loss_mask = _shifted_labels(data, labels, label_pad_token_id, is_encoder_decoder)
    _check_finite(data)
    if isinstance(logits, ag.Tensor):
        z = logits if is_encoder_decoder else logits[:, :-1, :]          # (B, T', V)
        picked = ag.gather(ag.log_softmax(z, axis=-1), labels[..., None], axis=-1)
        return ag.reshape(picked, labels.shape), loss_mask
    z = data if is_encoder_decoder else data[:, :-1, :]
    per_token_logps, _ = _token_logps(z, labels)
    return per_token_logps, loss_mask


def get_batch_logps(logits, labels, average_log_prob=False, label_pad_token_id=-100,
                    is_encoder_decoder=False):
    """log π(y|x) per sequence: Σ_t m_t log π(y_t | x, y_<t), or that sum / Σ_t m_t.

    The notes' ``get_batch_logps`` (the log π_θ(y_w|x), log π_ref(y_l|x), ... of L_DPO,
    DPO paper eq. 7). Sum for DPO (the notes and the paper); ``average_log_prob=True``
    for the per-token mean that length-normalised DPO uses, and TRL's IPO (TRL's convention,
    not the IPO paper's, which uses whole-response log-probs). Returns (B,): a Tensor
    when ``logits`` is a Tensor (built from the autograd's log_softmax and gather), else a
    plain array. An all-masked row gives 0.0 for both sum and mean.
    """
    per_token_logps, loss_mask = get_per_token_logps(logits, labels, label_pad_token_id,
                                                     is_encoder_decoder)
    scale = row_scale(loss_mask, per_token_logps.dtype) if average_log_prob else None    # (B,)
    if isinstance(per_token_logps, ag.Tensor):
        total = ag.where(loss_mask, per_token_logps, 0.0).sum(axis=-1)
        return total if scale is None else total * scale
    total = backend.xp().where(loss_mask, per_token_logps, 0).sum(axis=-1)
    return total if scale is None else total * scale


# -- the model-side pair: forward, then its backward -----------------------------------

def batch_logps_forward(logits, labels, average_log_prob=False, label_pad_token_id=-100,
                        is_encoder_decoder=False):
    """``get_batch_logps`` on a plain array, plus the cache ``batch_logps_backward`` needs.

    logits (B, T, V) float32 or float64 (the dtype is kept); returns (logps (B,), cache).
    The cache holds a reference to ``logits`` (no copy), the log-normaliser (B, T'), the
    labels (B, T') and the per-row weights (B, T'): the (B, T', V) log-softmax is never
    stored, the backward recomputes the softmax from the logits in one pass.
    """
    if isinstance(logits, ag.Tensor):
        raise TypeError("batch_logps_forward takes a plain array of logits; "
                        "for an autograd Tensor use get_batch_logps")
    logits = backend.asarray(logits)
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    labels, loss_mask = _shifted_labels(logits, labels, label_pad_token_id, is_encoder_decoder)
    _check_finite(logits)
    z = logits if is_encoder_decoder else logits[:, :-1, :]                     # (B, T', V)
    per_token_logps, lse = _token_logps(z, labels)                              # (B, T'), (B, T')
    xp = backend.xp()
    total = xp.where(loss_mask, per_token_logps, 0).sum(axis=-1)               # (B,)
    weights = loss_mask.astype(logits.dtype)                                    # (B, T')
    scale = row_scale(loss_mask, logits.dtype) if average_log_prob else None    # (B,)
    if scale is not None:
        weights *= scale[:, None]
    logps = total if scale is None else total * scale
    cache = (logits, lse, labels, weights, is_encoder_decoder)
    return logps, cache


# With s_b = 1 (sum) or 1/max(n_b, 1) (mean, n_b unmasked tokens), the forward was
#     logps_b = s_b Σ_t m_bt (z_bt[y_bt] − logsumexp_v z_btv)
# and ∂(z[y] − logsumexp z)/∂z_v = 1[v = y] − softmax(z)_v, so
#     dlogits_btv = dlogps_b · s_b · m_bt · (onehot(y_bt)_v − p_btv),   p_bt = softmax(z_bt)
# for t < T' and 0 at the last position, whose logits score no label (decoder-only).
# Masked positions and empty rows have weight 0 and get exactly zero gradient.
def batch_logps_backward(dlogps, cache):
    """dL/dlogits (B, T, V) from dL/dlogps (B,), the backward of ``batch_logps_forward``."""
    logits, lse, labels, weights, is_encoder_decoder = cache
    B = logits.shape[0]
    dlogps = backend.xp().asarray(dlogps)
    if dlogps.shape != (B,):
        raise ValueError(f"dlogps must have shape ({B},) (one gradient per sequence), got {dlogps.shape}")
    w = weights * dlogps.astype(logits.dtype, copy=False)[:, None]              # (B, T')
    return _logits_gradient(logits, lse, labels, w, is_encoder_decoder)


def token_logps_forward(logits, labels, label_pad_token_id=-100):
    """log π_θ(y_t | x, y_<t) at every response position (B, T'), 0 where masked; the mask (B, T')
    and the cache ``token_logps_backward`` needs.

    ``get_batch_logps`` before its sum over t (decoder-only: the shift, the −100 mask, the
    gather), for losses whose terms are per token, as PPO's ratio π_θ(y_t|·)/π_old(y_t|·) is.
    """
    if isinstance(logits, ag.Tensor):
        raise TypeError("token_logps_forward takes a plain array of logits; "
                        "for an autograd Tensor use get_per_token_logps")
    logits = backend.asarray(logits)
    labels, loss_mask = _shifted_labels(logits, labels, label_pad_token_id, False)
    _check_finite(logits)
    per_token_logps, lse = _token_logps(logits[:, :-1, :], labels)              # (B, T'), (B, T')
    weights = loss_mask.astype(logits.dtype)                                    # (B, T')
    return per_token_logps * weights, loss_mask, (logits, lse, labels, weights, False)


# The forward was lp_bt = m_bt (z_bt[y_bt] − logsumexp_v z_btv), so as above
#     dlogits_btv = dlp_bt · m_bt · (onehot(y_bt)_v − p_btv)
def token_logps_backward(dlogps, cache):
    """dL/dlogits (B, T, V) from dL/dlog π_θ(y_t|·) (B, T'), the backward of ``token_logps_forward``."""
    logits, lse, labels, weights, is_encoder_decoder = cache
    dlogps = backend.xp().asarray(dlogps)
    if dlogps.shape != weights.shape:
        raise ValueError(f"dlogps must have shape {weights.shape} (one gradient per response position), "
                         f"got {dlogps.shape}")
    return _logits_gradient(logits, lse, labels, weights * dlogps.astype(logits.dtype, copy=False),
                            is_encoder_decoder)


def _logits_gradient(logits, lse, labels, w, is_encoder_decoder):
    """dlogits_btv = w_bt (onehot(y_bt)_v − p_btv), the backward both pairs above share; ``lse`` is the
    forward's (c, r), so p = e^{(z − c) − r}."""
    xp = backend.xp()
    dlogits = xp.zeros_like(logits) if not is_encoder_decoder else xp.empty_like(logits)
    d = dlogits if is_encoder_decoder else dlogits[:, :-1, :]                   # a view, (B, T', V)
    z = logits if is_encoder_decoder else logits[:, :-1, :]
    # −w·p, written into the output buffer: one (B, T', V) pass, no temporaries of that size
    c, r = lse
    xp.subtract(z, c, out=d)
    xp.subtract(d, r, out=d)
    xp.exp(d, out=d)
    xp.multiply(d, -w[..., None], out=d)
    # + w at the label of each position: one entry per (b, t), so plain fancy-index addition is safe
    b_idx, t_idx = xp.arange(labels.shape[0])[:, None], xp.arange(labels.shape[1])[None, :]
    d[b_idx, t_idx, labels] += w
    return dlogits


# -- the shared pieces ------------------------------------------------------------------------

def response_mask(labels, label_pad_token_id=-100, is_encoder_decoder=False):
    """m_bt: True where position t of row b scores a response token, (B, T').

    The mask of the notes' ``get_batch_logps``: labels shifted left by one for a decoder-only
    model (the logits at t score the label at t + 1; T' = T − 1), unshifted for an
    encoder–decoder (T' = T), then ``labels ≠ label_pad_token_id``. Σ_t m_bt = |y_b|, the
    number of response tokens of row b.
    """
    xp = backend.xp()
    labels = xp.asarray(labels.data if isinstance(labels, ag.Tensor) else labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (B, T), got {tuple(labels.shape)}")
    return (labels if is_encoder_decoder else labels[:, 1:]) != label_pad_token_id


def row_scale(loss_mask, dtype):
    """s_b = 1/n_b per row, the weight that turns the masked sum into the per-token mean, (B,).

    n_b = Σ_t m_bt unmasked tokens of row b (``loss_mask`` (B, T'), e.g. ``response_mask``);
    an empty row gets 0, not 1/0, so its mean is 0.0 like its sum.
    """
    xp = backend.xp()
    count = loss_mask.sum(axis=-1)                                               # (B,)
    return xp.where(count > 0, 1.0 / xp.maximum(count, 1), 0.0).astype(dtype)


def _token_logps(z, labels):
    """log softmax(z)[y] = (z[y] − c) − r with logsumexp(z) = c + r (``autograd.softmax_offsets``: one
    subtraction of the log-sum-exp, except where huge logits would round part of it away); returns it
    and (c, r), each (B, T', 1), which the backward reads too."""
    xp = backend.xp()
    c, r = ag.softmax_offsets(*ag.shifted_logsumexp(z))                           # (B, T', 1) each
    picked = xp.take_along_axis(z, labels[..., None], axis=-1)                  # (B, T', 1)
    return ((picked - c) - r)[..., 0], (c, r)


def _check_finite(logits):
    """One reduction on the happy path; only a bad array pays for finding where it went bad."""
    xp = backend.xp()
    if bool(xp.isfinite(logits).all()):
        return
    bad = ~xp.isfinite(logits).all(axis=-1)                                      # (B, T)
    b, t = (int(i) for i in xp.argwhere(bad)[0])
    value = float(logits[b, t][~xp.isfinite(logits[b, t])][0])
    raise ValueError(f"logits hold a non-finite value ({value}) at (row {b}, position {t}); "
                     f"log-probabilities of non-finite logits would be NaN (has the model diverged?)")


def _shifted_labels(logits, labels, label_pad_token_id, is_encoder_decoder):
    """Checked labels after the shift with pads replaced by 0 (a new array), and the mask (B, T')."""
    xp = backend.xp()
    if isinstance(labels, ag.Tensor):
        labels = labels.data
    labels = xp.asarray(labels)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, T, V), got {tuple(logits.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"logits (batch and sequence dims) and labels must have the same shape: "
                         f"logits has shape {tuple(logits.shape)}, labels has shape {tuple(labels.shape)}")
    loss_mask = response_mask(labels, label_pad_token_id, is_encoder_decoder)   # (B, T')
    if not is_encoder_decoder:
        labels = labels[:, 1:]          # token t + 1 is scored by the logits at t
    V = logits.shape[-1]
    bad = loss_mask & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        b, t = (int(i) for i in xp.argwhere(bad)[0])
        raise ValueError(f"labels hold id {int(labels[b, t])} at (row {b}, position "
                         f"{t if is_encoder_decoder else t + 1}), outside [0, {V}) and not "
                         f"label_pad_token_id={label_pad_token_id}")
    # the dummy id 0 keeps the gather in range; the mask removes what it picks (a new array:
    # the caller's labels are never written)
    return xp.where(loss_mask, labels, 0).astype(xp.intp, copy=False), loss_mask
