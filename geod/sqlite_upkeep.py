"""The SQL of upkeep over the app's SQLite table: which rows with a country to read, and the
optimistic UPDATEs that write what upkeep decided. Pure string building over validated, quoted
identifiers; values are always bound parameters. Private to `sqlite_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geod.config import ColumnsConfig, DatabaseConfig
from geod.records import Change, UpkeepQuery
from geod.sqlite_schema import quote

# One UPDATE shape and the parameter rows it runs with; `kind` is what its rows count as.
Statement = tuple[str, str, list[tuple[Any, ...]]]


def upkeep_where(cols: ColumnsConfig, query: UpkeepQuery) -> tuple[str, list[Any]]:
    """The SQL form of `query` over the mapped columns (rules on unmapped ones drop out)."""
    rules: list[str] = []
    params: list[Any] = []
    fill = [quote(getattr(cols, name)) for name in query.fill if getattr(cols, name, "")]
    if fill:
        rules.append(" OR ".join(f"{col} IS NULL" for col in fill))
    src, ts = quote(cols.source) if cols.source else "", quote(cols.updated_at)
    geod = "0"
    if src and query.geod_sources:
        marks = ", ".join("?" for _ in query.geod_sources)
        globs = " OR ".join(f"{src} GLOB ?" for _ in query.geod_sources)
        geod = f"({src} IS NOT NULL AND ({src} IN ({marks}) OR {globs}))"
    geod_params = [*query.geod_sources, *(f"{name}:*" for name in query.geod_sources)]
    if cols.updated_at and query.geod_before and geod != "0":
        rules.append(f"{geod} AND ({ts} IS NULL OR {ts} < ?)")
        params += [*geod_params, query.geod_before]
    if cols.updated_at and query.app_before:
        rules.append(f"NOT {geod} AND ({ts} IS NULL OR {ts} < ?)")
        params += [*(geod_params if geod != "0" else []), query.app_before]
    if src and query.mmdb_stamp:
        rules.append(f"({src} = 'mmdb' OR {src} GLOB 'mmdb:*') AND {src} != ?")
        params.append(query.mmdb_stamp)
    return " OR ".join(f"({rule})" for rule in rules), params


def upkeep_select(config: DatabaseConfig, cursor: str, where: str, *, first: bool) -> str:
    """Rows with a country that `where` selects, after the bound cursor value (unless `first`)."""
    columns = ", ".join(quote(c) for c in config.columns.written().values())
    country = quote(config.columns.country_code)
    after = "" if first else f"AND {cursor} > ? "
    return (f"SELECT {quote(config.columns.ip)}, {cursor}, {columns} "
            f"FROM {quote(config.table)} WHERE {country} IS NOT NULL AND {country} != '' "
            f"AND {quote(config.columns.ip)} IS NOT NULL AND ({where}) {after}"
            f"ORDER BY {cursor} LIMIT ?")


def change_statements(config: DatabaseConfig, changes: Sequence[Change]) -> list[Statement]:
    """One guarded UPDATE per shape of change, with its parameter rows (changes with nothing to
    set are left out: see `unguarded`).

    The optimistic guard is every mapped value as read (`IS` matches NULL to NULL): a row the
    app rewrote while geod looked it up is left alone.
    """
    cols = config.columns
    groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
    for change in changes:
        if change.sets:
            shape = (change.kind, tuple(change.sets), tuple(change.expected))
            groups.setdefault(shape, []).append(
                (*change.sets.values(), change.key, *change.expected.values()))
    statements: list[Statement] = []
    for (kind, sets, expected), params in groups.items():
        assignments = ", ".join(f"{quote(getattr(cols, name))} = ?" for name in sets)
        guard = " AND ".join(f"{quote(getattr(cols, name))} IS ?" for name in expected)
        sql = (f"UPDATE {quote(config.table)} SET {assignments} WHERE {quote(cols.ip)} = ?"
               + (f" AND {guard}" if guard else ""))
        statements.append((kind, sql, params))
    return statements


def unguarded(changes: Sequence[Change]) -> dict[str, int]:
    """Counts per kind, starting with the changes that set nothing (no timestamp or source
    mapped to move): nothing can race them, so they count as done."""
    counts = {change.kind: 0 for change in changes}
    for change in changes:
        if not change.sets:
            counts[change.kind] += 1
    return counts
