"""What ip-api's X-Rl / X-Ttl headers say about the shared window, and when geod may send.

ip-api limits a source address, so geod shares its quota with the app next door. Between two
of geod's requests in one window X-Rl drops by exactly one; any further drop is what the other
programs spent. From that the governor estimates their demand per window and, at each moment,
leaves free what they are still likely to ask for before the reset (their requests come at
random moments: a Poisson model). It spreads its own requests over the window, the last just
before the reset, so it takes the full ceiling when alone and nearly all the others leave when
shared. When the pass says how many requests it still has (`backlog`) and they fit in what
the window can spare now, they go at once. Without usable headers it assumes the documented
limit (15 a minute) and never sends faster. A refusal that is not a window's 429 (a ban, a
refused key) pauses ip-api for hours. `snapshot`/`restore` carry all of this across restarts.
Pure bookkeeping plus one `wait_turn` coroutine, testable with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from geod.poisson import overflow_bound, tail_bound

log = structlog.get_logger("geod.ratelimit")

# X-Ttl is whole seconds; the first request of a new window goes a hair after the announced
# reset so a small clock skew cannot land it in the old one.
RESET_MARGIN = 0.1
# geod's last requests of a window go this long before the (tightest known) reset. The others'
# requests after them find only what geod left: their 429 rate is about FINAL_SLOT / window.
# With others on the quota it is the moment after which they are expected to miss at most
# FINAL_MISS of their requests (`_final_slot`), never less than MIN_FINAL_SLOT (the reset is
# known to ~0.1 s).
FINAL_SLOT = 0.5
MIN_FINAL_SLOT = 0.2
FINAL_MISS = 0.003
# Requests held back for the end of a window and sent back to back there: each answer is fresh
# news of what the others left, so the last few can be taken without guessing.
FINAL_BURST = 4
# Windows the demand estimate remembers: a rise counts at once, a fall after this many.
DEMAND_MEMORY = 2
# Requests of a window upkeep (refresh, fill) never takes: room for the app's own live look-ups
# and for a pass that finds new NULL rows before the window resets.
SPARE_KEEP = 4
# Share of the others' requests that one decision to send may expect to leave without a free
# slot before the final burst. With FINAL_MISS this spends the others' 2 % budget (measured:
# 1.4 % at most, `bench/share_seeds.py`); each miss here buys geod a slot the others, asking less
# than the estimate, would have left unused.
SHARE_MISS = 0.03
# Accepted chance that the others spent all that was left since geod's last response, so that
# geod's own next request would be a 429 (429s are what get a host banned).
OWN_TAIL = 0.01

# What ip-api's headers can mean (the free endpoint is plain HTTP, so anyone on the path can
# write them). The free limits are 15 and 45 a minute: a larger X-Rl only says "plenty" and is
# clamped (it also bounds the Poisson sums below); an X-Ttl or Retry-After past these is ignored.
MAX_RL = 100
MAX_TTL = 300  # windows are a minute; five is generous
MAX_RETRY_AFTER = 3600
# Without usable headers, the free batch endpoint's documented limit, one request per slot.
ASSUMED_LIMIT = 15
ASSUMED_WINDOW = 60.0
# X-Ttl may be rounded down: after a 429 just past a reset geod waited for, wait this much longer.
MARGIN_STEP = 1.0
MAX_RESET_MARGIN = RESET_MARGIN + 2 * MARGIN_STEP
# A 403 from the free endpoint: the host may be banned; a person must unban it. Ask again only
# this long after (persisted), so a restart loop cannot keep knocking.
BAN_PAUSE = 6 * 3600.0
# A refused pro key will not start working by itself: pause until the key changes (or a day).
KEY_PAUSE = 24 * 3600.0
UNBAN_URL = "https://ip-api.com/docs/unban"


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
        # Seconds a request takes, first answer to send, smoothed: the final burst's timing, and
        # the part of X-Rl's age the decision to send cannot see (the request's own flight).
        self.latency = 0.0
        self._latency_measured = False
        self.last_seen: float | None = None  # when the last X-Rl arrived
        self._last_sent: float | None = None
        self._clock = clock
        self._sleep = sleep
        self._on_wait = on_wait
        self._logged: tuple[int, int] | None = None
        # Requests the running pass still has to send (None = unknown: pace as for an endless
        # backlog). Set by the pass (`daemon`), counted down here by each request.
        self.backlog: int | None = None
        self.blind = False  # the last response had no usable X-Rl/X-Ttl: assume the worst
        self.reset_margin = RESET_MARGIN
        self._waited_for_reset: float | None = None  # the reset the last long wait was for
        self.paused_until: float | None = None  # a ban or refused key: no request before this
        self.pause_reason = ""  # "banned" | "key refused"
        self.pause_key = ""  # for "key refused": which key (a fingerprint, never the key)
        # When the current wait for a new window ends (clock time), None when not in one: the
        # daemon interrupts such a wait for a reload.
        self.waiting_until: float | None = None

    # -- what the headers say --------------------------------------------------------------

    def observe(self, remaining: int | None, ttl: float | None, *, served: bool = True) -> None:
        """Record one response's headers. `served` is False for a 429 or 5xx (no quota used).

        X-Rl is clamped to MAX_RL; an X-Ttl past MAX_TTL counts as missing.
        """
        now = self._clock()
        if remaining is not None:
            remaining = min(max(remaining, 0), MAX_RL)
        if ttl is not None and not 0 <= ttl <= MAX_TTL:
            ttl = None
        if remaining is None or ttl is None:
            self.blind = True  # pace as if the window were the documented one and spent
            return
        self.blind = False
        if not served and self._waited_for_reset is not None and (
            now - self._waited_for_reset < MAX_RESET_MARGIN + 1.0
        ):
            # Refused right after a reset geod waited for: X-Ttl was rounded down.
            self.reset_margin = min(self.reset_margin + MARGIN_STEP, MAX_RESET_MARGIN)
        self._waited_for_reset = None
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
            took = min(now - self._last_sent, 5.0)
            self.latency = 0.8 * self.latency + 0.2 * took if self._latency_measured else took
            self._latency_measured = True
        self.remaining = remaining
        self.last_seen = now
        self._log_share()

    def block_for(self, seconds: float | None) -> None:
        """Honour a 429 that came without X-Rl/X-Ttl: its Retry-After, else a whole window."""
        if seconds is None or not 0 <= seconds <= MAX_RETRY_AFTER:
            seconds = ASSUMED_WINDOW
        self.remaining = 0
        self.reset_at = max(self.reset_at or 0.0, self._clock() + seconds)

    def refuse(self, reason: str, seconds: float, key: str = "") -> None:
        """Stop asking for `seconds`: ip-api refused this host ("banned") or key ("key refused")."""
        self.paused_until = self._clock() + seconds
        self.pause_reason = reason
        self.pause_key = key

    def paused(self, key: str = "") -> float:
        """Seconds ip-api is still off limits for a client with `key` (a fingerprint); 0 = ask.

        A key refusal holds only for the key that was refused: a new key is tried at once.
        """
        if self.paused_until is None:
            return 0.0
        left = self.paused_until - self._clock()
        if left <= 0 or (self.pause_reason == "key refused" and key != self.pause_key):
            self.paused_until, self.pause_reason, self.pause_key = None, "", ""
            return 0.0
        return left

    # -- the estimate ----------------------------------------------------------------------

    def demand(self) -> int:
        """Requests per window the other programs are expected to make (0 = none seen)."""
        if not self.share:
            return 0
        return max([self.others_now, *self.history])

    def budget(self) -> int:
        """geod's requests per window at the current estimate (for logs and status)."""
        return max(self.limit - self.demand() - self.reserve, 0)

    def keep(self, time_left: float) -> int:
        """Requests to leave free with `time_left` seconds of the window to go."""
        demand = self.demand()
        if demand == 0 or self.window <= 0:
            return self.reserve
        to_come = demand * min(max(time_left, 0.0), self.window) / self.window
        needed = 0
        while self._absorbs(needed, demand) < to_come:
            needed += 1
        return max(self.reserve, needed)

    @staticmethod
    def _absorbs(free: int, demand: int, miss: float = SHARE_MISS) -> float:
        """How many of the others' requests, on average still to come, `free` can absorb
        while they are expected to miss at most `miss` of their `demand`."""
        return overflow_bound(free, round(miss * demand, 4))

    # -- when geod may send ----------------------------------------------------------------

    def delay(self) -> float:
        """Seconds to wait before the next request may go out (0 = now)."""
        now = self._clock()
        if self.blind and self._last_sent is not None:
            # No usable headers: one request per slot of the documented limit, never faster.
            slot = self._last_sent + ASSUMED_WINDOW / ASSUMED_LIMIT
            blocked = self.reset_at + self.reset_margin if self.reset_at is not None else now
            return max(slot, blocked, now) - now
        if self.remaining is None or self.reset_at is None:
            return 0.0
        until_reset = self.reset_at + self.reset_margin - now
        if until_reset <= 0:
            return 0.0  # a new window has begun; its budget is unknown until the next response
        spare = self.remaining - 1  # what would be left free after one more request
        if spare < self.reserve:
            return until_reset
        demand = self.demand()
        if self.backlog is not None and self.backlog <= self.remaining - self.keep(until_reset):
            # The rest of the pass fits in what the window can spare: send it now, unless X-Rl
            # is so old that the others may have spent what it promised.
            if not self.share or demand == 0 or self.window <= 0:
                return 0.0
            if now <= self._fresh_until(spare, demand, now):
                return 0.0
        if not self.share or demand == 0 or self.window <= 0:
            return max(self._paced(now), now) - now
        # `keep` shrinks as the window runs out: the earliest moment `spare` is enough ...
        earliest = self.reset_at - self._absorbs(spare, demand) * self.window / demand
        # ... and X-Rl grows stale as the others keep asking: past this, a 429 of our own.
        deadline = self._fresh_until(spare, demand, now)
        start = max(earliest, min(self._paced(now), deadline), now)
        return start - now if start <= deadline else until_reset

    def _fresh_until(self, spare: int, demand: int, now: float) -> float:
        """The last moment a request may leave while X-Rl is still trusted to have `spare`.

        X-Rl is as old as the time since the last answer plus the next request's flight (the
        answer's X-Rl was counted about half a round trip before it arrived, the next request
        is counted about half a round trip after it leaves): in that time the others spend
        more than `spare` with a chance of at most OWN_TAIL. Counting only the time until
        the send would take a larger risk than OWN_TAIL on every request sent at this limit.
        """
        seen = self.last_seen if self.last_seen is not None else now
        return seen + tail_bound(spare, OWN_TAIL) * self.window / demand - self.latency

    def _paced(self, now: float) -> float:
        """When the next request is due if geod's expected budget is spread up to the end."""
        if not self.share or self._last_sent is None or self.reset_at is None:
            return now
        to_come = self.demand() * max(self.reset_at - now, 0.0) / max(self.window, 1.0)
        left = (self.remaining or 0) - self.reserve - to_come  # geod's, expected
        expected = left - FINAL_BURST
        # Start the burst early enough for its requests to finish before the reset, and no
        # earlier: a burst of two started as if it were four ends two round trips early, and
        # the others' requests after it find nothing (4 % refused under load, 1 s round trips).
        burst = min(max(math.ceil(left), 1), FINAL_BURST)
        end = self.reset_at - self._final_slot() - burst * self.latency
        if expected < 1:
            return max(end, now)  # what is left goes in the final burst
        return self._last_sent + max(end - self._last_sent, 0.0) / (expected + 1)

    def _final_slot(self) -> float:
        """How long before the reset the final burst ends.

        A fixed half second was too early on short windows: the last request then had to wait
        for the others' expected demand to run out (`earliest`) and by that time X-Rl was too
        stale to trust, so one request a window was left unused (0.89 of the share on 30 s
        windows). The burst now ends exactly when the last free request may go.
        """
        demand = self.demand()
        if not self.share or demand == 0 or self.window <= 0:
            return FINAL_SLOT
        return max(self._absorbs(0, demand, FINAL_MISS) * self.window / demand, MIN_FINAL_SLOT)

    def spare(self, keep: int = SPARE_KEEP) -> bool:
        """Whether a request now spends only leftover quota (upkeep's test, see `upkeep`).

        Leftover: this window still has `keep` requests beyond the reserve and the others'
        expected demand, and the request would not wait for the next window. Unknown (no
        response yet, or the window is over) counts as spare: the next answer tells.
        """
        if self.remaining is None or self.reset_at is None:
            return True
        until_reset = self.reset_at + self.reset_margin - self._clock()
        if until_reset <= 0:
            return True
        left = self.remaining - 1 - self.reserve - self.demand()
        return left >= keep and self.delay() < until_reset

    async def wait_turn(self) -> None:
        """Sleep until the next request is allowed, then mark it as sent. Cancellable."""
        wait = self.delay()
        if wait > 0:
            long_wait = self.reset_at is not None and wait >= self.reset_at - self._clock()
            if long_wait:
                log.info("rate_limit_wait", wait_s=round(wait, 2), remaining=self.remaining,
                         others_per_window=self.demand())
                if self._on_wait is not None:
                    self._on_wait(wait)
            self.waited_s += wait
            self.waiting_until = self._clock() + wait if long_wait else None
            try:
                await self._sleep(wait)
            finally:
                self.waiting_until = None
            if long_wait:
                self._waited_for_reset = self._clock()
        self._last_sent = self._clock()
        if self.backlog is not None:
            self.backlog = max(self.backlog - 1, 0)

    def _log_share(self) -> None:
        """Say when the estimate changes, so an operator sees why geod is below the ceiling."""
        state = (self.demand(), self.budget())
        if self.share and self.limit and state != self._logged:
            self._logged = state
            log.info("rate_share", others_per_window=state[0], geod_per_window=state[1],
                     limit=self.limit)
