"""Real MaxMind DB files for tests, built with `mmdb-writer` in the layouts real vendors ship.

Record shapes follow the vendors' documented schemas: MaxMind GeoLite2/GeoIP2 Country and City,
DB-IP Lite (the GeoIP2 Country layout), IPinfo Lite (flat strings) and GeoLite2 ASN. Files are
written to a temporary name and renamed into place, the way geoipupdate replaces them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from mmdb_writer import MMDBWriter
from netaddr import IPSet

Record = dict[str, Any]

_CONTINENTS = {"US": ("NA", "North America"), "JP": ("AS", "Asia"), "DE": ("EU", "Europe"),
               "BR": ("SA", "South America"), "ZA": ("AF", "Africa")}


def _continent(code: str) -> Record:
    short, name = _CONTINENTS.get(code, ("EU", "Europe"))
    return {"code": short, "geoname_id": 6255148, "names": {"en": name, "de": name}}


def _place(code: str, name: str) -> Record:
    return {"geoname_id": 6252001, "iso_code": code, "is_in_european_union": code == "DE",
            "names": {"de": f"{name} (de)", "en": name, "ja": name, "zh-CN": name}}


def geolite2_country(code: str, name: str) -> Record:
    return {"continent": _continent(code), "country": _place(code, name),
            "registered_country": _place(code, name)}


def geolite2_city(code: str, name: str) -> Record:
    return {
        **geolite2_country(code, name),
        "city": {"geoname_id": 5375480, "names": {"en": "Mountain View"}},
        "location": {"accuracy_radius": 1000, "latitude": 37.751, "longitude": -97.822,
                     "time_zone": "America/Chicago"},
        "postal": {"code": "94043"},
        "subdivisions": [{"geoname_id": 5332921, "iso_code": "CA",
                          "names": {"en": "California"}}],
    }


def dbip_lite(code: str, name: str) -> Record:
    place = _place(code, name)
    return {"continent": _continent(code), "country": place}


def ipinfo_lite(code: str, name: str, asn: str = "AS15169", as_name: str = "Google LLC") -> Record:
    short, continent = _CONTINENTS.get(code, ("EU", "Europe"))
    return {"asn": asn, "as_name": as_name, "as_domain": "google.com", "country_code": code,
            "country": name, "continent_code": short, "continent": continent}


def geolite2_asn(number: int, org: str) -> Record:
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


LAYOUTS: dict[str, tuple[str, Callable[[str, str], Record]]] = {
    "geolite2-country": ("GeoLite2-Country", geolite2_country),
    "geolite2-city": ("GeoLite2-City", geolite2_city),
    "dbip-lite": ("DBIP-Country-Lite", dbip_lite),
    "ipinfo-lite": ("ipinfo lite.mmdb", ipinfo_lite),
}


def write_mmdb(
    path: Path,
    networks: Mapping[str, Record],
    *,
    database_type: str = "GeoLite2-Country",
    ip_version: int = 6,
    build_epoch: int | None = None,
) -> Path:
    """Write `networks` (CIDR -> record) to `path` atomically; IPv4 CIDRs go in ::/96 in v6.

    `build_epoch` sets the build time in the metadata (default: now, as a vendor's build).
    """
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6,
                        database_type=database_type, languages=["en"],
                        description="geod test database")
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    partial = path.with_name(path.name + ".partial")
    if build_epoch is None:
        writer.to_db_file(str(partial))
    else:  # mmdb-writer stamps time.time(); a test needs two builds within one second
        with mock.patch("mmdb_writer.time.time", return_value=float(build_epoch)):
            writer.to_db_file(str(partial))
    os.replace(partial, path)
    return path


def _skip_value(data: bytes, at: int) -> int:
    """Where the MaxMind DB value encoded at `at` ends (scalars only: all metadata needs here)."""
    control = data[at]
    kind, size = control >> 5, control & 0x1F
    at += 1
    if kind == 0:  # extended type: the real type follows in the next byte
        at += 1
    if size >= 29:  # longer sizes carry 1-3 more bytes (the spec's 29/30/31 forms)
        extra = size - 28
        size = {29: 29, 30: 285, 31: 65_821}[size] + int.from_bytes(data[at:at + extra], "big")
        at += extra
    return at + size


def with_build_epoch(path: Path, epoch: int) -> Path:
    """Rewrite the metadata's build_epoch (a uint64) in place: `epoch` may be anything 64-bit."""
    data = path.read_bytes()
    marker = data.rindex(b"\xab\xcd\xefMaxMind.com")
    key = data.index(b"build_epoch", marker) + len(b"build_epoch")
    end = _skip_value(data, key)
    # 0x08, 0x02: extended type (uint64 is type 9 = 7 + 2) of 8 bytes, then the value.
    value = b"\x08\x02" + epoch.to_bytes(8, "big")
    path.write_bytes(data[:key] + value + data[end:])
    return path


def corrupt_text(path: Path, text: str) -> Path:
    """Break the one UTF-8 string `text` in the data section: its type byte becomes invalid.

    The control byte of a short string is 0b010 (utf8) + its length; it is rewritten as an
    extended type (0b000 + length), so the first character is read as the type number, which
    no valid type has. Everything else keeps its offset: only records using `text` break.
    """
    data = path.read_bytes()
    encoded = text.encode()
    assert len(encoded) < 29, "a short string keeps a one-byte control"
    needle = bytes([0x40 | len(encoded)]) + encoded
    assert data.count(needle) == 1, "the text must appear exactly once"
    path.write_bytes(data.replace(needle, bytes([len(encoded)]) + encoded))
    return path
