"""Server faults: the real daemon pass against the strict fake, on fake time, then the invariants.

Each scenario runs one pass with the fault queued (as `geod once` would), checks the invariants,
then a second pass in a fresh daemon (a restart: empty negative cache) that must resolve every
public row: a fault may delay a look-up, never lose or corrupt one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from geod.config import IpApiConfig
from geod.ipapi import IpApiProvider
from geod.provider import make_session
from geod.ratelimit import RateGovernor
from geod.records import Outcome
from tests.conftest import FakeClock
from tests.fake_ipapi import FakeIpApi, Fault
from tests.faults.conftest import PUBLIC, MakeConfig, daemon
from tests.faults.invariants import assert_invariants, snapshot
from tests.proc import closed_port_url

WINDOW = 60


async def recover(make_config: MakeConfig, clock: FakeClock, db: Path, fake: FakeIpApi) -> None:
    """A fresh daemon's pass resolves every public row; the invariants still hold."""
    before = snapshot(db)
    summary = await daemon(make_config(), clock).run_once()
    assert summary is not None and summary.failed == 0
    after = assert_invariants(before, db, fake.requests)
    assert all(after[ip]["country_code"] for ip in PUBLIC), after


# (faults queued for the first pass, rows whose look-up may fail in it)
CASES: dict[str, tuple[list[Fault], int]] = {
    "500": ([Fault("status", 500)], 0),  # retried within the pass
    "502": ([Fault("status", 502)], 0),
    "503": ([Fault("status", 503)], 0),
    "503-every-attempt": ([Fault("status", 503)] * 3, 4),  # first batch gives up
    "429-no-headers": ([Fault("status", 429, headers=False)] * 2, 0),
    "slower-than-timeout": ([Fault("slow", delay=1.0)], 0),
    "reset-mid-body": ([Fault("reset")], 0),
    "malformed-json": ([Fault("malformed")], 4),  # 200 with garbage: not retried
    "short-array": ([Fault("short")], 4),
    "long-array": ([Fault("long")], 4),
    "wrong-query-echo": ([Fault("wrong_query")], 1),  # only that item
    "oversized-body": ([Fault("oversized")], 4),
    "non-json-type": ([Fault("non_json")], 4),
    "bad-country-code": ([Fault("bad_country")], 2),  # "1.0.0.1" is two rows
    "empty-country-code": ([Fault("empty_country")], 2),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_server_fault(case: str, make_config: MakeConfig, fake_clock: FakeClock,
                            fault_db: Path, fake_server: tuple[FakeIpApi, str]) -> None:
    """A faulty answer fails at most its batch (or item), writes nothing wrong, and heals."""
    fake, _ = fake_server
    faults, may_fail = CASES[case]
    fake.faults.extend(faults)
    before = snapshot(fault_db)
    summary = await daemon(make_config(), fake_clock).run_once()
    assert summary is not None
    assert not fake.faults  # every fault was met
    assert summary.failed <= may_fail, summary
    assert summary.resolved + summary.failed == len(PUBLIC), summary
    assert_invariants(before, fault_db, fake.requests)
    await recover(make_config, fake_clock, fault_db, fake)


async def test_422_is_not_retried(make_config: MakeConfig, fake_clock: FakeClock,
                                  fault_db: Path, fake_server: tuple[FakeIpApi, str]) -> None:
    """A 422 (too many items) fails the batch at once, without a retry, and writes nothing."""
    fake, _ = fake_server
    fake.max_items = 3  # batches of 4 are "too many"
    before = snapshot(fault_db)
    summary = await daemon(make_config(), fake_clock).run_once()
    assert summary is not None and (summary.resolved, summary.failed) == (0, len(PUBLIC))
    assert [r.status for r in fake.requests] == [422, 422]  # one request per batch
    assert_invariants(before, fault_db, fake.requests)
    fake.max_items = 100
    await recover(make_config, fake_clock, fault_db, fake)


async def test_connection_refused(make_config: MakeConfig, fake_clock: FakeClock,
                                  fault_db: Path, fake_server: tuple[FakeIpApi, str]) -> None:
    """Nobody listening: every batch fails after its attempts, nothing is written."""
    fake, _ = fake_server
    before = snapshot(fault_db)
    summary = await daemon(make_config(url=closed_port_url()), fake_clock).run_once()
    assert summary is not None and (summary.resolved, summary.failed) == (0, len(PUBLIC))
    assert snapshot(fault_db) == before
    assert_invariants(before, fault_db, fake.requests)
    await recover(make_config, fake_clock, fault_db, fake)


async def test_429_storm_over_several_windows(make_config: MakeConfig, fake_clock: FakeClock,
                                              fault_db: Path,
                                              fake_server: tuple[FakeIpApi, str]) -> None:
    """Eight 429s in a row: one request per window while they last, no ban, then it heals."""
    fake, _ = fake_server
    fake.faults.extend([Fault("status", 429)] * 8)
    before = snapshot(fault_db)
    started = fake_clock()
    summary = await daemon(make_config(max_attempts=5), fake_clock).run_once()
    assert summary is not None
    throttled = [r.time for r in fake.requests if r.status == 429]
    assert len(throttled) == 8 and not fake.banned
    # Each 429 said "X-Rl 0 for X-Ttl seconds"; geod waited that out every time, so no two
    # requests share a 60 s window while the storm lasts: it spans 8 windows.
    times = [r.time for r in fake.requests]
    assert all(later - earlier >= WINDOW for earlier, later in zip(times[:8], times[1:9],
                                                                    strict=True))
    assert fake_clock() - started >= 8 * WINDOW
    assert summary.failed == 4  # the first batch used its 5 attempts; the second got through
    assert_invariants(before, fault_db, fake.requests)
    await recover(make_config, fake_clock, fault_db, fake)


async def test_429_storm_while_the_others_take_every_window(
        make_config: MakeConfig, fake_clock: FakeClock, fault_db: Path,
        fake_server: tuple[FakeIpApi, str]) -> None:
    """Another program spends the whole quota at the start of six windows: geod asks once a
    window (each time X-Ttl says it may), never twice after a 429, and is never banned."""
    fake, _ = fake_server
    real_sleep = fake_clock.sleep
    storm_until = fake_clock() + 6 * WINDOW

    async def sleep(seconds: float) -> None:
        await real_sleep(seconds)
        if fake_clock() < storm_until:
            fake.spend(15, tenant="dashboard")  # the new window is gone before geod asks

    fake.spend(15, tenant="dashboard")
    fake_clock.sleep = sleep  # type: ignore[method-assign]
    before = snapshot(fault_db)
    summary = await daemon(make_config(max_attempts=5), fake_clock).run_once()
    assert summary is not None
    throttled = [r.time for r in fake.requests if r.tenant == "geod" and r.status == 429]
    assert 1 <= len(throttled) <= 7 and "geod" not in fake.banned
    assert all(b - a >= WINDOW - 1 for a, b in zip(throttled, throttled[1:], strict=False))
    assert_invariants(before, fault_db, fake.requests)
    fake_clock.sleep = real_sleep  # type: ignore[method-assign]
    await recover(make_config, fake_clock, fault_db, fake)


# -- bodies no parser should choke on ----------------------------------------------------------

HOSTILE_BODIES = {
    "deeply-nested": b"[" * 200_000,  # json.loads raises RecursionError, not ValueError
    "nested-closed": b"[" * 50_000 + b"]" * 50_000,
    "huge-integer": b"[" + b"9" * 5000 + b"]",  # beyond int's digit limit: ValueError
    "not-utf8": b'[{"status": "success", "query": "\xff\xfe"}]',
    "nan": b"[NaN, Infinity]",
    "empty": b"",
    "null": b"null",
    "object": b'{"status": "success"}',
}


@pytest.mark.parametrize("body", list(HOSTILE_BODIES))
async def test_hostile_body_fails_the_batch_never_the_pass(body: str, aiohttp_server: Any,
                                                           fake_clock: FakeClock) -> None:
    """Any body the server could send ends as FAILED lookups; resolve never raises."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=HOSTILE_BODIES[body], content_type="application/json",
                            headers={"X-Rl": "14", "X-Ttl": "60"})

    app = web.Application()
    app.router.add_post("/batch", handler)
    server: TestServer = await aiohttp_server(app)
    config = IpApiConfig(url=str(server.make_url("/batch")), max_attempts=2)
    async with make_session() as session:
        client = IpApiProvider(config, session, RateGovernor(0, fake_clock, fake_clock.sleep),
                             sleep=fake_clock.sleep)
        lookups = await client.resolve(["8.8.8.8", "1.1.1.1"])
    assert [(lookup.address, lookup.outcome) for lookup in lookups] == [
        ("8.8.8.8", Outcome.FAILED), ("1.1.1.1", Outcome.FAILED)]
