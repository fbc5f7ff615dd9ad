"""A fleet of real `geod once` processes draining one PostgreSQL table, against the fake ip-api.

Starts the tests' throwaway PostgreSQL 15 and the fake ip-api as a process with one quota per
client address (`--per-client`, as ip-api.com keys its limit); instance i binds 127.0.0.(10+i)
(`[ipapi] source_address`), so each has its own quota, as one host per instance would. The window
is compressed (`--window`, default 2 s instead of 60 s; limit 15 as on ip-api.com) so a run takes
seconds; throughput scales with it. Reports per N: wall time until every row is written
(drain: what an operator sees) and aggregate rows/s against N x one instance's; the steady
rate beside it (each instance's rows over its own first-to-last answered request, summed:
start-up and the last partial window left out); when the first and the last instance's first
request came (start-up); addresses asked more than once, 429s and bans, rows written more than
once (a trigger counts fills); lease rows written (one per row is the floor; more is claim
contention); the load average (the machine may be shared). `--kill` kills -9
one of N instances mid-run and times the take-over; `--app` runs the app writer beside N
instances and reports its longest wait (and the server's logged lock waits over 1 ms). Not a
test: CI never runs it.

    python -m bench.fleet --rows 20000 --instances 1 2 4
    python -m bench.fleet --rows 20000 --instances 4 --kill
    python -m bench.fleet --rows 20000 --instances 4 --app
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.pg_app_wait import _ip, app_writer, lock_waits_line
from tests.pg import start_server
from tests.pg_helpers import PG_SCHEMA, WRITES_TRIGGER
from tests.proc import REPO, FakeServer, _base_env, start_fake_ipapi


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS geod CASCADE")
        conn.execute("DROP TABLE IF EXISTS geo_cache")
        conn.execute("DROP FUNCTION IF EXISTS count_fill")
        conn.execute(PG_SCHEMA)  # type: ignore[arg-type]
        conn.execute(WRITES_TRIGGER)  # type: ignore[arg-type]
        with conn.cursor().copy("COPY geo_cache (ip) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((_ip(i),))
        conn.execute("VACUUM ANALYZE geo_cache")


def config(path: Path, url: str, fake: FakeServer, source: str, lease_ttl: float) -> Path:
    path.write_text(f"""\
[database]
url = "{url}"
geod_schema = "geod"
lease_ttl = {lease_ttl}

[ipapi]
url = "{fake.batch_url}"
source_address = "{source}"

