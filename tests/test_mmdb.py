"""The mmdb provider against real .mmdb files in each vendor layout, IPv4 and IPv6."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from geod.config import MmdbConfig
from geod.mmdb import MmdbOpenError, MmdbProvider, WatchedReader, parse_asn, parse_country
from geod.records import Geo, Outcome
from geod.validate import country_name
from tests.conftest import Logs, events
from tests.mmdb_files import (
    LAYOUTS,
    geolite2_asn,
    geolite2_country,
    ipinfo_lite,
    write_mmdb,
)


def country_db(path: Path, layout: str = "geolite2-country", ip_version: int = 6) -> Path:
    database_type, record = LAYOUTS[layout]
    networks = {"8.8.8.0/24": record("US", "United States"), "1.0.16.0/20": record("JP", "Japan")}
    if ip_version == 6:
        networks["2001:4860::/32"] = record("US", "United States")
        networks["2001:200::/23"] = record("JP", "Japan")
    return write_mmdb(path, networks, database_type=database_type, ip_version=ip_version)


async def resolve(provider: MmdbProvider, *addresses: str) -> dict[str, Any]:
    return {lookup.address: lookup for lookup in await provider.resolve(list(addresses))}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
async def test_each_layout_resolves_ipv4_and_ipv6(tmp_path: Path, layout: str) -> None:
    """GeoLite2 Country/City, DB-IP Lite and IPinfo Lite all give code and English name."""
    provider = MmdbProvider.open(MmdbConfig(path=str(country_db(tmp_path / "c.mmdb", layout))))
    try:
        found = await resolve(provider, "8.8.8.8", "1.0.16.1", "2001:4860:4860::8888",
                              "2001:200::1")
    finally:
        provider.close()
    codes = {address: lookup.geo.country_code for address, lookup in found.items()}
    assert codes == {"8.8.8.8": "US", "1.0.16.1": "JP", "2001:4860:4860::8888": "US",
                     "2001:200::1": "JP"}
    assert found["1.0.16.1"].geo.country_name == "Japan"
    assert {lookup.source for lookup in found.values()} == {"mmdb"}
    if layout == "ipinfo-lite":  # the only layout with ASN data in the country file
        assert (found["8.8.8.8"].geo.asn, found["8.8.8.8"].geo.org) == ("AS15169", "Google LLC")
    else:
        assert found["8.8.8.8"].geo.asn is None


async def test_address_not_in_file_is_a_miss(tmp_path: Path) -> None:
    """An address the file has no record for is passed on, not failed."""
    provider = MmdbProvider.open(MmdbConfig(path=str(country_db(tmp_path / "c.mmdb"))))
    try:
        found = await resolve(provider, "9.9.9.9", "2a00:1450::1")
    finally:
        provider.close()
    assert {lookup.outcome for lookup in found.values()} == {Outcome.MISS}
    assert found["9.9.9.9"].reason == "not in database"


async def test_ipv6_in_an_ipv4_only_file_is_a_miss(tmp_path: Path) -> None:
    """An IPv4-only file cannot answer IPv6: a MISS, not the reader's ValueError."""
    path = country_db(tmp_path / "v4.mmdb", ip_version=4)
    provider = MmdbProvider.open(MmdbConfig(path=str(path)))
    try:
        found = await resolve(provider, "8.8.8.8", "2001:4860::1")
    finally:
        provider.close()
    assert found["8.8.8.8"].outcome is Outcome.RESOLVED
    assert found["2001:4860::1"].outcome is Outcome.MISS


async def test_asn_database_adds_asn_and_org(tmp_path: Path) -> None:
    """A GeoLite2-ASN file as asn_path fills asn/org for addresses the country file answered."""
    asn = write_mmdb(tmp_path / "asn.mmdb", {"8.8.8.0/24": geolite2_asn(15169, "GOOGLE"),
                                             "2001:4860::/32": geolite2_asn(15169, "GOOGLE")},
                     database_type="GeoLite2-ASN")
    config = MmdbConfig(path=str(country_db(tmp_path / "c.mmdb")), asn_path=str(asn))
    provider = MmdbProvider.open(config)
    try:
        found = await resolve(provider, "8.8.8.8", "2001:4860::1", "1.0.16.1")
    finally:
        provider.close()
    assert found["8.8.8.8"].geo == Geo("US", "United States", "AS15169", "GOOGLE")
    assert found["2001:4860::1"].geo.asn == "AS15169"
    assert found["1.0.16.1"].geo == Geo("JP", "Japan")  # no ASN record: country only


