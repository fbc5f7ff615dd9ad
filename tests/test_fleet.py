"""The fleet in the pass: instances sharing one PostgreSQL table through `pg_fleet.FleetStore`.

Real PostgreSQL, real passes; the provider is an in-memory fake except where a real `geod`
process has to die (`kill -9`). Lease times are real seconds, kept short.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from geod.config import Config
from geod.negcache import NegativeCache
from geod.pg_fleet import FleetStore
from geod.records import Geo, Lookup, Outcome, PassSummary, Stored
from geod.resolve import Pass
from geod.store import open_store
from geod.upkeep import Cursor, for_pass
from tests.conftest import FakeClock, Logs, MakeConfig, events
from tests.pg_helpers import WRITES_TRIGGER, make_pg_table, read_pg_rows
from tests.proc import REPO, _base_env, start_fake_ipapi, write_geod_config

ADDRESSES = [f"8.{i // 250}.{i % 250}.1" for i in range(600)]
NL = Geo("NL")


class Recording:
    """A provider that answers everything after a short real pause, and records what it asked."""

    name = "ip-api"
    batch_size = 100

    def __init__(self, failing: Sequence[str] = (), pause: float = 0.01,
                 geo: Geo = NL) -> None:
        self.asked: list[str] = []
        self.failing = set(failing)
        self.pause = pause
        self.geo = geo

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        self.asked += addresses
        await asyncio.sleep(self.pause)  # on the network: the other instances move on meanwhile
        return [Lookup(a, Outcome.FAILED, reason="test") if a in self.failing
                else Lookup(a, Outcome.RESOLVED, self.geo) for a in addresses]


@pytest.fixture
def fleet_config(make_config: MakeConfig, pg_url: str) -> Config:
    return make_config(database={"url": pg_url, "geod_schema": "geod", "lease_ttl": 2})


async def run_instance(config: Config, provider: Recording, clock: FakeClock) -> PassSummary:
    """One instance's pass: its own store connection, owner and negative cache."""
    store = await open_store(config)
    assert isinstance(store, FleetStore)
    try:
        return await Pass(store, [provider], NegativeCache(600, 86400, clock), clock=clock).run()
    finally:
        await store.close()


async def test_instances_never_ask_about_one_address(
        fleet_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """Three instances draining one table at once: every row asked once, by one of them, and
    written once."""
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES])
    with psycopg.connect(pg_url) as conn:
        conn.execute(WRITES_TRIGGER)  # type: ignore[arg-type]  # test-owned SQL
    providers = [Recording() for _ in range(3)]
    await asyncio.gather(*(run_instance(fleet_config, p, fake_clock) for p in providers))
    asked = [a for p in providers for a in p.asked]
    assert sorted(asked) == sorted(ADDRESSES)  # each once, none left out
    assert sum(1 for p in providers if p.asked) >= 2  # they really shared the work
    rows = read_pg_rows(pg_url)
    assert {row["writes"] for row in rows.values()} == {1}


# One address spelled several ways, the spellings spread over the table's key order (spaces
# sort first, digits next, "::" and upper case after): each instance's walk meets a different one.
SPELLINGS = {
    "8.1.0.9": [" 8.1.0.9", "8.1.0.9", "::ffff:8.1.0.9", "::FFFF:801:9", "8.1.0.9\t"],
    "2a00:1450:4001:80b::200e": ["2a00:1450:4001:80b::200e", "2a00:1450:4001:80b:0:0:0:200e",
                                 "2A00:1450:4001:80B::200E", " 2a00:1450:4001:080b::200e"],
}


async def test_instances_never_ask_about_one_address_spelled_two_ways(
        fleet_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """Leases and the attempt log are keyed on the address sent, not on the row's spelling: three
    instances ask about an address once between them, and every spelling's row is written."""
    spelled = [key for keys in SPELLINGS.values() for key in keys]
    make_pg_table(pg_url, [(a, None) for a in [*ADDRESSES, *spelled, "10.0.0.1", "nonsense"]])
    providers = [Recording(pause=0.05) for _ in range(3)]
    await asyncio.gather(*(run_instance(fleet_config, p, fake_clock) for p in providers))
    asked = [a for p in providers for a in p.asked]
    assert sorted(asked) == sorted([*ADDRESSES, *SPELLINGS])  # each address once
    rows = read_pg_rows(pg_url)
    assert {key: rows[key]["country_code"] for key in spelled} == dict.fromkeys(spelled, "NL")
    assert rows["10.0.0.1"]["country_code"] is None  # never sendable: never asked
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM geod.lease").fetchone() == (0,)


async def test_a_failure_one_instance_saw_keeps_the_others_off(
        fleet_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """The shared attempt log: an address one instance failed on is not asked by the next
    instance's pass; SIGHUP's clear_attempts lets everyone ask again."""
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:5]])
    first = Recording(failing=ADDRESSES[:2])
    summary = await run_instance(fleet_config, first, fake_clock)
    assert (summary.resolved, summary.failed) == (3, 2)
    second = Recording()
    await run_instance(fleet_config, second, fake_clock)
    assert second.asked == []  # a fresh instance, with an empty negative cache of its own
    store = await open_store(fleet_config)
    assert await store.clear_attempts() == 2
    await store.close()
    await run_instance(fleet_config, second, fake_clock)
    assert sorted(second.asked) == sorted(ADDRESSES[:2])


