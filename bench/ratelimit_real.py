"""Rate-limit benchmark in wall-clock time: real `geod once` processes against the fake server.

Every scenario gets its own fake ip-api server process (`tests/fake_ipapi.py`, 15 requests per
window by default) and a client working through a backlog bigger than the run can finish:
`geod once` (a real subprocess, `share = "auto"` or `"off"`, stopped with SIGTERM at the
horizon), or one of the two common alternatives written here (a fixed pause of window / limit
between batches; retry on 429 with exponential back-off, headers ignored). Other programs on
the same quota ("tenants", a simulated dashboard in this process) send 2-6 one-address requests
per window at random moments with an `X-Tenant` header. All scenarios run at once, so the
headline run takes about `windows x window` plus start-up.

    python -m bench.ratelimit_real --json bench/out/ratelimit_real.json      # 6 x 60 s, ~7 min
    python -m bench.ratelimit_real --window 10 --windows 6                   # quick, ~1.5 min

Only the server's complete windows count (they open at the first request). Throughput is
geod's served requests over what the quota allowed in them, less what the others were served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.fake_ipapi import TENANT_HEADER, RecordedRequest
from tests.proc import REPO, FakeServer, _base_env, start_fake_ipapi
from tests.sim import window_stats

BATCH = 100
TAIL_S = 5.0  # run this much past `windows x window`, so the last window can complete
CLIENTS = ("geod share=auto", "geod share=off", "fixed pause", "retry on 429")
TENANT_SETS: dict[str, list[tuple[str, int, int]]] = {
    "alone": [],
    "one other, 2-6/window": [("dash", 2, 6)],
    "two others, 2-6/window each": [("dash", 2, 6), ("cron", 2, 6)],
}


def backlog(n: int) -> list[str]:
    """`n` distinct public addresses (8.0.0.0/8 is all public)."""
    return [f"8.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, n + 1)]


def make_backlog_db(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
            "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)"
        )
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [(ip,) for ip in backlog(rows)])
    conn.close()


# -- clients ------------------------------------------------------------------------------------

Client = Callable[[str, Path, float], Awaitable[dict[str, Any]]]


def geod_client(share: str) -> Client:
    async def run(url: str, workdir: Path, deadline: float) -> dict[str, Any]:
        config = workdir / "geod.toml"
        config.write_text(
            f'[database]\npath = "geo.db"\n\n[ipapi]\nurl = "{url}"\nshare = "{share}"\n'
            f'timeout = 10\n\n[log]\nformat = "json"\n',
            encoding="utf-8",
        )
        # A bench script, not the daemon: a blocking open of a local log file is fine here.
        with open(workdir / "geod.stderr", "w", encoding="utf-8") as stderr:  # noqa: ASYNC230
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "geod", "--config", str(config), "once",
                cwd=REPO, env=_base_env(None), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
            try:
                await asyncio.wait_for(proc.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 15)
            assert proc.stdout is not None
            out = (await proc.stdout.read()).decode()
        with sqlite3.connect(workdir / "geo.db") as conn:
            [(written,)] = conn.execute(
                "SELECT COUNT(*) FROM geo_cache WHERE country_code IS NOT NULL"
            ).fetchall()
        conn.close()
        return {"exit_code": proc.returncode, "summary": out.strip(), "rows_written": written}

    return run


def fixed_pause(limit: int, window: float) -> Client:
    """The usual loop: post a batch, sleep window / limit, ignore headers; a 429 loses it."""

    async def run(url: str, workdir: Path, deadline: float) -> dict[str, Any]:
        ips = backlog(1_000_000)
        async with aiohttp.ClientSession() as session:
            for start in range(0, len(ips), BATCH):
                if time.monotonic() >= deadline:
                    break
                async with session.post(url, json=ips[start : start + BATCH]) as response:
                    await response.read()
                await asyncio.sleep(window / limit)
        return {}

    return run


async def retry_on_429(url: str, workdir: Path, deadline: float) -> dict[str, Any]:
    """Retry each 429 after 1 s, doubling to 60 s; headers ignored; stops once banned (403)."""
    ips = backlog(1_000_000)
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(ips), BATCH):
            delay = 1.0
            while time.monotonic() < deadline:
                async with session.post(url, json=ips[start : start + BATCH]) as response:
                    await response.read()
                    status = response.status
                if status == 403:
                    return {"stopped": "banned"}
                if status != 429:
                    break
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 60.0)
            else:
                return {}
    return {}


async def tenant(url: str, name: str, low: int, high: int, t0: float, window: float,
                 deadline: float, rng: random.Random) -> None:
    """Another program on the host: `low..high` one-address look-ups per window, at random."""
    moments: list[float] = []
    for k in range(int((deadline - t0) / window) + 1):
        moments += [t0 + k * window + rng.uniform(0, window) for _ in range(rng.randint(low, high))]
    async with aiohttp.ClientSession(headers={TENANT_HEADER: name}) as session:
        for moment in sorted(moments):
            if moment >= deadline:
                return
            await asyncio.sleep(max(moment - time.monotonic(), 0.0))
            async with session.post(url, json=[f"1.1.{rng.randrange(256)}.1"]) as response:
                await response.read()


# -- one scenario -------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    tenants: str
    windows: int
    geod_served: int
    geod_429: int
    geod_banned: bool
    others_sent: int
    others_429: int
    capacity: float  # requests the quota allowed geod in the complete windows
    fraction: float  # geod_served / capacity: of the ceiling alone, of what the others left
    others_429_rate: float
    ips_per_s: float  # geod's resolved addresses per second over the complete windows
    ceiling_ips_per_s: float  # what the quota allowed geod, less the others' share
    detail: dict[str, Any] = field(default_factory=dict)
    series: list[dict[str, float]] = field(default_factory=list)  # see `server_windows`
    # Every request: [seconds after the first, tenant, status], to see where a refusal fell.
    requests: list[list[Any]] = field(default_factory=list)


def server_windows(requests: list[RecordedRequest], window: float, t_first: float,
                   horizon: float) -> list[dict[str, float]]:
    """The server's complete windows as it counted them (each opens at the first request after
    the last one ended): start (s after the first request), geod's and the others' served."""
    rows: list[dict[str, float]] = []
    for r in requests:
        if not rows or r.time >= t_first + rows[-1]["start"] + window:
            rows.append({"start": round(r.time - t_first, 3), "geod": 0, "others": 0})
        if r.status == 200:
            rows[-1]["geod" if r.tenant == "geod" else "others"] += 1
    return [w for w in rows if t_first + w["start"] + window <= horizon]


async def scenario(client_name: str, client: Client, tenant_label: str, server: FakeServer,
                   workdir: Path, *, limit: int, window: float, windows: int,
                   seed: int) -> Result:
    t0 = time.monotonic()
    deadline = t0 + windows * window + TAIL_S
    rng = random.Random(f"{seed}/{tenant_label}")  # the same demand for every client
    others = [
        asyncio.create_task(tenant(server.batch_url, name, low, high, t0, window, deadline, rng))
        for name, low, high in TENANT_SETS[tenant_label]
    ]
    detail = await client(server.batch_url, workdir, deadline)
    await asyncio.gather(*others)
    records = [
        RecordedRequest(**r) for r in server.requests()
        if r["method"] == "POST" and r["path"] == "/batch"
    ]  # fmt: skip
    stats = window_stats(records, window, deadline)
    capacity = stats.capacity(limit, window)
    banned = any(r.tenant == "geod" and r.status == 403 for r in records)
    t_first = records[0].time if records else t0
    return Result(
        client=client_name,
        tenants=tenant_label,
        windows=stats.windows,
        geod_served=stats.geod_served,
        geod_429=stats.geod_429,
        geod_banned=banned,
        others_sent=stats.others_sent,
        others_429=stats.others_429,
        capacity=round(capacity, 1),
        fraction=round(stats.fraction(limit, window), 4),
        others_429_rate=round(stats.others_429 / stats.others_sent, 4) if stats.others_sent
        else 0.0,
        ips_per_s=round(stats.geod_served * BATCH / stats.span, 2) if stats.span else 0.0,
        ceiling_ips_per_s=round(capacity * BATCH / stats.span, 2) if stats.span else 0.0,
        detail=detail,
        series=server_windows(records, window, t_first, deadline),
        requests=[[round(r.time - t_first, 3), r.tenant, r.status] for r in records],
    )


def clients(limit: int, window: float) -> dict[str, Client]:
    return {
        "geod share=auto": geod_client("auto"),
        "geod share=off": geod_client("off"),
        "fixed pause": fixed_pause(limit, window),
        "retry on 429": retry_on_429,
    }


async def run_all(args: argparse.Namespace, root: Path) -> list[Result]:
    rows = int(BATCH * args.limit * (args.windows + 2) * 1.2)
    template = root / "backlog.db"
    make_backlog_db(template, rows)
    chosen = [c for c in CLIENTS if not args.clients or c in args.clients]
    with contextlib.ExitStack() as stack:
        jobs = []
        for label in TENANT_SETS:
            for name in chosen:
                workdir = root / f"{label}-{name}".replace(" ", "_").replace("/", "_")
                workdir.mkdir()
                if name.startswith("geod"):
                    (workdir / "geo.db").write_bytes(template.read_bytes())
                server = stack.enter_context(
                    start_fake_ipapi(workdir, limit=args.limit, window=args.window)
                )
                jobs.append(scenario(name, clients(args.limit, args.window)[name], label,
                                     server, workdir, limit=args.limit, window=args.window,
                                     windows=args.windows, seed=args.seed))
        return list(await asyncio.gather(*jobs))


# -- report -------------------------------------------------------------------------------------


def steps(series: list[dict[str, float]], window: float,
          value: Callable[[dict[str, float]], float]) -> tuple[list[float], list[float]]:
    """Line points (minutes, value) drawing each window flat; a gap between windows is 0."""
    xs: list[float] = []
    ys: list[float] = []
    for w in series:
        start, end = w["start"] / 60, (w["start"] + window) / 60
        # A gap the client left between windows served nothing; the 0.1 s after each reset
        # that a header-obeying client waits would only draw noise, so gaps under a second
        # are not shown.
        if xs and start > xs[-1] + 1 / 60:
            xs += [xs[-1], start]
            ys += [0.0, 0.0]
        xs += [start, end]
        ys += [value(w), value(w)]
    return xs, ys


def plot(results: list[Result], path: Path, limit: int, window: float) -> None:
    import matplotlib  # bench extra only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Widths shrink in drawing order, so clients on the same line stay visible as nested bands.
    styles = {"geod share=auto": ("tab:blue", 5.0), "geod share=off": ("tab:cyan", 3.0),
              "fixed pause": ("tab:orange", 1.8), "retry on 429": ("tab:red", 1.0)}
    ceiling = limit * BATCH / window
    fig, axes = plt.subplots(len(TENANT_SETS), 1, figsize=(10, 3.2 * len(TENANT_SETS)),
                             sharex=True, sharey=True)
    for ax, label in zip(axes, TENANT_SETS, strict=True):
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1,
                   label=f"ceiling {ceiling:g} IPs/s")
        for r in sorted(results, key=lambda r: CLIENTS.index(r.client)):
            if r.tenants != label or not r.series:
                continue
            xs, ys = steps(r.series, window, lambda w: w["geod"] * BATCH / window)
            colour, width = styles[r.client]
            ax.plot(xs, ys, color=colour, linewidth=width,
                    label=f"{r.client}: {r.fraction:.3f}" + (" BANNED" if r.geod_banned else ""))
            if r.client == "geod share=auto" and label != "alone":
                xs, left = steps(r.series, window,
                                 lambda w: (limit - w["others"]) * BATCH / window)
                ax.plot(xs, left, color="gray", linestyle=":", linewidth=1.5,
                        label="ceiling less the others (auto run)")
        ax.set_title(f"{label}: addresses resolved per second in each server window")
        ax.set_ylabel("IPs / s")
        ax.set_ylim(0, ceiling * 1.2)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8, ncol=2)
    axes[-1].set_xlabel("minutes since the first request")
    fig.suptitle(f"wall clock, {limit} requests x {BATCH} IPs / {window:g} s "
                 "(legend: fraction of ceiling or of what the others left)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=15)
    parser.add_argument("--window", type=float, default=60.0, help="seconds (>= 10)")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client", dest="clients", action="append", choices=CLIENTS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, default=Path("bench/ratelimit_real.png"))
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only redraw the plot from a previous run's --json output")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        plot([Result(**r) for r in saved["scenarios"]], args.plot, saved["limit"],
             saved["window"])
        return 0
    if args.window < 10:
        parser.error("--window below 10 s measures X-Ttl's rounding, not the client")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geod-bench-") as tmp:
        results = asyncio.run(run_all(args, Path(tmp)))
    wall = time.monotonic() - started
    for r in results:
        print(f"{r.tenants:28} {r.client:16} windows={r.windows} fraction={r.fraction:.3f} "
              f"ips/s={r.ips_per_s:6.2f}/{r.ceiling_ips_per_s:6.2f} geod_429={r.geod_429:3} "
              f"banned={r.geod_banned} others_429={r.others_429}/{r.others_sent} "
              f"({r.others_429_rate:.1%})", flush=True)
    print(f"wall time {wall:.0f} s")
    if args.plot:
        plot(results, args.plot, args.limit, args.window)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"limit": args.limit, "window": args.window, "windows": args.windows,
             "seed": args.seed, "wall_s": round(wall, 1),
             "scenarios": [asdict(r) for r in results]},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
