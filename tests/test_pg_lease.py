"""Fleet leases and the shared attempt log against a real PostgreSQL 15 server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import psycopg
import pytest

from geod.pg_lease import Fleet, schema_sql
from tests.pg_helpers import pg_config

ADDRESSES = [f"8.8.{i // 256}.{i % 256}" for i in range(600)]
OpenFleet = Callable[..., Coroutine[Any, Any, Fleet]]


@pytest.fixture
async def open_fleet(pg_url: str) -> AsyncIterator[OpenFleet]:
    """open_fleet(ttl=...) -> a new instance (fresh owner, own connection) on the test database."""
    opened: list[Fleet] = []

    async def make(ttl: float = 60.0) -> Fleet:
        fleet = await Fleet.open(pg_config(pg_url, geod_schema="geod"), ttl=ttl)
        opened.append(fleet)
        return fleet

    yield make
    for fleet in opened:
        await fleet.close()


async def test_schema_is_created_once_and_owners_are_fresh(open_fleet: OpenFleet,
                                                           pg_url: str) -> None:
    """The first instance creates geod's schema; the next reuses it; each start is a new owner."""
    one = await open_fleet()
    two = await open_fleet()
    assert one.owner != two.owner
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'geod' "
            "ORDER BY 1").fetchall()
    assert tables == [("attempt",), ("lease",)]


async def test_a_claimed_address_is_not_claimed_by_another(open_fleet: OpenFleet) -> None:
    """A live lease keeps others out; its owner may claim again (idempotent)."""
    one, two = await open_fleet(), await open_fleet()
    assert sorted(await one.claim(ADDRESSES[:10])) == sorted(ADDRESSES[:10])
    assert sorted(await two.claim(ADDRESSES[:20])) == sorted(ADDRESSES[10:20])
    assert sorted(await one.claim(ADDRESSES[:5])) == sorted(ADDRESSES[:5])


async def test_concurrent_claims_never_overlap(open_fleet: OpenFleet) -> None:
    """Four instances racing over the same addresses in random batches each get a disjoint share."""
    fleets = [await open_fleet() for _ in range(4)]
    rng = random.Random(14)

    async def drain(fleet: Fleet) -> set[str]:
        got: set[str] = set()
        order = ADDRESSES[:]
        rng.shuffle(order)
        for start in range(0, len(order), 50):  # overlapping windows: own leases come back too
            got.update(await fleet.claim(order[start:start + 100]))
        return got

    shares = await asyncio.gather(*(drain(fleet) for fleet in fleets))
    every = [address for share in shares for address in share]
    assert len(every) == len(set(every))  # nobody holds an address another holds
    assert set(every) == set(ADDRESSES)  # and all of them were taken


async def test_expired_lease_is_taken_over(open_fleet: OpenFleet) -> None:
    """A dead instance's leases (expired by the server's clock) go to the next claimer."""
    dead, alive = await open_fleet(), await open_fleet()
    assert len(await dead.claim(ADDRESSES[:10], ttl=0)) == 10  # expires at once
    assert sorted(await alive.claim(ADDRESSES[:10])) == sorted(ADDRESSES[:10])
    assert await dead.renew(ADDRESSES[:10]) == []  # not its own any more
    assert await dead.release(ADDRESSES[:10]) == 0  # and it cannot drop another's lease


async def test_renewal_keeps_a_lease(open_fleet: OpenFleet, pg_url: str) -> None:
    """renew() pushes expiry out by ttl, so a lease outlives its first term."""
    one, two = await open_fleet(ttl=60), await open_fleet()
    await one.claim(ADDRESSES[:3], ttl=0)
    assert sorted(await one.renew(ADDRESSES[:5])) == sorted(ADDRESSES[:3])
    assert await two.claim(ADDRESSES[:3]) == []
    with psycopg.connect(pg_url) as conn:
        left = conn.execute("SELECT min(expires_at - now()) FROM geod.lease").fetchone()
    assert left is not None and left[0].total_seconds() > 50


async def test_release_frees_the_addresses(open_fleet: OpenFleet) -> None:
    """Released leases can be claimed by another at once."""
    one, two = await open_fleet(), await open_fleet()
    await one.claim(ADDRESSES[:4])
    assert await one.release(ADDRESSES[:4]) == 4
    assert len(await two.claim(ADDRESSES[:4])) == 4



async def test_a_failure_one_instance_saw_keeps_the_others_off(open_fleet: OpenFleet) -> None:
    """Shared attempt log: an address that just failed is claimed by nobody until it backs off."""
    one, two = await open_fleet(), await open_fleet()
    await one.claim(ADDRESSES[:2])
    await one.record_failure(ADDRESSES[:1], ttl=600, max_ttl=86400)
    await one.release(ADDRESSES[:2])
    assert await two.claim(ADDRESSES[:2]) == [ADDRESSES[1]]
    assert await two.backing_off(ADDRESSES[:2]) == {ADDRESSES[0]}
    await two.forget(ADDRESSES[:1])
    assert await two.claim(ADDRESSES[:1]) == [ADDRESSES[0]]


