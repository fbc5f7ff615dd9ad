"""RateGovernor: header bookkeeping and the wait before a request, with a fake clock."""

from __future__ import annotations

import pytest

from geod.ratelimit import RESET_MARGIN, RateGovernor
from tests.conftest import FakeClock


def governor(clock: FakeClock, reserve: int = 0) -> RateGovernor:
    return RateGovernor(reserve, clock, clock.sleep)


@pytest.mark.parametrize(
    ("reserve", "remaining", "ttl", "expected"),
    [
        (0, None, None, 0.0),  # nothing known yet: go
        (0, 5, 30, 0.0),  # budget left: go
        (0, 1, 30, 0.0),
        (0, 0, 30, 30 + RESET_MARGIN),  # X-Rl 0: must wait X-Ttl
        (2, 3, 30, 0.0),
        (2, 2, 30, 30 + RESET_MARGIN),  # at the reserve: leave it to the others
        (2, 0, 5, 5 + RESET_MARGIN),
    ],
)
def test_delay_table(reserve: int, remaining: int | None, ttl: int | None, expected: float) -> None:
    """The wait before the next request follows X-Rl against the reserve and X-Ttl."""
    clock = FakeClock()
    gov = governor(clock, reserve)
    gov.observe(remaining, ttl)
    assert gov.delay() == pytest.approx(expected)


def test_window_over_means_no_wait() -> None:
    """Once the announced reset has passed, the next request may go at once."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(0, 10)
    clock.advance(10 + RESET_MARGIN)
    assert gov.delay() == 0.0


def test_tightest_reset_bound_wins_within_a_window() -> None:
    """Within one window each response bounds the reset; the earliest bound is kept."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(10, 60)  # reset somewhere before now + 60
    clock.advance(0.6)
    gov.observe(9, 60)  # rounded up again: now + 60 is later than the first bound
    clock.advance(0.1)
    gov.observe(0, 59)
    assert gov.reset_at == pytest.approx(1000.7 + 59)


def test_a_new_window_replaces_the_old_bound() -> None:
    """X-Rl going back up starts a new window with its own reset time."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(0, 2)
    clock.advance(3)
    gov.observe(14, 60)
    assert gov.remaining == 14
    assert gov.reset_at == pytest.approx(1003 + 60)


def test_missing_headers_change_nothing() -> None:
    """A response without X-Rl/X-Ttl leaves the known state as it was."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(0, 20)
    gov.observe(None, None)
    assert gov.delay() == pytest.approx(20 + RESET_MARGIN)


async def test_wait_turn_sleeps_until_reset_and_counts_it() -> None:
    """wait_turn sleeps exactly until the reset (plus margin) and records the time waited."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(0, 42)
    await gov.wait_turn()
    assert clock.sleeps == [pytest.approx(42 + RESET_MARGIN)]
    assert gov.waited_s == pytest.approx(42 + RESET_MARGIN)
    await gov.wait_turn()
    assert len(clock.sleeps) == 1


def test_retry_after_blocks_without_rate_headers() -> None:
    """A Retry-After without X-Rl/X-Ttl blocks requests for that long."""
    clock = FakeClock()
    gov = governor(clock)
    gov.block_for(7)
    assert gov.delay() == pytest.approx(7 + RESET_MARGIN)
