"""One English name per country code, whichever provider answered.

A dashboard groups rows by name, so the name geod writes is a function of the code alone: a
provider's own spelling ("Russian Federation", "The Netherlands") is never kept. `common`
(default) is the short name ip-api and MaxMind answer, from GeoNames plus `OVERRIDES`; `iso` is
ISO 3166-1's `name` from pycountry. Knows nothing about providers or which codes are countries.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

from geod.geonames_countries import GEONAMES

COMMON = "common"
ISO = "iso"
STYLES = (COMMON, ISO)

# Kosovo has no ISO 3166-1 entry yet; XK is the user-assigned code MaxMind, DB-IP, ip-api and
# RIPE use, so it is a country here, with the one name every source gives it.
_KOSOVO = {"XK": "Kosovo"}

# Where GeoNames' short name is not what ip-api and MaxMind answer, the answer wins. Each entry
# is code -> (name, what it was checked against). Add one only with a captured answer to cite.
OVERRIDES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "NL": ("Netherlands",
           "GeoNames: 'The Netherlands'. Captured ip-api answers ({\"country\":\"Netherlands\","
           "\"countryCode\":\"NL\"}) and MaxMind's GeoIP2-Country-Test data (names.en) say "
           "'Netherlands'."),
    "PS": ("Palestine",
           "GeoNames: 'Palestinian Territory'. A captured ip-api answer for Gaza says "
           "{\"country\":\"Palestine\",\"countryCode\":\"PS\"}; issue 13's sample of MaxMind "
           "and ip-api answers says 'Palestine' too."),
})


@functools.cache
def names(style: str) -> Mapping[str, str]:
    """Code -> name for `style` (`common` or `iso`), every ISO 3166-1 code plus XK.

    Raises:
        ValueError: an unknown style (config validation keeps this from happening).
    """
    if style == COMMON:
        table = {**GEONAMES, **{code: name for code, (name, _) in OVERRIDES.items()}}
    elif style == ISO:
        import pycountry  # deferred: ~50 ms of import an ip-api-only daemon does not need

        table = {country.alpha_2: country.name for country in pycountry.countries}
    else:
        raise ValueError(f"unknown country name style {style!r}")
    return MappingProxyType({**table, **_KOSOVO})
