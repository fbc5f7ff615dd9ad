"""Poisson bounds: the accepted tail and the expected miss hold exactly at each bound."""

from __future__ import annotations

import math

import pytest

from geod.poisson import overflow_bound, tail_bound


@pytest.mark.parametrize(("k", "tail"), [(0, 0.01), (1, 0.01), (3, 0.02), (8, 0.001)])
def test_tail_bound_is_the_poisson_quantile(k: int, tail: float) -> None:
    """At the bound, P(Poisson(λ) > k) is the accepted tail."""
    lam = tail_bound(k, tail)
    exceed = 1 - sum(math.exp(-lam) * lam**j / math.factorial(j) for j in range(k + 1))
    assert exceed == pytest.approx(tail, rel=1e-3)


@pytest.mark.parametrize(("k", "budget"), [(0, 0.02), (2, 0.06), (6, 0.1)])
def test_overflow_bound_is_the_expected_miss(k: int, budget: float) -> None:
    """At the bound, the expected number of requests beyond k is the budget."""
    lam = overflow_bound(k, budget)
    miss = sum((j - k) * math.exp(-lam) * lam**j / math.factorial(j) for j in range(k + 1, 80))
    assert miss == pytest.approx(budget, rel=1e-3)
