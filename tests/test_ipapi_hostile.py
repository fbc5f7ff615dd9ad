"""Rate headers and redirects from a hostile path (issue 10, findings 8, 9, 10, 11, 13).

The free endpoint is plain HTTP: anyone on the path can rewrite X-Rl / X-Ttl / Retry-After or
answer with a redirect. The fake server's `tamper` hook plays that part.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from geod.config import IpApiConfig
from geod.ipapi import IpApiProvider
from geod.provider import make_session
from geod.ratelimit import ASSUMED_LIMIT, ASSUMED_WINDOW, MAX_RL, RateGovernor
from geod.records import Outcome
from tests.conftest import FakeClock
from tests.fake_ipapi import FakeIpApi, Fault
from tests.sim import SimClock

ADDRESSES = [f"8.8.{i}.{i}" for i in range(1, 9)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session() as s:
        yield s


async def start(aiohttp_server: Any, session: aiohttp.ClientSession, clock: FakeClock | SimClock,
                limit: int = 15, window: float = 60.0, **settings: Any
                ) -> tuple[FakeIpApi, IpApiProvider, RateGovernor]:
    fake = FakeIpApi(limit=limit, window=window, clock=clock)
    server = await aiohttp_server(fake.app)
    config = IpApiConfig(url=str(server.make_url("/batch")), batch_size=1, **settings)
    governor = RateGovernor(config.reserve, clock, clock.sleep, share=config.share == "auto")
    return fake, IpApiProvider(config, session, governor, sleep=clock.sleep), governor


async def test_superscript_x_rl_does_not_abort_the_pass(aiohttp_server: Any,
                                                        session: aiohttp.ClientSession,
                                                        fake_clock: FakeClock) -> None:
    """`X-Rl: ²` (str.isdigit() says yes) is no number: the answer is used, nothing raises (#10)."""
    fake, client, governor = await start(aiohttp_server, session, fake_clock)
    fake.tamper = lambda h: {"X-Rl": "²", "X-Ttl": "١٢"}
    [lookup] = await client.resolve([ADDRESSES[0]])
    assert lookup.outcome is Outcome.RESOLVED
    assert governor.remaining is None and governor.blind


async def test_huge_x_rl_is_clamped(aiohttp_server: Any, session: aiohttp.ClientSession,
                                    fake_clock: FakeClock) -> None:
    """X-Rl of 3,000,000 is not what ip-api can mean: the governor never holds more than 100 (#8).
    """
    fake, client, governor = await start(aiohttp_server, session, fake_clock)
    fake.spend(3, tenant="dashboard")  # others on the quota: the expensive Poisson path
    fake.tamper = lambda h: {**h, "X-Rl": "3000000"}
    for address in ADDRESSES[:3]:
        await client.resolve([address])
    assert governor.remaining is not None and governor.remaining <= MAX_RL
    assert governor.limit <= MAX_RL + 1 and governor.demand() <= MAX_RL + 1


def test_governor_refuses_out_of_range_values(fake_clock: FakeClock) -> None:
    """Values past the parser (a caller's bug) are still refused: no work proportional to them."""
    governor = RateGovernor(0, fake_clock, fake_clock.sleep)
    governor.observe(3_000_000, 60)
    assert governor.remaining == MAX_RL and governor.limit == MAX_RL + 1
    governor.observe(5, 999_999_999)
    assert governor.remaining == MAX_RL and governor.blind  # the X-Ttl counts as missing


@pytest.mark.parametrize("header", ["X-Ttl", "Retry-After"])
async def test_a_ttl_of_years_is_not_obeyed(aiohttp_server: Any, session: aiohttp.ClientSession,
                                            fake_clock: FakeClock, header: str) -> None:
    """X-Ttl / Retry-After of 999999999 is ignored: no wait is longer than a window (#9)."""
    fake, client, _ = await start(aiohttp_server, session, fake_clock, max_attempts=3)
    if header == "X-Ttl":
        fake.tamper = lambda h: {"X-Rl": "0", "X-Ttl": "999999999"}
    else:
        fake.tamper = lambda h: {"Retry-After": "999999999"}
        fake.faults.extend([Fault("status", status=429, headers=False)] * 2)
    for address in ADDRESSES[:3]:
        await client.resolve([address])
    assert fake_clock.sleeps and max(fake_clock.sleeps) <= ASSUMED_WINDOW + 1


async def test_redirect_is_not_followed(aiohttp_server: Any, session: aiohttp.ClientSession,
                                        fake_clock: FakeClock) -> None:
    """A 3xx fails the batch: the addresses are never re-posted to `Location` (#11)."""
    fake, client, _ = await start(aiohttp_server, session, fake_clock)
    for status in (301, 302, 307, 308):
        fake.faults.append(Fault("status", status=status))
        [lookup] = await client.resolve([ADDRESSES[0]])
        assert lookup.outcome is Outcome.FAILED and "redirect" in (lookup.reason or "")
    assert [r.path for r in fake.requests] == ["/batch"] * 4  # nothing went to /elsewhere


async def test_no_rate_headers_means_the_documented_pace(aiohttp_server: Any,
                                                         session: aiohttp.ClientSession,
                                                         fake_clock: FakeClock) -> None:
    """Answers without X-Rl/X-Ttl: at most the documented 15 a minute, not back to back (#13)."""
    fake, client, _ = await start(aiohttp_server, session, fake_clock)
    fake.tamper = lambda h: {}
    for address in ADDRESSES:
        await client.resolve([address])
    times = [r.time for r in fake.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= ASSUMED_WINDOW / ASSUMED_LIMIT - 1e-9


async def test_no_rate_headers_on_a_spent_compressed_window(aiohttp_server: Any,
                                                            session: aiohttp.ClientSession
                                                            ) -> None:
    """Headers stripped, others spending each 20 s window: geod's 429s stay one a minute (#13).

    Before: 7-12 of geod's own 429s in 20 s, a ban in the making.
    """
    clock = SimClock()
    fake, client, _ = await start(aiohttp_server, session, clock, limit=15, window=20,
                                  max_attempts=3)
    fake.tamper = lambda h: {}
    for k in range(8):  # the others take every window's whole quota at its start
        clock.at(k * 20.0, lambda: fake.spend(15, tenant="dashboard"))
    n = 0
    while clock.now < 120:
        n += 1
        await client.resolve([f"8.8.{n // 256}.{n % 256}"])
    assert fake.count_429("geod") <= 3


async def test_a_429_just_after_the_reset_widens_the_margin(fake_clock: FakeClock) -> None:
    """X-Ttl rounded down: refused right after the reset geod waited for, it waits longer (#13)."""
    governor = RateGovernor(0, fake_clock, fake_clock.sleep)
    governor.observe(0, 10)
    await governor.wait_turn()  # waits 10.1 s, to just past the announced reset
    first_margin = governor.reset_margin
    governor.observe(0, 1, served=False)  # but the server's window was still open: a 429
    await governor.wait_turn()
    assert governor.reset_margin > first_margin
    assert fake_clock.sleeps[-1] >= 1 + governor.reset_margin - 1e-9
