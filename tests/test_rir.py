"""The rir provider over iptocc's embedded RIR data, and the country table behind it."""

from __future__ import annotations

import iptocc
import pytest

from geod.records import Outcome
from geod.rir import RirProvider, _lookup
from geod.validate import country_code, country_name, plausible_text


@pytest.mark.parametrize(
    ("address", "code", "name"),
    [
        ("8.8.8.8", "US", "United States"),
        ("1.0.16.1", "JP", "Japan"),
        ("41.0.0.1", "ZA", "South Africa"),
        ("200.0.0.1", "CO", "Colombia"),
        ("2001:4860:4860::8888", "US", "United States"),
        ("2001:200::1", "JP", "Japan"),
        ("2c0f:f000::1", "DZ", "Algeria"),
    ],
)
async def test_known_allocations(address: str, code: str, name: str) -> None:
    """Blocks with a long-standing allocation give the registry's country and its name."""
    [lookup] = await RirProvider().resolve([address])
    assert lookup.outcome is Outcome.RESOLVED and lookup.source == "rir"
    assert lookup.geo is not None
    assert (lookup.geo.country_code, lookup.geo.country_name) == (code, name)
    assert (lookup.geo.asn, lookup.geo.org) == (None, None)  # RIR data has countries only


async def test_unallocated_space_is_a_miss() -> None:
    """Global unicast IPv6 that IANA never gave a registry has no allocation: a MISS."""
    lookups = await RirProvider().resolve(["2d00::1", "3000::1"])
    assert [(lookup.outcome, lookup.reason) for lookup in lookups] == [
        (Outcome.MISS, "no allocation"), (Outcome.MISS, "no allocation")]


async def test_region_allocation_is_a_miss() -> None:
    """A block RIPE allocated to 'EU' (no one country) is passed on, never written as 'EU'."""
    assert iptocc.country_code("139.191.1.1") == "EU"  # the premise: a legacy EU-wide block
    [lookup] = await RirProvider().resolve(["139.191.1.1"])
    assert (lookup.outcome, lookup.reason) == (Outcome.MISS, "allocated to 'EU', not a country")


def test_unallocated_ipv4_is_a_miss() -> None:
    """iptocc's None (an IPv4 block in a registry's free pool) is a MISS.

    Which IPv4 blocks are free changes with each iptocc data release, so this uses the
    function the provider maps iptocc's answers with rather than a live address.
    """
    lookup = _lookup("102.0.0.1", None, "common")
    assert (lookup.outcome, lookup.reason) == (Outcome.MISS, "no allocation")


async def test_answers_stay_in_order_for_a_whole_chunk() -> None:
    """One call takes a whole chunk and answers each address in order."""
    addresses = ["8.8.8.8", "2d00::1", "1.0.16.1"] * 400
    lookups = await RirProvider().resolve(addresses)
    assert [lookup.address for lookup in lookups] == addresses
    assert RirProvider.batch_size >= 1000


@pytest.mark.parametrize(
    ("raw", "code"),
    [("US", "US"), ("us", "US"), ("XK", "XK"), ("EU", None), ("AP", None), ("ZZ", None),
     ("U1", None), ("USA", None), ("", None), (None, None), (840, None)],
)
def test_country_code_accepts_countries_only(raw: object, code: str | None) -> None:
    """ISO 3166-1 countries (and XK, Kosovo) pass; regions, 'unknown' and junk do not."""
    assert country_code(raw) == code


def test_country_names_are_the_common_ones() -> None:
    """Names are `country_names` common ones: the short names ip-api and MaxMind answer."""
    assert [country_name(code) for code in ("US", "KR", "IR", "TW", "XK", "DE")] == [
        "United States", "South Korea", "Iran", "Taiwan", "Kosovo", "Germany"]


@pytest.mark.parametrize("value", ["a\x00b", "x" * 257, 5, ["x"]])
def test_implausible_text_is_rejected(value: object) -> None:
    """Strings from files are short, printable text or nothing."""
    with pytest.raises(ValueError, match="implausible"):
        plausible_text(value)
