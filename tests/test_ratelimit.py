"""RateGovernor: header bookkeeping and the wait before a request, with a fake clock."""

from __future__ import annotations

import math
import random

import pytest
from aiohttp.test_utils import TestServer

from geod.config import IpApiConfig
from geod.ipapi import IpApiProvider
from geod.poisson import tail_bound
from geod.provider import make_session
from geod.ratelimit import (
    FINAL_SLOT,
    MIN_FINAL_SLOT,
    OWN_TAIL,
    RESET_MARGIN,
    RateGovernor,
)
from tests.conftest import FakeClock, Logs, events
from tests.fake_ipapi import FakeIpApi
from tests.sim import SimClock, Tenant, WindowStats, window_stats


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


# -- sharing the quota (share = "auto") ------------------------------------------------------


def test_extra_drops_are_the_others_demand() -> None:
    """Between two of geod's responses X-Rl drops by one; anything more was someone else."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14, 60)  # geod's first request opened the window
    clock.advance(5)
    gov.observe(11, 55)  # geod's request + 2 others
    clock.advance(5)
    gov.observe(10, 50)  # geod's request only
    assert (gov.limit, gov.others_now) == (15, 2)


def test_requests_before_ours_count_once_the_limit_is_known() -> None:
    """A window whose first X-Rl is below limit - 1 was already used by others."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14, 60)
    clock.advance(61)
    gov.observe(11, 60)  # three others asked before us in this window
    assert gov.others_now == 3
    assert list(gov.history) == [0]


def test_a_429_is_all_the_others_doing() -> None:
    """A throttled request used no quota: the whole drop to 0 belongs to the others."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14, 60)
    clock.advance(1)
    gov.observe(0, 59, served=False)
    assert gov.others_now == 14


@pytest.mark.parametrize(
    ("advance", "remaining", "ttl"),
    [(61, 14, 60), (10, 14, 60), (10, 12, 59)],
    ids=["time-ran-out", "x-rl-went-up", "x-ttl-jumped"],
)
def test_new_window_detection(advance: float, remaining: int, ttl: int) -> None:
    """A reset is seen from the clock, from X-Rl going up, or from X-Ttl jumping up."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14, 20)
    clock.advance(1)
    gov.observe(10, 19)  # three others
    clock.advance(advance)
    gov.observe(remaining, ttl)
    assert list(gov.history) == [3]


def test_demand_rises_at_once_and_falls_after_two_windows() -> None:
    """The estimate takes a busier window at once and forgets it two quiet windows later."""
    clock = FakeClock()
    gov = governor(clock)

    def window(others: int) -> None:
        clock.advance(61)
        gov.observe(14, 60)
        clock.advance(1)
        gov.observe(13 - others, 59)

    window(0)
    assert gov.demand() == 0
    window(4)
    assert gov.demand() == 4
    window(0)
    assert gov.demand() == 4
    window(0)
    assert gov.demand() == 4  # the current (quiet) window and one quiet window remembered
    window(0)
    assert gov.demand() == 0