def _mm(**place: Any) -> dict[str, Any]:
    return {"country": place}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (geolite2_country("DE", "Germany"), Geo("DE", "Germany")),
        ({"registered_country": {"iso_code": "SE", "names": {"en": "Sweden"}}},
         Geo("SE", "Sweden")),  # anycast/satellite ranges: only the registration country
        ({"continent": {"code": "EU"}}, None),  # a continent alone is no country
        (_mm(iso_code="us"), Geo("US", "United States")),  # geod's name for the code
        (_mm(iso_code="KR"), Geo("KR", "South Korea")),
        (_mm(iso_code="XK", names={"en": "Kosovo"}), Geo("XK", "Kosovo")),
        (ipinfo_lite("BR", "Brazil", asn="", as_name=""), Geo("BR", "Brazil")),
        ({"country_code": "FR", "asn": "as3215", "as_name": "Orange"},
         Geo("FR", "France", "AS3215", "Orange")),
        (None, None),
    ],
)
def test_parse_country_layouts(record: Any, expected: Geo | None) -> None:
    """Each record layout gives the expected Geo (or None when it has no country)."""
    assert parse_country(record) == expected


@pytest.mark.parametrize(
    "record",
    [
        _mm(iso_code="EU"),  # a region, not a country
        _mm(iso_code="ZZ"),  # "unknown"
        _mm(iso_code="U$"),
        _mm(iso_code="USA"),
        _mm(iso_code=840),
        {"country_code": "US", "asn": "AS99999999999"},
        {"country_code": "US", "asn": "ASx"},
        {"country_code": "US", "asn": "AS0"},
        "United States",
        ["US"],
    ],
)
def test_parse_country_rejects_implausible_records(record: Any) -> None:
    """Values from a file are checked like ip-api answers: a bad record is not used."""
    with pytest.raises(ValueError, match="record|implausible"):
        parse_country(record)


@pytest.mark.parametrize(
    "record",
    [
        _mm(iso_code="NL", names={"en": "The Netherlands"}),
        _mm(iso_code="NL", names={"en": "Nether\x00lands"}),
        _mm(iso_code="NL", names={"en": 7}),
        _mm(iso_code="NL"),
        {"country_code": "NL", "country": "Netherlands (Kingdom of the)"},
        {"country_code": "NL", "country": ["Netherlands"]},
    ],
)
def test_parse_country_writes_geods_name_not_the_files(record: Any) -> None:
    """The name is geod's one name for the code: a file's own name, good or junk, is not read."""
    geo = parse_country(record)
    assert geo is not None and (geo.country_code, geo.country_name) == ("NL", "Netherlands")
    iso = parse_country(record, "iso")
    assert iso is not None and iso.country_name == country_name("NL", "iso")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (geolite2_asn(15169, "GOOGLE"), ("AS15169", "GOOGLE")),
        (geolite2_asn(4_294_967_295, "Top"), ("AS4294967295", "Top")),
        ({"autonomous_system_number": 13335}, ("AS13335", None)),
        (geolite2_asn(0, "reserved"), (None, None)),
        (geolite2_asn(2**32, "too big"), (None, None)),
        ({"autonomous_system_number": True}, (None, None)),
        (geolite2_asn(15169, "bad\x07org"), (None, None)),
        ({}, (None, None)),
        (None, (None, None)),
    ],
)
def test_parse_asn(record: Any, expected: tuple[str | None, str | None]) -> None:
    """ASN records give ("AS<n>", org); implausible ones give nothing rather than junk."""
    assert parse_asn(record) == expected


async def test_implausible_record_is_a_miss_with_reason(tmp_path: Path) -> None:
    """A record that fails validation is passed on, and says why."""
    path = write_mmdb(tmp_path / "bad.mmdb", {"8.8.8.0/24": _mm(iso_code="U$")})
    provider = MmdbProvider.open(MmdbConfig(path=str(path)))
    try:
        [lookup] = await provider.resolve(["8.8.8.8"])
    finally:
        provider.close()
    assert (lookup.outcome, lookup.reason) == (Outcome.MISS, "record has no valid country code")


