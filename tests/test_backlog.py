"""The backlog (issue 9 item 7): due rows split into pending / backing off / never, the oldest
pending row's age, the drain estimate; counted by a real pass over a real SQLite file, exported
through the metrics collector, and `process_*` under ProcSubset=pid."""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from geod.backlog import Backlog, parse_stamp
from geod.config import ColumnsConfig, Config, DatabaseConfig
from geod.metrics import Metrics, PidOnlyProcessCollector
from geod.negcache import NegativeCache
from geod.records import Geo, Lookup, Outcome
from geod.resolve import Pass
from geod.sqlite_store import SqliteStore
from geod.status import Status
from tests.conftest import FakeClock, MakeDb
from tests.test_metrics import samples

WITH_STAMP = "INSERT INTO geo_cache (ip, country_code, cached_at) VALUES (?, ?, ?)"


class SlowProvider:
    """Takes `seconds` of fake time per batch; answers from `outcomes` (default RESOLVED)."""

    name = "fake"
    batch_size = 1

    def __init__(self, clock: FakeClock, seconds: float = 10,
                 outcomes: dict[str, Outcome] | None = None, before: object = None) -> None:
        self.clock = clock
        self.seconds = seconds
        self.outcomes = outcomes or {}
        self.before = before  # called before answering (a test takes the app's lock there)

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        await self.clock.sleep(self.seconds)
        if callable(self.before):
            self.before()
        result = []
        for address in addresses:
            outcome = self.outcomes.get(address, Outcome.RESOLVED)
            geo = Geo("NL") if outcome is Outcome.RESOLVED else None
            result.append(Lookup(address, outcome, geo=geo, source=self.name))
        return result


async def run_pass(path: Path, provider: SlowProvider, negcache: NegativeCache,
                   clock: FakeClock, busy_timeout: float = 30.0) -> Pass:
    store = await SqliteStore.open(DatabaseConfig(path=str(path), busy_timeout=busy_timeout),
                                   "geod.toml")
    try:
        work = Pass(store, [provider], negcache, clock=clock)
        await work.run()
        return work
    finally:
        await store.close()


async def test_a_pass_sorts_due_rows_by_what_geod_will_do(
        make_db: MakeDb, fake_clock: FakeClock) -> None:
    """Private, invalid and NULL-ip rows are `never`; failed, missed and still-backing-off rows
    are `backing_off`; nothing is left pending; the rate is rows settled per second."""
    path = make_db([("8.8.8.8", None), ("8.8.4.4", None), ("9.9.9.9", None),
                    ("1.0.0.1", None), ("10.0.0.1", None), ("not-an-ip", None), (None, None),
                    ("2.2.2.2", "DE")])
    negcache = NegativeCache(ttl=600, max_ttl=86400, clock=fake_clock)
    negcache.record_failure("1.0.0.1")
    provider = SlowProvider(fake_clock, outcomes={"8.8.4.4": Outcome.FAILED,
                                                  "9.9.9.9": Outcome.MISS})
    work = await run_pass(path, provider, negcache, fake_clock)
    backlog = work.backlog()
    assert backlog is not None
    assert (backlog.pending, backlog.backing_off, backlog.never) == (0, 3, 3)
    assert backlog.rate == pytest.approx(3 / 30)  # three rows asked, 10 s each
    assert backlog.drain_seconds() == 0


async def test_rows_not_yet_reached_are_pending_and_drain_at_the_pass_rate(
        make_db: MakeDb, fake_clock: FakeClock) -> None:
    """Mid-pass: the rows still to ask are pending, and pending / rate estimates the drain."""
    path = make_db([(f"8.8.8.{i}", None) for i in range(1, 7)])
    negcache = NegativeCache(ttl=600, max_ttl=86400, clock=fake_clock)
    seen: list[Backlog | None] = []
    holder: list[Pass] = []

    def look() -> None:
        seen.append(holder[0].backlog() if holder else None)

    store = await SqliteStore.open(DatabaseConfig(path=str(path)), "geod.toml")
    try:
        work = Pass(store, [SlowProvider(fake_clock, before=look)], negcache, clock=fake_clock)
        holder.append(work)
        await work.run()
    finally:
        await store.close()
    third = seen[2]  # two rows settled in 20 s, the third asked at 30 s
    assert third is not None and third.pending == 4
    assert third.rate == pytest.approx(2 / 30)
    assert third.drain_seconds() == pytest.approx(4 / (2 / 30))


