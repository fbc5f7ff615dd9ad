"""The due rows as an operator needs them: what geod will ask about, what it never will, and
how long the rest will take.

A pass classifies every due row as it walks them anyway (`resolve.plan_chunk`), so these figures
cost no query of their own: `Pass.backlog()` reads them off the pass's running tally, and a
Prometheus scrape reads the result from the `Status` (never the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Backlog:
    """The due rows of the running pass (or of the last one), sorted by what geod will do."""

    pending: int = 0  # address sendable, not backing off: geod will ask about these
    backing_off: int = 0  # asked and failed or missed: asked again when the back-off ends
    never: int = 0  # NULL, private, reserved or invalid address: never sent anywhere
    oldest_pending: float | None = None  # Unix time in the timestamp column of the oldest pending
    rate: float | None = None  # rows the providers settled per second, rate-limit waits included

    def drain_seconds(self) -> float:
        """Pending rows over the rate: 0 with nothing pending, NaN while no rate is known."""
        if self.pending == 0:
            return 0.0
        if not self.rate:
            return math.nan
        return self.pending / self.rate


def parse_stamp(value: object) -> float | None:
    """The Unix time an app's timestamp column holds, or None when it is not one.

    Apps store Unix seconds (or milliseconds), ISO 8601 text ("2026-11-29T10:00:00Z", or with a
    space and no zone, read as UTC), or nothing; geod writes ISO 8601.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                return None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            return stamp.timestamp()
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    seconds = float(value)
    return seconds / 1000 if seconds > 1e11 else seconds  # 1e11 s is the year 5138: ms
