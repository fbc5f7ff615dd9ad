"""Simulated time for rate-limit tests and benchmarks: the real client and server, a virtual clock.

`SimClock.sleep` jumps the clock forward, firing every scheduled event (another program's
request) at its own moment on the way, so an hour of ip-api windows runs in seconds and the
same seed gives the same run. Requests themselves take no simulated time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.fake_ipapi import FakeIpApi, RecordedRequest


class SimClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    async def sleep(self, seconds: float) -> None:
        target = self.now + max(seconds, 0.0)
        while self._events and self._events[0][0] <= target:
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
        self.now = target
        await asyncio.sleep(0)


@dataclass
class Tenant:
    """Another program on the host: spends `low..high` requests of every window at random."""

    name: str
    low: int
    high: int
    sent: int = 0
    throttled: int = 0
    per_window: list[int] = field(default_factory=list)

    def schedule(self, clock: SimClock, fake: FakeIpApi, window: float, windows: int,
                 rng: random.Random, demand: Callable[[int], tuple[int, int]] | None = None
                 ) -> None:
        for k in range(windows):
            low, high = demand(k) if demand else (self.low, self.high)
            n = rng.randint(low, high)
            self.per_window.append(n)
            for _ in range(n):
                clock.at(k * window + rng.uniform(0, window), lambda: self._ask(fake))

    def _ask(self, fake: FakeIpApi) -> None:
        [status] = fake.spend(1, tenant=self.name)
        self.sent += 1
        self.throttled += status == 429


@dataclass(frozen=True)
class WindowStats:
    """What happened in the server's complete windows (they open at the first request)."""

    windows: int
    span: float  # seconds from the first window's start to the last one's end
    geod_served: int
    geod_429: int
    others_sent: int
    others_served: int
    others_429: int  # refused: 429, or 403 once the fake banned them (ip-api would ban the host)

    def capacity(self, limit: int, window: float) -> float:
        """Requests the quota allowed over the span, less what the others were served."""
        return limit * self.span / window - self.others_served

    def fraction(self, limit: int, window: float) -> float:
        capacity = self.capacity(limit, window)
        return self.geod_served / capacity if capacity > 0 else 0.0


def window_stats(requests: Sequence[RecordedRequest], window: float,
                 horizon: float) -> WindowStats:
    """Replay the fake server's fixed windows and count only those complete by `horizon`."""
    starts: list[float] = []
    counted: list[RecordedRequest] = []
    for r in requests:
        if not starts or r.time >= starts[-1] + window:
            starts.append(r.time)
        counted.append(r)
    complete = [s for s in starts if s + window <= horizon]
    if not complete:
        return WindowStats(0, 0.0, 0, 0, 0, 0, 0)
    end = complete[-1] + window
    inside = [r for r in counted if starts[0] <= r.time < end]
    geod = [r for r in inside if r.tenant == "geod"]
    others = [r for r in inside if r.tenant != "geod"]
    return WindowStats(
        windows=len(complete),
        span=end - starts[0],
        geod_served=sum(r.status == 200 for r in geod),
        geod_429=sum(r.status == 429 for r in geod),
        others_sent=len(others),
        others_served=sum(r.status == 200 for r in others),
        others_429=sum(r.status != 200 for r in others),
    )
