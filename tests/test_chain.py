"""run_pass over a chain of in-memory providers: order, pass-through, back-off, counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from geod.config import ColumnsConfig, DatabaseConfig
from geod.negcache import NegativeCache
from geod.records import Geo, Lookup, Outcome, PassSummary, Update, WriteDeadline
from geod.resolve import run_pass
from geod.sqlite_store import SqliteStore
from tests.conftest import FakeClock, Logs, MakeDb, events, read_rows

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


@pytest.fixture
def negcache(fake_clock: FakeClock) -> NegativeCache:
    return NegativeCache(600, 86400, fake_clock)


async def pass_over(path: Path, chain: Sequence[Scripted], negcache: NegativeCache,
                    clock: FakeClock, columns: ColumnsConfig | None = None) -> PassSummary:
    config = DatabaseConfig(path=str(path), columns=columns or ColumnsConfig())
    store = await SqliteStore.open(config, "geod.toml")
    try:
        return await run_pass(store, chain, negcache, clock=clock, now_utc=lambda: "T")
    finally:
        await store.close()


R, M, F, U = Outcome.RESOLVED, Outcome.MISS, Outcome.FAILED, Outcome.UNRESOLVABLE


async def test_each_provider_gets_only_what_is_still_open(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """Providers run in order; each is asked only what the ones before it did not answer."""
    path = make_db([(ip, None) for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9", "2.2.2.2")],
                   schema=SOURCE_SCHEMA)
    mmdb = Scripted("mmdb", {"8.8.8.8": R}, code="US")
    rir = Scripted("rir", {"1.1.1.1": R}, code="AU")
    ipapi = Scripted("ip-api", {"9.9.9.9": R}, batch_size=100, code="CH")
    summary = await pass_over(path, [mmdb, rir, ipapi], negcache, fake_clock,
                              ColumnsConfig(source="answered_by"))
    assert mmdb.asked == ["8.8.8.8", "1.1.1.1", "9.9.9.9", "2.2.2.2"]
    assert rir.asked == ["1.1.1.1", "9.9.9.9", "2.2.2.2"]
    assert ipapi.asked == ["9.9.9.9", "2.2.2.2"]
    rows = read_rows(path)
    assert {ip: (row["country_code"], row["answered_by"]) for ip, row in rows.items()} == {
        "8.8.8.8": ("US", "mmdb"), "1.1.1.1": ("AU", "rir"), "9.9.9.9": ("CH", "ip-api"),
        "2.2.2.2": (None, None)}
    assert summary.resolved_by == {"mmdb": 1, "rir": 1, "ip-api": 1}
    assert (summary.retried, summary.resolved, summary.missed, summary.failed) == (4, 3, 1, 0)


async def test_only_addresses_every_provider_missed_back_off(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """A miss followed by an answer leaves no trace; a miss everywhere backs off."""
    path = make_db([("8.8.8.8", None), ("2.2.2.2", None), ("3.3.3.3", None)])
    first = Scripted("mmdb", {})
    second = Scripted("ip-api", {"8.8.8.8": R, "3.3.3.3": F})
    summary = await pass_over(path, [first, second], negcache, fake_clock)
    assert not negcache.blocked("8.8.8.8")
    assert negcache.blocked("2.2.2.2") and negcache.blocked("3.3.3.3")
    assert (summary.missed, summary.failed) == (1, 1)  # failed anywhere counts as failed
    again = await pass_over(path, [first, second], negcache, fake_clock)
    assert again.backed_off == 2 and first.asked == ["8.8.8.8", "2.2.2.2", "3.3.3.3"]


async def test_a_failed_provider_passes_on_to_the_next(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """ip-api first and unreachable: the offline provider after it still answers."""
    path = make_db([("8.8.8.8", None)])
    ipapi = Scripted("ip-api", {"8.8.8.8": F})
    rir = Scripted("rir", {"8.8.8.8": R}, code="US")
    summary = await pass_over(path, [ipapi, rir], negcache, fake_clock)
    assert summary.resolved_by == {"ip-api": 0, "rir": 1}
    assert summary.failed == 0 and not negcache.blocked("8.8.8.8")


async def test_unresolvable_ends_the_chain(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock) -> None:
    """An answer like 'reserved range' is final: later providers are not asked."""
    path = make_db([("8.8.8.8", None), ("1.1.1.1", None)])
    first = Scripted("ip-api", {"8.8.8.8": U})
    second = Scripted("rir", {"8.8.8.8": R, "1.1.1.1": R})
    summary = await pass_over(path, [first, second], negcache, fake_clock)
    assert second.asked == ["1.1.1.1"]
    assert summary.unresolvable == 1 and negcache.blocked("8.8.8.8")
    fake_clock.advance(86_399)
    assert negcache.blocked("8.8.8.8")  # max_ttl, as for any permanent answer


@pytest.fixture
def write_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write transaction the test's passes make, in order."""
    sizes: list[int] = []
    original = SqliteStore.write

    async def counting(self: SqliteStore, updates: Sequence[Update], resolved_at: str,
                       deadline: WriteDeadline | None = None) -> int:
        sizes.append(len(updates))
        return await original(self, updates, resolved_at, deadline)

    monkeypatch.setattr(SqliteStore, "write", counting)
    return sizes


