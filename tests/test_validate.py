"""One rule set for every provider (geod.validate), and each provider path actually using it.

Issue 10 finding 12: ip-api wrote 'ZZ', 'XX', 'EU', 'AS١٥١٦٩' and 'AS9999999999' while the
offline providers rejected them. Each value is checked here through ip-api, mmdb and rir.
"""

from __future__ import annotations

from typing import Any

import pytest

from geod import validate
from geod.ipapi import parse_batch
from geod.mmdb import parse_asn, parse_country
from geod.records import Outcome
from geod.rir import _lookup
from tests.mmdb_files import geolite2_asn, geolite2_country, ipinfo_lite

BAD_CODES = ["ZZ", "zz", "XX", "xx", "EU", "eu", "AA", "QM", "QZ", "XA", "XZ", "AP", "U1",
             "ＵＳ", "USA", ""]
GOOD_CODES = [("US", "US"), ("us", "US"), ("XK", "XK"), ("xk", "XK"), ("DE", "DE")]
BAD_ASNS = ["AS١٥١٦٩", "AS9999999999", "AS4294967296", "AS0", "ASx", "AS", "aſ15169", "AS-1"]
GOOD_ASNS = [("AS15169", "AS15169"), ("as15169", "AS15169"), ("AS4294967295", "AS4294967295"),
             (15169, "AS15169"), ("", None), (None, None)]


@pytest.mark.parametrize("raw", BAD_CODES)
def test_country_code_rejects_user_assigned_reserved_and_junk(raw: str) -> None:
    """User-assigned (ZZ, XX, AA, QM-QZ, XA-XZ), reserved (EU, AP) and junk codes are no country."""
    assert validate.country_code(raw) is None


@pytest.mark.parametrize(("raw", "code"), GOOD_CODES)
def test_country_code_accepts_assigned_codes_and_kosovo(raw: str, code: str) -> None:
    """Assigned ISO 3166-1 codes, in any case, and XK pass, upper-cased."""
    assert validate.country_code(raw) == code


@pytest.mark.parametrize("raw", BAD_ASNS)
def test_asn_rejects_non_ascii_digits_and_out_of_range(raw: str) -> None:
    """An AS number must be ASCII digits within 1..4294967295."""
    with pytest.raises(ValueError, match="invalid AS number"):
        validate.asn(raw)


@pytest.mark.parametrize(("raw", "expected"), GOOD_ASNS)
def test_asn_accepts_plain_numbers(raw: Any, expected: str | None) -> None:
    """Numbers and 'AS<digits>' in any case normalise to 'AS<digits>'; absent is None."""
    assert validate.asn(raw) == expected


def _ipapi(**fields: Any) -> Any:
    item = {"status": "success", "query": "1.1.1.1", "countryCode": "US", **fields}
    return parse_batch([item], ["1.1.1.1"])[0]


@pytest.mark.parametrize("raw", BAD_CODES)
def test_ipapi_never_writes_a_bad_country_code(raw: str) -> None:
    """An ip-api answer with such a code fails that item; nothing is written."""
    lookup = _ipapi(countryCode=raw)
    assert (lookup.outcome, lookup.geo) == (Outcome.FAILED, None)


@pytest.mark.parametrize("raw", BAD_ASNS)
def test_ipapi_never_writes_a_bad_as_number(raw: str) -> None:
    """An ip-api `as` field naming an invalid AS number fails the item."""
    lookup = _ipapi(**{"as": f"{raw} Example Net"})
    assert (lookup.outcome, lookup.reason) == (Outcome.FAILED, "answer has an invalid AS number")


def test_ipapi_as_field_without_a_number_is_no_asn() -> None:
    """An `as` field that names no AS at all leaves asn empty and the answer usable."""
    lookup = _ipapi(**{"as": "AS15169 Google LLC"})
    assert lookup.geo is not None and lookup.geo.asn == "AS15169"
    lookup = _ipapi(**{"as": "nonsense"})
    assert lookup.geo is not None and lookup.geo.asn is None


@pytest.mark.parametrize("raw", BAD_CODES)
def test_mmdb_never_takes_a_bad_country_code(raw: str) -> None:
    """MaxMind and IPinfo records with such a code are not used (a MISS)."""
    with pytest.raises(ValueError, match="no valid country code"):
        parse_country(geolite2_country(raw, "Somewhere"))
    with pytest.raises(ValueError, match="no valid country code"):
        parse_country(ipinfo_lite(raw, "Somewhere"))


@pytest.mark.parametrize("raw", BAD_ASNS)
def test_mmdb_never_takes_a_bad_as_number(raw: str) -> None:
    """An IPinfo record's bad ASN drops the record; a GeoLite2-ASN record's drops asn and org."""
    with pytest.raises(ValueError, match="invalid AS number"):
        parse_country(ipinfo_lite("US", "United States", asn=raw))
    assert parse_asn({"autonomous_system_number": raw,
                      "autonomous_system_organization": "Example"}) == (None, None)


def test_mmdb_out_of_range_asn_number_is_dropped() -> None:
    """A numeric ASN past 32 bits in a GeoLite2-ASN record is not written."""
    assert parse_asn(geolite2_asn(9_999_999_999, "Example")) == (None, None)


@pytest.mark.parametrize("raw", BAD_CODES)
def test_rir_never_takes_a_bad_country_code(raw: str) -> None:
    """An RIR record allocated to such a code is a MISS (RIR data carries no AS numbers)."""
    lookup = _lookup("1.1.1.1", raw, "common")
    assert (lookup.outcome, lookup.geo) == (Outcome.MISS, None)
