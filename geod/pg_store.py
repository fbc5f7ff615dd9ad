"""The app's table in PostgreSQL, with the SQLite store's promises: due rows in, results out.

A `store.Store` over one autocommit connection (psycopg 3). Reads are keyset-paged chunks, each
a finished statement, so nothing is held while the caller is on the network; a batch of results
is one UPDATE statement, i.e. one short transaction. geod never waits on the app's row locks
while holding its own (`FOR UPDATE SKIP LOCKED`: a row the app is writing is left for the next
pass), and each session caps its own lock waits, statements and idle transactions server-side.
Creates nothing in the app's schema: the table must exist (fleet tables live in `pg_lease`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from geod.config import DatabaseConfig
from geod.errors import ConfigError, StoreError
from geod.pg_upkeep import UpkeepSql
from geod.pg_write import PgWriter, first_line, store_error
from geod.records import (
    Change,
    DueCount,
    Outcome,
    Row,
    Stored,
    StoreReport,
    Update,
    UpkeepQuery,
    WriteDeadline,
    Written,
)
from geod.sqlite_store import READ_CHUNK

STATEMENT_TIMEOUT_MS = 60_000  # a chunk read or batch write takes milliseconds; this is a backstop
IDLE_IN_TRANSACTION_MS = 10_000  # geod never idles in a transaction; if a bug did, it ends
CONNECT_TIMEOUT_S = 10


def session_settings(config: DatabaseConfig, *, readonly: bool = False) -> dict[str, str]:
    """Server-side limits for geod's session (GUC name -> value in ms).

    `readonly` (status, explain, a dry run): the server refuses any write the session tries.
    """
    settings = {
        "lock_timeout": str(max(1, int(config.busy_timeout * 1000))),
        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
    }
    if readonly:
        settings["default_transaction_read_only"] = "on"
    return settings


async def connect(config: DatabaseConfig, *, readonly: bool = False
                  ) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection with geod's session limits; libpq does the auth.

    Raises:
        StoreError: the server is unreachable or refuses us (the URL shown has no secret).
    """
    extra: dict[str, Any] = {"application_name": "geod", "connect_timeout": CONNECT_TIMEOUT_S}
    if config.password:
        extra["password"] = config.password
    try:
        conn = await psycopg.AsyncConnection.connect(config.url, autocommit=True, **extra)
    except psycopg.Error as error:
        raise StoreError(f"connecting to {config.url}: {first_line(error)}") from None
    try:
        for name, value in session_settings(config, readonly=readonly).items():
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    except BaseException:
        await conn.close()
        raise
    return conn


