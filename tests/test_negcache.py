"""Tests for geod.negcache: the in-memory back-off for addresses whose look-up failed."""

from __future__ import annotations

import pytest

from geod.negcache import NegativeCache
from tests.conftest import FakeClock

TTL = 600
MAX_TTL = 3000
IP = "8.8.8.8"


@pytest.fixture
def cache(fake_clock: FakeClock) -> NegativeCache:
    return NegativeCache(TTL, MAX_TTL, fake_clock)


def test_unknown_address_is_not_blocked(cache: NegativeCache) -> None:
    """An address that never failed is not blocked and the cache starts empty."""
    assert not cache.blocked(IP)
    assert len(cache) == 0


def test_first_failure_blocks_for_ttl(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """The first failure blocks the address for exactly ttl seconds."""
    assert cache.record_failure(IP) == TTL
    assert cache.blocked(IP)
    fake_clock.advance(TTL - 0.001)
    assert cache.blocked(IP)
    fake_clock.advance(0.001)
    assert not cache.blocked(IP)


def test_failure_blocks_only_that_address(cache: NegativeCache) -> None:
    """Blocking one address leaves every other address free."""
    cache.record_failure(IP)
    assert not cache.blocked("1.1.1.1")
    assert len(cache) == 1


def test_consecutive_failures_double_up_to_max_ttl(
    cache: NegativeCache, fake_clock: FakeClock
) -> None:
    """Consecutive failures wait ttl, 2ttl, 4ttl, ... and never longer than max_ttl."""
    waits = []
    for _ in range(6):
        waits.append(cache.record_failure(IP))
        fake_clock.advance(waits[-1])
        assert not cache.blocked(IP)
    assert waits == [TTL, 2 * TTL, 4 * TTL, MAX_TTL, MAX_TTL, MAX_TTL]


def test_failure_wait_is_a_float(cache: NegativeCache) -> None:
    """record_failure reports its wait as a float, even for integer ttls."""
    assert type(cache.record_failure(IP)) is float


def test_repeated_failure_extends_from_now(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """A second failure while still blocked starts the doubled wait from now."""
    cache.record_failure(IP)
    fake_clock.advance(100)
    cache.record_failure(IP)
    fake_clock.advance(2 * TTL - 1)
    assert cache.blocked(IP)
    fake_clock.advance(1)
    assert not cache.blocked(IP)


def test_doubling_stays_capped_after_very_many_failures(fake_clock: FakeClock) -> None:
    """Thousands of consecutive failures (float ttl, as typed) still wait max_ttl, no overflow."""
    cache = NegativeCache(600.0, 86_400.0, fake_clock)
    for _ in range(2000):
        wait = cache.record_failure(IP)
    assert wait == 86_400.0


def test_record_permanent_blocks_for_max_ttl(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """A permanent failure blocks for max_ttl at once."""
    cache.record_permanent(IP)
    fake_clock.advance(MAX_TTL - 1)
    assert cache.blocked(IP)
    fake_clock.advance(1)
    assert not cache.blocked(IP)


def test_record_permanent_counts_as_a_failure(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """A failure after a permanent one keeps doubling from the count it left."""
    cache.record_permanent(IP)
    fake_clock.advance(MAX_TTL)
    assert cache.record_failure(IP) == 2 * TTL


def test_forget_unblocks_and_resets(cache: NegativeCache) -> None:
    """forget unblocks an address at once and its next failure starts again at ttl."""
    cache.record_failure(IP)
    cache.record_failure(IP)
    cache.forget(IP)
    assert not cache.blocked(IP)
    assert len(cache) == 0
    assert cache.record_failure(IP) == TTL


def test_forget_unknown_address_is_harmless(cache: NegativeCache) -> None:
    """Forgetting an address that is not cached does nothing."""
    cache.forget(IP)
    assert len(cache) == 0


def test_clear_returns_count_and_empties(cache: NegativeCache) -> None:
    """clear returns how many entries there were and leaves nothing blocked."""
    cache.record_failure("1.1.1.1")
    cache.record_failure("8.8.8.8")
    cache.record_permanent("9.9.9.9")
    assert cache.clear() == 3
    assert len(cache) == 0
    assert not any(cache.blocked(ip) for ip in ("1.1.1.1", "8.8.8.8", "9.9.9.9"))
    assert cache.clear() == 0
    assert cache.record_failure("8.8.8.8") == TTL


def test_prune_keeps_recently_expired_so_doubling_continues(
    cache: NegativeCache, fake_clock: FakeClock
) -> None:
    """prune keeps an entry that expired less than max_ttl ago, so the next wait doubles."""
    cache.record_failure(IP)
    fake_clock.advance(TTL + MAX_TTL - 1)
    assert cache.prune() == 0
    assert len(cache) == 1
    assert cache.record_failure(IP) == 2 * TTL


def test_prune_drops_long_expired_so_doubling_restarts(
    cache: NegativeCache, fake_clock: FakeClock
) -> None:
    """prune drops entries that expired more than max_ttl ago and the next wait is ttl again."""
    cache.record_failure(IP)
    cache.record_failure(IP)  # blocked for 2*TTL
    cache.record_failure("1.1.1.1")  # blocked for TTL
    fake_clock.advance(TTL + MAX_TTL + 1)
    assert cache.prune() == 1  # only 1.1.1.1: IP ended TTL later, less than max_ttl ago
    assert len(cache) == 1
    fake_clock.advance(TTL)
    assert cache.prune() == 1
    assert len(cache) == 0
    assert cache.record_failure(IP) == TTL


def test_prune_keeps_blocked_entries(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """prune never drops an entry that is still blocking."""
    cache.record_permanent(IP)
    fake_clock.advance(MAX_TTL - 1)
    assert cache.prune() == 0
    assert cache.blocked(IP)


def test_changed_ttl_applies_to_next_failure(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """A new ttl takes effect for the next failure, keeping the failure count."""
    cache.record_failure(IP)
    cache.ttl = 100
    assert cache.record_failure(IP) == 200
    assert cache.record_failure("1.1.1.1") == 100


def test_changed_max_ttl_applies_to_next_failure(
    cache: NegativeCache, fake_clock: FakeClock
) -> None:
    """A lower max_ttl caps the next failure and the next permanent block."""
    cache.record_failure(IP)
    cache.max_ttl = 700
    assert cache.record_failure(IP) == 700
    cache.record_permanent("1.1.1.1")
    fake_clock.advance(700)
    assert not cache.blocked("1.1.1.1")


def test_changed_max_ttl_applies_to_prune(cache: NegativeCache, fake_clock: FakeClock) -> None:
    """prune measures staleness against the current max_ttl."""
    cache.record_failure(IP)
    fake_clock.advance(TTL + 500)
    assert cache.prune() == 0
    cache.max_ttl = 400
    assert cache.prune() == 1