@pytest.mark.parametrize(
    ("others", "window", "slot"),
    [
        (0, 60, FINAL_SLOT),  # alone: a fixed margin before the reset
        (8, 300, 0.9),  # they may find nothing left in the last 0.3 % of the window ...
        (2, 300, 0.9),  # ... however many they are
        (8, 60, MIN_FINAL_SLOT),  # ... but never closer to the reset than it is known
        (8, 30, MIN_FINAL_SLOT),
    ],
)
def test_final_burst_ends_when_the_others_would_miss_little(others: int, window: int,
                                                            slot: float) -> None:
    """The final burst ends 0.3 % of the window before the reset (FINAL_MISS of their requests
    come later and find nothing), not 1 %: their 2 % budget is better spent on `keep`."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14 - others, window)  # the limit (15) is learned at a window's first answer
    gov.observe(14 - others, window)
    gov.history.append(others)
    assert gov._final_slot() == pytest.approx(slot, abs=0.01)


async def test_alone_paces_the_whole_window_without_losing_a_request() -> None:
    """Alone, 15 requests are spread over one window, all before its reset, none lost."""
    clock = FakeClock()
    gov = governor(clock)
    remaining, opened, sent = 15, None, []
    for _ in range(15):
        await gov.wait_turn()
        opened = clock.now if opened is None else opened
        sent.append(clock.now - opened)
        remaining -= 1
        gov.observe(remaining, math.ceil(opened + 60 - clock.now))
    assert max(sent) < 60
    assert sent[1] > 1  # not a burst at the window's start
    assert gov.delay() == pytest.approx(opened + 60 + RESET_MARGIN - clock.now)


def test_share_off_sends_back_to_back() -> None:
    """share = off: no pacing, only the headers and the reserve decide."""
    clock = FakeClock()
    gov = RateGovernor(0, clock, clock.sleep, share=False)
    gov.observe(14, 60)
    gov._last_sent = clock.now
    assert gov.delay() == 0


def test_rate_share_is_logged_when_the_estimate_changes(logs: Logs) -> None:
    """rate_share says what the others need and what geod takes, once per change."""
    clock = FakeClock()
    gov = governor(clock)
    gov.observe(14, 60)
    gov.observe(13, 59)
    clock.advance(1)
    gov.observe(10, 58)
    shares = [(e["others_per_window"], e["geod_per_window"]) for e in events(logs, "rate_share")]
    assert shares == [(0, 15), (2, 13)]


# -- against the fake server, with other programs on the same quota ---------------------------


async def run_shared(tenants: list[Tenant], windows: int, share: str = "auto",
                     seed: int = 5) -> tuple[FakeIpApi, WindowStats]:
    """geod's client and `tenants` on one quota for `windows` windows of 15 per 60 s."""
    clock = SimClock()
    fake = FakeIpApi(limit=15, window=60, clock=clock)
    rng = random.Random(seed)
    for tenant in tenants:
        tenant.schedule(clock, fake, 60, windows + 2, rng)
    server = TestServer(fake.app)
    await server.start_server()
    config = IpApiConfig(url=str(server.make_url("/batch")), share=share)
    governor = RateGovernor(0, clock, clock.sleep, share=share == "auto")
    try:
        async with make_session() as session:
            client = IpApiProvider(config, session, governor, sleep=clock.sleep)
            n = 0
            while clock.now < windows * 60:
                n += 1
                await client.resolve([f"8.8.{n // 256}.{n % 256}"])
    finally:
        await server.close()
    return fake, window_stats(fake.requests, 60, windows * 60)


async def test_alone_reaches_the_ceiling_without_a_429() -> None:
    """Alone for 10 windows geod makes >= 99 % of the possible requests and sees no 429."""
    fake, stats = await run_shared([], windows=10)
    assert stats.windows >= 8
    assert stats.fraction(15, 60) >= 0.99
    assert fake.count_429() == 0


async def test_shared_leaves_the_others_their_requests() -> None:
    """Next to a program spending 2 a window, geod takes >= 95 % of the rest and 429s nobody."""
    tenant = Tenant("dash", 2, 2)
    fake, stats = await run_shared([tenant], windows=12)
    assert stats.others_429 <= 1
    assert fake.count_429("geod") == 0 and not fake.banned
    assert stats.fraction(15, 60) >= 0.95


@pytest.mark.slow
async def test_two_random_neighbours_leave_little_unused() -> None:
    """Beside two programs at 2-6 a window each, geod takes >= 95 % of what they leave
    (3 runs of 60 windows) and they miss <= 2 % of their requests; nobody is banned."""
    fractions, others_sent, others_429, own_429 = [], 0, 0, 0
    for seed in (1, 2, 3):
        fake, stats = await run_shared([Tenant("dash", 2, 6), Tenant("cron", 2, 6)], windows=60,
                                       seed=seed)
        fractions.append(stats.fraction(15, 60))
        others_sent += stats.others_sent
        others_429 += stats.others_429
        own_429 += stats.geod_429
        assert not fake.banned
    assert sum(fractions) / len(fractions) >= 0.95, fractions
    assert others_429 / others_sent <= 0.02
    # geod risks OWN_TAIL (1 %) on a stale X-Rl, a few times a window: about 1 in 100 windows.
    assert own_429 <= 2