async def test_back_off_doubles_and_caps(open_fleet: OpenFleet, pg_url: str) -> None:
    """ttl, 2*ttl, 4*ttl… capped at max_ttl, as the in-memory NegativeCache does."""
    one = await open_fleet()
    waits = []
    for _ in range(5):
        await one.record_failure(["1.2.3.4"], ttl=100, max_ttl=1000)
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT failures, next_attempt - now() FROM geod.attempt").fetchone()
        assert row is not None
        waits.append((row[0], round(row[1].total_seconds())))
    assert waits == [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000)]
    await one.record_permanent(["5.6.7.8"], max_ttl=1000)
    assert await one.backing_off(["5.6.7.8"]) == {"5.6.7.8"}


async def test_clear_ends_every_back_off(open_fleet: OpenFleet) -> None:
    """SIGHUP's clear() empties the shared log for every instance."""
    one, two = await open_fleet(), await open_fleet()
    await one.record_failure(ADDRESSES[:3], ttl=600, max_ttl=86400)
    assert await two.clear() == 3
    assert len(await one.claim(ADDRESSES[:3])) == 3


async def test_prune_drops_only_long_expired_entries(open_fleet: OpenFleet) -> None:
    """Leases and back-offs that ended over max_ttl ago go; live ones stay."""
    one = await open_fleet()
    await one.claim(ADDRESSES[:2], ttl=-100)  # expired 100 s ago
    await one.claim(ADDRESSES[2:3])
    await one.record_failure(["1.2.3.4"], ttl=600, max_ttl=86400)
    assert await one.prune(max_ttl=50) == 2
    assert await one.renew(ADDRESSES[:3]) == [ADDRESSES[2]]


async def test_claims_never_lock_the_apps_rows(open_fleet: OpenFleet, pg_url: str) -> None:
    """Leases live in geod's schema: the app's table stays writable with a 5 ms lock_timeout."""
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE geo_cache (ip text PRIMARY KEY, country_code text)")
        conn.execute("INSERT INTO geo_cache VALUES ('8.8.0.1', NULL)")
    one = await open_fleet()
    assert await one.claim(["8.8.0.1"]) == ["8.8.0.1"]  # held until released or expired
    with psycopg.connect(pg_url) as app:
        app.execute("SET lock_timeout = '5ms'")
        app.execute("UPDATE geo_cache SET country_code = 'US'")


def test_schema_sql_for_a_dba_names_the_grants() -> None:
    """The hand-made schema SQL creates both tables and grants exactly what geod uses."""
    text = schema_sql("geod", role="geod")
    assert "CREATE SCHEMA IF NOT EXISTS geod;" in text
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON geod.lease, geod.attempt TO geod;" in text


_HOLDER = """
import asyncio, sys
from geod.pg_lease import Fleet
from tests.pg_helpers import pg_config

async def main():
    fleet = await Fleet.open(pg_config(sys.argv[1], geod_schema="geod"), ttl=float(sys.argv[2]))
    got = await fleet.claim(sys.argv[3:])
    print(len(got), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_killed_instance_leases_are_taken_over_after_expiry(
        open_fleet: OpenFleet, pg_url: str) -> None:
    """kill -9 of a holder: its leases stay until they expire, then another instance takes them."""
    import signal
    import sys

    addresses = ADDRESSES[:50]
    ttl = 5.0
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, pg_url, str(ttl), *addresses,
        stdout=asyncio.subprocess.PIPE)
    assert holder.stdout is not None
    line = await asyncio.wait_for(holder.stdout.readline(), 30)
    assert line.strip() == b"50"
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    survivor = await open_fleet()
    assert await survivor.claim(addresses) == []  # the dead one's leases are still live
    taken: set[str] = set()
    while len(taken) < len(addresses) and loop.time() - killed_at < ttl + 20:
        taken.update(await survivor.claim(addresses))
        await asyncio.sleep(0.2)
    assert taken == set(addresses)



async def test_lease_statements_are_planned_for_the_table_as_it_is_now(
        open_fleet: OpenFleet) -> None:
    """No statement on the fleet's session keeps a generic plan: the lease table goes from empty
    to thousands of pages of dead rows within one long pass, and a plan fixed while it was small
    scans it whole (BENCHMARKS.md: a 500,000-row fleet pass, 42-56 s with, 29 s without)."""
    fleet = await open_fleet()
    # A pass's first chunks: past psycopg's prepare threshold (5 runs) and the server's five
    # custom plans of a prepared statement, after which it would weigh a generic one.
    for start in range(0, 1500, 100):
        chunk = ADDRESSES[start % 600:start % 600 + 100]
        await fleet.take_expired(100)
        await fleet.claim(chunk)
        await fleet.release(chunk)
    cur = await fleet._conn.execute(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    prepared = await cur.fetchall()
    assert len(prepared) >= 3  # take_expired, claim and release were all prepared
    assert [(text, generic) for text, generic, _ in prepared if generic] == []
