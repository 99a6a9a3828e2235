"""Small helpers shared by the tests: statistics for "is this better than chance?", and a tiny
byte-level BPE learner that makes test vocabularies for the GPT-2 tokenizer."""

import collections
import math


def binomial_critical_accuracy(n, alpha=0.01):
    """The smallest accuracy k/n with P(X ≥ k) ≤ alpha for X ~ Binomial(n, 1/2): what a model
    flipping a coin on each of n pairs reaches by luck at most ``alpha`` of the time."""
    for k in range(n + 1):
        if sum(math.comb(n, j) for j in range(k, n + 1)) / 2 ** n <= alpha:
            return k / n
    return 1.0


def learn_bpe(texts, n_merges):
    """A GPT-2-style vocabulary and merges learned from ``texts``: (vocab {token: id}, merges [(a, b)]).

    GPT-2's recipe at toy size: pre-tokenize, write bytes as GPT-2's characters, then repeatedly
    merge the most frequent adjacent pair (ties broken by the pair itself, so it is deterministic).
    Ids: the 256 byte symbols, then one per merge, then <|endoftext|> last, as in GPT-2. Merges come
    out in learning order, so every merge's parts exist before it, as in a real merges.txt.
    """
    from dpo_np.tokenizer import BYTE_TO_UNICODE, EOS_TOKEN, pretokenize
    counts = collections.Counter(tuple(BYTE_TO_UNICODE[b] for b in piece.encode("utf-8"))
                                 for t in texts for piece in pretokenize(t))
    merges = []
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for word, c in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, c in counts.items():
            out, k = [], 0
            while k < len(word):
                if k + 1 < len(word) and (word[k], word[k + 1]) == best:
                    out.append(word[k] + word[k + 1])
                    k += 2
                else:
                    out.append(word[k])
                    k += 1
            merged[tuple(out)] += c
        counts = merged
    vocab = {c: i for i, c in enumerate(BYTE_TO_UNICODE.values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[EOS_TOKEN] = len(vocab)
    return vocab, merges
