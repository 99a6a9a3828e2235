"""Toy problems small enough to enumerate: every response, its exact π_ref(y|x), a known r(x, y).

A response is a short sequence of token ids over a vocabulary of V tokens. The
reference policy is autoregressive, as a language model is (the notes' "Short
intro to language models"): π_ref(y|x) = Π_t π_ref(y_t | x, y_{<t}), where each
next-token distribution here depends on the prompt, the position t and the
previous token y_{t−1} only (a bigram model per prompt and position). With the
whole response set enumerated, log π_ref is exact and sums to one, so
``rlhf.py`` can compute Z(x) and π* without sampling.

Two response sets:

- fixed length: all V^L sequences of exactly L tokens, ids 0..V−1;
- with an end token (``eos=True``): l content tokens followed by the end token
  ``EOS = V``, for l = 0..L−1, so every response ends with EOS and is at most L
  long; Σ_{l<L} V^l responses. Rows are padded after EOS with ``PAD = −1`` to
  width L. The last position can only hold EOS (the table forces it), so
  lengths are capped without losing probability mass.
"""

import numpy as np

from dpo_np import autograd as ag
from dpo_np import backend, checks
from dpo_np import rlhf

PAD = -1
MAX_RESPONSES = 1 << 24        # 16.7M rows: beyond this, enumeration is not a toy any more


def positive_int(x, name):
    """``x`` as an int >= 1, or a ValueError naming it."""
    return checks.integer(x, name, low=1)


def count_responses(vocab_size, length, eos=False):
    """How many responses ``enumerate_responses`` lists: V^L, or Σ_{l=0}^{L−1} V^l with an end token."""
    V, L = positive_int(vocab_size, "vocab_size"), positive_int(length, "length")
    return sum(V ** l for l in range(L)) if eos else V ** L