async def test_replaced_file_is_reopened_on_next_lookup(tmp_path: Path, logs: Logs) -> None:
    """An atomic replacement (geoipupdate) is noticed by a stat() and the new data used."""
    path = write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States")})
    provider = MmdbProvider.open(MmdbConfig(path=str(path)))
    try:
        [before] = await provider.resolve(["8.8.8.8"])
        write_mmdb(path, {"8.8.8.0/24": geolite2_country("DE", "Germany")})
        [after] = await provider.resolve(["8.8.8.8"])
    finally:
        provider.close()
    assert (before.geo.country_code, after.geo.country_code) == ("US", "DE")
    assert len(events(logs, "mmdb_opened")) == 2


async def test_bad_replacement_keeps_old_reader_and_logs_once(tmp_path: Path,
                                                              logs: Logs) -> None:
    """A corrupt or deleted file is one error per change; the old data keeps answering."""
    path = write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States")})
    provider = MmdbProvider.open(MmdbConfig(path=str(path)))
    try:
        path.with_name("junk").write_bytes(b"not a database" * 10)
        os.replace(path.with_name("junk"), path)
        first = await provider.resolve(["8.8.8.8"])
        second = await provider.resolve(["8.8.8.8"])
        path.unlink()
        third = await provider.resolve(["8.8.8.8"])
        write_mmdb(path, {"8.8.8.0/24": geolite2_country("JP", "Japan")})
        fourth = await provider.resolve(["8.8.8.8"])
    finally:
        provider.close()
    codes = [batch[0].geo.country_code for batch in (first, second, third, fourth)]
    assert codes == ["US", "US", "US", "JP"]
    failures = events(logs, "mmdb_reload_failed")
    assert [f["log_level"] for f in failures] == ["error", "error"]
    assert "not a MaxMind DB file" in failures[0]["reason"]
    assert "No such file or directory" in failures[1]["reason"]
    assert failures[0]["action"] == "kept_old_reader"


async def test_forced_refresh_reopens_an_unchanged_file(tmp_path: Path, logs: Logs) -> None:
    """SIGHUP re-opens even when the file looks unchanged (the operator asked for it)."""
    reader = WatchedReader(str(country_db(tmp_path / "c.mmdb")))
    try:
        reader.refresh()
        reader.refresh(force=True)
    finally:
        reader.close()
    assert len(events(logs, "mmdb_opened")) == 2


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda p: None, "No such file or directory"),
        (lambda p: p.write_bytes(b""), "not a MaxMind DB file"),
        (lambda p: p.write_bytes(b"\xab\xcd\xefMaxMind.com" + b"\x00" * 40),
         "not a MaxMind DB file"),
        (lambda p: p.mkdir(), "Is a directory"),
    ],
    ids=["missing", "empty", "truncated", "directory"],
)
def test_unusable_file_names_path_and_reason(tmp_path: Path, setup: Any, reason: str) -> None:
    """Opening a file that is not a usable database says which file and why."""
    path = tmp_path / "c.mmdb"
    setup(path)
    with pytest.raises(MmdbOpenError) as caught:
        WatchedReader(str(path))
    assert str(caught.value) == f"cannot open {path}: {reason}"


def test_bad_asn_file_fails_the_provider(tmp_path: Path) -> None:
    """A bad asn_path fails opening the provider, naming that file."""
    config = MmdbConfig(path=str(country_db(tmp_path / "c.mmdb")),
                        asn_path=str(tmp_path / "missing.mmdb"))
    with pytest.raises(MmdbOpenError, match="missing.mmdb"):
        MmdbProvider.open(config)


def test_permission_denied_is_reported_as_such(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable file (EACCES; root in CI cannot make one) names the OS's reason."""

    def deny(path: str, mode: int) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("geod.mmdb.maxminddb.open_database", deny)
    (tmp_path / "c.mmdb").write_bytes(b"x")  # there, so the library's open is what fails
    with pytest.raises(MmdbOpenError) as caught:
        WatchedReader(str(tmp_path / "c.mmdb"))
    assert str(caught.value) == f"cannot open {tmp_path / 'c.mmdb'}: Permission denied"
