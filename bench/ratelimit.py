"""Rate-limit benchmark in simulated time: geod's client against the ceiling and its neighbours.

Runs each client for a fixed horizon of windows over an endless backlog, against the fake
ip-api server (real HTTP on loopback) on a `SimClock`, with 0, 1 or 2 other programs spending
requests of the same quota at random moments. Reports geod's share of the ceiling (alone) or
of what the others left (shared), the others' 429 rate, geod's own 429s and bans.

    python -m bench.ratelimit                 # all scenarios, 30 windows of 15 req / 60 s
    python -m bench.ratelimit --windows 60 --seed 7 --json bench/out/ratelimit.json
    python -m bench.ratelimit --latency-only      # only the small-backlog latency cases

Simulated time measures the client's decisions, not network latency: every request takes zero
simulated seconds. The wall-clock variant is `bench/ratelimit_real.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from geod.config import IpApiConfig
from geod.ipapi import IpApiProvider
from geod.provider import make_session
from geod.ratelimit import RateGovernor
from tests.fake_ipapi import FakeIpApi
from tests.sim import SimClock, Tenant, window_stats

BATCH = 100
Client = Callable[[str, aiohttp.ClientSession, SimClock, float], Awaitable[None]]


def backlog() -> list[str]:
    """Enough public addresses for any horizon (8.0.0.0/8 is all public)."""
    return [f"8.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, 200_001)]


def geod_client(share: bool, batches: int | None = None) -> Client:
    """geod's client over an endless backlog, or `batches` batches told to the governor as the
    daemon's pass tells it (the backlog hint; an older governor just ignores the attribute)."""
    async def run(url: str, session: aiohttp.ClientSession, clock: SimClock,
                  horizon: float) -> None:
        config = IpApiConfig(url=url, share="auto" if share else "off")
        governor = RateGovernor(config.reserve, clock, clock.sleep, share=share)
        client = IpApiProvider(config, session, governor, sleep=clock.sleep)
        ips = backlog()[:batches * BATCH] if batches is not None else backlog()
        for start in range(0, len(ips), BATCH):
            if clock.now >= horizon:
                return
            if batches is not None:
                governor.backlog = (len(ips) - start) // BATCH
            await client.resolve(ips[start:start + BATCH])
    return run


async def header_obeying(url: str, session: aiohttp.ClientSession, clock: SimClock,
                         horizon: float, batches: int | None = None) -> None:
    """The simple header-obeying client: send back to back; at X-Rl 0 wait X-Ttl."""
    ips = backlog()[:batches * BATCH] if batches is not None else backlog()
    for start in range(0, len(ips), BATCH):
        if clock.now >= horizon:
            return
        async with session.post(url, json=ips[start:start + BATCH]) as response:
            await response.read()
            rl, ttl = response.headers.get("X-Rl", ""), response.headers.get("X-Ttl", "")
        if rl == "0" and ttl.isdigit():
            await clock.sleep(int(ttl) + 0.1)


@dataclass
class Latency:
    client: str
    tenants: str
    batches: int
    seconds: float  # first request to last answer (simulated)
    geod_429: int
    others_sent: int
    others_429: int


async def latency(name: str, client: Client, tenants: list[Tenant], *, batches: int,
                  limit: int, window: float, seed: int, offset: float) -> Latency:
    """A pass of `batches` batches that starts `offset` s into the others' schedule."""
    clock = SimClock()
    fake = FakeIpApi(limit=limit, window=window, clock=clock)
    rng = random.Random(seed)
    for tenant in tenants:
        tenant.schedule(clock, fake, window, 6, rng)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await clock.sleep(offset)
        async with make_session() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/batch"
            await client(url, session, clock, 6 * window)
    finally:
        await runner.cleanup()
    await clock.sleep(6 * window - clock.now)  # let the others finish their windows
    geod = [r for r in fake.requests if r.tenant == "geod"]
    others = [r for r in fake.requests if r.tenant != "geod"]
    return Latency(name, "+".join(f"{t.low}-{t.high}" for t in tenants) or "alone", batches,
                   round(geod[-1].time - geod[0].time, 3),
                   sum(r.status == 429 for r in geod), len(others),
                   sum(r.status != 200 for r in others))


