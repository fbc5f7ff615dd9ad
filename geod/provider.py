"""The seam between a resolution pass and whatever answers look-ups.

A provider gets normalised, sendable addresses and returns one `Lookup` per address, in order.
It never raises for a failed look-up: failures are data (`Outcome.FAILED`), so one bad batch
cannot end a pass. Only cancellation propagates. Providers are tried in a chain (`resolve`): MISS
and FAILED pass an address on to the next provider, RESOLVED and UNRESOLVABLE end its chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from geod.records import Lookup

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
