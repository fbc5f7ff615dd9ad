"""How long the app's own writes wait while geod writes to the same PostgreSQL table.

Starts the tests' throwaway PostgreSQL 15 (tests/pg.py: also timed, START times), fills a
geo_cache table of ROWS NULL rows, then runs WRITERS geod stores (PgStore, one connection each,
as a fleet of instances would) writing 100-row batches over their share of the rows, while an
app process updates random rows of the same table one autocommit statement at a time and times
each. The same app run alone gives the baseline. The server logs every lock wait over 1 ms
(log_lock_waits, deadlock_timeout = 1ms), which gives the app's waits on geod's locks apart from
CPU contention on this machine. Not a test: CI never runs it.

    python -m bench.pg_app_wait                      # 100,000 rows, 4 writers
    python -m bench.pg_app_wait --rows 20000 --writers 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from geod.pg_store import PgStore
from geod.records import Geo, Update
from tests.pg import start_server
from tests.pg_helpers import PG_SCHEMA, pg_config

_ACQUIRED = re.compile(r"acquired \w+ on \w+ .*? after ([0-9.]+) ms")
GEO = Geo("US", "United States", "AS15169", "Google LLC")


def app_writer(url: str, rows: int, stop: Any, out: Any) -> None:
    """The app: update a random row's org, one statement at a time, timing each, until stop."""
    rng = random.Random(1)
    waits: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            ip = _ip(rng.randrange(rows))
            started = time.perf_counter()
            conn.execute("UPDATE geo_cache SET org = 'app' WHERE ip = %s", (ip,))
            waits.append(time.perf_counter() - started)
    out.put(waits)


async def geod_writer(url: str, share: list[str]) -> None:
    store = await PgStore.open(pg_config(url), "bench")
    try:
        for start in range(0, len(share), 100):
            batch = share[start:start + 100]
            await store.write([Update(ip, GEO) for ip in batch], "2026-11-29T10:00:00Z")
    finally:
        await store.close()


def _ip(i: int) -> str:
    return f"11.{i // 65536}.{i // 256 % 256}.{i % 256}"


def measure(url: str, rows: int, writers: int) -> tuple[list[float], float]:
    """App waits (s) while `writers` geod stores fill the table; 0 writers = for 2 s alone."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS geo_cache")
        conn.execute(PG_SCHEMA)  # type: ignore[arg-type]
        with conn.cursor().copy("COPY geo_cache (ip) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((_ip(i),))
        conn.execute("VACUUM ANALYZE geo_cache")
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    app = ctx.Process(target=app_writer, args=(url, rows, stop, out))
    app.start()
    time.sleep(1.0)  # the app is connected and writing before geod starts
    started = time.perf_counter()
    if writers:
        keys = [_ip(i) for i in range(rows)]
        random.Random(2).shuffle(keys)

        async def fleet() -> None:
            await asyncio.gather(*(geod_writer(url, keys[k::writers]) for k in range(writers)))

        asyncio.run(fleet())
    else:
        time.sleep(2.0)
    took = time.perf_counter() - started
    stop.set()
    waits: list[float] = out.get()
    app.join()
    return waits, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()

    starts = []
    for _ in range(args.starts):
        server = start_server()
        starts.append(server.startup_s)
        server.stop()
    print(f"server start-up (initdb + start): median {statistics.median(starts):.2f} s, "
          f"max {max(starts):.2f} s over {len(starts)}")

    server = start_server()
    try:
        url = server.url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_lock_waits = on")
            conn.execute("ALTER SYSTEM SET deadlock_timeout = '1ms'")
            conn.execute("SELECT pg_reload_conf()")
        for writers in (0, args.writers):
            waits, took = measure(url, args.rows, writers)
            waits.sort()
            p99 = waits[int(len(waits) * 0.99)]
            what = f"{writers} geod writers, {args.rows} rows in {took:.1f} s" if writers \
                else "app alone"
            print(f"{what}: app updates {len(waits)}, median {statistics.median(waits) * 1e3:.2f}"
                  f" ms, p99 {p99 * 1e3:.2f} ms, max {waits[-1] * 1e3:.2f} ms")
        print(lock_waits_line(server.root))
    finally:
        server.stop()


def lock_waits_line(root: Path) -> str:
    """The server log's lock waits over 1 ms (`log_lock_waits`, `deadlock_timeout = 1ms`)."""
    log = (root / "server.log").read_text(encoding="utf-8", errors="replace")
    lock_waits = [float(ms) for ms in _ACQUIRED.findall(log)]
    return (f"lock waits over 1 ms logged by the server: {len(lock_waits)}, longest "
            f"{max(lock_waits, default=0.0):.1f} ms")


if __name__ == "__main__":
    main()