async def fixed_pause(url: str, session: aiohttp.ClientSession, clock: SimClock,
                      horizon: float, pause: float = 4.0) -> None:
    """The common loop: post a batch, sleep window/limit, ignore headers; a 429 skips it."""
    ips = backlog()
    for start in range(0, len(ips), BATCH):
        if clock.now >= horizon:
            return
        async with session.post(url, json=ips[start:start + BATCH]) as response:
            await response.read()
        await clock.sleep(pause)


async def retry_on_429(url: str, session: aiohttp.ClientSession, clock: SimClock,
                       horizon: float) -> None:
    """Retry each 429 with exponential back-off (1 s doubling to 60 s), headers ignored."""
    ips = backlog()
    for start in range(0, len(ips), BATCH):
        delay = 1.0
        while clock.now < horizon:
            async with session.post(url, json=ips[start:start + BATCH]) as response:
                await response.read()
                status = response.status
            if status == 403:
                return  # banned
            if status != 429:
                break
            await clock.sleep(delay)
            delay = min(delay * 2, 60.0)
        else:
            return


@dataclass
class Result:
    client: str
    tenants: str
    windows: int
    geod_served: int
    geod_429: int
    geod_banned: bool
    others_banned: bool  # on ip-api a ban is per address: the whole host, geod included
    others_sent: int
    others_429: int
    capacity: float  # requests the quota allowed geod over the complete windows
    fraction: float  # geod_served / capacity: of the ceiling alone, of what the others left
    others_429_rate: float


async def scenario(name: str, client: Client, tenants: list[Tenant], *, limit: int,
                   window: float, windows: int, seed: int,
                   demand: Callable[[int], tuple[int, int]] | None = None) -> Result:
    clock = SimClock()
    fake = FakeIpApi(limit=limit, window=window, clock=clock)
    rng = random.Random(seed)
    for tenant in tenants:
        tenant.schedule(clock, fake, window, windows + 2, rng, demand)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    horizon = windows * window
    try:
        async with make_session() as session:
            await client(f"http://127.0.0.1:{port}/batch", session, clock, horizon)
    finally:
        await runner.cleanup()
    stats = window_stats(fake.requests, window, horizon)
    capacity = stats.capacity(limit, window)
    return Result(
        client=name,
        tenants="+".join(f"{t.low}-{t.high}" for t in tenants) or "alone",
        windows=stats.windows,
        geod_served=stats.geod_served,
        geod_429=stats.geod_429,
        geod_banned="geod" in fake.banned,
        others_banned=bool(fake.banned - {"geod"}),
        others_sent=stats.others_sent,
        others_429=stats.others_429,
        capacity=round(capacity, 1),
        fraction=round(stats.fraction(limit, window), 4),
        others_429_rate=round(stats.others_429 / stats.others_sent, 4) if stats.others_sent
        else 0.0,
    )


