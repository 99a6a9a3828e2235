"""Text generation: sampling (temperature, top-k, top-p), greedy and beam search.

The notes ("Short intro to language models") describe a language model as a
map from a prefix to one probability per vocabulary entry for the next token,
and an answer as the result of feeding each chosen token back in and asking
again. They also point out that this choice of y (greedy, beam search, top-k)
is not differentiable, which is why RLHF needs RL; DPO only *scores* given
responses, so this module is for looking at what a policy π_θ says, before and
after training.

Every model call is ``model.forward(idx, cache=False)`` on at most
``model.config.block_size`` tokens (the context is cropped to its last
block_size tokens, as GPT-2/nanoGPT do), and only the last position's logits
are used. All arithmetic on the distribution is in float64 log space on the
host, with the maximum subtracted before dividing by the temperature, so a tiny
temperature or a tiny top-p never produces NaN.

Outputs are lists of token lists, prompt included: a 1-D prompt gives one
list, a 2-D batch (equal-length prompts) gives one list per row. A row stops
growing right after it emits ``eos_token_id`` (the end token is kept), so rows
may have different lengths; pad them yourself if you need an array.
"""


import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks
from dpo_np.data import format_prompt, prompt_template_of


# ---- arguments ----------------------------------------------------------------------

def _as_batch(idx, vocab_size):
    """``idx`` (list or array, 1-D or 2-D) as a host int64 array (B, T) and whether it was 1-D."""
    a = np.asarray(backend.to_numpy(idx) if not isinstance(idx, (list, tuple)) else idx)
    if a.ndim == 1:
        a, single = a[None, :], True
    elif a.ndim == 2:
        single = False
    else:
        raise ValueError(f"idx must be a 1-D prompt or a 2-D batch of prompts, got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"idx must hold at least one token per prompt, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"idx must hold integer token ids, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise ValueError(f"idx holds ids outside [0, {vocab_size}): min {a.min()}, max {a.max()}")
    return a.astype(np.int64), single


def _check_sampling_args(max_new_tokens, temperature, top_k, top_p):
    checks.integer(max_new_tokens, "max_new_tokens", low=0)
    checks.number(temperature, "temperature", low=0.0)
    checks.integer(top_k, "top_k", low=1, optional=True)
    checks.number(top_p, "top_p", 0.0, 1.0, low_open=True, optional=True)


# ---- the distribution over the next token ---------------------------------------------

def _last_logits(model, seqs, cache=None):
    """Logits of the token after each row of ``seqs`` (B, T): (B, V) float64 on the host.

    With a ``cache`` dict and a model that has ``decode`` (the GPT), only the tokens the cache has
    not seen yet are fed, with the keys and values of the earlier ones; past ``block_size`` the
    context is cropped to its last block_size tokens and computed whole, as GPT-2/nanoGPT do.
    """
    block_size = model.config.block_size
    if cache is not None and hasattr(model, "decode") and seqs.shape[1] <= block_size:
        logits, cache["past"] = model.decode(backend.asarray(seqs[:, cache.get("fed", 0):]), cache.get("past"))
        cache["fed"] = seqs.shape[1]
    else:
        logits = model.forward(backend.asarray(seqs[:, -block_size:]), cache=False)   # (B, T, V)
    last = np.asarray(backend.to_numpy(logits[:, -1, :]), dtype=np.float64)   # (B, V)
    if np.isnan(last).any() or np.isposinf(last).any():
        raise ValueError("model.forward produced NaN or +inf logits; cannot define a distribution")
    return last


def log_softmax(logits, temperature=1.0):
    """log softmax(logits / T) along the last axis, stable for any T > 0.

    Subtracting the max *before* dividing by T keeps every entry <= 0, so
    T → 0 sends the non-maximal entries to −inf (exp → 0) instead of
    producing inf − inf = NaN.
    """
    z = (logits - logits.max(axis=-1, keepdims=True)) / temperature   # <= 0, max entries exactly 0
    return ag.log_softmax_array(z)


def _filter(logp, top_k=None, top_p=None):
    """Which tokens stay candidates (B, V) bool, after top-k then top-p.

    top-k keeps exactly the k most probable tokens (ties broken toward the
    lower id); top-p (nucleus) keeps the smallest set of most probable tokens
    whose total probability reaches p. Each keeps at least one token.
    """
    B, V = logp.shape
    order = np.argsort(-logp, axis=-1, kind="stable")       # (B, V) most probable first
    keep_sorted = np.ones((B, V), dtype=bool)
    if top_k is not None and top_k < V:
        keep_sorted[:, top_k:] = False
    if top_p is not None and top_p < 1:
        p_sorted = np.exp(np.take_along_axis(logp, order, axis=-1))
        p_sorted = np.where(keep_sorted, p_sorted, 0.0)
        p_sorted /= p_sorted.sum(axis=-1, keepdims=True)    # renormalised after top-k
        cum = np.cumsum(p_sorted, axis=-1)
        # the first position where the cumulative mass reaches p is the last one kept
        n_keep = np.minimum((cum < top_p).sum(axis=-1) + 1, V)   # (B,)
        keep_sorted &= np.arange(V)[None, :] < n_keep[:, None]
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep


def _probs(logp, keep):
    """The distribution renormalised over the kept tokens (B, V); no NaN: each row keeps one."""
    kept = np.where(keep, logp, -np.inf)
    p = np.exp(kept - kept.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def next_token_distribution(model, idx, temperature=1.0, top_k=None, top_p=None):
    """π_θ(· | x): one probability for every token of the vocabulary (the notes' picture of an LM).

    Returns float64 probabilities, shape (V,) for a 1-D prompt or (B, V) for a
    batch, after temperature (0 gives a one-hot on the argmax), top-k and top-p.
    """
    _check_sampling_args(0, temperature, top_k, top_p)
    seqs, single = _as_batch(idx, model.config.vocab_size)
    logits = _last_logits(model, seqs)
    if temperature == 0:
        p = np.zeros_like(logits)
        p[np.arange(len(p)), logits.argmax(axis=-1)] = 1.0
    else:
        logp = log_softmax(logits, temperature)
        p = _probs(logp, _filter(logp, top_k, top_p))
    return p[0] if single else p


def _sample(p, rng):
    """One draw per row of p (B, V) by inverting the cumulative distribution.

    The draw is the number of cumulative sums <= u·total (u uniform in [0, 1)),
    so token j is chosen only when cum[j−1] <= u·total < cum[j]: a token of
    probability 0 (cum[j] == cum[j−1]) can never be drawn.
    """
    cum = np.cumsum(p, axis=-1)                               # (B, V)
    u = rng.random(len(p)) * cum[:, -1]                       # (B,)
    return (cum <= u[:, None]).sum(axis=-1).astype(np.int64)


# ---- sampling and greedy --------------------------------------------------------------

def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             do_sample=True, eos_token_id=None, seed=0):
    """Extend ``idx`` by up to ``max_new_tokens`` tokens, y_t ~ π_θ(· | x, y_<t).

    Greedy (argmax, ties toward the lower id; top_k and top_p then change
    nothing) when ``do_sample=False`` or ``temperature == 0``; otherwise
    samples from softmax(logits / T) restricted by ``top_k`` and ``top_p``,
    with random numbers from ``backend.rng(seed)``.

    Returns a list of ids (1-D prompt) or a list of lists (2-D batch), prompt
    included; see the module docstring for the end-token rule.
    """
    _check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    seqs, single = _as_batch(idx, model.config.vocab_size)
    greedy = (not do_sample) or temperature == 0
    rng = backend.rng(seed)
    out = [list(map(int, row)) for row in seqs]
    active = np.arange(len(seqs))             # rows still growing; they all share one length
    cache = {}                                # the model's keys and values of the tokens fed so far
    for _ in range(max_new_tokens):
        if len(active) == 0:
            break
        logits = _last_logits(model, seqs, cache)
        if greedy:
            nxt = logits.argmax(axis=-1)
        else:
            logp = log_softmax(logits, temperature)
            nxt = _sample(_probs(logp, _filter(logp, top_k, top_p)), rng)
        for row, tok in zip(active, nxt):
            out[row].append(int(tok))
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        if eos_token_id is not None:
            alive = nxt != eos_token_id
            active, seqs = active[alive], seqs[alive]
            if cache.get("past") is not None and not alive.all():
                keep = backend.asarray(np.flatnonzero(alive))
                cache["past"] = [(k[keep], v[keep]) for k, v in cache["past"]]
    return out[0] if single else out


# ---- beam search -------------------------------------------------------------------------

def beam_search(model, idx, max_new_tokens, num_beams=4, eos_token_id=None, length_penalty=1.0):
    """The continuation y maximising  log π_θ(y | x) / |y|^length_penalty  among
    those a beam of ``num_beams`` keeps alive (exact search as num_beams → V^n).

    Each step extends every beam by every token, and keeps the ``num_beams``
    best sums of log-probabilities; a candidate that ends in ``eos_token_id`` and
    ranks before the last of those live beams (so among the 2·num_beams best) is set
    aside as a finished hypothesis (the best ``num_beams`` of them are kept, by
    normalised score), one ranked after them is dropped, and
    the search stops early only when no live beam can still beat the worst of
    ``num_beams`` finished ones (log-probs are <= 0, so a live beam's sum can
    only fall). |y| counts new tokens, end token included. With
    ``num_beams=1`` and no end token this is greedy decoding. Returns the best
    sequence per prompt, prompt included, like ``generate``.
    """
    _check_sampling_args(max_new_tokens, 1.0, None, None)
    checks.integer(num_beams, "num_beams", low=1)
    length_penalty = checks.number(length_penalty, "length_penalty")
    seqs, single = _as_batch(idx, model.config.vocab_size)
    out = [_beam_search_one(model, row, max_new_tokens, num_beams, eos_token_id, float(length_penalty))
           for row in seqs]
    return out[0] if single else out


def _beam_search_one(model, prompt, max_new_tokens, num_beams, eos_token_id, length_penalty):
    def normalised(score, length):
        return score / (max(length, 1) ** length_penalty)

    beams = prompt[None, :]                   # (n, T) live beams, all the same length
    scores = np.zeros(1)                      # (n,) sum of log-probs of the new tokens
    finished = []                             # (normalised score, token list)
    for step in range(1, max_new_tokens + 1):
        logp = log_softmax(_last_logits(model, beams))          # (n, V)
        cand = (scores[:, None] + logp).ravel()                 # (n·V,)
        V = logp.shape[1]
        order = np.argsort(-cand, kind="stable")[:2 * num_beams]  # enough to refill n beams past eos
        new_beams, new_scores = [], []
        for c in order:
            b, tok = divmod(int(c), V)
            if cand[c] == -np.inf:
                break
            if eos_token_id is not None and tok == eos_token_id:
                finished.append((normalised(cand[c], step), list(map(int, beams[b])) + [tok]))
                continue
            new_beams.append(np.append(beams[b], tok))
            new_scores.append(cand[c])
            if len(new_beams) == num_beams:
                break
        finished = sorted(finished, key=lambda f: -f[0])[:num_beams]
        if not new_beams:
            beams = beams[:0]
            break
        beams, scores = np.stack(new_beams), np.array(new_scores)
        if len(finished) == num_beams and step < max_new_tokens:
            # best normalised score any live beam could still reach: its sum can only fall,
            # so the bound is the sum now over the most favourable length still possible
            best = max(max(normalised(s, step), normalised(s, max_new_tokens)) for s in scores)
            if finished[-1][0] >= best:
                beams = beams[:0]
                break
    hypotheses = finished + [(normalised(s, beams.shape[1] - len(prompt)), list(map(int, b)))
                             for s, b in zip(scores, beams)]
    if not hypotheses:                        # max_new_tokens == 0
        return list(map(int, prompt))
    return max(hypotheses, key=lambda h: h[0])[1]


# ---- answering a question ---------------------------------------------------------------

def greedy_answer(model, tokenizer, prompt, max_new_tokens=None):
    """π_θ's greedy answer to ``prompt`` (formatted with ``data.format_prompt`` in the tokenizer's
    prompt template, the one the model was trained with), up to the end token.

    At most ``block_size − len(prompt)`` new tokens, so the context is never cropped.
    """
    ids = tokenizer.encode(format_prompt(prompt, prompt_template_of(tokenizer)))
    room = model.config.block_size - len(ids)
    if room <= 0:
        raise ValueError(f"prompt is {len(ids)} tokens, no room left in block_size={model.config.block_size}")
    n = room if max_new_tokens is None else min(int(max_new_tokens), room)
    out = generate(model, ids, n, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[len(ids):])