async def test_a_slow_holder_keeps_its_rows_and_a_stalled_one_loses_them(
        fleet_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """Leases are renewed while the holder works (waits on its rate limit included), so others
    pass its rows over; a holder stalled past expiry loses them to the next instance's pass."""
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:50]])
    holder = await open_store(fleet_config)
    assert isinstance(holder, FleetStore)
    chunks = holder.due_chunks()
    held = [row.key for row in await anext(chunks)]
    assert len(held) == 50
    await asyncio.sleep(2.5)  # past the 2 s lease: alive only by renewal
    other = Recording()
    started = time.monotonic()
    await run_instance(fleet_config, other, fake_clock)
    assert other.asked == []  # renewed leases: passed over, not waited for
    assert time.monotonic() - started < 2
    # Now the holder stalls: renewals stop, as in a process frozen or cut off from the server.
    assert holder._keeper is not None  # noqa: SLF001 - simulating a stall of this instance
    holder._keeper.cancel()  # noqa: SLF001
    await asyncio.sleep(2 + 0.5)  # its last renewal was at most one lease (2 s) ago
    await run_instance(fleet_config, other, fake_clock)
    assert sorted(other.asked) == sorted(held)
    await holder.close()
    assert {row["country_code"] for row in read_pg_rows(pg_url).values()} == {"NL"}


async def test_expired_rows_behind_the_walk_are_taken_over_before_it_ends(
        fleet_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """A holder that died on the first rows: another instance's walk, already past them, takes
    them over at its next claim once their lease expires, not only when its walk ends."""
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES])
    dead = await open_store(fleet_config)
    assert isinstance(dead, FleetStore)
    held = [row.key for row in await anext(dead.due_chunks())]
    assert dead._keeper is not None  # noqa: SLF001 - it dies: no more renewals
    dead._keeper.cancel()  # noqa: SLF001
    survivor = Recording(pause=0.5)  # 5 batches of its own: 2.5 s, past the 2 s lease
    await run_instance(fleet_config, survivor, fake_clock)
    assert sorted(survivor.asked) == sorted(ADDRESSES)
    first_taken = min(survivor.asked.index(key) for key in held)
    assert first_taken < len(ADDRESSES) - len(held)  # before the walk's own rows ran out
    await dead.fleet.close()
    await dead.store.close()


STALE_SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT, source TEXT)")
# Counts every UPDATE that reaches a row (upkeep's included), not only the fills.
EVERY_WRITE = ("CREATE TABLE writes (ip TEXT); CREATE FUNCTION count_writes() RETURNS trigger "
               "LANGUAGE plpgsql AS $$ BEGIN INSERT INTO writes VALUES (NEW.ip); RETURN NEW; "
               "END $$; CREATE TRIGGER count_writes AFTER UPDATE ON geo_cache FOR EACH ROW "
               "EXECUTE FUNCTION count_writes();")


# A whole answer: a row refreshed without an AS would be due again, for a fill.
WHOLE = Geo("NL", "Netherlands", "AS1136", "KPN")


@pytest.fixture
def stale_config(make_config: MakeConfig, pg_url: str) -> Config:
    """A fleet whose table holds only rows geod wrote long ago (refresh is due on all)."""
    make_pg_table(pg_url, [(a, "DE", "Germany", None, None, "2026-01-01T00:00:00Z", "ip-api")
                           for a in ADDRESSES], schema=STALE_SCHEMA,
                  insert="INSERT INTO geo_cache VALUES (%s, %s, %s, %s, %s, %s, %s)")
    with psycopg.connect(pg_url) as conn:
        conn.execute(EVERY_WRITE)  # type: ignore[arg-type]  # test-owned SQL
    return make_config(**{"database": {"url": pg_url, "geod_schema": "geod", "lease_ttl": 2},
                          "database.columns": {"source": "source"}})


