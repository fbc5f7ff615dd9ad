"""Wall-clock latency of a small pass: `geod once` over N batches that fit in one window.

A real `geod once` process against the fake ip-api server process (15 requests / 60 s), a fresh
table of N x 100 public addresses; reports the pass's `duration_s` and, from the server's log,
first request to last request. What `systemctl reload geod` with a few hundred holes costs.

    PYTHONPATH=. python -m bench.burst_real            # 8 batches, 5 runs
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.proc import run_geod, start_fake_ipapi, write_geod_config


def one_run(batches: int, tmp: Path) -> tuple[float, float, float]:
    db = tmp / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT,"
                     " country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)",
                         [(f"8.8.{i // 250}.{i % 250 + 1}",) for i in range(batches * 100)])
    conn.close()
    with start_fake_ipapi(tmp) as fake:
        cfg = write_geod_config(tmp / "geod.toml", db=db, url=fake.batch_url)
        started = time.monotonic()
        result = run_geod("--config", str(cfg), "once", timeout=300)
        wall = time.monotonic() - started
        times = [r["time"] for r in fake.requests() if r["path"] == "/batch"]
    fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
    if len(times) != batches or "duration_s" not in fields:
        raise SystemExit(f"expected {batches} requests, got {len(times)}: {result.stderr[-500:]}")
    return float(fields["duration_s"]), times[-1] - times[0], wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_run(args.batches, Path(tmp)))
    for name, index in (("pass duration_s", 0), ("first to last request", 1),
                        ("process wall", 2)):
        values = [row[index] for row in rows]
        print(f"{name:22} median {statistics.median(values):7.3f} s  worst {max(values):7.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
