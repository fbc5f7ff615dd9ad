"""The plain data that crosses layers: look-up results, table rows, writes and pass summaries.

A leaf module: it imports nothing from geod, so the store, the providers, the pass and whatever
reports on them can all share these types without importing one another.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    RESOLVED = "resolved"
    FAILED = "failed"  # worth asking again later (negative cache back-off)
    UNRESOLVABLE = "unresolvable"  # the provider says it never will (private, reserved, invalid)
    # Not in this provider's data (an offline database without the range). Unlike FAILED it says
    # nothing went wrong, and unlike UNRESOLVABLE it says nothing about the address itself.
    MISS = "miss"


@dataclass(frozen=True, slots=True)
class Geo:
    """The validated data geod writes for one address."""

    country_code: str  # ISO 3166-1 alpha-2, upper case
    country_name: str | None = None
    asn: str | None = None  # "AS15169"
    org: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    address: str
    outcome: Outcome
    geo: Geo | None = None
    reason: str = ""  # why it failed, for logs; never contains secrets
    source: str = ""  # the provider that answered


@dataclass(frozen=True, slots=True)
class Row:
    """One due row: the key as stored (writes are keyed on it) and where the next chunk starts."""

    key: str
    cursor: Any  # store-specific position (SQLite: rowid, or the key of a WITHOUT ROWID table)
    stamp: Any = None  # the mapped timestamp column's value as stored (None: not mapped / NULL)


@dataclass(frozen=True, slots=True)
class DueCount:
    """Due rows, counted in one query when a pass starts."""

    rows: int = 0
    keyless: int = 0  # of which the ip column is NULL: nothing to look up, ever


@dataclass(frozen=True, slots=True)
class Update:
    key: str
    geo: Geo
    source: str = ""  # the provider's name, written when a `source` column is mapped


@dataclass(slots=True)
class WriteDeadline:
    """When a write gives up waiting for the app's lock, in event-loop time.

    The pass hands one to `Store.write` and moves it up when a stop arrives, so a lock held by
    the app cannot hold the stop hostage; the store checks it between its short lock waits.
    """

    at: float = math.inf


@dataclass(frozen=True, slots=True)
class StoreReport:
    """What `geod status` shows about the table (address classification is the caller's)."""

    rows: int
    due: int  # rows the store would hand a pass now
    top_countries: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class PassSummary:
    unresolved: int = 0  # due rows when the pass began
    retried: int = 0  # rows whose address was asked this pass
    resolved: int = 0  # rows written with a country
    failed: int = 0  # rows whose look-up failed (backing off now)
    unresolvable: int = 0  # rows that can never be resolved (private, invalid, ...)
    backed_off: int = 0  # rows skipped because their address is still backing off
    locked: int = 0  # rows resolved but not written: database busy; retried next pass
    missed: int = 0  # rows no provider had data for, none failing (backing off now)
    resolved_by: dict[str, int] = field(default_factory=dict)  # provider name -> rows written
    duration_s: float = 0.0

    def line(self) -> str:
        """The one-line summary `geod once` prints."""
        return (
            f"unresolved={self.unresolved} retried={self.retried} resolved={self.resolved} "
            f"failed={self.failed} unresolvable={self.unresolvable} "
            f"backed_off={self.backed_off} locked={self.locked} missed={self.missed} "
            f"duration_s={self.duration_s}"
            + (f" resolved_by={by}" if (by := _pairs(self.resolved_by)) else "")
        )


def _pairs(counts: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in counts.items())
