"""One pass over a large PostgreSQL table, with and without a partial index on the NULL rows.

Starts the tests' throwaway PostgreSQL 15, fills geo_cache with ROWS rows of which NULLS have a
NULL country (spread evenly), and runs one real `Pass` through an instant in-memory provider
(so the figure is geod's database cost: counting, reading or claiming, writing; ip-api's rate
limit would take 100,000 / 1,500 per minute = 67 minutes of waiting on its own). Each case runs
on a fresh table: the plain store (one instance) and the fleet store (claims and leases), each
without and with `CREATE INDEX … WHERE country_code IS NULL`. geod never creates that index;
this is the figure behind the README's advice to the DBA. Not a test: CI never runs it.

    python -m bench.pg_partial_index                          # 1,000,000 rows, 100,000 NULL
    python -m bench.pg_partial_index --rows 200000 --nulls 20000
    python -m bench.pg_partial_index --profile    # where a pass's time goes, by statement

`--profile` times every call the pass makes to the store and, in a fleet, to the lease table
(wall time seen by geod, round trip included), and after each pass reads from the server how
many of the table's updates were HOT and how large geod's lease table grew.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import psycopg

from bench.pg_app_wait import _ip
from geod.config import Config, DatabaseConfig
from geod.negcache import NegativeCache
from geod.pg_lease import Fleet
from geod.pg_store import PgStore
from geod.provider import Provider
from geod.records import Geo, Lookup, Outcome, PassSummary
from geod.resolve import Pass, utc_now
from geod.store import open_store
from geod.upkeep import Cursor, for_pass
from tests.pg import start_server
from tests.pg_helpers import PG_SCHEMA

INDEX = "CREATE INDEX geo_cache_due ON geo_cache (ip) WHERE country_code IS NULL"


class Instant:
    """Answers every address at once: the pass's cost is the database's."""

    name = "instant"
    batch_size = 100

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        return [Lookup(a, Outcome.RESOLVED, Geo("US")) for a in addresses]


# What --profile times: every statement a pass runs, by the method that runs it.
PROFILED: dict[type, tuple[str, ...]] = {
    PgStore: ("due_counts", "due_chunks", "still_due", "write"),
    Fleet: ("take_expired", "claim", "release", "forget", "prune", "foreign_lease_left"),
}


class Profile:
    """Wall time and calls per store or lease method, while installed (patches the classes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        for cls, names in PROFILED.items():
            for name in names:
                method = getattr(cls, name)
                timed = self._generator if name == "due_chunks" else self._coroutine
                setattr(cls, name, timed(f"{cls.__name__}.{name}", method))

    def _coroutine(self, label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1
        return timed

    def _generator(self, label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            chunks = method(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1
                yield chunk
        return timed

    def report(self, url: str) -> None:
        for label in sorted(self.seconds, key=lambda label: -self.seconds[label]):
            print(f"    {label:26} {self.seconds[label]:6.2f} s in {self.calls[label]} calls")
        self.seconds.clear()
        self.calls.clear()
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                               "WHERE relid = 'geo_cache'::regclass").fetchone()
            lease = conn.execute("SELECT pg_relation_size(to_regclass('geod.lease')) / 8192"
                                 ).fetchone()
        if row:
            print(f"    geo_cache updates: {row[0]}, of which HOT: {row[1]}")
        if lease and lease[0] is not None:
            print(f"    geod.lease: {lease[0]} pages after the pass")


def fill(url: str, rows: int, nulls: int, index: bool) -> None:
    every = rows // nulls
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS geod CASCADE")
        conn.execute("DROP TABLE IF EXISTS geo_cache")
        conn.execute(PG_SCHEMA)  # type: ignore[arg-type]
        with conn.cursor().copy("COPY geo_cache (ip, country_code) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((_ip(i), None if i % every == 0 else "DE"))
        if index:
            conn.execute(INDEX)
        conn.execute("VACUUM ANALYZE geo_cache")


async def one_pass(config: Config, provider: Provider | None = None, *, upkeep: bool = False
                   ) -> tuple[PassSummary, float]:
    """One real pass through `provider` (default `Instant`), with `[refresh]` upkeep after the
    NULL rows when `upkeep` (`bench.pg_upkeep`); returns its summary and wall seconds."""
    clock = asyncio.get_running_loop().time
    started = time.perf_counter()
    chain: list[Provider] = [provider or Instant()]
    store = await open_store(config)
    try:
        kept = (for_pass(config, store, chain, NegativeCache(600, 86400, clock), Cursor(),
                         lambda: True, utc_now) if upkeep else None)
        summary = await Pass(store, chain, NegativeCache(600, 86400, clock), clock=clock,
                             upkeep=kept).run()
    finally:
        await store.close()
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nulls", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true",
                        help="time each store and lease statement the pass runs")
    args = parser.parse_args()
    profile = Profile() if args.profile else None
    if profile:
        profile.install()
    server = start_server()
    try:
        url = server.url()
        for fleet in (False, True):
            for index in (False, True):
                fill(url, args.rows, args.nulls, index)
                database = DatabaseConfig(url=url, geod_schema="geod" if fleet else "")
                config = replace(Config(), database=database)
                summary, took = asyncio.run(one_pass(config))
                print(f"{'fleet' if fleet else 'plain'} store, "
                      f"{'with' if index else 'without'} partial index: one pass over "
                      f"{args.rows} rows ({summary.unresolved} NULL) in {took:.1f} s, "
                      f"resolved {summary.resolved}", flush=True)
                if profile:
                    profile.report(url)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