async def upkeep_instance(config: Config, provider: Recording, clock: FakeClock,
                          store: FleetStore | None = None) -> PassSummary:
    """One instance's pass, with upkeep and spare quota, at wall time 2026-11-29T12:00:00Z."""
    if store is None:
        opened = await open_store(config)
        assert isinstance(opened, FleetStore)
        store = opened
    now = "2026-11-29T12:00:00Z"
    try:
        upkeep = for_pass(config, store, [provider], NegativeCache(600, 86400, clock),
                          Cursor(), lambda: True, lambda: now)
        return await Pass(store, [provider], NegativeCache(600, 86400, clock), clock=clock,
                          now_utc=lambda: now, upkeep=upkeep).run()
    finally:
        await store.close()


async def test_instances_never_ask_about_one_address_in_upkeep(
        stale_config: Config, pg_url: str, fake_clock: FakeClock) -> None:
    """Refresh in a fleet: three instances keeping one table's stale rows up at once, with
    spare quota, ask about each address once between them and write each row once."""
    providers = [Recording(pause=0.05, geo=WHOLE) for _ in range(3)]
    summaries = await asyncio.gather(
        *(upkeep_instance(stale_config, p, fake_clock) for p in providers))
    asked = [a for p in providers for a in p.asked]
    assert sorted(asked) == sorted(ADDRESSES)  # each once, none left out
    assert sum(1 for p in providers if p.asked) >= 2  # they really shared the work
    assert sum(s.changed for s in summaries) == len(ADDRESSES)
    assert sum(s.superseded for s in summaries) == 0
    with psycopg.connect(pg_url) as conn:
        written = conn.execute("SELECT ip, count(*) FROM writes GROUP BY ip").fetchall()
        assert conn.execute("SELECT count(*) FROM geod.lease").fetchone() == (0,)
    assert sorted(written) == sorted((a, 1) for a in ADDRESSES)
    assert {row["country_code"] for row in read_pg_rows(pg_url).values()} == {"NL"}


async def test_upkeep_rows_kept_up_between_read_and_claim_are_not_asked_again(
        stale_config: Config, pg_url: str, fake_clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance whose read of a chunk is overtaken (another one claims, asks, writes and
    releases those rows before its own claim) drops them once claimed: asked once in all."""
    late = await open_store(stale_config)
    assert isinstance(late, FleetStore)
    read = late.store.upkeep_chunks
    other = Recording(geo=WHOLE)

    async def overtaken(*args: Any) -> AsyncIterator[list[Stored]]:
        async for chunk in read(*args):
            if not other.asked:  # the other instance runs its whole pass in between
                await upkeep_instance(stale_config, other, fake_clock)
            yield chunk

    monkeypatch.setattr(late.store, "upkeep_chunks", overtaken)
    slow = Recording(geo=WHOLE)
    summary = await upkeep_instance(stale_config, slow, fake_clock, late)
    assert (sorted(other.asked), slow.asked) == (sorted(ADDRESSES), [])
    assert (summary.changed, summary.superseded) == (0, 0)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM writes").fetchone() == (len(ADDRESSES),)


async def test_a_walk_ends_without_waiting_for_a_live_holder(
        make_config: MakeConfig, pg_url: str, fake_clock: FakeClock, logs: Logs) -> None:
    """An instance whose own work is done ends its pass at once while a live instance still
    holds leases (the holder renews them and writes those rows itself), and says so."""
    config = make_config(database={"url": pg_url, "geod_schema": "geod", "lease_ttl": 60})
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:150]])
    holder = await open_store(config)
    assert isinstance(holder, FleetStore)
    holding = holder.due_chunks()  # referenced: a collected walk releases its leases
    held = [row.key for row in await anext(holding)]
    other = Recording()
    try:
        # The old walk waited out the holder's 60 s lease here.
        await asyncio.wait_for(run_instance(config, other, fake_clock), timeout=10)
    finally:
        await holding.aclose()
        await holder.close()
    assert sorted(other.asked) == sorted(set(ADDRESSES[:150]) - set(held))
    [left] = events(logs, "fleet_left_to_others")
    assert 50 < left["seconds"] <= 60


async def test_leases_that_expire_during_the_walk_are_taken_over_at_its_end(
        make_config: MakeConfig, pg_url: str) -> None:
    """A dead holder's leases that run out after the walk's last claim are taken over by one
    more round at its end, in this pass; the server's clock is moved on, not waited for."""
    config = make_config(database={"url": pg_url, "geod_schema": "geod", "lease_ttl": 60})
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:300]])
    dead = await open_store(config)
    other = await open_store(config)
    assert isinstance(dead, FleetStore) and isinstance(other, FleetStore)
    dying = dead.due_chunks()  # referenced: a collected walk releases its leases
    try:
        held = [row.key for row in await anext(dying)]
        assert dead._keeper is not None  # noqa: SLF001 - it dies: no more renewals
        dead._keeper.cancel()  # noqa: SLF001
        walk = other.due_chunks()
        own = [row.key for _ in range(2) for row in await anext(walk)]
        assert sorted(own) == sorted(set(ADDRESSES[:300]) - set(held))  # the others' passed over
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the dead one's lease runs out
            conn.execute("UPDATE geod.lease SET expires_at = now() - interval '1 second' "
                         "WHERE owner = %s", (dead.fleet.owner,))
        taken = [row.key for row in await anext(walk)]
        assert sorted(taken) == sorted(held)
        with pytest.raises(StopAsyncIteration):
            await anext(walk)
    finally:
        await other.close()
        await dying.aclose()  # its leases were taken over: releases nothing
        await dead.close()


