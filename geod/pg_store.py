"""The app's table in PostgreSQL, with the SQLite store's promises: due rows in, results out.

A `store.Store` over one autocommit connection (psycopg 3). Reads are keyset-paged chunks, each
a finished statement, so nothing is held while the caller is on the network; a batch of results
is one UPDATE statement, i.e. one short transaction. geod never waits on the app's row locks
while holding its own (`FOR UPDATE SKIP LOCKED`: a row the app is writing is left for the next
pass), and each session caps its own lock waits, statements and idle transactions server-side.
Creates nothing in the app's schema: the table must exist (fleet tables live in `pg_lease`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from geod.config import DatabaseConfig
from geod.errors import ConfigError, StoreBusy, StoreError
from geod.records import (
    DueCount,
    Outcome,
    Refusal,
    Row,
    StoreReport,
    Update,
    WriteDeadline,
    Written,
)
from geod.sqlite_store import READ_CHUNK
from geod.sqlite_write import KEPT

STATEMENT_TIMEOUT_MS = 60_000  # a chunk read or batch write takes milliseconds; this is a backstop
IDLE_IN_TRANSACTION_MS = 10_000  # geod never idles in a transaction; if a bug did, it ends
CONNECT_TIMEOUT_S = 10
DEADLINE_SLICE_S = 0.2  # how often a write waiting on a table lock looks at its deadline


class PgBusy(StoreBusy):
    """A lock or statement deadline passed: skip this batch, try again next pass."""


def session_settings(config: DatabaseConfig) -> dict[str, str]:
    """Server-side limits for geod's session (GUC name -> value in ms)."""
    return {
        "lock_timeout": str(max(1, int(config.busy_timeout * 1000))),
        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
    }


async def connect(config: DatabaseConfig) -> psycopg.AsyncConnection[Any]:
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
        raise StoreError(f"connecting to {config.url}: {_first_line(error)}") from None
    try:
        for name, value in session_settings(config).items():
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
        self._write_sql = _write_sql(config, types)

    @classmethod
    async def open(cls, config: DatabaseConfig, source: str) -> PgStore:
        """Connect and check the table and mapped columns (never creates them).

        Raises:
            ConfigError: the table or a mapped column is missing.
            StoreError: the server cannot be reached or read.
        """
        conn = await connect(config)
        try:
            types = await _column_types(conn, config.table)
            _check_columns(config, types, source)
        except psycopg.Error as error:
            await conn.close()
            raise StoreError(f"opening {config.url}: {_first_line(error)}") from None
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
            raise _store_error("reading", error) from None
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
                raise _store_error("reading", error) from None
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
            raise _store_error("reading", error) from None

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
        deadline = deadline or WriteDeadline()
        try:
            return Written(await self._write_batch(updates, resolved_at, deadline))
        except psycopg.Error as error:
            if not _is_refusal(error):
                raise _store_error("writing", error) from None
        changed = 0
        refused: list[Refusal] = []
        for update in updates:
            try:
                changed += await self._write_batch([update], resolved_at, deadline)
            except psycopg.Error as error:
                if not _is_refusal(error):
                    raise _store_error("writing", error) from None
                refused.append(Refusal(update.key, _first_line(error)))
        return Written(changed, tuple(refused))

    async def _write_batch(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline
    ) -> int:
        """One UPDATE statement for `updates`; the rows changed. Raises: psycopg.Error."""
        params = [[update.key for update in updates]] + [
            [update.value(name, resolved_at) for update in updates]
            for name in self._config.columns.written()
        ]
        loop = asyncio.get_running_loop()
        statement = asyncio.ensure_future(self._conn.execute(self._write_sql, params))
        # A slice, not one wait: the pass may move the deadline up (a stop) meanwhile.
        while not statement.done():
            left = deadline.at - loop.time()
            if left <= 0:
                await self._conn.cancel_safe()  # QueryCanceled -> PgBusy in the caller
                await asyncio.wait([statement])
                break
            await asyncio.wait([statement], timeout=min(left, DEADLINE_SLICE_S))
        return max(statement.result().rowcount, 0)

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
            raise _store_error("reading", error) from None
        return StoreReport(rows, due, top)

    async def _scalar(self, query: sql.Composed) -> int:
        try:
            cur = await self._conn.execute(query)
            row = await cur.fetchone()
        except psycopg.Error as error:
            raise _store_error("reading", error) from None
        return int(row[0]) if row else 0


def _is_refusal(error: psycopg.Error) -> bool:
    """Did the app's schema refuse this row: a constraint (23xxx), a value its column type
    cannot take (22xxx), or a trigger's RAISE EXCEPTION (P0001)? Anything else is about every
    row (a lock, the connection, permissions) and fails the write whole."""
    return isinstance(error, psycopg.errors.IntegrityError | psycopg.errors.DataError
                      | psycopg.errors.RaiseException)


def _write_sql(config: DatabaseConfig, types: dict[str, str]) -> sql.Composed:
    """The batch UPDATE: lock the still-NULL rows we can have at once, then fill them.

    - `country IS NULL` is re-checked on the newest row version under the lock (READ COMMITTED
      re-evaluation), so a value the app committed meanwhile is never overwritten;
    - `SKIP LOCKED`: a row the app holds is skipped, not waited for, while we hold others;
    - name, asn and org are COALESCEd (`KEPT`, as in SQLite): a value the app put there stays;
    - `updated_at` is geod's stamp of when it filled the row, always set on the rows it fills.
    """
    cols = config.columns
    written = cols.written()
    names = ["key", *written]
    batch_columns = sql.SQL(", ").join(sql.Identifier(name) for name in names)
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names)
    assignments = []
    for name, column in written.items():
        value = sql.SQL("CAST(b.{} AS {})").format(
            sql.Identifier(name), sql.SQL(types[column]))
        if name in KEPT:
            value = sql.SQL("COALESCE(t.{}, {})").format(sql.Identifier(column), value)
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(column), value))
    return sql.SQL(
        "WITH b AS (SELECT * FROM unnest({arrays}) AS b({batch_columns})), "
        "free AS (SELECT t.ctid AS id, b.* FROM {table} t JOIN b "
        "ON t.{ip} = CAST(b.key AS {ip_type}) WHERE t.{cc} IS NULL FOR UPDATE OF t SKIP LOCKED) "
        "UPDATE {table} t SET {assignments} FROM free b WHERE t.ctid = b.id AND t.{cc} IS NULL"
    ).format(
        arrays=arrays, batch_columns=batch_columns, table=sql.Identifier(config.table),
        ip=sql.Identifier(cols.ip), ip_type=sql.SQL(types[cols.ip]),
        cc=sql.Identifier(cols.country_code), assignments=sql.SQL(", ").join(assignments),
    )



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


def _store_error(doing: str, error: psycopg.Error) -> StoreError:
    """Deadlines become PgBusy (retry next pass); the rest a StoreError with context."""
    text = _first_line(error)
    if isinstance(error, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return PgBusy(f"database is busy: {doing}: {text}")
    return StoreError(f"{doing} the PostgreSQL table: {text}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
