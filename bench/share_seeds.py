"""geod's share of what the neighbours leave, over several seeds (simulated time).

One seed of `bench.ratelimit` is one draw: two random neighbours can move the share by ±0.02
from seed to seed. This runs geod's real client (`share = "auto"`) against each set of
neighbours for every seed and window length and prints the mean and the worst seed, the
neighbours' refused requests and geod's own 429s, summed over all runs.

    python -m bench.share_seeds                                  # seeds 1-8, 60 s and 30 s
    python -m bench.share_seeds --seeds 1-3 --windows-s 60 --sets two2-6
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

import structlog

from bench.ratelimit import geod_client, scenario
from tests.sim import Tenant

SETS: dict[str, Callable[[], list[Tenant]]] = {
    "two2-6": lambda: [Tenant("dash", 2, 6), Tenant("cron", 2, 6)],
    "one2-6": lambda: [Tenant("dash", 2, 6)],
    "two3": lambda: [Tenant("dash", 3, 3), Tenant("cron", 3, 3)],
    "one2": lambda: [Tenant("dash", 2, 2)],
    "alone": lambda: [],
}


def seeds(text: str) -> list[int]:
    """`1-8` or `1,4,9`."""
    low, sep, high = text.partition("-")
    return list(range(int(low), int(high) + 1)) if sep else [int(s) for s in text.split(",")]


async def run(args: argparse.Namespace) -> None:
    for name in args.sets.split(","):
        for window in args.windows_s:
            fractions, sent, refused, own = [], 0, 0, 0
            for seed in args.seeds:
                r = await scenario("geod share=auto", geod_client(True), SETS[name](),
                                   limit=15, window=window, windows=args.windows, seed=seed)
                fractions.append(r.fraction)
                sent, refused, own = sent + r.others_sent, refused + r.others_429, own + r.geod_429
            mean = sum(fractions) / len(fractions)
            print(f"{name:7} {window:4.0f} s windows: share mean {mean:.3f}"
                  f" worst {min(fractions):.3f}  others refused {refused}/{sent}"
                  f" ({refused / sent if sent else 0:.2%})  geod 429s {own}"
                  f" ({len(args.seeds)} seeds x {args.windows} windows)", flush=True)


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING + 10))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seeds, default=seeds("1-8"))
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--windows-s", type=float, nargs="+", default=[60.0, 30.0])
    parser.add_argument("--sets", default=",".join(SETS))
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