async def adaptation(limit: int, window: float, seed: int, phase: int = 10) -> dict[str, object]:
    """Others go 0 -> 4 -> 0 requests a window; count the windows geod needs to follow.

    Windows are counted on the benchmark's fixed grid (the server's own windows drift). "Adapted
    up" is the first window after the rise from which the others see no 429 for `phase - 2`
    windows; "adapted down" the first after the fall in which geod takes >= limit - 1 again.
    """
    def demand(k: int) -> tuple[int, int]:
        return (4, 4) if phase <= k < 2 * phase else (0, 0)

    clock = SimClock()
    fake = FakeIpApi(limit=limit, window=window, clock=clock)
    tenant = Tenant("dash", 0, 0)
    tenant.schedule(clock, fake, window, 3 * phase + 2, random.Random(seed), demand)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with make_session() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/batch"
            await geod_client(True)(url, session, clock, 3 * phase * window)
    finally:
        await runner.cleanup()
    geod_per = [0] * (3 * phase)
    others_429_per = [0] * (3 * phase)
    for r in fake.requests:
        k = int(r.time // window)
        if k >= 3 * phase:
            continue
        if r.tenant == "geod" and r.status == 200:
            geod_per[k] += 1
        elif r.tenant != "geod" and r.status == 429:
            others_429_per[k] += 1
    up = next(i for i in range(phase + 1) if not any(others_429_per[phase + i: 2 * phase]))
    down = next((i for i in range(phase) if geod_per[2 * phase + i] >= limit - 1), None)
    return {"geod_per_window": geod_per, "others_429_per_window": others_429_per,
            "windows_to_adapt_up": up, "windows_to_adapt_down": down}


CLIENTS: dict[str, Client] = {
    "geod share=auto": geod_client(True),
    "geod share=off": geod_client(False),
    "fixed pause": fixed_pause,
    "retry on 429": retry_on_429,
}


def tenant_sets() -> dict[str, Callable[[], list[Tenant]]]:
    return {
        "alone": lambda: [],
        "one other, 2/window": lambda: [Tenant("dash", 2, 2)],
        "two others, 3/window each": lambda: [Tenant("dash", 3, 3), Tenant("cron", 3, 3)],
        "one other, 2-6/window": lambda: [Tenant("dash", 2, 6)],
        "two others, 2-6/window each": lambda: [Tenant("dash", 2, 6), Tenant("cron", 2, 6)],
    }


async def latency_cases(args: argparse.Namespace) -> list[Latency]:
    """8 batches (they fit in one window) alone and beside one program at 3 a window; the
    pass starts at several moments of the others' schedule (seeds 1..args.latency_runs)."""
    out = []
    clients: dict[str, Callable[[int], Client]] = {
        "geod share=auto": lambda n: geod_client(True, n),
        "header-obeying": lambda n: lambda u, s, c, h: header_obeying(u, s, c, h, n),
    }
    for label, make_tenants in (("alone", list), ("one other, 3/window",
                                                  lambda: [Tenant("dash", 3, 3)])):
        for name, make in clients.items():
            runs = [await latency(name, make(8), make_tenants(), batches=8, limit=args.limit,
                                  window=args.window, seed=seed,
                                  offset=random.Random(seed).uniform(0, args.window))
                    for seed in range(1, args.latency_runs + 1)]
            worst = max(runs, key=lambda r: r.seconds)
            others = sum(r.others_sent for r in runs)
            refused = sum(r.others_429 for r in runs)
            print(f"latency {label:22} {name:16} 8 batches: worst {worst.seconds:6.2f} s "
                  f"median {sorted(r.seconds for r in runs)[len(runs) // 2]:6.2f} s "
                  f"geod_429={sum(r.geod_429 for r in runs)} "
                  f"others_429={refused}/{others} ({refused / others if others else 0:.1%})",
                  flush=True)
            for run in runs:
                run.tenants = label
            out.extend(runs)
    return out


async def main_async(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    if args.latency_only:
        return results
    for label, make_tenants in tenant_sets().items():
        for name, client in CLIENTS.items():
            if args.clients and name not in args.clients:
                continue
            result = await scenario(name, client, make_tenants(), limit=args.limit,
                                    window=args.window, windows=args.windows, seed=args.seed)
            result.tenants = label
            results.append(result)
            print(f"{label:28} {name:16} fraction={result.fraction:.3f} "
                  f"others_429={result.others_429_rate:6.1%} geod_429={result.geod_429:3} "
                  f"banned={result.geod_banned} others_banned={result.others_banned}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING + 10))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=15)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client", dest="clients", action="append")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args(argv)
    latencies = asyncio.run(latency_cases(args))
    results = asyncio.run(main_async(args))
    if args.latency_only:
        return 0
    adapt = asyncio.run(adaptation(args.limit, args.window, args.seed))
    print(f"changing demand 0 -> 4 -> 0: geod per window {adapt['geod_per_window']}")
    print(f"  others' 429 per window {adapt['others_429_per_window']}")
    print(f"  adapted up after {adapt['windows_to_adapt_up']} window(s), "
          f"down after {adapt['windows_to_adapt_down']} window(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"scenarios": [asdict(r) for r in results], "adaptation": adapt,
             "latency": [asdict(r) for r in latencies]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