async def test_a_walk_behind_the_others_leases_nothing_they_wrote(
        fleet_config: Config, pg_url: str) -> None:
    """Rows others wrote after this walk read the table are passed by without a lease: a
    lagging instance adds no write to geod's lease table for them (the old walk leased and
    released every such address)."""
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:300]])
    lagging = await open_store(fleet_config)
    assert isinstance(lagging, FleetStore)
    walk = lagging.due_chunks()
    try:
        first = [row.key for row in await anext(walk)]  # the walk has read all 300 rows
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE geo_cache SET country_code = 'NL' WHERE NOT ip = ANY(%s)",
                         (first,))  # the other instances wrote the rest meanwhile
            conn.execute("CREATE TABLE lease_writes (address text)")
            conn.execute("CREATE FUNCTION note_lease() RETURNS trigger LANGUAGE plpgsql AS $$ "
                         "BEGIN INSERT INTO lease_writes VALUES (NEW.address); RETURN NEW; "
                         "END $$")
            conn.execute("CREATE TRIGGER note_lease BEFORE INSERT OR UPDATE ON geod.lease "
                         "FOR EACH ROW EXECUTE FUNCTION note_lease()")
        assert [chunk async for chunk in walk] == []
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM lease_writes").fetchone() == (0,)
    finally:
        await walk.aclose()
        await lagging.close()


@pytest.mark.slow
def test_a_killed_geod_leaves_its_rows_to_the_next(tmp_path: Path, pg_url: str) -> None:
    """`kill -9` of a real `geod once` mid-batch: the next `geod once` does its own rows and
    exits without waiting for the dead one's lease; the first `geod once` after the lease ends
    takes those rows over. Every row written once, none lost."""
    ttl = 60  # far longer than the test: its end is simulated on the server's clock
    make_pg_table(pg_url, [(a, None) for a in ADDRESSES[:150]])
    with psycopg.connect(pg_url) as conn:
        conn.execute(WRITES_TRIGGER)  # type: ignore[arg-type]  # test-owned SQL
    extra = f'geod_schema = "geod"\nlease_ttl = {ttl}\n'
    # The first answer hangs (geod's 10 s timeout is longer than the test lets it live).
    with start_fake_ipapi(tmp_path, faults=["slow@60"]) as fake:
        victim_cfg = write_geod_config(tmp_path / "victim.toml", db=pg_url, url=fake.batch_url,
                                       extra="")
        victim_cfg.write_text(victim_cfg.read_text().replace(
            "[ipapi]", extra + "\n[ipapi]"))
        victim = subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(victim_cfg), "once"], cwd=REPO,
            env=_base_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not fake.requests():
                time.sleep(0.05)
            assert fake.requests(), "the victim never asked"
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        with psycopg.connect(pg_url) as conn:
            (owner, leased), = conn.execute(
                "SELECT min(owner::text), count(*) FROM geod.lease").fetchall()
        assert leased == 100  # one claim (CLAIM_SIZE), held by a dead process

        def once() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "geod", "--config", str(victim_cfg), "once"], cwd=REPO,
                env=_base_env(None), capture_output=True, text=True, timeout=ttl / 2,
                check=False)

        first = once()  # the old walk waited the 60 s lease out: the timeout says no
        assert first.returncode == 0, first.stderr
        assert [row["writes"] for row in read_pg_rows(pg_url).values()].count(0) == 100
        with psycopg.connect(pg_url) as conn:  # the lease runs out (the server's clock)
            conn.execute("UPDATE geod.lease SET expires_at = now() - interval '1 second' "
                         "WHERE owner = %s", (owner,))
        second = once()
    assert second.returncode == 0, second.stderr
    rows = read_pg_rows(pg_url)
    assert all(row["country_code"] for row in rows.values())  # nothing lost
    assert {row["writes"] for row in rows.values()} == {1}  # nothing written twice
    logged = [json.loads(line)["event"] for line in first.stderr.splitlines()]
    assert "fleet_left_to_others" in logged
