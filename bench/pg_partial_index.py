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
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

import psycopg

from bench.pg_app_wait import _ip
from geod.config import Config, DatabaseConfig
from geod.negcache import NegativeCache
from geod.records import Geo, Lookup, Outcome, PassSummary
from geod.resolve import Pass
from geod.store import open_store
from tests.pg import start_server
from tests.pg_helpers import PG_SCHEMA

INDEX = "CREATE INDEX geo_cache_due ON geo_cache (ip) WHERE country_code IS NULL"


class Instant:
    """Answers every address at once: the pass's cost is the database's."""

    name = "instant"
    batch_size = 100

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        return [Lookup(a, Outcome.RESOLVED, Geo("US")) for a in addresses]


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


async def one_pass(config: Config) -> tuple[PassSummary, float]:
    clock = asyncio.get_running_loop().time
    started = time.perf_counter()
    store = await open_store(config)
    try:
        summary = await Pass(store, [Instant()], NegativeCache(600, 86400, clock),
                             clock=clock).run()
    finally:
        await store.close()
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nulls", type=int, default=100_000)
    args = parser.parse_args()
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
    finally:
        server.stop()


if __name__ == "__main__":
    main()