async def test_unwritten_rows_stay_pending_with_their_age(
        make_db: MakeDb, fake_clock: FakeClock) -> None:
    """Answered but not written (the app held its lock): pending, and the oldest one's time
    (from the mapped timestamp column) is the backlog's age."""
    path = make_db([("8.8.8.8", None, "2026-11-28T09:00:00Z"),
                    ("1.1.1.1", None, "2026-11-28 08:00:00"),
                    ("10.0.0.1", None, "2020-01-01T00:00:00Z")],  # never sent: not its age
                   insert=WITH_STAMP)
    holder = sqlite3.connect(path, isolation_level=None)
    provider = SlowProvider(fake_clock, before=lambda: holder.in_transaction
                            or holder.execute("BEGIN IMMEDIATE"))
    negcache = NegativeCache(ttl=600, max_ttl=86400, clock=fake_clock)
    try:
        work = await run_pass(path, provider, negcache, fake_clock, busy_timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    backlog = work.backlog()
    assert backlog is not None
    assert (backlog.pending, backlog.never, work.tally.locked) == (2, 1, 2)
    assert backlog.oldest_pending == datetime(2026, 11, 28, 8, tzinfo=UTC).timestamp()


async def test_due_counts_is_one_count_of_due_and_keyless_rows(make_db: MakeDb) -> None:
    path = make_db([("8.8.8.8", None), (None, None), ("1.1.1.1", "US")])
    store = await SqliteStore.open(DatabaseConfig(path=str(path)), "geod.toml")
    try:
        counts = await store.due_counts()
    finally:
        await store.close()
    assert (counts.rows, counts.keyless) == (2, 1)


@pytest.mark.parametrize(("raw", "expected"), [
    ("2026-11-28T08:00:00Z", 1_795_852_800.0),
    ("2026-11-28 08:00:00", 1_795_852_800.0),  # SQLite's CURRENT_TIMESTAMP: UTC
    ("2026-11-28T09:00:00+01:00", 1_795_852_800.0),
    (1_795_852_800, 1_795_852_800.0),
    ("1795852800", 1_795_852_800.0),
    (1_795_852_800_000, 1_795_852_800.0),  # milliseconds
    (None, None), ("", None), ("yesterday", None), (True, None), (float("nan"), None), (-5, None),
])
def test_parse_stamp(raw: object, expected: float | None) -> None:
    assert parse_stamp(raw) == expected


def test_drain_is_zero_when_nothing_is_pending_and_nan_without_a_rate() -> None:
    assert Backlog(pending=0, rate=None).drain_seconds() == 0
    assert math.isnan(Backlog(pending=5, rate=None).drain_seconds())
    assert Backlog(pending=50, rate=2.5).drain_seconds() == 20


def test_status_keeps_the_last_rate_while_a_pass_has_none() -> None:
    status = Status(Config())
    status.count_backlog(Backlog(pending=10, rate=2.0))
    status.count_backlog(Backlog(pending=7))  # a new pass that has asked nothing yet
    assert (status.backlog.pending, status.backlog.rate) == (7, 2.0)


def test_backlog_gauges(tmp_path: Path) -> None:
    """Separate gauges; the oldest pending row's age only where a timestamp column is mapped."""
    status = Status(Config())
    status.count_backlog(Backlog(pending=40, backing_off=3, never=7,
                                 oldest_pending=1_000.0, rate=4.0))
    parsed = samples(Metrics(lambda: status, wall_clock=lambda: 1_600.0).render()[0].decode())
    assert parsed[("geod_pending_rows", ())] == 40
    assert parsed[("geod_backing_off_rows", ())] == 3
    assert parsed[("geod_unresolvable_rows", ())] == 7
    assert parsed[("geod_backlog_drain_seconds", ())] == 10
    assert parsed[("geod_oldest_pending_age_seconds", ())] == 600
    unmapped = Status(Config(database=DatabaseConfig(columns=ColumnsConfig(updated_at=""))))
    parsed = samples(Metrics(lambda: unmapped).render()[0].decode())
    assert ("geod_oldest_pending_age_seconds", ()) not in parsed
    assert parsed[("geod_pending_rows", ())] == 0


def test_process_series_survive_procsubset_pid(tmp_path: Path) -> None:
    """A /proc with only the process's own directory, as ProcSubset=pid leaves it: the stock
    collector exports nothing, geod's still exports every process_* series."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    stock, ours = CollectorRegistry(), CollectorRegistry()
    ProcessCollector(pid=os.getpid, proc=str(proc), registry=stock)
    PidOnlyProcessCollector(pid=os.getpid, proc=str(proc), registry=ours)
    assert list(stock.collect()) == []
    names = {family.name for family in ours.collect()}
    assert {"process_start_time_seconds", "process_cpu_seconds", "process_resident_memory_bytes",
            "process_open_fds", "process_max_fds", "process_virtual_memory_bytes"} <= names
    started = ours.get_sample_value("process_start_time_seconds")
    assert started is not None and abs(started - _started_via_proc_stat()) < 2


def _started_via_proc_stat() -> float:
    """The process's start time the way the stock collector computes it (host /proc/stat)."""
    with open("/proc/stat", "rb") as stat:
        btime = next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
    with open(f"/proc/{os.getpid()}/stat", "rb") as own:
        ticks = float(own.read().split(b")")[-1].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")
