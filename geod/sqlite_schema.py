"""What geod relies on in the app's SQLite schema, verified when the store opens.

The app's schema is whatever it is: a table or a view, generated columns, a column called
`rowid`, WITHOUT ROWID, triggers. geod checks the few things it relies on (the mapped columns
exist and can be written, the object can be updated, a key to page on) and refuses with a
clear `ConfigError` what it cannot work with, rather than reading nothing and exiting 0.
Private to `sqlite_store`.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import aiosqlite

from geod.config import DatabaseConfig
from geod.errors import ConfigError

# pragma_table_xinfo's `hidden`: 2 and 3 are generated columns (VIRTUAL, STORED), 1 a hidden
# column of a virtual table. None of them can be the target of an UPDATE.
_GENERATED = {1: "a hidden column", 2: "a generated column", 3: "a generated column"}
_INSTEAD_OF_UPDATE = re.compile(r"\bINSTEAD\s+OF\s+UPDATE\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Layout:
    """How the store reads and writes this table."""

    cursor: str  # the quoted expression a pass pages on: a real rowid alias, or the address
    is_view: bool = False  # written through the app's INSTEAD OF UPDATE trigger


def quote(identifier: str) -> str:
    # Identifiers were validated against a strict pattern in config; quoting keeps keywords safe.
    return f'"{identifier}"'


async def inspect_table(conn: aiosqlite.Connection, config: DatabaseConfig, source: str) -> Layout:
    """Create the table if allowed, check the mapped columns, and choose the paging key.

    Raises:
        ConfigError: missing table or column, a generated column mapped as a target, a view
            that cannot be updated.
        sqlite3.Error: the schema could not be read (busy: the caller retries).
    """
    kind = await _kind(conn, config.table)
    if kind is None:
        if not config.create:
            raise ConfigError(source, "database.table",
                              f"table {config.table!r} does not exist in {config.path} "
                              "(set create = true to let geod create it)")
        await conn.execute(_create_sql(config))
        kind = "table"
    columns = await _columns(conn, config.table)
    cols = config.columns
    written = set(cols.written())
    for name, column in {"ip": cols.ip, "country_code": cols.country_code,
                         **cols.written()}.items():
        if not column:
            continue
        hidden = columns.get(column.lower())
        if hidden is None:
            raise ConfigError(source, f"database.columns.{name}",
                              f"column {column!r} does not exist in {kind} {config.table!r}")
        if name in written and hidden in _GENERATED:
            raise ConfigError(source, f"database.columns.{name}",
                              f"column {column!r} is {_GENERATED[hidden]} of {config.table!r}: "
                              "geod cannot write it (map a plain column, or leave it unset)")
    if kind == "view":
        if not await _updatable_view(conn, config.table):
            raise ConfigError(source, "database.table",
                              f"{config.table!r} is a view without an INSTEAD OF UPDATE "
                              "trigger: geod cannot write to it")
        return Layout(quote(cols.ip), is_view=True)
    return Layout(await _rowid_alias(conn, config.table, columns) or quote(cols.ip))


async def _kind(conn: aiosqlite.Connection, table: str) -> str | None:
    """'table', 'view' (or 'virtual' ...) for the object named `table`, None if there is none."""
    sql = "SELECT type FROM pragma_table_list WHERE name = ? COLLATE NOCASE AND schema = 'main'"
    async with conn.execute(sql, (table,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def _columns(conn: aiosqlite.Connection, table: str) -> dict[str, int]:
    """Column name (lower case) -> `hidden` flag. table_xinfo, unlike table_info, lists the
    generated columns too."""
    async with conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?)", (table,)) as cur:
        return {str(name).lower(): int(hidden) for name, hidden in await cur.fetchall()}


async def _rowid_alias(conn: aiosqlite.Connection, table: str, columns: dict[str, int]) -> str:
    """A name that means the real rowid here, or "" (WITHOUT ROWID, or all three shadowed).

    A column the app called `rowid` hides the real one under that name (and may hold NULLs:
    paging on it would read nothing); `_rowid_` and `oid` are the other spellings.
    """
    for alias in ("rowid", "_rowid_", "oid"):
        if alias in columns:
            continue
        try:
            # The alias is one of three constants; the table name was validated in config.
            await conn.execute(f"SELECT {alias} FROM {quote(table)} LIMIT 0")  # noqa: S608
        except sqlite3.OperationalError as error:
            if "no such column" in str(error):
                return ""  # WITHOUT ROWID: page on its key instead
            raise
        return alias
    return ""


async def _updatable_view(conn: aiosqlite.Connection, view: str) -> bool:
    sql = ("SELECT sql FROM sqlite_schema WHERE type = 'trigger' "
           "AND tbl_name = ? COLLATE NOCASE")
    async with conn.execute(sql, (view,)) as cur:
        return any(_INSTEAD_OF_UPDATE.search(str(text)) for (text,) in await cur.fetchall())


def _create_sql(config: DatabaseConfig) -> str:
    """The default schema, under the configured names."""
    cols = config.columns
    others = [column for name, column in cols.written().items() if name != "country_code"]
    body = ", ".join(
        [f"{quote(cols.ip)} TEXT PRIMARY KEY", f"{quote(cols.country_code)} TEXT"]
        + [f"{quote(column)} TEXT" for column in others]
    )
    return f"CREATE TABLE IF NOT EXISTS {quote(config.table)} ({body})"