async def test_share_off_starves_the_others() -> None:
    """The plain header-obeying client (share = off) takes windows the others needed."""
    tenant = Tenant("dash", 2, 2)
    await run_shared([tenant], windows=8, share="off")
    assert tenant.throttled >= 4


@pytest.mark.parametrize(
    ("remaining", "reserve", "others", "spare"),
    [
        (None, 0, 0, True),  # nothing known yet: the next answer tells
        (14, 0, 0, True),
        (5, 0, 0, True),  # 4 still left after this one
        (4, 0, 0, False),  # the last 4 of a window are never upkeep's
        (9, 5, 0, False),  # nor the reserve
        (9, 0, 5, False),  # nor what the others are expected to ask for
    ],
)
def test_spare_is_quota_beyond_reserve_demand_and_keep(
        fake_clock: FakeClock, remaining: int | None, reserve: int, others: int,
        spare: bool) -> None:
    """Upkeep spends only what a window has beyond the reserve, the others' demand and 4."""
    governor = RateGovernor(reserve, fake_clock, fake_clock.sleep, share=True)
    if remaining is not None:
        governor.observe(14, 60)  # the window's first answer: limit 15
        governor.others_now = others
        governor.observe(remaining, 59)
        governor.others_now = others
    assert governor.spare() is spare


def test_spare_returns_when_the_window_resets(fake_clock: FakeClock) -> None:
    """A used-up window is spare again once it has reset."""
    governor = RateGovernor(0, fake_clock, fake_clock.sleep)
    governor.observe(1, 30)
    assert not governor.spare()
    fake_clock.advance(31)
    assert governor.spare()


def test_spare_waits_for_the_widened_reset_margin(fake_clock: FakeClock) -> None:
    """After X-Ttl proved rounded down, upkeep's window also ends only at the widened margin."""
    governor = RateGovernor(0, fake_clock, fake_clock.sleep)
    governor.observe(0, 30)
    governor.reset_margin = RESET_MARGIN + 1.0  # as a 429 right after a waited-for reset sets
    fake_clock.advance(30 + RESET_MARGIN + 0.5)  # past the plain margin, not the widened one
    assert not governor.spare()
    fake_clock.advance(0.6)
    assert governor.spare()


@pytest.mark.parametrize(("round_trip", "sends_now"), [(0.0, True), (0.5, False)])
async def test_x_rl_staleness_counts_the_requests_own_flight(
        fake_clock: FakeClock, round_trip: float, sends_now: bool) -> None:
    """0.3 s before X-Rl's staleness limit: a request whose flight takes 0.5 s would reach
    ip-api past it (more risk of a 429 of geod's own than OWN_TAIL), so it does not go."""
    governor = RateGovernor(0, fake_clock, fake_clock.sleep, share=True)
    governor.observe(14, 60)
    fake_clock.advance(50)
    await governor.wait_turn()
    fake_clock.advance(round_trip)
    governor.observe(4, 10)
    governor.others_now = 6  # the others' demand: 6 a window
    governor.backlog = 1  # the pass's last request: it fits in what the window spares
    assert governor.latency == round_trip
    fake_clock.advance(tail_bound(3, OWN_TAIL) * 60 / 6 - 0.3)
    assert (governor.delay() == 0.0) is sends_now


def test_final_burst_starts_one_round_trip_per_request_it_will_send(
        fake_clock: FakeClock) -> None:
    """With two requests left for the final burst and 0.5 s round trips, the burst starts
    1 s (two round trips) before its end, not 2 s as for a full burst of four: one that starts
    early ends early, and the others' requests after it find the window spent (measured: 4 %
    of theirs refused in a wall-clock run with ~1 s round trips)."""
    gov = governor(fake_clock)
    gov.observe(14, 60)  # a window's first answer: limit 15, reset 60 s from now
    gov._last_sent = fake_clock.now
    fake_clock.advance(0.5)
    gov.observe(13, 60)  # geod's own request, a 0.5 s round trip
    assert gov.latency == 0.5
    gov.remaining = 2  # as after eleven more of geod's own
    gov._last_sent = fake_clock.now
    assert gov.reset_at is not None
    start = gov.reset_at - FINAL_SLOT - 2 * 0.5
    assert gov.delay() == pytest.approx(start - fake_clock.now)
