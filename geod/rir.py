"""The `rir` provider: the country each Regional Internet Registry allocated a block to.

`iptocc` embeds the five RIRs' delegation data in its wheel, so this needs no file, no network
and no rate limit. It answers the country of allocation only (no ASN, no org), which is not
always where the block is used; an address with no allocation, or allocated to a region (`EU`)
rather than a country, is a MISS and goes to the next provider.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import iptocc

from geod.config import Config
from geod.country_names import COMMON
from geod.provider import LOCAL_BATCH
from geod.records import Geo, Lookup, Outcome
from geod.validate import country_code, country_name


class RirProvider:
    """Country codes from RIR allocation data (`iptocc`), names from `country_names`."""

    name = "rir"
    batch_size = LOCAL_BATCH
    fields = frozenset({"country_code", "country_name"})  # registries record no AS

    def __init__(self, names: str = COMMON) -> None:
        self.names = names  # the `[resolve] country_names` style

    @classmethod
    def from_config(cls, config: Config, resources: object = None) -> RirProvider:
        """No files: iptocc's data is in its wheel; the only setting is the names' style."""
        return cls(config.resolve.country_names)

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        """One Lookup per address: RESOLVED, or MISS when no country holds the block."""
        # Addresses arrive normalised (`addresses.sendable`): iptocc rejects padded or mapped
        # forms with the same None it uses for "no allocation", so that must not happen here.
        codes = iptocc.country_code(list(addresses))
        pairs = zip(addresses, codes, strict=True)
        return [_lookup(address, raw, self.names) for address, raw in pairs]


def _lookup(address: str, raw: str | None, names: str) -> Lookup:
    geo = _geo(raw, names)
    if geo is None:
        reason = "no allocation" if raw is None else f"allocated to {raw[:8]!r}, not a country"
        return Lookup(address, Outcome.MISS, reason=reason, source=RirProvider.name)
    return Lookup(address, Outcome.RESOLVED, geo=geo, source=RirProvider.name)


@functools.cache
def _geo(raw: str | None, names: str) -> Geo | None:
    """One shared, validated Geo per code iptocc returns (a few hundred codes in all)."""
    code = country_code(raw)
    return Geo(code, country_name(code, names)) if code is not None else None
