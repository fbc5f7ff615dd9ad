"""One name per country code, from every provider path, in each `country_names` style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pycountry
import pytest

from geod import geonames_countries
from geod.country_names import COMMON, ISO, OVERRIDES, STYLES, names
from geod.geonames_countries import GEONAMES
from geod.ipapi import FIELDS, parse_batch
from geod.mmdb import MmdbProvider, WatchedReader
from geod.records import Lookup, Outcome
from geod.rir import RirProvider, _lookup
from tests.fake_ipapi import FakeIpApi, parse_fields
from tests.geonames_source import geonames_names, render
from tests.mmdb_files import LAYOUTS, Record, geolite2_country, ipinfo_lite, write_mmdb

CODES = sorted({country.alpha_2 for country in pycountry.countries} | {"XK"})


def spellings(code: str) -> list[str]:
    """Names sources really use for `code`: ISO's, GeoNames' raw one, and a stray variant."""
    iso = pycountry.countries.get(alpha_2=code)
    return [iso.name if iso else "Republic of Kosovo", GEONAMES[code], f"The {code} Country"]


def address(index: int) -> str:
    return f"11.{index}.0.1"  # one /16 per code; 250 codes fit in 11.0.0.0/8


def _no_names(record: Record) -> Record:
    """A GeoLite2 record whose places carry no `names` (some DB-IP and custom builds)."""
    return {key: {k: v for k, v in value.items() if k != "names"} if isinstance(value, dict)
            else value for key, value in record.items()}


# Every record shape the mmdb provider reads, built with a provider's own spelling of the name
# (or none at all): the four vendor layouts, records without a name, and a registered_country
# only record (anycast ranges), and IPinfo Lite without its `country` string.
MMDB_SHAPES: dict[str, Any] = {
    **{layout: build for layout, (_, build) in LAYOUTS.items()},
    "geolite2-without-names": lambda code, name: _no_names(geolite2_country(code, name)),
    "registered-country-only": lambda code, name: {
        "registered_country": geolite2_country(code, name)["registered_country"]},
    "ipinfo-lite-without-name": lambda code, name: {
        k: v for k, v in ipinfo_lite(code, name).items() if k != "country"},
}


def _names_by_code(lookups: list[Lookup]) -> dict[str, str | None]:
    assert all(lookup.outcome is Outcome.RESOLVED and lookup.geo for lookup in lookups)
    return {lookup.geo.country_code: lookup.geo.country_name for lookup in lookups if lookup.geo}


def ipapi_names(style: str, spelling: int) -> dict[str, str | None]:
    """Every code through ip-api's parser: the fake server's answer, moved to each code.

    The answer also carries a `country` in another spelling (as a server ignoring `fields`
    would): geod must not take it.
    """
    fake = FakeIpApi()
    payload = []
    for index, code in enumerate(CODES):
        answer = fake.answer_for(address(index), parse_fields(FIELDS))
        payload.append({**answer, "countryCode": code, "country": spellings(code)[spelling]})
    asked = [address(index) for index in range(len(CODES))]
    return _names_by_code(parse_batch(payload, asked, names=style))


@pytest.fixture(scope="module")
def mmdb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real .mmdb per record shape, every code in it under its own /16."""
    folder = tmp_path_factory.mktemp("names")
    files = {}
    for shape, build in MMDB_SHAPES.items():
        networks = {f"11.{index}.0.0/16": build(code, spellings(code)[index % 3])
                    for index, code in enumerate(CODES)}
        files[shape] = write_mmdb(folder / f"{shape}.mmdb", networks)
    return files


async def mmdb_names(path: Path, style: str) -> dict[str, str | None]:
    provider = MmdbProvider(WatchedReader(str(path)), names=style)
    try:
        return _names_by_code(await provider.resolve([address(i) for i in range(len(CODES))]))
    finally:
        provider.close()


def rir_names(style: str) -> dict[str, str | None]:
    """Every code through the rir provider's mapping of iptocc's answers."""
    return _names_by_code([_lookup(address(i), code, style) for i, code in enumerate(CODES)])


@pytest.mark.parametrize("style", STYLES)
async def test_every_code_has_one_name_from_every_provider(
    style: str, mmdb_files: dict[str, Path]
) -> None:
    """Whichever provider answers, and however its data spells it, a code gets one name."""
    paths: dict[str, dict[str, str | None]] = {
        f"ip-api/{n}": ipapi_names(style, n) for n in range(3)}
    for shape, path in mmdb_files.items():
        paths[f"mmdb/{shape}"] = await mmdb_names(path, style)
    paths["rir"] = rir_names(style)
    for path, by_code in paths.items():
        assert sorted(by_code) == CODES, path
    for code in CODES:
        seen = {by_code[code] for by_code in paths.values()}
        assert seen == {names(style)[code]}, (code, seen)
        assert seen != {None}


