"""What one offline pass costs: wall time and peak RSS of `geod once` over a large table.

Builds (once, cached under bench/out/) a geo_cache table of ROWS rows of which UNRESOLVED have a
NULL country, scattered through the table as an app leaves them, then times `geod once` with the
offline `rir` provider in a child process on a fresh copy, REPEAT times. Peak RSS is the child's
own (os.wait4), so runs do not mask each other. Not a test: CI never runs it.

    python bench/pass_cost.py                       # the scaling matrix
    python bench/pass_cost.py --rows 1000000 --unresolved 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
MATRIX = [(100_000, 10_000), (100_000, 100_000), (1_000_000, 10_000), (1_000_000, 100_000)]
TARGET_S, TARGET_MB = 5.0, 100.0
SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT)"
)
CONFIG = """\
[database]
path = "{db}"
[resolve]
providers = ["rir"]
[log]
level = "warning"
format = "json"
"""


@dataclass(frozen=True)
class Run:
    wall_s: float  # the whole `geod once` process: interpreter, imports, pass
    pass_s: float  # the pass alone, from the summary line
    rss_mb: float  # the child's peak resident set
    resolved: int


def _addresses(rng: random.Random, count: int) -> list[str]:
    """Distinct addresses as an app would store them: mostly public IPv4, 10 % IPv6, and 1 %
    private or invalid strings that must be recognised and skipped."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        roll = rng.random()
        if roll < 0.01:
            text = rng.choice([f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                               f"192.168.{rng.randrange(256)}.{rng.randrange(256)}",
                               f"bogus-{rng.randrange(10**9)}"])
        elif roll < 0.11:
            text = str(ipaddress.IPv6Address((0x2A00 << 112) | rng.getrandbits(108)))
        else:
            text = str(ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24)))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build(rows: int, unresolved: int) -> Path:
    """The template table for (rows, unresolved), built once and kept in bench/out/."""
    path = OUT / f"table-{rows}-{unresolved}.db"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(rows * 31 + unresolved)
    ips = _addresses(rng, rows)
    holes = set(rng.sample(range(rows), unresolved))
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    conn = sqlite3.connect(partial)
    try:
        with conn:
            conn.execute(SCHEMA)
            conn.executemany(
                "INSERT INTO geo_cache VALUES (?, ?, ?, ?, ?, ?)",
                ((ip, None, None, None, None, None) if i in holes
                 else (ip, "US", "United States", "AS15169", "Example", "2026-01-01T00:00:00Z")
                 for i, ip in enumerate(ips)),
            )
    finally:
        conn.close()
    partial.rename(path)
    return path


def run_once(template: Path) -> Run:
    """`geod once` on a fresh copy of `template`, in a child process we wait for ourselves."""
    work = OUT / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "geo.db"
    shutil.copyfile(template, db)
    # Start with nothing dirty in the page cache: otherwise the pass's commits (their fsyncs)
    # pay for writing out the fresh 70 MB copy and the last run's files, which an app's
    # long-lived database never makes anyone do.
    os.sync()
    config = work / "bench.toml"
    config.write_text(CONFIG.format(db=db), encoding="utf-8")
    stdout, stderr = work / "stdout", work / "stderr"
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "geod", "once", "--config", str(config)],
                                 stdout=out_file, stderr=err_file)
        # wait4, not wait: it reports this child's own peak RSS, not the largest child so far.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"geod once failed ({child.returncode}): {stderr.read_text().strip()}")
    out = stdout.read_text()
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return Run(wall, float(fields["duration_s"]), usage.ru_maxrss / 1024, int(fields["resolved"]))


def measure(rows: int, unresolved: int, repeat: int) -> list[Run]:
    # Built in a child: a fork of a parent holding a million strings would start each timed
    # child with the parent's RSS, and Linux keeps that peak across exec.
    subprocess.run([sys.executable, __file__, "--build", str(rows), str(unresolved)], check=True)
    template = OUT / f"table-{rows}-{unresolved}.db"
    return [run_once(template) for _ in range(repeat)]


def _row(rows: int, unresolved: int, runs: list[Run]) -> str:
    wall = statistics.median(run.wall_s for run in runs)
    pass_s = statistics.median(run.pass_s for run in runs)
    worst = max(run.wall_s for run in runs)
    rss = max(run.rss_mb for run in runs)
    return (f"| {rows:>9,} | {unresolved:>7,} | {runs[0].resolved:>7,} | {pass_s:6.2f} | "
            f"{wall:6.2f} | {worst:7.2f} | {rss:6.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="table size (with --unresolved: one case)")
    parser.add_argument("--unresolved", type=int, help="NULL-country rows among them")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument("--build", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(*args.build)
        return 0
    cases = [(args.rows, args.unresolved)] if args.rows and args.unresolved else MATRIX
    print("| rows      | NULL    | written | pass s | wall s | worst s | RSS MB |")
    print("|----------:|--------:|--------:|-------:|-------:|--------:|-------:|")
    verdict: bool | None = None
    for rows, unresolved in cases:
        runs = measure(rows, unresolved, args.repeat)
        print(_row(rows, unresolved, runs), flush=True)
        if (rows, unresolved) == (1_000_000, 100_000):
            wall = max(run.wall_s for run in runs)
            verdict = wall <= TARGET_S and max(run.rss_mb for run in runs) <= TARGET_MB
    if verdict is not None:
        print(f"\ntarget (100,000 NULL in 1,000,000: every run <= {TARGET_S:g} s wall and "
              f"<= {TARGET_MB:g} MB): {'met' if verdict else 'MISSED'}")
    return 0 if verdict in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