[log]
level = "warning"
format = "json"
""", encoding="utf-8")
    return path


def run(url: str, fake: FakeServer, work: Path, n: int, lease_ttl: float,
        kill: bool) -> dict[str, float]:
    """Start n instances, wait until the table is drained; figures of the run."""
    procs = []
    started = time.monotonic()  # the fake stamps requests with this clock (CLOCK_MONOTONIC)
    for i in range(n):
        cfg = config(work / f"geod{i}.toml", url, fake, f"127.0.0.{10 + i}", lease_ttl)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(cfg), "once"], cwd=REPO,
            env=_base_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    figures = {"started": started, "takeover_s": 0.0, "dead_rows": 0.0}
    if kill:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:  # mid-run: every instance holds a claim
                try:
                    (holders,) = conn.execute(
                        "SELECT count(DISTINCT owner) FROM geod.lease").fetchone() or (0,)
                except psycopg.errors.UndefinedTable:  # no instance is up yet
                    holders = 0
                if holders >= n:
                    break
                time.sleep(0.05)
            time.sleep(1.0)
            procs[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            before = dict(conn.execute("SELECT address, expires_at FROM geod.lease").fetchall())
            time.sleep(lease_ttl / 2)  # the living renew every third of lease_ttl
            after = dict(conn.execute("SELECT address, expires_at FROM geod.lease").fetchall())
            # The dead one's leases are those nobody renewed (or took over) meanwhile.
            dead = [a for a, at in before.items() if after.get(a) == at]
            figures["dead_rows"] = len(dead)
            while any(p.poll() is None for p in procs[1:]):  # none waits for a lease
                (left,) = conn.execute(
                    "SELECT count(*) FROM geo_cache WHERE country_code IS NULL "
                    "AND ip = ANY(%s)", (dead,)).fetchone() or (0,)
                if not left:
                    figures["takeover_s"] = time.monotonic() - killed_at
                    break
                time.sleep(0.05)
            else:
                figures["takeover_s"] = float("nan")  # the survivors ended first
    with psycopg.connect(url, autocommit=True) as conn:
        while any(p.poll() is None for p in procs[1 if kill else 0:]) and conn.execute(
                "SELECT EXISTS (SELECT 1 FROM geo_cache WHERE country_code IS NULL)"
        ).fetchone() == (True,):  # cheap while rows are left: stops at the first NULL one
            time.sleep(0.05)
    figures["drained_s"] = time.monotonic() - started
    for proc in procs:
        proc.wait(timeout=300)
    figures["exited_s"] = time.monotonic() - started
    return figures


def summary(url: str, fake: FakeServer, started: float) -> dict[str, float]:
    """Counts of the run, and where its time went (the fake's clock is the bench's)."""
    answered = [r for r in fake.requests() if r["path"] == "/batch" and r["status"] == 200]
    asked = collections.Counter(ip for r in answered for ip in r["ips"])
    statuses = collections.Counter(r["status"] for r in fake.requests())
    with psycopg.connect(url, autocommit=True) as conn:
        twice = conn.execute("SELECT count(*) FROM geo_cache WHERE writes > 1").fetchone()
        left = conn.execute("SELECT count(*) FROM geo_cache WHERE country_code IS NULL"
                            ).fetchone()
        # Claim contention: lease rows written, per row of the table (the processes have
        # exited, so their statistics are flushed).
        leases = conn.execute("SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
                              "WHERE schemaname = 'geod' AND relname = 'lease'").fetchone()
    times: dict[str, list[float]] = collections.defaultdict(list)
    rows: collections.Counter[str] = collections.Counter()
    for r in answered:
        times[r["tenant"]].append(r["time"])
        rows[r["tenant"]] += len(r["ips"])
    spans = {t: max(ts) - min(ts) for t, ts in times.items() if len(ts) > 1}
    return {
        "asked": sum(asked.values()), "asked_twice": sum(1 for c in asked.values() if c > 1),
        "http_429": statuses[429], "http_403": statuses[403],
        "written_twice": int((twice or (0,))[0]), "left_null": int((left or (0,))[0]),
        "leases_written": int((leases or (0,))[0]),
        # Start-up: from spawning the processes to an instance's first answered request.
        "first_request_s": min((min(ts) for ts in times.values()), default=0.0) - started,
        "last_first_request_s": max((min(ts) for ts in times.values()), default=0.0) - started,
        "last_request_s": max((max(ts) for ts in times.values()), default=0.0) - started,
        # The longest instance's span between its first and last answered request.
        "busy_s": max(spans.values(), default=0.0),
        # Steady state: each instance's rows over its own first-to-last span, summed.
        "steady_rows_s": sum(rows[t] / span for t, span in spans.items() if span > 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--app", action="store_true")
    args = parser.parse_args()
    server = start_server()
    base: float | None = None
    steady_base: float | None = None
    try:
        url = server.url()
        if args.app:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET log_lock_waits = on")
                conn.execute("ALTER SYSTEM SET deadlock_timeout = '1ms'")
                conn.execute("SELECT pg_reload_conf()")
        for n in args.instances:
            fill(url, args.rows)
            with tempfile.TemporaryDirectory() as tmp, \
                    start_fake_ipapi(Path(tmp), window=args.window, per_client=True) as fake:
                app = None
                if args.app:
                    ctx = multiprocessing.get_context("spawn")
                    stop, out = ctx.Event(), ctx.Queue()
                    app = ctx.Process(target=app_writer, args=(url, args.rows, stop, out))
                    app.start()
                    time.sleep(1.0)
                figures = run(url, fake, Path(tmp), n, args.lease_ttl, args.kill)
                if app is not None:
                    stop.set()
                    waits = sorted(out.get())
                    app.join()
                counts = summary(url, fake, figures["started"])
            rate = args.rows / figures["drained_s"]
            steady = counts["steady_rows_s"]
            if n == 1:
                base, steady_base = rate, steady
            load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
            line = (f"[load {load}] N={n}: {args.rows} rows drained in "
                    f"{figures['drained_s']:.1f} s "
                    f"({rate:.0f} rows/s"
                    + (f", {rate / (n * base):.2f} x N x one instance's" if base else "")
                    + f"), all exited at {figures['exited_s']:.1f} s; "
                    f"steady {steady:.0f} rows/s"
                    + (f" ({steady / (n * steady_base):.2f})" if steady_base else "")
                    + f"; first request at {counts['first_request_s']:.1f} s, every "
                    f"instance's by {counts['last_first_request_s']:.1f} s, last at "
                    f"{counts['last_request_s']:.1f} s; longest first to last request "
                    f"{counts['busy_s']:.1f} s; asked {counts['asked']}, "
                    f"asked twice {counts['asked_twice']}, 429s {counts['http_429']}, "
                    f"403s {counts['http_403']}, written twice {counts['written_twice']}, "
                    f"left NULL {counts['left_null']}; lease rows written "
                    f"{counts['leases_written']}")
            if args.kill:
                took = figures["takeover_s"]
                line += (f"; kill -9 of one instance holding {figures['dead_rows']:.0f} rows: "
                         + (f"all of them written {took:.1f} s after the kill" if took == took
                            else "NOT all written before the others ended")
                         + f" (lease_ttl {args.lease_ttl} s, window {args.window} s)")
            if app is not None:
                p99 = waits[int(len(waits) * 0.99)]
                line += (f"; app writer: {len(waits)} updates, max wait "
                         f"{waits[-1] * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
            print(line, flush=True)
        if args.app:
            print(lock_waits_line(server.root))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