async def test_local_provider_takes_a_chunk_in_one_call_and_one_write(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock,
        write_sizes: list[int]) -> None:
    """2,500 rows: three chunk-sized calls and three write transactions, not one per row."""
    ips = [f"8.{i // 250}.{i % 250}.1" for i in range(2500)]
    path = make_db([(ip, None) for ip in ips])
    local = Scripted("rir", dict.fromkeys(ips, R))
    summary = await pass_over(path, [local], negcache, fake_clock)
    assert [len(batch) for batch in local.batches] == [1000, 1000, 500]
    assert write_sizes == [1000, 1000, 500]
    assert summary.resolved == 2500


async def test_ipapi_batches_within_a_chunk_are_written_one_by_one(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock,
        write_sizes: list[int]) -> None:
    """What reaches ip-api still goes in batches of its size, each written as it arrives."""
    ips = [f"8.8.{i}.1" for i in range(250)]
    path = make_db([(ip, None) for ip in ips])
    local = Scripted("mmdb", {ip: R for ip in ips[:40]})
    ipapi = Scripted("ip-api", dict.fromkeys(ips, R), batch_size=100)
    summary = await pass_over(path, [local, ipapi], negcache, fake_clock)
    assert [len(batch) for batch in ipapi.batches] == [100, 100, 10]
    assert write_sizes == [40, 100, 100, 10]
    assert summary.resolved_by == {"mmdb": 40, "ip-api": 210}


async def test_summary_line_and_start_event_name_the_chain(
        make_db: MakeDb, negcache: NegativeCache, fake_clock: FakeClock, logs: Logs) -> None:
    """The start event lists the chain; the summary line ends with per-provider counts."""
    path = make_db([("8.8.8.8", None), ("2d00::1", None)])
    summary = await pass_over(path, [Scripted("mmdb", {"8.8.8.8": R}), Scripted("rir", {})],
                              negcache, fake_clock)
    assert events(logs, "geo_re_resolve_start")[0]["providers"] == ["mmdb", "rir"]
    assert summary.line().endswith("missed=1 duration_s=0.0 resolved_by=mmdb:1,rir:0")


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
        await run_pass(store, chain, negcache, clock=fake_clock, progress=progress)
    finally:
        await store.close()
    assert reports == [
        ([], 0, 4),
        ([("mmdb", "resolved"), ("mmdb", "miss"), ("mmdb", "miss")], 2, 4),  # + 10.0.0.1
        ([("rir", "resolved"), ("rir", "miss")], 4, 4),
    ]
