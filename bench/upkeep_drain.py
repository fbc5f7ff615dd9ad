"""Does refresh work ever delay the NULL rows? Time to drain a NULL backlog, with and without a
large stale set, side by side.

geod's real pass (`resolve.Pass` + `upkeep`), real SQLite file, real .mmdb file, real
`IpApiProvider` and `RateGovernor` against the fake ip-api server (tests/fake_ipapi.py, real HTTP
on loopback, 15 requests / 60 s) on a simulated clock, so rate-limit windows cost no wall time.
The table holds NULL rows (some the file answers, the rest only ip-api) and, in the second
column, a stale set: rows an older mmdb build answered (re-checked offline) and ip-api rows past
`after` (refreshed with spare quota). "Drained" is when the last NULL row is written, in
simulated seconds (the rate limit) and wall seconds (the work). Not a test: CI never runs it.

    PYTHONPATH=. .venv/bin/python -m bench.upkeep_drain
    PYTHONPATH=. .venv/bin/python -m bench.upkeep_drain --null-mmdb 2000 --null-ipapi 3000 \\
        --stale 200000 --passes 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from aiohttp import web

from geod.config import Config, load_config
from geod.ipapi import IpApiProvider
from geod.mmdb import MmdbProvider
from geod.negcache import NegativeCache
from geod.provider import make_session
from geod.ratelimit import RateGovernor
from geod.records import PassSummary, Update, WriteDeadline
from geod.resolve import Pass
from geod.sqlite_store import SqliteStore
from geod.upkeep import Cursor, OneWindow, for_pass
from tests.fake_ipapi import FakeIpApi
from tests.mmdb_files import geolite2_country, write_mmdb
from tests.sim import SimClock

NOW = "2026-11-29T12:00:00Z"
OLD = "2026-09-01T00:00:00Z"
OLD_BUILD, NEW_BUILD = 1_760_000_000, 1_764_000_000
SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
          "asn TEXT, org TEXT, cached_at TEXT, source TEXT)")


@dataclass(frozen=True)
class Result:
    stale: int
    null_rows: int
    drained_sim_s: float  # simulated seconds until the last NULL row was written
    drained_wall_s: float
    pass_sim_s: float  # the whole first pass, upkeep included
    pass_wall_s: float
    null_requests: int  # ip-api requests spent on NULL rows
    upkeep_requests: int  # ... and on upkeep, first pass
    late_drained_sim_s: float  # NULL rows the app adds before pass 2: drained within pass 2
    late_drained_wall_s: float
    summaries: list[PassSummary]


def _table(path: Path, null_mmdb: int, null_ipapi: int, stale: int, fresh: bool) -> None:
    """NULL rows in 10.x-free public space: 20.a.b.c the file knows, 30.a.b.c only ip-api."""
    def ip(prefix: int, n: int) -> str:
        return f"{prefix}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255 or 1}"

    rows = [(ip(20, i), None, None, None, None, None, None) for i in range(null_mmdb)]
    rows += [(ip(30, i + 1), None, None, None, None, None, None) for i in range(null_ipapi)]
    half = stale // 2
    # The control: as many rows, but checked recently and by the current build (no upkeep due).
    when, build = (NOW, NEW_BUILD) if fresh else (OLD, OLD_BUILD)
    rows += [(ip(21, i + 1), "DE", "Germany", "AS3320", "DTAG", when, f"mmdb:{build}")
             for i in range(half)]
    rows += [(ip(31, i + 1), "FR", "France", "AS1", "x", when, "ip-api")
             for i in range(stale - half)]
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        conn.executemany("INSERT OR IGNORE INTO geo_cache VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()


class Timed(SqliteStore):
    """The real store, noting when each NULL-row batch was written (sim and wall clock)."""

    clock: SimClock
    last_null: tuple[float, float] = (0.0, 0.0)

    async def write(self, updates: Sequence[Update], resolved_at: str,
                    deadline: WriteDeadline | None = None) -> int:
        written = await super().write(updates, resolved_at, deadline)
        self.last_null = (self.clock(), time.perf_counter())
        return written


async def _run(args: argparse.Namespace, stale: int, fresh: bool, work: Path) -> Result:
    db, mmdb = work / f"geo-{stale}-{fresh}.db", work / "c.mmdb"
    db.unlink(missing_ok=True)  # each run starts from the same table
    _table(db, args.null_mmdb, args.null_ipapi, stale, fresh)
    write_mmdb(mmdb, {"20.0.0.0/8": geolite2_country("US", "United States"),
                      "21.0.0.0/8": geolite2_country("DE", "Germany")}, build_epoch=NEW_BUILD)
    clock = SimClock()
    fake = FakeIpApi(limit=15, window=60, clock=clock)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # bound above
    (work / "geod.toml").write_text(
        f'[database]\npath = "{db}"\n[database.columns]\nsource = "source"\n'
        f'[resolve]\nproviders = ["mmdb", "ip-api"]\n[mmdb]\npath = "{mmdb}"\n'
        f'[ipapi]\nurl = "http://127.0.0.1:{port}/batch"\n')
    config: Config = load_config(work / "geod.toml")
    session = make_session()
    governor = RateGovernor(0, clock, clock.sleep)
    ipapi = IpApiProvider(config.ipapi, session, governor, sleep=clock.sleep)
    chain = [MmdbProvider.from_config(config), ipapi]
    negcache, upkeep_negcache, cursor = (NegativeCache(600, 86400, clock),
                                         NegativeCache(600, 86400, clock), Cursor())
    summaries: list[PassSummary] = []
    first: tuple[float, float, float, float, int] | None = None
    late = (0.0, 0.0)
    try:
        for index in range(args.passes):
            if index == 1:  # the app meets new addresses between passes
                _add_null(db, args.late_null)
            store = await Timed.open(config.database, config.source)
            assert isinstance(store, Timed)
            store.clock = clock
            sent_before = len(fake.sent_ips())
            start_sim, start_wall = clock(), time.perf_counter()
            try:
                spend = OneWindow(governor.spare, clock, governor.window or 60.0)  # as the daemon
                upkeep = for_pass(config, store, chain, upkeep_negcache, cursor, spend,
                                  lambda: NOW)
                summary = await Pass(store, chain, negcache, clock=clock, now_utc=lambda: NOW,
                                     upkeep=upkeep).run()
            finally:
                await store.close()
            summaries.append(summary)
            if index == 1:
                late = (store.last_null[0] - start_sim, store.last_null[1] - start_wall)
            if index == 0:
                drained = store.last_null
                null_requests = -(-args.null_ipapi // 100)
                first = (drained[0] - start_sim, drained[1] - start_wall, clock() - start_sim,
                         time.perf_counter() - start_wall,
                         (len(fake.sent_ips()) - sent_before) // 100 - null_requests)
            await clock.sleep(600)  # the daemon's interval
    finally:
        chain[0].close()  # type: ignore[attr-defined]  # the mmdb provider holds its file
        await session.close()
        await runner.cleanup()
    assert first is not None
    return Result(stale, args.null_mmdb + args.null_ipapi, round(first[0], 1),
                  round(first[1], 3), round(first[2], 1), round(first[3], 3),
                  -(-args.null_ipapi // 100), max(first[4], 0), round(late[0], 1),
                  round(late[1], 3), summaries)


def _add_null(db: Path, count: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT OR IGNORE INTO geo_cache (ip) VALUES (?)",
                         [(f"40.{i >> 8 & 255}.{i & 255}.1",) for i in range(count)])
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-mmdb", type=int, default=2000)
    parser.add_argument("--null-ipapi", type=int, default=3000)
    parser.add_argument("--stale", type=int, default=200_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="runs per column (median wall)")
    parser.add_argument("--late-null", type=int, default=1500,
                        help="NULL rows (ip-api only) added before the second pass")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    with tempfile.TemporaryDirectory() as folder:
        results = []
        for stale, fresh in ((0, False), (args.stale, True), (args.stale, False)):
            runs = [asyncio.run(_run(args, stale, fresh, Path(folder)))
                    for _ in range(args.repeat)]
            # Wall figures: the median run (a shared machine); simulated ones are exact.
            walls = {name: statistics.median(getattr(r, name) for r in runs)
                     for name in ("drained_wall_s", "pass_wall_s", "late_drained_wall_s")}
            results.append(replace(runs[0], **walls))
    print(f"NULL backlog: {args.null_mmdb} rows the mmdb file answers + {args.null_ipapi} only "
          f"ip-api can (15 requests / 60 s); chain mmdb, ip-api; per_pass 10000")
    print(f"{'':40}{'no other rows':>16}{f'{args.stale} fresh':>16}{f'{args.stale} stale':>16}")
    rows = [
        ("NULL rows drained (sim s)", "drained_sim_s"),
        ("NULL rows drained (wall s)", "drained_wall_s"),
        ("first pass (sim s)", "pass_sim_s"),
        ("first pass (wall s)", "pass_wall_s"),
        ("ip-api requests for NULL rows", "null_requests"),
        ("ip-api requests for upkeep", "upkeep_requests"),
        (f"{args.late_null} new NULL rows, pass 2 (sim s)", "late_drained_sim_s"),
        (f"{args.late_null} new NULL rows, pass 2 (wall s)", "late_drained_wall_s"),
    ]
    for label, name in rows:
        print(f"{label:40}" + "".join(f"{getattr(r, name):>16}" for r in results))
    for result in results:
        for index, summary in enumerate(result.summaries):
            line = replace(summary, duration_s=0).line()
            print(f"rows={result.stale} pass {index + 1}: {line}")


if __name__ == "__main__":
    main()
