"""What ip-api's X-Rl / X-Ttl headers say about the current window, and how long to wait.

Pure bookkeeping plus one `wait_turn` coroutine. Kept apart from HTTP so the rules that keep a
host from being banned can be tested with injected headers and a fake clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("geod.ratelimit")

# The server's X-Ttl is whole seconds; waiting a hair past the announced reset keeps a small
# clock skew from landing the first request of a window into the old one.
RESET_MARGIN = 0.1


class RateGovernor:
    """Tracks the shared window from response headers and paces requests against `reserve`."""

    def __init__(
        self,
        reserve: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.reserve = reserve
        self.remaining: int | None = None  # X-Rl of the last response; None = unknown
        self.reset_at: float | None = None  # clock time the window ends (tightest bound seen)
        self.waited_s = 0.0
        self._clock = clock
        self._sleep = sleep
        self._on_wait = on_wait

    def observe(self, remaining: int | None, ttl: float | None) -> None:
        """Record the headers of one response (any status). Missing headers change nothing."""
        if remaining is None or ttl is None:
            return
        now = self._clock()
        candidate = now + ttl
        same_window = (
            self.reset_at is not None
            and self.remaining is not None
            and now < self.reset_at
            and remaining <= self.remaining
        )
        # Each response bounds the reset from above; within one window keep the tightest bound.
        if same_window and self.reset_at is not None:
            self.reset_at = min(self.reset_at, candidate)
        else:
            self.reset_at = candidate
        self.remaining = remaining

    def block_for(self, seconds: float) -> None:
        """Honour a server-imposed pause (Retry-After) that came without X-Rl/X-Ttl."""
        self.remaining = 0
        self.reset_at = max(self.reset_at or 0.0, self._clock() + seconds)

    def delay(self) -> float:
        """Seconds to wait before the next request may go out (0 = now)."""
        if self.remaining is None or self.reset_at is None:
            return 0.0
        now = self._clock()
        if now >= self.reset_at + RESET_MARGIN:
            return 0.0  # a new window has begun; its budget is unknown until the next response
        if self.remaining > self.reserve:
            return 0.0
        return self.reset_at + RESET_MARGIN - now

    async def wait_turn(self) -> None:
        """Sleep until a request is allowed; cancellable at any point (a stop ends it)."""
        wait = self.delay()
        if wait <= 0:
            return
        log.info("rate_limit_wait", wait_s=round(wait, 2), remaining=self.remaining,
                 reserve=self.reserve)
        if self._on_wait is not None:
            self._on_wait(wait)
        self.waited_s += wait
        await self._sleep(wait)
        # The window has reset: forget the old count so the next response sets it afresh.
        self.remaining = None
        self.reset_at = None