def _all_sequences(V, L):
    """All V^L sequences of length L in lexicographic order (row i = i written in base V)."""
    index = np.arange(V ** L, dtype=np.int64)[:, None]
    return (index // V ** np.arange(L - 1, -1, -1, dtype=np.int64)) % V        # (V^L, L)


def enumerate_responses(vocab_size, length, eos=False):
    """Every response as a row of token ids: int64 array (N, L), on the host.

    ``eos=False``: the V^L sequences of length L, lexicographic (the last token
    varies fastest). ``eos=True``: for l = 0, 1, ..., L−1 the V^l sequences of l
    content tokens (lexicographic) followed by EOS = V and padded with PAD = −1
    to width L; the empty response [EOS, PAD, ...] comes first.
    """
    V, L = positive_int(vocab_size, "vocab_size"), positive_int(length, "length")
    n = count_responses(V, L, eos)
    if n > MAX_RESPONSES:
        raise ValueError(f"vocab_size={V}, length={L} gives {n} responses, more than {MAX_RESPONSES} "
                         f"(too many to enumerate)")
    if not eos:
        return _all_sequences(V, L)
    rows = []
    for l in range(L):
        block = np.full((V ** l, L), PAD, dtype=np.int64)
        block[:, :l] = _all_sequences(V, l) if l else block[:, :0]
        block[:, l] = V
        rows.append(block)
    return np.concatenate(rows, axis=0)


def random_reference_table(n_prompts, vocab_size, length, seed, eos=False, scale=1.0, eos_bias=0.0,
                           dtype=np.float64):
    """A random autoregressive π_ref: next-token log-probabilities, shape (P, L, V + 1, K).

    ``table[x, t, prev, y_t] = log π_ref(y_t | x, position t, previous token prev)``
    where prev = y_{t−1} for t ≥ 1 and prev = V (a start-of-response marker) at
    t = 0. K = V next tokens, or V + 1 with the end token EOS = V (``eos=True``).
    Logits are N(0, scale²) per entry; ``eos_bias`` is added to EOS's logit
    (negative: longer responses). With ``eos=True`` the last position holds EOS
    with probability 1, so every response ends within L tokens.
    """
    P = positive_int(n_prompts, "n_prompts")
    V, L = positive_int(vocab_size, "vocab_size"), positive_int(length, "length")
    scale, eos_bias = float(scale), float(eos_bias)
    if not (np.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if not np.isfinite(eos_bias):
        raise ValueError(f"eos_bias must be finite, got {eos_bias!r}")
    K = V + 1 if eos else V
    logits = scale * backend.rng(seed).standard_normal((P, L, V + 1, K))      # (P, L, V+1, K)
    if eos:
        logits[..., V] += eos_bias
        logits[:, L - 1, :, :V] = -np.inf       # the last position can only end the response
    table = ag.log_softmax(logits, axis=-1).data                               # over y_t
    return backend.asarray(table, dtype=dtype)


def _check_responses(responses, table_shape):
    xp = backend.xp()
    responses = xp.asarray(responses)
    if responses.ndim != 2:
        raise ValueError(f"responses must be a 2-D array (N, T) of token ids, got shape {responses.shape}")
    if responses.dtype.kind not in "iu":
        raise TypeError(f"responses must hold integer token ids, got dtype {responses.dtype}")
    P, L, S, K = table_shape
    if responses.shape[1] > L:
        raise ValueError(f"responses have {responses.shape[1]} positions but the table only {L}")
    if responses.size and (int(responses.min()) < PAD or int(responses.max()) >= K):
        raise ValueError(f"responses must hold token ids in [0, {K}) or PAD = {PAD}, "
                         f"got values in [{int(responses.min())}, {int(responses.max())}]")
    return responses


def sequence_logprobs(table, responses):
    """log π_ref(y|x) = Σ_t log π_ref(y_t | x, t, y_{t−1}) for every prompt and response: (P, N).

    The sum of the chosen tokens' log-probabilities, as in the notes' last
    section ("Sum the log probabilities"), with PAD positions skipped. One
    gather per position, each over all prompts and responses at once.
    """
    xp = backend.xp()
    table = xp.asarray(table)
    if table.ndim != 4 or table.shape[2] < 2:
        raise ValueError(f"table must have shape (P, L, V + 1, K), got {table.shape}")
    responses = _check_responses(responses, table.shape)
    N, T = responses.shape
    start = table.shape[2] - 1                                              # the start-of-response marker
    prev = xp.concatenate([xp.full((N, 1), start, dtype=responses.dtype), responses[:, :-1]], axis=1)
    real = responses != PAD                                                 # (N, T)
    token = xp.where(real, responses, 0)                                    # any valid index; masked below
    prev = xp.where(prev == PAD, 0, prev)
    # a flat index into each prompt's (L, V+1, K) block, then one take per position: a loop
    # over the L positions only, each a vectorized gather over all prompts and responses
    flat = (xp.arange(T)[None, :] * table.shape[2] + prev) * table.shape[3] + token   # (N, T)
    flat_by_position = xp.ascontiguousarray(flat.T)                        # (T, N)
    per_prompt = table.reshape(table.shape[0], -1)                          # (P, L·(V+1)·K)
    total = xp.zeros((table.shape[0], N), dtype=table.dtype)                # (P, N)
    for t in range(T):
        # ``where``, not a product: a masked entry may be −inf (forced EOS), and 0·(−inf) is NaN
        total += xp.where(real[None, :, t], xp.take(per_prompt, flat_by_position[t], axis=1), 0)
    return total


def random_rewards(responses, n_prompts, vocab_size, seed, scale=1.0):
    """A known reward r(x, y): per-token scores plus bonuses for adjacent token pairs, (P, N).

    r(x, y) = scale · (Σ_t s[x, y_t] + Σ_t b[x, y_{t−1}, y_t]), with s ~ N(0, 1)
    and b ~ N(0, 1) drawn from ``seed`` (EOS, id V, has a score too, so length
    matters; PAD positions count nothing). ``scale`` sets the size: 100 gives
    rewards in the hundreds.
    """
    xp = backend.xp()
    P, V = positive_int(n_prompts, "n_prompts"), positive_int(vocab_size, "vocab_size")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    gen = backend.rng(seed)
    token_score = backend.asarray(gen.standard_normal((P, V + 1)))            # (P, V+1)
    pair_bonus = backend.asarray(gen.standard_normal((P, V + 1, V + 1)))      # (P, V+1, V+1)
    responses = xp.asarray(responses)
    if responses.ndim != 2 or responses.dtype.kind not in "iu":
        raise ValueError(f"responses must be a 2-D integer array (N, T), got shape {responses.shape} "
                         f"and dtype {responses.dtype}")
    if responses.size and (int(responses.min()) < PAD or int(responses.max()) > V):
        raise ValueError(f"responses must hold ids in [0, {V}] (V = EOS) or PAD = {PAD}")
    real = responses != PAD                                                 # (N, T)
    tok = xp.where(real, responses, 0)
    total = xp.zeros((P, responses.shape[0]))                               # (P, N)
    for t in range(responses.shape[1]):                                     # positions, not responses
        total += xp.where(real[None, :, t], token_score[:, tok[:, t]], 0)
        if t:
            both = real[:, t - 1] & real[:, t]
            total += xp.where(both[None], pair_bonus[:, tok[:, t - 1], tok[:, t]], 0)
    return scale * total


def sample_preference_pairs(ref_logprobs, rewards, n_pairs, seed, proposal="reference"):
    """Preference data from the Bradley–Terry model under a known reward (DPO paper eq. 1, §3).

    For each pair: a prompt x uniform over the P prompts; two responses y1, y2
    drawn independently from π_ref(·|x) (``proposal="reference"``, as the DPO
    paper's data is sampled from the reference/SFT model) or uniformly over the
    set (``"uniform"``); y1 is labelled chosen with probability σ(r(x, y1) −
    r(x, y2)). y1 = y2 can happen; such a pair tells nothing and carries no
    DPO gradient. Returns ``{"prompt", "chosen", "rejected"}``: int arrays
    (n_pairs,) of prompt and response indices.
    """
    n_pairs = positive_int(n_pairs, "n_pairs")
    if proposal not in ("reference", "uniform"):
        raise ValueError(f"proposal must be 'reference' or 'uniform', got {proposal!r}")
    ref = np.asarray(backend.to_numpy(ref_logprobs), dtype=np.float64)
    r = np.asarray(backend.to_numpy(rewards), dtype=np.float64)
    if ref.ndim != 2 or ref.shape != r.shape:
        raise ValueError(f"ref_logprobs and rewards must both have shape (P, N), got {ref.shape} and {r.shape}")
    rlhf.check_logprobs(backend.asarray(ref), "ref_logprobs")     # rlhf computes on the device
    rlhf.check_rewards(backend.asarray(r))
    P, N = ref.shape
    gen = backend.rng(seed)
    prompt = gen.integers(P, size=n_pairs)
    y1, y2 = np.empty(n_pairs, np.int64), np.empty(n_pairs, np.int64)
    for x in range(P):                              # a loop over prompts only
        rows = np.flatnonzero(prompt == x)
        probs = None
        if proposal == "reference":
            probs = np.exp(ref[x])
            probs /= probs.sum()                    # exact normalization for Generator.choice
        y1[rows] = gen.choice(N, size=rows.size, p=probs)
        y2[rows] = gen.choice(N, size=rows.size, p=probs)
    p_first = rlhf.bradley_terry(r[prompt, y1], r[prompt, y2])
    first_wins = gen.random(n_pairs) < backend.to_numpy(p_first)
    return {"prompt": backend.asarray(prompt),
            "chosen": backend.asarray(np.where(first_wins, y1, y2)),
            "rejected": backend.asarray(np.where(first_wins, y2, y1))}
