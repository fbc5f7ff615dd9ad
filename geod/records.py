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
    """One due row: the key as stored (writes are keyed on it) and where the next chunk starts.

    Rows whose key is NULL are never handed out: `DueCount.keyless` counts them instead.
    """

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

    def value(self, name: str, resolved_at: str) -> str | None:
        """What this update writes into the column mapped as `name` (a `columns` field)."""
        if name == "updated_at":
            return resolved_at
        if name == "source":
            return self.source
        value: str | None = getattr(self.geo, name)
        return value


@dataclass(frozen=True, slots=True)
class Stored:
    """A row with a country, as read for upkeep: its values are what a write must still find."""

    key: str
    cursor: Any
    values: dict[str, Any]  # field name ("country_code", "asn", "updated_at", ...) -> value


@dataclass(frozen=True, slots=True)
class Change:
    """An upkeep write: set `sets` only where the row still holds `expected` (optimistic).

    `kind` is what it counts as: "filled", "confirmed" or "changed".
    """

    key: str
    expected: dict[str, Any]
    sets: dict[str, Any]
    kind: str


@dataclass(frozen=True, slots=True)
class UpkeepQuery:
    """Which rows with a country are worth a look this pass; `Store.upkeep_chunks` reads them.

    A row qualifies when it has a NULL in `fill`, when geod wrote it (its source is one of
    `geod_sources`, or one of them followed by ":") before `geod_before`, when the app wrote it
    before `app_before` (or never dated it), or when an mmdb answered it from another build than
    `mmdb_stamp`. A None / empty field turns its rule off. Timestamps are ISO 8601 UTC text.
    """

    fill: tuple[str, ...] = ()
    geod_sources: tuple[str, ...] = ()
    geod_before: str | None = None
    app_before: str | None = None
    mmdb_stamp: str | None = None

    def active(self) -> bool:
        return bool(self.fill or self.geod_before or self.app_before or self.mmdb_stamp)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A row the app's schema would not take (a trigger, a CHECK, UNIQUE, a STRICT type)."""

    key: str
    reason: str  # the database's message, naming the constraint


@dataclass(frozen=True, slots=True)
class Written:
    """What one `Store.write` did: rows changed, and rows the schema refused (not written)."""

    changed: int
    refused: tuple[Refusal, ...] = ()


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
    unresolvable: int = 0  # rows that can never be resolved (private, invalid, NULL, ...)
    backed_off: int = 0  # rows skipped because their address is still backing off
    locked: int = 0  # rows resolved but not written: database busy; retried next pass
    missed: int = 0  # rows no provider had data for, none failing (backing off now)
    refused: int = 0  # rows resolved but refused by the app's schema (backing off now)
    resolved_by: dict[str, int] = field(default_factory=dict)  # provider name -> rows written
    # Upkeep of rows that have a country (after the NULL rows; `upkeep`):
    filled: int = 0  # rows whose NULL name/asn/org got a value
    confirmed: int = 0  # re-resolved rows whose values still hold (only the timestamp moved)
    changed: int = 0  # re-resolved rows written with a new value
    superseded: int = 0  # rows the app rewrote while geod looked them up: left alone
    duration_s: float = 0.0

    def line(self) -> str:
        """The one-line summary `geod once` prints."""
        return (
            f"unresolved={self.unresolved} retried={self.retried} resolved={self.resolved} "
            f"failed={self.failed} unresolvable={self.unresolvable} "
            f"backed_off={self.backed_off} locked={self.locked} missed={self.missed} "
            f"refused={self.refused} filled={self.filled} confirmed={self.confirmed} "
            f"changed={self.changed} superseded={self.superseded} duration_s={self.duration_s}"
            + (f" resolved_by={by}" if (by := _pairs(self.resolved_by)) else "")
        )


def _pairs(counts: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in counts.items())
