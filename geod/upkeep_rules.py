"""What upkeep decides, without I/O: which rows with a country need a look, and what an
answer changes in one.

`make_query` turns `[refresh]` and the chain into the store's `UpkeepQuery`; `classify` says why a
row read under it needs a look (fill, refresh, a new mmdb build); `decide` turns one answer into
the write it calls for, or None. `upkeep` runs them over the table.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from geod.config import PROVIDERS, Config
from geod.provider import Provider, provider_fields, source_tag
from geod.records import Change, Geo, Stored, UpkeepQuery
from geod.validate import country_name

GEO_FIELDS = ("country_code", "country_name", "asn", "org")
FILL_FIELDS = ("country_name", "asn", "org")
STAMP = "%Y-%m-%dT%H:%M:%SZ"  # what geod writes into `updated_at`, and compares it with


class Kind(enum.Enum):
    FILL = "fill"  # has a country, lacks a name / asn / org
    REFRESH = "refresh"  # older than its `after`: re-resolved through the whole chain
    REBUILD = "rebuild"  # answered by another build of the mmdb file: re-checked offline


def make_query(config: Config, chain: Sequence[Provider], now: datetime) -> UpkeepQuery:
    """This pass's `UpkeepQuery` from `[refresh]`, the mapped columns and the chain."""
    refresh, cols = config.refresh, config.database.columns
    can = frozenset().union(*(provider_fields(p) for p in chain)) if chain else frozenset()
    # A NULL name is always fillable (it follows from the code); asn/org only with a provider
    # that has them, or every row without one would be read again every pass for nothing.
    fill = tuple(name for name in FILL_FIELDS if refresh.fill and getattr(cols, name)
                 and (name == "country_name" or name in can))
    after, app_after = refresh.after_s(), refresh.app_after_s()
    stamps = [source_tag(p) for p in chain if p.name == "mmdb"]
    return UpkeepQuery(
        fill=fill,
        geod_sources=PROVIDERS if cols.source else (),
        geod_before=_before(now, after) if after and cols.source else None,
        app_before=_before(now, app_after) if app_after else None,
        mmdb_stamp=stamps[0] if stamps and refresh.new_mmdb_build and cols.source else None,
    )


def _before(now: datetime, seconds: float) -> str:
    return (now - timedelta(seconds=seconds)).strftime(STAMP)


def is_geods(source: Any, sources: Sequence[str]) -> bool:
    return isinstance(source, str) and any(
        source == name or source.startswith(name + ":") for name in sources)


def classify(row: Stored, query: UpkeepQuery) -> Kind | None:
    """Why `row` needs upkeep (a refresh covers a fill and a re-check), or None."""
    values = row.values
    stamp = values.get("updated_at")
    geods = is_geods(values.get("source"), query.geod_sources)
    old_before = query.geod_before if geods else query.app_before
    if old_before is not None and "updated_at" in values and (
            stamp is None or str(stamp) < old_before):
        return Kind.REFRESH
    source = values.get("source")
    if (query.mmdb_stamp and isinstance(source, str) and source != query.mmdb_stamp
            and (source == "mmdb" or source.startswith("mmdb:"))):
        return Kind.REBUILD
    if any(name in values and values[name] is None for name in query.fill):
        return Kind.FILL
    return None


def local_fill(row: Stored, style: str) -> dict[str, Any]:
    """What a fill can set without asking anyone: the country's name follows from its code."""
    if "country_name" in row.values and row.values["country_name"] is None:
        name = country_name(str(row.values.get("country_code")).upper(), style)
        if name is not None:
            return {"country_name": name}
    return {}


def decide(row: Stored, kind: Kind, geo: Geo, tag: str, now: str,
           preset: dict[str, Any] | None = None) -> Change | None:
    """The write one answer calls for; None when it says nothing new about the row.

    A fill sets only NULL fields (`preset`: what it sets anyway, see `local_fill`), and only from
    an answer that agrees on the country: another country's AS would not belong to the row. A
    refresh or re-check sets every field the answer has that differs (a field the answer lacks
    keeps its value), plus the timestamp and source.
    """
    values = row.values
    if kind is Kind.FILL:
        preset = preset or {}
        if geo.country_code != str(values.get("country_code")).upper():
            return None
        sets = {name: getattr(geo, name) for name in FILL_FIELDS
                if name in values and values[name] is None and name not in preset
                and getattr(geo, name) is not None}
        return Change(row.key, dict(values), {**preset, **sets}, "filled") if sets else None
    sets = {name: getattr(geo, name) for name in GEO_FIELDS
            if name in values and getattr(geo, name) is not None
            and getattr(geo, name) != values[name]}
    kind_name = "changed" if sets else "confirmed"
    if "updated_at" in values:
        sets["updated_at"] = now
    if "source" in values and values["source"] != tag:
        sets["source"] = tag
    return Change(row.key, dict(values), sets, kind_name)


def utc_datetime(stamp: str) -> datetime:
    """Parse geod's own timestamp format back (for the query's cutoffs)."""
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
