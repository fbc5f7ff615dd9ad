"""Poisson bounds for the rate governor: how much demand a number of free requests survives.

The other programs' requests come at random moments, so the count still to come in part of a
window is Poisson. Two questions are asked of it, each answered as the largest mean that passes
(cached: the arguments are small integers and fixed budgets). Pure math, no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache


def _largest(acceptable: Callable[[float], bool], high: float) -> float:
    """The largest λ in [0, high] for which the monotone predicate `acceptable(λ)` holds."""
    low = 0.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if acceptable(mid) else (low, mid)
    return low


def _pmf(lam: float, count: int) -> list[float]:
    """P(N = j) for j in 0..count-1, N ~ Poisson(lam)."""
    terms, term = [], math.exp(-lam)
    for j in range(count):
        terms.append(term)
        term *= lam / (j + 1)
    return terms


@cache
def tail_bound(k: int, tail: float) -> float:
    """The largest mean λ for which P(Poisson(λ) > k) <= tail."""
    return _largest(lambda lam: 1.0 - sum(_pmf(lam, k + 1)) <= tail, k + 50.0)


@cache
def overflow_bound(k: int, budget: float) -> float:
    """The largest mean λ for which E[(Poisson(λ) - k)+] <= budget.

    With k requests left free, the others are then expected to miss at most `budget`.
    """
    def overflow(lam: float) -> float:
        return lam - k + sum((k - j) * p for j, p in enumerate(_pmf(lam, k)))

    return _largest(lambda lam: overflow(lam) <= budget, k + 50.0)
