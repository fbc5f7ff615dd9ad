"""The seam between a resolution pass and whatever answers look-ups.

A provider gets normalised, sendable addresses and returns one `Lookup` per address, in order.
It never raises for a failed look-up: failures are data (`Outcome.FAILED`), so one bad batch
cannot end a pass. Only cancellation propagates. Providers are tried in a chain (`resolve`): MISS
and FAILED pass an address on to the next provider, RESOLVED and UNRESOLVABLE end its chain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from geod import __version__
from geod.ratelimit import RateGovernor
from geod.records import Lookup

USER_AGENT = f"geod/{__version__}"

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


GEO_FIELDS = frozenset({"country_code", "country_name", "asn", "org"})


def provider_fields(provider: Provider) -> frozenset[str]:
    """The fields a provider can ever answer: its `fields`, else all of them."""
    fields: frozenset[str] | None = getattr(provider, "fields", None)
    return fields if fields is not None else GEO_FIELDS


def is_metered(provider: Provider) -> bool:
    """Whether asking `provider` spends a shared quota (`metered = True`: ip-api) rather
    than reading a local file."""
    return bool(getattr(provider, "metered", False))


def source_tag(provider: Provider) -> str:
    """What a `source` column records for an answer: the provider's `stamp()` (a file's
    "mmdb:<build>"), else its name."""
    stamp: Callable[[], str] | None = getattr(provider, "stamp", None)
    return stamp() if stamp is not None else provider.name


@dataclass(frozen=True, slots=True)
class Resources:
    """What providers share, built once by the daemon and kept across reloads."""

    session: aiohttp.ClientSession  # the one HTTP session
    governor: RateGovernor  # one per process: the rate-limit window outlives a reload
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    # Responses by HTTP status ("error" = none): kept here because providers are rebuilt on
    # reload while these totals (a Prometheus counter) must only ever grow.
    responses: Counter[str] = field(default_factory=Counter)


def make_session(
    headers: dict[str, str] | None = None,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
    source_address: str = "",
) -> aiohttp.ClientSession:
    """The one HTTP session geod keeps across passes, for every web provider.

    `source_address` binds outgoing connections to that local address (`[ipapi]
    source_address`, for multi-homed hosts); "" leaves the choice to the routing table.
    """
    connector = aiohttp.TCPConnector(local_addr=(source_address, 0)) if source_address else None
    return aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT, **(headers or {})}, trace_configs=trace_configs,
        connector=connector,
    )
