"""run_pass with an in-memory provider: what is sent, what is written, what backs off."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from geod.config import DatabaseConfig
from geod.negcache import NegativeCache
from geod.records import Geo, Lookup, Outcome
from geod.resolve import run_pass
from geod.sqlite_store import SqliteStore
from tests.conftest import FakeClock, MakeDb, events, read_rows

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


async def pass_over(path: Path, provider: FakeProvider, negcache: NegativeCache,
                    clock: FakeClock) -> Any:
    store = await SqliteStore.open(DatabaseConfig(path=str(path)), "geod.toml")
    try:
        return await run_pass(store, [provider], negcache, clock=clock, now_utc=lambda: STAMP)
    finally:
        await store.close()


@pytest.fixture
def negcache(fake_clock: FakeClock) -> NegativeCache:
    return NegativeCache(600, 86400, fake_clock)


async def test_resolves_and_writes_every_sendable_row(make_db: MakeDb, negcache: NegativeCache,
                                                      fake_clock: FakeClock) -> None:
    """Public rows are sent in batches of batch_size and written with the provider's data."""
    ips = [f"8.8.{i}.1" for i in range(25)]
    path = make_db([(ip, None) for ip in ips])
    provider = FakeProvider(batch_size=10)
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert [len(b) for b in provider.batches] == [10, 10, 5]
    assert (summary.retried, summary.resolved, summary.failed) == (25, 25, 0)
    row = read_rows(path)["8.8.3.1"]
    assert row == {"ip": "8.8.3.1", "country_code": "NL", "country_name": "Netherlands",
                   "asn": "AS1", "org": "org 8.8.3.1", "cached_at": STAMP}


async def test_private_and_invalid_rows_are_never_sent(make_db: MakeDb, negcache: NegativeCache,
                                                       fake_clock: FakeClock) -> None:
    """Unsendable rows are counted as unresolvable and never reach the provider."""
    path = make_db([("10.1.2.3", None), ("not an ip", None), ("224.0.0.1", None),
                    ("::ffff:192.168.1.1", None), ("8.8.8.8", None)])
    provider = FakeProvider()
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert provider.sent == ["8.8.8.8"]
    assert summary.unresolvable == 4
    assert summary.resolved == 1


async def test_duplicates_after_normalising_are_sent_once_and_both_written(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """' 8.8.8.8' and '::ffff:8.8.8.8' are one question and two written rows."""
    path = make_db([(" 8.8.8.8", None), ("::ffff:8.8.8.8", None)])
    provider = FakeProvider()
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert provider.sent == ["8.8.8.8"]
    assert summary.resolved == 2
    assert {row["country_code"] for row in read_rows(path).values()} == {"NL"}


async def test_failures_back_off_and_are_skipped_next_pass(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """A failed address is not asked again until its back-off ends, then it is."""
    path = make_db([("8.8.8.8", None), ("1.1.1.1", None)])
    provider = FakeProvider(outcomes={"1.1.1.1": Outcome.FAILED})
    first = await pass_over(path, provider, negcache, fake_clock)
    assert (first.resolved, first.failed) == (1, 1)
    second = await pass_over(path, provider, negcache, fake_clock)
    assert second.backed_off == 1 and second.retried == 0
    fake_clock.advance(601)
    third = await pass_over(path, provider, negcache, fake_clock)
    assert third.retried == 1
    assert provider.sent == ["8.8.8.8", "1.1.1.1", "1.1.1.1"]


async def test_provider_unresolvable_answer_backs_off_for_max_ttl(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """An answer like 'reserved range' is not asked again for max_ttl."""
    path = make_db([("8.8.8.8", None)])
    provider = FakeProvider(outcomes={"8.8.8.8": Outcome.UNRESOLVABLE})
    summary = await pass_over(path, provider, negcache, fake_clock)
    assert summary.unresolvable == 1
    fake_clock.advance(86399)
    assert negcache.blocked("8.8.8.8")
    fake_clock.advance(2)
    assert not negcache.blocked("8.8.8.8")


async def test_nothing_to_do_logs_skip(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock,
        logs: list[MutableMapping[str, Any]]) -> None:
    """With no NULL rows the pass logs geo_re_resolve_skip and sends nothing."""
    path = make_db([("8.8.8.8", "US")])
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
        summary = await run_pass(store, [LockDuringLookup()], negcache, clock=fake_clock)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()
    assert summary.locked == 1 and summary.resolved == 0
    assert events(logs, "database_locked")[0]["log_level"] == "warning"
    assert not negcache.blocked("8.8.8.8")


async def test_cancel_keeps_batches_already_written(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Cancelling a pass mid-way (a stop) keeps the batches that were answered before it."""
    path = make_db([(f"8.8.8.{i}", None) for i in range(1, 5)])
    gate = asyncio.Event()  # never set: the second batch hangs like a slow request
    provider = FakeProvider(batch_size=2, gate=gate)
    task = asyncio.create_task(pass_over(path, provider, negcache, fake_clock))
    await provider.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = {ip for ip, row in read_rows(path).items() if row["country_code"]}
    assert written == set(provider.batches[0])
