"""Small statistics shared by the tests that ask "is this better than chance?"."""

import math


def binomial_critical_accuracy(n, alpha=0.01):
    """The smallest accuracy k/n with P(X ≥ k) ≤ alpha for X ~ Binomial(n, 1/2): what a model
    flipping a coin on each of n pairs reaches by luck at most ``alpha`` of the time."""
    for k in range(n + 1):
        if sum(math.comb(n, j) for j in range(k, n + 1)) / 2 ** n <= alpha:
            return k / n
    return 1.0