@pytest.mark.parametrize(
    ("code", "common", "iso"),
    [  # issue 13's differing sample, before: rir/ISO wrote the right column, ip-api the middle
        ("RU", "Russia", "Russian Federation"),
        ("KR", "South Korea", "Korea, Republic of"),
        ("IR", "Iran", "Iran, Islamic Republic of"),
        ("VN", "Vietnam", "Viet Nam"),
        ("PS", "Palestine", "Palestine, State of"),
        ("VG", "British Virgin Islands", "Virgin Islands, British"),
        ("VI", "U.S. Virgin Islands", "Virgin Islands, U.S."),
        ("NL", "Netherlands", "Netherlands"),
        ("TW", "Taiwan", "Taiwan, Province of China"),
        ("SY", "Syria", "Syrian Arab Republic"),
        ("LA", "Laos", "Lao People's Democratic Republic"),
        ("BO", "Bolivia", "Bolivia, Plurinational State of"),
        ("XK", "Kosovo", "Kosovo"),
    ],
)
def test_the_two_styles(code: str, common: str, iso: str) -> None:
    """`common` is what ip-api and MaxMind say; `iso` is ISO 3166-1's name."""
    assert (names(COMMON)[code], names(ISO)[code]) == (common, iso)


# Country names in answers captured from the real services, to check `common` against.
# MaxMind: names.en in MaxMind-DB's source-data/GeoIP2-{Country,City,Enterprise,
# Precision-Enterprise}-Test.json (maxmind/MaxMind-DB at 2f18851d, 2026-08-05).
# ip-api: bodies of ip-api.com answers captured in public projects' tests and comments.
CAPTURED = {
    "maxmind": {
        "AE": "United Arab Emirates", "AT": "Austria", "AU": "Australia", "BE": "Belgium",
        "BT": "Bhutan", "BY": "Belarus", "CH": "Switzerland", "CN": "China", "DE": "Germany",
        "GB": "United Kingdom", "HK": "Hong Kong", "IE": "Ireland", "IL": "Israel",
        "IM": "Isle of Man", "IR": "Iran", "JP": "Japan", "KR": "South Korea", "LY": "Libya",
        "NL": "Netherlands", "PH": "Philippines", "RS": "Serbia", "RU": "Russia",
        "TR": "Turkey", "TW": "Taiwan", "UA": "Ukraine", "US": "United States",
        "VN": "Vietnam",
    },
    "ip-api": {"HK": "Hong Kong", "KR": "South Korea", "NL": "Netherlands", "PS": "Palestine",
               "RU": "Russia", "TR": "Turkey", "US": "United States", "VN": "Vietnam"},
}


@pytest.mark.parametrize("source", sorted(CAPTURED))
def test_common_names_match_captured_answers(source: str) -> None:
    """The default names are the ones the real services answered."""
    table = names(COMMON)
    assert {code: table[code] for code in CAPTURED[source]} == CAPTURED[source]


def test_each_override_is_needed_and_explained() -> None:
    """An override names a real code, differs from GeoNames (else it is stale) and says why."""
    for code, (name, reason) in OVERRIDES.items():
        assert code in CODES and GEONAMES[code] != name and names(COMMON)[code] == name
        assert "GeoNames" in reason and len(reason) > 40


def test_every_code_has_a_name_in_each_style() -> None:
    """Both tables cover exactly ISO 3166-1 plus XK, with plausible, trimmed names."""
    for style in STYLES:
        table = names(style)
        assert sorted(table) == CODES
        assert all(name and name == name.strip() and name.isprintable() for name in table.values())


def test_vendored_geonames_table_matches_the_dataset() -> None:
    """geod's copy is GeoNames' table as packaged; a rename upstream shows up here first.

    Regenerate with `.venv/bin/python -m tests.geonames_source > geod/geonames_countries.py`,
    then check the new spelling against ip-api's and MaxMind's answers before committing it.
    """
    assert GEONAMES == geonames_names()
    assert Path(geonames_countries.__file__).read_text("utf-8") == render()


@pytest.mark.parametrize(("style", "name"), [(COMMON, "Russia"), (ISO, "Russian Federation")])
async def test_rir_provider_names_a_real_address(style: str, name: str) -> None:
    """The real rir provider writes the style's name (77.88.8.8 is allocated to RU)."""
    [lookup] = await RirProvider(style).resolve(["77.88.8.8"])
    assert lookup.geo is not None and (lookup.geo.country_code, lookup.geo.country_name) == (
        "RU", name)
