"""The SQL of upkeep over the app's PostgreSQL table: which rows with a country to read, and the
one guarded UPDATE that writes what upkeep decided. Identifiers through `psycopg.sql`, values
always bound. Private to `pg_store`.

Every mapped value is read, filtered and guarded in one text form (`readable`): a timestamp
column as ISO 8601 UTC text like geod's own stamps, any other column as its text. So the cutoffs
compare as the pure rules compare (`upkeep_rules.classify`), and a write's guard matches exactly
the value read, whatever type the app gave the column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from geod.config import DatabaseConfig
from geod.records import Change, Stored, UpkeepQuery

# rtrim drops a zero fraction ("…:00.000000" -> "…:00"), so whole seconds read as geod writes them.
_ISO = "rtrim(rtrim(to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '0'), '.') || 'Z'"


def readable(column: sql.Composable, kind: str) -> sql.Composed:
    """`column` (of SQL type `kind`) as the text upkeep reads, compares and guards with."""
    if kind.startswith("timestamp") and kind.endswith("with time zone"):
        return sql.SQL(_ISO).format(sql.SQL("({} AT TIME ZONE 'UTC')").format(column))
    if kind.startswith("timestamp"):  # without time zone: geod writes UTC there
        return sql.SQL(_ISO).format(column)
    return sql.SQL("{}::text").format(column)


class UpkeepSql:
    """Upkeep's statements over one table, its mapped columns and their types."""

    def __init__(self, config: DatabaseConfig, types: dict[str, str], key: sql.Composable
                 ) -> None:
        self._config = config
        self._types = types
        self._key = key  # the ip column as text (host() for inet), as `Row.key` is read
        self._written = config.columns.written()  # field name -> column
        self._values = {name: readable(sql.Identifier(column), types[column])
                        for name, column in self._written.items()}

    def where(self, query: UpkeepQuery) -> tuple[sql.Composable, dict[str, Any]] | None:
        """The SQL form of `query` over the mapped columns; None when no rule applies."""
        cols = self._config.columns
        rules: list[sql.Composable] = []
        params: dict[str, Any] = {}
        fill = [sql.SQL("{} IS NULL").format(sql.Identifier(getattr(cols, name)))
                for name in query.fill if getattr(cols, name, "")]
        if fill:
            rules.append(sql.SQL(" OR ").join(fill))
        geod: sql.Composable = sql.SQL("false")
        if cols.source and query.geod_sources:
            # "rir" or "mmdb:1764000000": the name before any ":" (provider names have none).
            geod = sql.SQL("({src} IS NOT NULL AND split_part({src}::text, ':', 1) = ANY("
                           "%(geod_sources)s::text[]))").format(src=sql.Identifier(cols.source))
            params["geod_sources"] = list(query.geod_sources)
        if cols.updated_at:
            old = sql.SQL("({} IS NULL OR {} < {})")
            stamp = sql.Identifier(cols.updated_at)
            if query.geod_before and cols.source and query.geod_sources:
                rules.append(sql.SQL("{} AND {}").format(geod, old.format(
                    stamp, self._values["updated_at"], sql.Placeholder("geod_before"))))
                params["geod_before"] = query.geod_before
            if query.app_before:
                rules.append(sql.SQL("NOT {} AND {}").format(geod, old.format(
                    stamp, self._values["updated_at"], sql.Placeholder("app_before"))))
                params["app_before"] = query.app_before
        if cols.source and query.mmdb_stamp:
            rules.append(sql.SQL("split_part({src}::text, ':', 1) = 'mmdb' AND {src}::text <> "
                                 "%(mmdb_stamp)s").format(src=sql.Identifier(cols.source)))
            params["mmdb_stamp"] = query.mmdb_stamp
        if not rules:
            return None
        return sql.SQL(" OR ").join(sql.SQL("({})").format(rule) for rule in rules), params

    def select(self, where: sql.Composable, *, first: bool) -> sql.Composed:
        """Rows with a country that `where` selects, keyset-paged on the ip column after the
        bound `after` (unless `first`), at most the bound `size`."""
        cols = self._config.columns
        ip, country = sql.Identifier(cols.ip), sql.Identifier(cols.country_code)
        after = sql.SQL("") if first else sql.SQL("AND {} > CAST(%(after)s AS {}) ").format(
            ip, sql.SQL(self._types[cols.ip]))
        return sql.SQL(
            "SELECT {key}, {values} FROM {t} WHERE {cc} IS NOT NULL AND {cc} <> '' "
            "AND {ip} IS NOT NULL AND ({where}) {after}ORDER BY {ip} LIMIT %(size)s").format(
                key=self._key, values=sql.SQL(", ").join(self._values.values()),
                t=sql.Identifier(self._config.table), cc=country, ip=ip, where=where,
                after=after)

    def stored(self, found: Sequence[Sequence[Any]]) -> list[Stored]:
        """The rows `select` found; the key is also the cursor (`after`) of the next page."""
        names = list(self._values)
        return [Stored(str(row[0]), str(row[0]), dict(zip(names, row[1:], strict=True)))
                for row in found]

    def current(self) -> sql.Composed:
        """The key and mapped values, as read, of the rows whose keys are bound as `keys`."""
        cols = self._config.columns
        return sql.SQL("SELECT {key}, {values} FROM {t} WHERE {ip} = ANY(CAST(%(keys)s AS {ty}[]))"
                       ).format(key=self._key, values=sql.SQL(", ").join(self._values.values()),
                                t=sql.Identifier(self._config.table), ip=sql.Identifier(cols.ip),
                                ty=sql.SQL(self._types[cols.ip]))

    def read_row(self) -> sql.Composed:
        """The mapped values of one row, by its key bound as `key` (`geod explain`)."""
        cols = self._config.columns
        return sql.SQL("SELECT {values} FROM {t} WHERE {ip} = CAST(%(key)s AS {ty}) LIMIT 1"
                       ).format(values=sql.SQL(", ").join(self._values.values()),
                                t=sql.Identifier(self._config.table), ip=sql.Identifier(cols.ip),
                                ty=sql.SQL(self._types[cols.ip]))

    def write(self) -> sql.Composed:
        """One UPDATE for a batch of changes, returning the `kind` of every row it wrote.

        Per field, each change says whether it sets it (and to what) and whether it guards on
        it (and with what value, as read). Rows are taken as the pass's write takes them: only
        those no one else holds (`SKIP LOCKED`: never a wait on the app's row locks while
        holding ours), and the guard is checked again on the row's newest version under the
        lock, so a row the app rewrote since geod read it is left alone.
        """
        cols = self._config.columns
        batch: list[sql.Composable] = [sql.SQL("%(key)s::text[]"), sql.SQL("%(kind)s::text[]")]
        columns = [sql.Identifier("key"), sql.Identifier("kind")]
        guards: list[sql.Composable] = []
        sets: list[sql.Composable] = []
        for i, column_name in enumerate(self._written.values()):
            column, kind = sql.Identifier(column_name), sql.SQL(self._types[column_name])
            s, n, c, o = (f"{letter}{i}" for letter in "snco")  # set?, new, check?, old
            batch += [sql.SQL("{}::{}[]").format(sql.Placeholder(name), sql.SQL(array))
                      for name, array in ((s, "bool"), (n, "text"), (c, "bool"), (o, "text"))]
            columns += [sql.Identifier(name) for name in (s, n, c, o)]
            guards.append(sql.SQL("(NOT b.{c} OR {value} IS NOT DISTINCT FROM b.{o})").format(
                c=sql.Identifier(c), o=sql.Identifier(o),
                value=readable(sql.SQL("t.{}").format(column), self._types[column_name])))
            sets.append(sql.SQL("{col} = CASE WHEN b.{s} THEN CAST(b.{n} AS {kind}) "
                                "ELSE t.{col} END").format(
                col=column, s=sql.Identifier(s), n=sql.Identifier(n), kind=kind))
        guard = sql.SQL(" AND ").join(guards)
        return sql.SQL(
            "WITH b AS (SELECT * FROM unnest({batch}) AS b({columns})), "
            "free AS (SELECT t.ctid AS id, b.* FROM {table} t JOIN b "
            "ON t.{ip} = CAST(b.key AS {ip_type}) WHERE {guard} FOR UPDATE OF t SKIP LOCKED) "
            "UPDATE {table} t SET {sets} FROM free b WHERE t.ctid = b.id AND {guard} "
            "RETURNING b.kind").format(
                batch=sql.SQL(", ").join(batch), columns=sql.SQL(", ").join(columns),
                table=sql.Identifier(self._config.table), ip=sql.Identifier(cols.ip),
                ip_type=sql.SQL(self._types[cols.ip]), guard=guard, sets=sql.SQL(", ").join(sets))

    def write_params(self, changes: Sequence[Change]) -> dict[str, list[Any]]:
        """The arrays `write` binds, one element per change."""
        params: dict[str, list[Any]] = {"key": [c.key for c in changes],
                                        "kind": [c.kind for c in changes]}
        for i, name in enumerate(self._written):
            params[f"s{i}"] = [name in c.sets for c in changes]
            params[f"n{i}"] = [_text(c.sets.get(name)) for c in changes]
            params[f"c{i}"] = [name in c.expected for c in changes]
            params[f"o{i}"] = [_text(c.expected.get(name)) for c in changes]
        return params


def kinds(found: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Rows written per kind, from `UpkeepSql.write`'s RETURNING."""
    return dict(Counter(str(kind) for (kind,) in found))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
