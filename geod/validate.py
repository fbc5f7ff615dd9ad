"""One rule set for every provider's answer: country codes, AS numbers, and free text.

ip-api's JSON, MaxMind DB records and RIR tables are all untrusted input, so each provider passes
its values through these checks before anything is written; a provider never keeps rules of its
own. Names come from `country_names`: one per code, whatever the source said. Pure functions;
the tables are built once, on first use.
"""

from __future__ import annotations

import functools
import re
import string
from typing import Any

from geod.country_names import COMMON, names

# ASCII only: str patterns' \d and case-folding would let 'AS١٥١٦٩' or 'aſ1' through.
_CODE = re.compile(r"[A-Z]{2}", re.ASCII | re.IGNORECASE)
_ASN = re.compile(r"AS([0-9]{1,10})", re.ASCII | re.IGNORECASE)
MAX_ASN = 2**32 - 1  # AS numbers are 32-bit; 0 and 4294967295's neighbours above are invalid
MAX_TEXT = 256  # names and org strings longer than this are not plausible data

# Kosovo (XK, the user-assigned code MaxMind, DB-IP, ip-api and RIPE use) is a country: its name
# is in `country_names`. Every other user-assigned code (AA, QM-QZ, XA-XZ, ZZ) and every reserved
# one (EU, AP, ...) is a region or "unknown" marker, never written as a country.
_USER_ASSIGNED = frozenset(
    {"AA", "ZZ"}
    | {"Q" + letter for letter in "MNOPQRSTUVWXYZ"}
    | {"X" + letter for letter in string.ascii_uppercase}
) - {"XK"}


@functools.cache
def _codes() -> frozenset[str]:
    """Every code that names a country: ISO 3166-1 plus XK, as `country_names` has them."""
    return frozenset(names(COMMON))


def country_code(value: Any) -> str | None:
    """`value` as an upper-case code if it names a country, else None (region, junk, absent).

    A country is an assigned ISO 3166-1 alpha-2 code, or XK; any case is accepted.
    """
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        return None
    code = value.upper()
    return code if code not in _USER_ASSIGNED and code in _codes() else None


def country_name(code: str, style: str = COMMON) -> str | None:
    """The one name geod writes for a code `country_code` accepted (see `country_names`)."""
    return names(style).get(code)


def asn(value: Any) -> str | None:
    """'AS15169' from 15169, 'AS15169' or 'as15169'; None when absent (None or "").

    Raises:
        ValueError: anything else: not ASCII digits, or outside 1..4294967295.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _ASN.fullmatch(value)):
        number = int(match.group(1))
    else:
        raise ValueError("invalid AS number")
    if not 0 < number <= MAX_ASN:
        raise ValueError("invalid AS number")
    return f"AS{number}"


def plausible_text(value: Any) -> str | None:
    """An optional string from an answer: None when absent or empty.

    Raises:
        ValueError: present but not plausible text (not a string, too long, control characters).
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError("implausible text field")
    return value
