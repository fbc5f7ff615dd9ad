"""Which two-letter codes name a country, and what the country is called.

Offline sources hand us codes from files and embedded tables; like ip-api's answers they are
checked before anything is written. The names come from `pycountry` (ISO 3166-1, maintained),
never from a table kept here. Pure functions; the ISO table is loaded once, on first use.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_CODE = re.compile(r"[A-Za-z]{2}")
MAX_TEXT = 256  # names and org strings longer than this are not plausible data

# Kosovo has no ISO 3166-1 code yet; MaxMind, DB-IP, ip-api and RIPE all use the user-assigned
# XK for it, so it is a country here. Every other code outside ISO 3166-1 (EU, AP, ZZ, ...) is a
# region or "unknown" marker and is not written as a country.
_EXTRA = {"XK": "Kosovo"}


@functools.cache
def _names() -> dict[str, str]:
    """Code -> the name people use ("South Korea", not "Korea, Republic of")."""
    import pycountry  # deferred: ~50 ms of import that an ip-api-only daemon never needs

    names = {
        country.alpha_2: getattr(country, "common_name", None) or country.name
        for country in pycountry.countries
    }
    return {**names, **_EXTRA}


def country_code(value: Any) -> str | None:
    """`value` as an upper-case code if it names a country, else None (region, junk, absent)."""
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        return None
    code = value.upper()
    return code if code in _names() else None


def country_name(code: str) -> str | None:
    """The English name of a code `country_code` accepted."""
    return _names().get(code)


def plausible_text(value: Any) -> str | None:
    """An optional string from a data file: None when absent or empty.

    Raises:
        ValueError: present but not plausible text (not a string, too long, control characters).
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError("implausible text field")
    return value
