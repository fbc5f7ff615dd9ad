"""What `geod run` reports about itself: one `Status` the daemon owns and updates in place.

The daemon changes it at a few safe points and then calls one `on_change(status)` observer
(`systemd` turns it into sd_notify messages); Prometheus reads it at scrape time (`metrics`).
Nothing here does I/O: this is uvicorn's `server_state`, arq's worker counters.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from geod.backlog import Backlog
from geod.config import Config
from geod.records import Lookup, PassSummary

# A pass is a second with little to do, minutes when the rate limit paces thousands of rows.
PASS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"  # started, or a reload is over (`config` is the one in force)
    PASSING = "passing"
    RATE_LIMITED = "rate_limited"  # a pass waits `wait_s` for the ip-api window
    PASSED = "passed"  # a pass ended: `last` (None if it failed: `last_error`)
    IDLE = "idle"  # waiting `wait_s` for the next pass
    RELOADING = "reloading"
    STOPPING = "stopping"


@dataclass(slots=True)
class Status:
    """The daemon's state and running totals; read it, never copy it into other counters."""

    config: Config
    phase: Phase = Phase.STARTING
    previous: Phase = Phase.STARTING  # the phase before this one (READY after RELOADING ...)
    wait_s: float = 0.0  # how long the wait that began (IDLE, RATE_LIMITED) lasts
    done: int = 0  # rows of the running pass no provider will be asked about again
    total: int = 0  # due rows when the running pass began
    last: PassSummary | None = None
    last_error: str = ""
    last_success_at: float = 0.0  # Unix time the last pass ended without error (0 = none)
    passes: Counter[str] = field(default_factory=Counter)  # "success" / "error" -> passes
    unresolved: int = 0  # due rows: counted when a pass starts, less the rows it resolved
    rows_resolved: int = 0  # rows written by passes that ended normally
    # Upkeep of rows with a country, by result: filled / confirmed / changed / superseded.
    rows_upkept: Counter[str] = field(default_factory=Counter)
    lookups: Counter[tuple[str, str]] = field(default_factory=Counter)  # (provider, outcome)
    durations: list[int] = field(default_factory=lambda: [0] * (len(PASS_BUCKETS) + 1))
    duration_sum: float = 0.0
    # Read from their owners at scrape time (`Daemon.snapshot`), not kept up to date here:
    negative_cache_entries: int = 0
    rate_limit_waited_s: float = 0.0
    # Look-up API responses by HTTP status ("error" = no answer); shared with ip-api.
    api_responses: Counter[str] = field(default_factory=Counter)
    # The due rows by what geod will do with them, as the running (or last) pass counted them.
    backlog: Backlog = field(default_factory=Backlog)

    def enter(self, phase: Phase) -> None:
        self.previous, self.phase = self.phase, phase

    def count_backlog(self, backlog: Backlog) -> None:
        """A pass's view of the due rows; the last known rate stays while a pass has none yet."""
        if backlog.rate is None:
            backlog = replace(backlog, rate=self.backlog.rate)
        self.backlog = backlog

    def progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        """A pass began (`done` 0, no look-ups) or one provider call came back."""
        if done == 0 and not lookups:
            self.unresolved = total
        self.done, self.total = done, total
        self.lookups.update((lookup.source or "unknown", lookup.outcome.value)
                            for lookup in lookups)

    def pass_ended(self, summary: PassSummary | None, error: str, wall_time: float) -> None:
        self.last, self.last_error = summary, error
        if summary is None:
            self.passes["error"] += 1
            return
        self.passes["success"] += 1
        self.rows_resolved += summary.resolved
        self.rows_upkept.update(filled=summary.filled, confirmed=summary.confirmed,
                                changed=summary.changed, superseded=summary.superseded)
        self.unresolved = max(summary.unresolved - summary.resolved, 0)
        self.last_success_at = wall_time
        self.duration_sum += summary.duration_s
        slot = next((i for i, le in enumerate(PASS_BUCKETS) if summary.duration_s <= le),
                    len(PASS_BUCKETS))
        self.durations[slot] += 1
