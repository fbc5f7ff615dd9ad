"""What offline upkeep (`[refresh]`) costs a pass, per store: SQLite, PostgreSQL, a fleet of one.

Fills geo_cache with ROWS rows geod wrote long ago (`source = 'rir'`, stale under the default
`after = "30d"`) and no NULL row, then runs one real `Pass` with upkeep (`per_pass` = ROWS)
through an instant offline provider that answers every address with a new country, so every row
is read, decided and written as `changed`: the figure is geod's database cost of upkeep (the
fleet's: a lease claim, a re-read and a release per 100 addresses besides). Each case runs on a
fresh table, REPEAT times; the median is printed. Not a test: CI never runs it.

    python -m bench.pg_upkeep                   # 10,000 rows (the default per_pass), 3 runs
    python -m bench.pg_upkeep --rows 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import psycopg
import structlog

from bench.pg_app_wait import _ip
from bench.pg_partial_index import one_pass
from geod.config import ColumnsConfig, Config, DatabaseConfig, RefreshConfig
from geod.records import Geo, Lookup, Outcome
from tests.pg import start_server

SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
          "asn TEXT, org TEXT, cached_at TEXT, source TEXT)")
OLD = "2026-01-01T00:00:00Z"


class Instant:
    """An offline provider that answers every address at once, with another country."""

    name = "rir"
    batch_size = 1000

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        return [Lookup(a, Outcome.RESOLVED, Geo("FR", "France")) for a in addresses]


def rows(n: int) -> list[tuple[str, ...]]:
    return [(_ip(i), "DE", "Germany", "AS1", "x", OLD, "rir") for i in range(n)]


def fill_sqlite(path: Path, n: int) -> None:
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        conn.executemany("INSERT INTO geo_cache VALUES (?, ?, ?, ?, ?, ?, ?)", rows(n))
    conn.close()


def fill_pg(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS geod CASCADE")
        conn.execute("DROP TABLE IF EXISTS geo_cache")
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        with conn.cursor().copy("COPY geo_cache FROM STDIN") as copy:
            for row in rows(n):
                copy.write_row(row)
        conn.execute("VACUUM ANALYZE geo_cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = start_server()
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "geo.db"
            columns = ColumnsConfig(source="source")
            cases = {
                "sqlite": (lambda: fill_sqlite(path, args.rows),
                           DatabaseConfig(path=str(path), columns=columns)),
                "postgresql": (lambda: fill_pg(server.url(), args.rows),
                               DatabaseConfig(url=server.url(), columns=columns)),
                "postgresql fleet": (lambda: fill_pg(server.url(), args.rows),
                                     DatabaseConfig(url=server.url(), columns=columns,
                                                    geod_schema="geod")),
            }
            for name, (fill, database) in cases.items():
                config = replace(Config(), database=database,
                                 refresh=RefreshConfig(per_pass=args.rows))
                took: list[float] = []
                for _ in range(args.repeat):
                    fill()
                    summary, seconds = asyncio.run(one_pass(config, Instant(), upkeep=True))
                    took.append(seconds)
                print(f"{name}: upkeep of {args.rows} stale rows in "
                      f"{statistics.median(took):.2f} s (median of {args.repeat}), "
                      f"changed {summary.changed}, superseded {summary.superseded}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
