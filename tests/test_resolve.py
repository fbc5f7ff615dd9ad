"""The pass (`resolve.Pass`) over a real SQLite table with in-memory providers: what is sent,
what is written, what backs off; and over a chain of them: order, pass-through, counts."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from geod.config import ColumnsConfig, DatabaseConfig
from geod.negcache import NegativeCache
from geod.pg_store import PgStore
from geod.records import Geo, Lookup, Outcome, PassSummary, Update, WriteDeadline, Written
from geod.resolve import Pass
from geod.sqlite_store import SqliteStore
from geod.store import Store
from tests.conftest import FakeClock, Logs, MakeDb, events, make_pass, read_rows
from tests.store_backends import StoreBackend

STAMP = "2026-11-28T10:00:00Z"


class FakeProvider:
    """Answers from a dict; records every batch it was asked; optional per-address outcomes."""

    name = "fake"

    def __init__(self, batch_size: int = 100, outcomes: dict[str, Outcome] | None = None,
                 gate: asyncio.Event | None = None) -> None:
        self.batch_size = batch_size
        self.batches: list[list[str]] = []
        self.outcomes = outcomes or {}
        self.gate = gate
        self.waiting = asyncio.Event()  # set once a batch is held at the gate

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        self.batches.append(list(addresses))
        if self.gate is not None and len(self.batches) > 1:
            self.waiting.set()
            await self.gate.wait()
        result = []
        for address in addresses:
            outcome = self.outcomes.get(address, Outcome.RESOLVED)
            resolved = outcome is Outcome.RESOLVED
            geo = Geo("NL", "Netherlands", "AS1", f"org {address}") if resolved else None
            result.append(Lookup(address, outcome, geo=geo, reason="test", source=self.name))
        return result

    @property
    def sent(self) -> list[str]:
        return [address for batch in self.batches for address in batch]


async def pass_over(path: Path | StoreBackend, provider: FakeProvider, negcache: NegativeCache,
                    clock: FakeClock) -> PassSummary:
    return await make_pass(path, [provider], negcache, clock, stamp=STAMP)


@pytest.fixture
def negcache(fake_clock: FakeClock) -> NegativeCache:
    return NegativeCache(600, 86400, fake_clock)


async def test_resolves_and_writes_every_sendable_row(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Public rows are sent in batches of batch_size and written with the provider's data."""
    ips = [f"8.8.{i}.1" for i in range(25)]
    path = app_db([(ip, None) for ip in ips])
    provider = FakeProvider(batch_size=10)
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert [len(b) for b in provider.batches] == [10, 10, 5]
    assert (summary.retried, summary.resolved, summary.failed) == (25, 25, 0)
    row = read_rows(path)["8.8.3.1"]
    assert row == {"ip": "8.8.3.1", "country_code": "NL", "country_name": "Netherlands",
                   "asn": "AS1", "org": "org 8.8.3.1", "cached_at": STAMP}


