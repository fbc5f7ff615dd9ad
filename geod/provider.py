"""The seam between a resolution pass and whatever answers look-ups.

A provider gets normalised, sendable addresses and returns one `Lookup` per address, in order.
It never raises for a failed look-up: failures are data (`Outcome.FAILED`), so one bad batch
cannot end a pass. Only cancellation propagates. Providers are tried in a chain (`resolve`): MISS
and FAILED pass an address on to the next provider, RESOLVED and UNRESOLVABLE end its chain.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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


# What local providers (files, embedded tables) take in one call: a whole read chunk. Their
# look-ups take about a microsecond and never wait, so smaller calls would only add overhead.
LOCAL_BATCH = 10_000


class Provider(Protocol):
    """Anything that resolves addresses: ip-api, or an offline database (`mmdb`, `rir`)."""

    name: str
    batch_size: int  # how many addresses one `resolve` call should get

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        """One Lookup per address, in the same order."""
        ...