class PgStore:
    def __init__(self, conn: psycopg.AsyncConnection[Any], config: DatabaseConfig,
                 types: dict[str, str]) -> None:
        self._conn = conn
        self._config = config
        cols = config.columns
        self._table = sql.Identifier(config.table)
        self._ip = sql.Identifier(cols.ip)
        self._country = sql.Identifier(cols.country_code)
        self._ip_type = sql.SQL(types[cols.ip])  # from pg_catalog.format_type, not from config
        # inet's text form carries the mask ("8.8.8.8/32"); host() is the address alone.
        as_text = "host({})" if types[cols.ip] == "inet" else "{}::text"
        self._ip_text = sql.SQL(as_text).format(self._ip)
        self._upkeep = UpkeepSql(config, types, self._ip_text)
        self._writer = PgWriter(conn, config, types, self._upkeep)

    @classmethod
    async def open(cls, config: DatabaseConfig, source: str, *, readonly: bool = False
                   ) -> PgStore:
        """Connect and check the table and mapped columns (never creates them).

        `readonly`: the session is read-only on the server (a write would be refused).

        Raises:
            ConfigError: the table or a mapped column is missing.
            StoreError: the server cannot be reached or read.
        """
        conn = await connect(config, readonly=readonly)
        try:
            types = await _column_types(conn, config.table)
            _check_columns(config, types, source)
        except psycopg.Error as error:
            await conn.close()
            raise StoreError(f"opening {config.url}: {first_line(error)}") from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, config, types)

    async def close(self) -> None:
        await self._conn.close()

    async def count_due(self) -> int:
        """Rows with a NULL country (a NULL key among them is never read). Raises: PgBusy."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            self._table, self._country)
        return await self._scalar(query)

    async def due_counts(self) -> DueCount:
        """Due rows and how many have a NULL ip, in one COUNT query. Raises: PgBusy."""
        query = sql.SQL("SELECT count(*), count(*) - count({ip}) FROM {t} WHERE {cc} IS NULL"
                        ).format(ip=self._ip, t=self._table, cc=self._country)
        try:
            cur = await self._conn.execute(query)
            row = await cur.fetchone()
        except psycopg.Error as error:
            raise store_error("reading", error) from None
        return DueCount(int(row[0]), int(row[1])) if row else DueCount()

    async def due_chunks(self, size: int = READ_CHUNK) -> AsyncIterator[list[Row]]:
        """Yield NULL-country rows in chunks of at most `size`, keyset-paged on the ip column.

        Each chunk is one finished autocommit statement: no snapshot or lock outlives it.
        """
        column = self._config.columns.updated_at
        # The mapped timestamp rides along as text (`Row.stamp`: the backlog's age).
        stamp = sql.SQL("{}::text").format(sql.Identifier(column)) if column else sql.NULL
        first = sql.SQL(
            "SELECT {key}, {stamp} FROM {t} WHERE {cc} IS NULL AND {ip} IS NOT NULL "
            "ORDER BY {ip} LIMIT %s").format(
                key=self._ip_text, stamp=stamp, ip=self._ip, t=self._table, cc=self._country)
        after = sql.SQL(
            "SELECT {key}, {stamp} FROM {t} WHERE {cc} IS NULL AND {ip} > %s::{ty} "
            "ORDER BY {ip} LIMIT %s").format(
                key=self._ip_text, stamp=stamp, ip=self._ip, t=self._table, cc=self._country,
                ty=self._ip_type)
        last: str | None = None
        while True:
            try:
                cur = await (self._conn.execute(first, (size,)) if last is None
                             else self._conn.execute(after, (last, size)))
                found = [(str(key), when) for key, when in await cur.fetchall()]
            except psycopg.Error as error:
                raise store_error("reading", error) from None
            if not found:
                return
            last = found[-1][0]
            yield [Row(key, key, when) for key, when in found]
            if len(found) < size:
                return

    async def still_due(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` whose rows are still due (the fleet, before it hands claimed rows
        out). Looked up through the ip column itself, so its index serves."""
        query = sql.SQL(
            "SELECT {key} FROM {t} WHERE {cc} IS NULL AND {ip} = ANY(CAST(%(keys)s AS {ty}[]))"
        ).format(key=self._ip_text, t=self._table, cc=self._country, ip=self._ip,
                 ty=self._ip_type)
        try:
            cur = await self._conn.execute(query, {"keys": list(keys)})
            return [str(key) for (key,) in await cur.fetchall()]
        except psycopg.Error as error:
            raise store_error("reading", error) from None

    async def write(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline | None = None
    ) -> Written:
        """Write one batch as one statement (one short transaction); returns what was written.

        A row lock is never waited for (SKIP LOCKED); a table lock (the app's DDL, LOCK TABLE)
        is waited for up to busy_timeout (the session's lock_timeout), or until `deadline.at`
        if that comes first: then the statement is cancelled server-side. A batch the app's
        schema refuses (a constraint, a type, a trigger's RAISE) is written again row by row,
        each its own statement (autocommit: its own transaction), and the refused rows reported.

        Raises:
            PgBusy: a lock or statement deadline passed; nothing was written.
            StoreError: any other failure; nothing was written.
        """
        if not updates:
            return Written(0)
        return await self._writer.results(updates, resolved_at, deadline or WriteDeadline())

    async def upkeep_chunks(
        self, query: UpkeepQuery, after: Any = None, size: int = READ_CHUNK
    ) -> AsyncGenerator[list[Stored], None]:
        """Yield rows with a country that `query` selects, keyset-paged on the ip column after
        `after` (a row's `cursor`); each chunk one finished statement, as `due_chunks`.

        Each row carries its mapped values as read (text: see `pg_upkeep`), which an upkeep
        write is guarded by. Raises: PgBusy.
        """
        found = self._upkeep.where(query)
        if found is None:
            return
        where, params = found
        last = after
        while True:
            select = self._upkeep.select(where, first=last is None)
            try:
                cur = await self._conn.execute(select, {**params, "after": last, "size": size})
                rows = self._upkeep.stored(await cur.fetchall())
            except psycopg.Error as error:
                raise store_error("reading rows to keep up", error) from None
            if not rows:
                return
            last = rows[-1].cursor
            yield rows
            if len(rows) < size:
                return

    async def write_changes(
        self, changes: Sequence[Change], deadline: WriteDeadline | None = None
    ) -> dict[str, int]:
        """Write upkeep's changes as one statement (one short transaction); rows written per
        `Change.kind`, and the rows the app's schema refused under "refused".

        Each row is written only if it still holds every value in `expected`; a row the app
        rewrote meanwhile, or holds locked right now, is left alone and not counted. Lock and
        statement deadlines as `write`. Raises: PgBusy, StoreError (nothing written).
        """
        return await self._writer.changes(changes, deadline or WriteDeadline())

    async def unchanged(self, rows: Sequence[Stored]) -> list[Stored]:
        """Those of `rows` that still hold every value they were read with (the fleet, before
        it hands claimed rows to upkeep: another instance may have kept them up meanwhile)."""
        if not rows:
            return []
        try:
            cur = await self._conn.execute(self._upkeep.current(),
                                           {"keys": list({row.key for row in rows})})
            now = {found.key: found.values
                   for found in self._upkeep.stored(await cur.fetchall())}
        except psycopg.Error as error:
            raise store_error("reading rows to keep up", error) from None
        return [row for row in rows if now.get(row.key) == row.values]

    async def read_row(self, key: str) -> dict[str, Any] | None:
        """The mapped values of a row whose key is `key`, as upkeep reads them; None if none."""
        try:
            cur = await self._conn.execute(self._upkeep.read_row(), {"key": key})
            row = await cur.fetchone()
        except psycopg.errors.DataError:  # not a value the ip column's type can hold
            return None
        except psycopg.Error as error:
            raise store_error("reading a row", error) from None
        names = self._config.columns.written()
        return dict(zip(names, row, strict=True)) if row else None

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Nothing to share: this process's negative cache is the only attempt log."""

    async def clear_attempts(self) -> int | None:
        return None

    async def report(self) -> StoreReport:
        """Counts for `geod status`. Raises: PgBusy."""
        rows = await self._scalar(sql.SQL("SELECT count(*) FROM {}").format(self._table))
        due = await self.count_due()
        query = sql.SQL(
            "SELECT {cc}::text, count(*) AS n FROM {t} WHERE {cc} IS NOT NULL AND {cc} <> '' "
            "GROUP BY {cc} ORDER BY n DESC, {cc} LIMIT 10").format(cc=self._country, t=self._table)
        try:
            cur = await self._conn.execute(query)
            top = [(str(code), int(n)) for code, n in await cur.fetchall()]
        except psycopg.Error as error:
            raise store_error("reading", error) from None
        return StoreReport(rows, due, top)

    async def _scalar(self, query: sql.Composed) -> int:
        try:
            cur = await self._conn.execute(query)
            row = await cur.fetchone()
        except psycopg.Error as error:
            raise store_error("reading", error) from None
        return int(row[0]) if row else 0


async def _column_types(conn: psycopg.AsyncConnection[Any], table: str) -> dict[str, str]:
    """Column name -> SQL type of `table` as found on the search_path; {} when absent."""
    cur = await conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_attribute a WHERE a.attrelid = to_regclass(quote_ident(%s)) "
        "AND a.attnum > 0 AND NOT a.attisdropped", (table,))
    return {str(name): str(kind) for name, kind in await cur.fetchall()}


def _check_columns(config: DatabaseConfig, types: dict[str, str], source: str) -> None:
    if not types:
        raise ConfigError(
            source, "database.table",
            f"table {config.table!r} does not exist in {config.url} "
            "(geod does not create tables in PostgreSQL; README has the SQL)")
    cols = config.columns
    mapped = {"ip": cols.ip, "country_code": cols.country_code, **cols.written()}
    for name, column in mapped.items():
        if column not in types:
            raise ConfigError(
                source, f"database.columns.{name}",
                f"column {column!r} does not exist in table {config.table!r}")