async def test_private_and_invalid_rows_are_never_sent(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Unsendable rows are counted as unresolvable and never reach the provider."""
    path = app_db([("10.1.2.3", None), ("not an ip", None), ("224.0.0.1", None),
                    ("::ffff:192.168.1.1", None), ("8.8.8.8", None)])
    provider = FakeProvider()
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert provider.sent == ["8.8.8.8"]
    assert summary.unresolvable == 4
    assert summary.resolved == 1


async def test_duplicates_after_normalising_are_sent_once_and_both_written(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """' 8.8.8.8' and '::ffff:8.8.8.8' are one question and two written rows."""
    path = app_db([(" 8.8.8.8", None), ("::ffff:8.8.8.8", None)])
    provider = FakeProvider()
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert provider.sent == ["8.8.8.8"]
    assert summary.resolved == 2
    assert {row["country_code"] for row in read_rows(path).values()} == {"NL"}


async def test_failures_back_off_and_are_skipped_next_pass(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """A failed address is not asked again until its back-off ends, then it is."""
    path = app_db([("8.8.8.8", None), ("1.1.1.1", None)])
    provider = FakeProvider(outcomes={"1.1.1.1": Outcome.FAILED})
    first = await pass_over(path, provider, negcache, fake_clock)
    assert (first.resolved, first.failed) == (1, 1)
    second = await pass_over(path, provider, negcache, fake_clock)
    assert second.backed_off == 1 and second.retried == 0
    fake_clock.advance(601)
    third = await pass_over(path, provider, negcache, fake_clock)
    assert third.retried == 1
    assert sorted(provider.sent) == ["1.1.1.1", "1.1.1.1", "8.8.8.8"]  # any order: PG pages by ip


async def test_provider_unresolvable_answer_backs_off_for_max_ttl(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """An answer like 'reserved range' is not asked again for max_ttl."""
    path = app_db([("8.8.8.8", None)])
    provider = FakeProvider(outcomes={"8.8.8.8": Outcome.UNRESOLVABLE})
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert summary.unresolvable == 1
    fake_clock.advance(86399)
    assert negcache.blocked("8.8.8.8")
    fake_clock.advance(2)
    assert not negcache.blocked("8.8.8.8")


async def test_nothing_to_do_logs_skip(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock,
        logs: list[MutableMapping[str, Any]]) -> None:
    """With no NULL rows the pass logs geo_re_resolve_skip and sends nothing."""
    path = app_db([("8.8.8.8", "US")])
    provider = FakeProvider()
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert summary.unresolved == 0 and provider.batches == []
    assert events(logs, "geo_re_resolve_skip")[0]["reason"] == "no_unresolved_ips"
    assert events(logs, "geo_re_resolve_start") == []


async def test_app_write_during_pass_is_not_overwritten(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """If the app fills a row while its look-up is in flight, the app's value stays."""
    import sqlite3

    path = make_db([("8.8.8.8", None)])

    class AppWritesFirst(FakeProvider):
        async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE geo_cache SET country_code = 'SE' WHERE ip = '8.8.8.8'")
            conn.close()
            return await super().resolve(addresses)

    summary = await pass_over(path, AppWritesFirst(), negcache, fake_clock)
    assert summary.resolved == 0
    assert read_rows(path)["8.8.8.8"]["country_code"] == "SE"


async def test_locked_database_skips_the_batch_for_next_pass(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock,
        logs: list[MutableMapping[str, Any]]) -> None:
    """A write lock held past busy_timeout skips the batch, warns, and does not back off."""
    import sqlite3

    path = make_db([("8.8.8.8", None)])
    holder = sqlite3.connect(path, isolation_level=None)

    class LockDuringLookup(FakeProvider):
        async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
            holder.execute("BEGIN IMMEDIATE")
            return await super().resolve(addresses)

    store = await SqliteStore.open(DatabaseConfig(path=str(path), busy_timeout=0.05), "geod.toml")
    try:
        summary = await Pass(store, [LockDuringLookup()], negcache, clock=fake_clock).run()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()
    assert summary.locked == 1 and summary.resolved == 0
    assert events(logs, "database_locked")[0]["log_level"] == "warning"
    assert not negcache.blocked("8.8.8.8")


async def test_cancel_keeps_batches_already_written(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Cancelling a pass mid-way (a stop) keeps the batches that were answered before it."""
    path = app_db([(f"8.8.8.{i}", None) for i in range(1, 5)])
    gate = asyncio.Event()  # never set: the second batch hangs like a slow request
    provider = FakeProvider(batch_size=2, gate=gate)
    task = asyncio.create_task(pass_over(path, provider, negcache, fake_clock))
    await provider.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = {ip for ip, row in read_rows(path).items() if row["country_code"]}
    assert written == set(provider.batches[0])


SOURCE_SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT, answered_by TEXT)"
)


class Scripted:
    """A provider named `name` that answers `outcomes[address]` (default MISS) and records calls."""

    def __init__(self, name: str, outcomes: dict[str, Outcome], batch_size: int = 10_000,
                 code: str = "NL") -> None:
        self.name = name
        self.batch_size = batch_size
        self.outcomes = outcomes
        self.code = code
        self.batches: list[list[str]] = []

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        self.batches.append(list(addresses))
        result = []
        for address in addresses:
            outcome = self.outcomes.get(address, Outcome.MISS)
            geo = Geo(self.code) if outcome is Outcome.RESOLVED else None
            result.append(Lookup(address, outcome, geo=geo, source=self.name))
        return result

    @property
    def asked(self) -> list[str]:
        return [address for batch in self.batches for address in batch]


async def chain_pass_over(path: Path, chain: Sequence[Scripted], negcache: NegativeCache,
                          clock: FakeClock, columns: ColumnsConfig | None = None) -> PassSummary:
    return await make_pass(path, chain, negcache, clock, columns=columns, stamp="T")


R, M, F, U = Outcome.RESOLVED, Outcome.MISS, Outcome.FAILED, Outcome.UNRESOLVABLE


async def test_each_provider_gets_only_what_is_still_open(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Providers run in order; each is asked only what the ones before it did not answer."""
    path = app_db([(ip, None) for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9", "2.2.2.2")],
                   schema=SOURCE_SCHEMA)
    mmdb = Scripted("mmdb", {"8.8.8.8": R}, code="US")
    rir = Scripted("rir", {"1.1.1.1": R}, code="AU")
    ipapi = Scripted("ip-api", {"9.9.9.9": R}, batch_size=100, code="CH")
    summary = await chain_pass_over(path, [mmdb, rir, ipapi], negcache, fake_clock,
                              ColumnsConfig(source="answered_by"))
    # Within a provider, in the store's order (SQLite: rowid, PostgreSQL: the key).
    assert sorted(mmdb.asked) == ["1.1.1.1", "2.2.2.2", "8.8.8.8", "9.9.9.9"]
    assert sorted(rir.asked) == ["1.1.1.1", "2.2.2.2", "9.9.9.9"]
    assert sorted(ipapi.asked) == ["2.2.2.2", "9.9.9.9"]
    rows = read_rows(path)
    assert {ip: (row["country_code"], row["answered_by"]) for ip, row in rows.items()} == {
        "8.8.8.8": ("US", "mmdb"), "1.1.1.1": ("AU", "rir"), "9.9.9.9": ("CH", "ip-api"),
        "2.2.2.2": (None, None)}
    assert summary.resolved_by == {"mmdb": 1, "rir": 1, "ip-api": 1}
    assert (summary.retried, summary.resolved, summary.missed, summary.failed) == (4, 3, 1, 0)


async def test_only_addresses_every_provider_missed_back_off(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """A miss followed by an answer leaves no trace; a miss everywhere backs off."""
    path = app_db([("8.8.8.8", None), ("2.2.2.2", None), ("3.3.3.3", None)])
    first = Scripted("mmdb", {})
    second = Scripted("ip-api", {"8.8.8.8": R, "3.3.3.3": F})
    summary = await chain_pass_over(path, [first, second], negcache, fake_clock)
    assert not negcache.blocked("8.8.8.8")
    assert negcache.blocked("2.2.2.2") and negcache.blocked("3.3.3.3")
    assert (summary.missed, summary.failed) == (1, 1)  # failed anywhere counts as failed
    again = await chain_pass_over(path, [first, second], negcache, fake_clock)
    assert again.backed_off == 2 and sorted(first.asked) == ["2.2.2.2", "3.3.3.3", "8.8.8.8"]


async def test_a_failed_provider_passes_on_to_the_next(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """ip-api first and unreachable: the offline provider after it still answers."""
    path = app_db([("8.8.8.8", None)])
    ipapi = Scripted("ip-api", {"8.8.8.8": F})
    rir = Scripted("rir", {"8.8.8.8": R}, code="US")
    summary = await chain_pass_over(path, [ipapi, rir], negcache, fake_clock)
    assert summary.resolved_by == {"ip-api": 0, "rir": 1}
    assert summary.failed == 0 and not negcache.blocked("8.8.8.8")


async def test_unresolvable_ends_the_chain(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """An answer like 'reserved range' is final: later providers are not asked."""
    path = make_db([("8.8.8.8", None), ("1.1.1.1", None)])
    first = Scripted("ip-api", {"8.8.8.8": U})
    second = Scripted("rir", {"8.8.8.8": R, "1.1.1.1": R})
    summary = await chain_pass_over(path, [first, second], negcache, fake_clock)
    assert second.asked == ["1.1.1.1"]
    assert summary.unresolvable == 1 and negcache.blocked("8.8.8.8")
    fake_clock.advance(86_399)
    assert negcache.blocked("8.8.8.8")  # max_ttl, as for any permanent answer


@pytest.fixture
def write_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write transaction the test's passes make, in order."""
    sizes: list[int] = []
    for store in (SqliteStore, PgStore):
        original = store.write

        async def counting(self: Store, updates: Sequence[Update], resolved_at: str,
                           deadline: WriteDeadline | None = None,
                           original: Any = original) -> Written:
            sizes.append(len(updates))
            written: Written = await original(self, updates, resolved_at, deadline)
            return written

        monkeypatch.setattr(store, "write", counting)
    return sizes


async def test_local_provider_takes_a_chunk_in_one_call_and_one_write(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock,
        write_sizes: list[int]) -> None:
    """2,500 rows: three chunk-sized calls and three write transactions, not one per row."""
    ips = [f"8.{i // 250}.{i % 250}.1" for i in range(2500)]
    path = app_db([(ip, None) for ip in ips])
    local = Scripted("rir", dict.fromkeys(ips, R))
    summary = await chain_pass_over(path, [local], negcache, fake_clock)
    assert [len(batch) for batch in local.batches] == [1000, 1000, 500]
    assert write_sizes == [1000, 1000, 500]
    assert summary.resolved == 2500


async def test_ipapi_batches_within_a_chunk_are_written_one_by_one(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock,
        write_sizes: list[int]) -> None:
    """What reaches ip-api still goes in batches of its size, each written as it arrives."""
    ips = [f"8.8.{i}.1" for i in range(250)]
    path = app_db([(ip, None) for ip in ips])
    local = Scripted("mmdb", {ip: R for ip in ips[:40]})
    ipapi = Scripted("ip-api", dict.fromkeys(ips, R), batch_size=100)
    summary = await chain_pass_over(path, [local, ipapi], negcache, fake_clock)
    assert [len(batch) for batch in ipapi.batches] == [100, 100, 10]
    assert write_sizes == [40, 100, 100, 10]
    assert summary.resolved_by == {"mmdb": 40, "ip-api": 210}


async def test_summary_line_and_start_event_name_the_chain(
        app_db: StoreBackend, negcache: NegativeCache, fake_clock: FakeClock, logs: Logs) -> None:
    """The start event lists the chain; the summary line ends with per-provider counts."""
    path = app_db([("8.8.8.8", None), ("2d00::1", None)])
    summary = await chain_pass_over(path, [Scripted("mmdb", {"8.8.8.8": R}), Scripted("rir", {})],
                              negcache, fake_clock)
    assert events(logs, "geo_re_resolve_start")[0]["providers"] == ["mmdb", "rir"]
    assert summary.line().endswith("missed=1 refused=0 filled=0 confirmed=0 changed=0 "
                                   "superseded=0 duration_s=0.0 resolved_by=mmdb:1,rir:0")


async def test_progress_reports_every_providers_lookups_and_counts_rows_once(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Each provider call is reported (metrics count lookups by provider); done reaches total."""
    path = make_db([(ip, None) for ip in ("8.8.8.8", "1.1.1.1", "2.2.2.2", "10.0.0.1")])
    reports: list[tuple[list[tuple[str, str]], int, int]] = []

    def progress(lookups: Sequence[Lookup], done: int, total: int) -> None:
        reports.append(([(lk.source, lk.outcome.value) for lk in lookups], done, total))

    chain = [Scripted("mmdb", {"8.8.8.8": R}), Scripted("rir", {"1.1.1.1": R})]
    store = await SqliteStore.open(DatabaseConfig(path=str(path)), "geod.toml")
    try:
        await Pass(store, chain, negcache, clock=fake_clock, progress=progress).run()
    finally:
        await store.close()
    assert reports == [
        ([], 0, 4),
        ([("mmdb", "resolved"), ("mmdb", "miss"), ("mmdb", "miss")], 2, 4),  # + 10.0.0.1
        ([("rir", "resolved"), ("rir", "miss")], 4, 4),
    ]
