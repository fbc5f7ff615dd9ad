"""What ip-api's X-Rl / X-Ttl headers say about the shared window, and when geod may send.

ip-api limits a source address, so geod shares its quota with the app next door. Between two
of geod's requests in one window X-Rl drops by exactly one; any further drop is what the other
programs spent. From that the governor estimates their demand per window and, at each moment,
leaves free what they are still likely to ask for before the reset (their requests come at
random moments: a Poisson model). It spreads its own requests over the window, the last just
before the reset, so it takes the full ceiling when alone and nearly all the others leave when
shared. Pure bookkeeping plus one `wait_turn` coroutine, testable with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from functools import cache

import structlog

log = structlog.get_logger("geod.ratelimit")

# X-Ttl is whole seconds; the first request of a new window goes a hair after the announced
# reset so a small clock skew cannot land it in the old one.
RESET_MARGIN = 0.1
# geod's last requests of a window go this long before the (tightest known) reset. The others'
# requests after them find only what geod left: their 429 rate is about FINAL_SLOT / window.
FINAL_SLOT = 0.5
# Requests held back for the end of a window and sent back to back there: each answer is fresh
# news of what the others left, so the last few can be taken without guessing.
FINAL_BURST = 4
# Windows the demand estimate remembers: a rise counts at once, a fall after this many.
DEMAND_MEMORY = 2
# Requests of a window upkeep (refresh, fill) never takes: room for the app's own live look-ups
# and for a pass that finds new NULL rows before the window resets.
SPARE_KEEP = 4
# Share of the others' requests that may be expected to find the window used up (target 2 %).
SHARE_MISS = 0.01
# Accepted chance that the others spent all that was left since geod's last response, so that
# geod's own next request would be a 429 (429s are what get a host banned).
OWN_TAIL = 0.01


def _largest(acceptable: Callable[[float], bool], high: float) -> float:
    """The largest λ in [0, high] for which the monotone predicate `acceptable(λ)` holds."""
    low = 0.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if acceptable(mid) else (low, mid)
    return low


def _pmf(lam: float, count: int) -> list[float]:
    """P(N = j) for j in 0..count-1, N ~ Poisson(lam)."""
    terms, term = [], math.exp(-lam)
    for j in range(count):
        terms.append(term)
        term *= lam / (j + 1)
    return terms


@cache
def tail_bound(k: int, tail: float) -> float:
    """The largest mean λ for which P(Poisson(λ) > k) <= tail."""
    return _largest(lambda lam: 1.0 - sum(_pmf(lam, k + 1)) <= tail, k + 50.0)


@cache
def overflow_bound(k: int, budget: float) -> float:
    """The largest mean λ for which E[(Poisson(λ) - k)+] <= budget.

    With k requests left free, the others are then expected to miss at most `budget`.
    """
    def overflow(lam: float) -> float:
        return lam - k + sum((k - j) * p for j, p in enumerate(_pmf(lam, k)))

    return _largest(lambda lam: overflow(lam) <= budget, k + 50.0)


class RateGovernor:
    """Paces requests to the rate-limited endpoint from the headers of every response.

    Args:
        reserve: requests per window always left to others (the configured floor).
        share: estimate the others' demand and pace (True, `share = "auto"`), or only obey
            the headers and send back to back (False, `share = "off"`).
        on_wait: called with the seconds of every wait for a new window (status, metrics).
    """

    def __init__(
        self,
        reserve: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        on_wait: Callable[[float], None] | None = None,
        *,
        share: bool = True,
    ) -> None:
        self.reserve = reserve
        self.share = share
        self.remaining: int | None = None  # X-Rl of the last response; None = unknown
        self.reset_at: float | None = None  # clock time the window ends (tightest bound seen)
        self.limit = 0  # requests per window: the highest X-Rl + 1 seen at a window's start
        self.window = 0.0  # window length: the highest X-Ttl seen
        self.others_now = 0  # requests the other programs spent in this window, as seen
        self.history: deque[int] = deque(maxlen=DEMAND_MEMORY)  # the same, past windows
        self.waited_s = 0.0
        self.latency = 0.0  # seconds a request takes, smoothed (for timing the final burst)
        self._last_seen: float | None = None  # when the last X-Rl arrived
        self._last_sent: float | None = None
        self._clock = clock
        self._sleep = sleep
        self._on_wait = on_wait
        self._logged: tuple[int, int] | None = None

    # -- what the headers say --------------------------------------------------------------

    def observe(self, remaining: int | None, ttl: float | None, *, served: bool = True) -> None:
        """Record one response's headers. `served` is False for a 429 or 5xx (no quota used)."""
        if remaining is None or ttl is None:
            return
        now = self._clock()
        self.window = max(self.window, float(ttl))
        last_remaining, last_reset = self.remaining, self.reset_at
        if (
            last_remaining is None
            or last_reset is None
            or now >= last_reset  # the old window has run out
            or remaining > last_remaining  # X-Rl went back up
            or now + ttl > last_reset + 1.5  # X-Ttl jumped up (it is only rounded by 1 s)
        ):
            if last_reset is not None:
                self.history.append(self.others_now)
            used_before_us = self.limit - 1 - remaining if served and self.limit else 0
            self.others_now = max(used_before_us, 0)
            self.reset_at = now + ttl
            if served:
                self.limit = max(self.limit, remaining + 1)
        else:
            own = 1 if served else 0
            self.others_now += max(last_remaining - remaining - own, 0)
            # Each response bounds the reset from above; the tightest bound is the best guess.
            self.reset_at = min(last_reset, now + ttl)
        if self._last_sent is not None and now >= self._last_sent:
            self.latency = 0.8 * self.latency + 0.2 * min(now - self._last_sent, 5.0)
        self.remaining = remaining
        self._last_seen = now
        self._log_share()

    def block_for(self, seconds: float) -> None:
        """Honour a server-imposed pause (Retry-After) that came without X-Rl/X-Ttl."""
        self.remaining = 0
        self.reset_at = max(self.reset_at or 0.0, self._clock() + seconds)

    # -- the estimate ----------------------------------------------------------------------

    def demand(self) -> int:
        """Requests per window the other programs are expected to make (0 = none seen)."""
        if not self.share:
            return 0
        return max([self.others_now, *self.history])

    def budget(self) -> int:
        """geod's requests per window at the current estimate (for logs and status)."""
        return max(self.limit - self.demand() - self.reserve, 0)

    @staticmethod
    def _absorbs(free: int, demand: int) -> float:
        """How many of the others' requests, on average still to come, `free` can absorb."""
        return overflow_bound(free, round(SHARE_MISS * demand, 4))

    # -- when geod may send ----------------------------------------------------------------

    def delay(self) -> float:
        """Seconds to wait before the next request may go out (0 = now)."""
        if self.remaining is None or self.reset_at is None:
            return 0.0
        now = self._clock()
        until_reset = self.reset_at + RESET_MARGIN - now
        if until_reset <= 0:
            return 0.0  # a new window has begun; its budget is unknown until the next response
        spare = self.remaining - 1  # what would be left free after one more request
        if spare < self.reserve:
            return until_reset
        demand = self.demand()
        if not self.share or demand == 0 or self.window <= 0:
            return max(self._paced(now), now) - now
        # `keep` shrinks as the window runs out: the earliest moment `spare` is enough ...
        earliest = self.reset_at - self._absorbs(spare, demand) * self.window / demand
        # ... and X-Rl grows stale as the others keep asking: past this, a 429 of our own.
        stale = self._last_seen or now
        deadline = stale + tail_bound(spare, OWN_TAIL) * self.window / demand
        start = max(earliest, min(self._paced(now), deadline), now)
        return start - now if start <= deadline else until_reset

    def _paced(self, now: float) -> float:
        """When the next request is due if geod's expected budget is spread up to the end."""
        if not self.share or self._last_sent is None or self.reset_at is None:
            return now
        to_come = self.demand() * max(self.reset_at - now, 0.0) / max(self.window, 1.0)
        expected = (self.remaining or 0) - self.reserve - to_come - FINAL_BURST
        # Start the burst early enough for its requests to finish before the reset.
        end = self.reset_at - FINAL_SLOT - FINAL_BURST * self.latency
        if expected < 1:
            return max(end, now)  # what is left goes in the final burst
        return self._last_sent + max(end - self._last_sent, 0.0) / (expected + 1)

    def spare(self, keep: int = SPARE_KEEP) -> bool:
        """Whether a request now spends only leftover quota (upkeep's test, see `upkeep`).

        Leftover: this window still has `keep` requests beyond the reserve and the others'
        expected demand, and the request would not wait for the next window. Unknown (no
        response yet, or the window is over) counts as spare: the next answer tells.
        """
        if self.remaining is None or self.reset_at is None:
            return True
        until_reset = self.reset_at + RESET_MARGIN - self._clock()
        if until_reset <= 0:
            return True
        left = self.remaining - 1 - self.reserve - self.demand()
        return left >= keep and self.delay() < until_reset

    async def wait_turn(self) -> None:
        """Sleep until the next request is allowed, then mark it as sent. Cancellable."""
        wait = self.delay()
        if wait > 0:
            if self.reset_at is not None and wait >= self.reset_at - self._clock():
                log.info("rate_limit_wait", wait_s=round(wait, 2), remaining=self.remaining,
                         others_per_window=self.demand())
                if self._on_wait is not None:
                    self._on_wait(wait)
            self.waited_s += wait
            await self._sleep(wait)
        self._last_sent = self._clock()

    def _log_share(self) -> None:
        """Say when the estimate changes, so an operator sees why geod is below the ceiling."""
        state = (self.demand(), self.budget())
        if self.share and self.limit and state != self._logged:
            self._logged = state
            log.info("rate_share", others_per_window=state[0], geod_per_window=state[1],
                     limit=self.limit)
