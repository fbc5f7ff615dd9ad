"""The app's SQLite table, seen through geod's narrow window: NULL-country rows in, results out.

Opened once per pass (a replaced or deleted file is noticed, a new path takes effect), never
changes the app's settings (journal mode etc.), never holds a lock across an HTTP call: reads are
bounded chunks that finish before the caller goes to the network, and each batch of results is
one short write transaction.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import aiosqlite

from geod.addresses import sendable
from geod.config import DatabaseConfig
from geod.errors import ConfigError, StoreError
from geod.provider import Geo

READ_CHUNK = 1000
LOCK_SLICE_MS = 200  # how long one attempt at the write lock waits inside SQLite
STOP_GRACE = 2.0  # seconds a stop still waits for the app's lock to write an answered batch


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # the ip column exactly as stored: writes are keyed on it
    cursor: Any  # rowid (or the key itself for WITHOUT ROWID tables): where the next chunk starts


@dataclass(frozen=True, slots=True)
class Update:
    key: str
    geo: Geo
    source: str = ""  # the provider's name, written when a `source` column is mapped


@dataclass(frozen=True, slots=True)
class StatusCounts:
    rows: int
    unresolved: int
    unresolvable: int
    top_countries: list[tuple[str, int]]


def _quote(identifier: str) -> str:
    # Identifiers were validated against a strict pattern in config; quoting keeps keywords safe.
    return f'"{identifier}"'


class Store:
    def __init__(self, conn: aiosqlite.Connection, config: DatabaseConfig, cursor_column: str):
        self._conn = conn
        self._config = config
        self._cursor_column = cursor_column
        cols = config.columns
        self._table = _quote(config.table)
        self._ip = _quote(cols.ip)
        self._country = _quote(cols.country_code)
        self._busy_pragma = f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000)}"
        self._give_up_at = math.inf

    @classmethod
    async def open(cls, config: DatabaseConfig, source: str) -> Store:
        """Connect, create or verify the table, and return a ready Store.

        Raises:
            ConfigError: the table or a mapped column is missing and `create` is off.
            StoreError: the database cannot be opened or read.
        """
        mode = "rwc" if config.create else "rw"
        uri = f"{PurePath(config.path).as_uri()}?mode={mode}"  # config made the path absolute
        try:
            # Probe with plain sqlite3 first: when aiosqlite.connect itself fails (0.22), its
            # worker thread later calls into the event loop, which prints a traceback if the
            # loop has closed by then (`geod once` / `status` exiting on that very error).
            await asyncio.to_thread(_probe, uri)
            conn = await aiosqlite.connect(
                uri, uri=True, timeout=config.busy_timeout, isolation_level=None
            )
        except sqlite3.Error as error:
            raise StoreError(f"opening database {config.path}: {error}") from None
        try:
            cursor_column = await _prepare_table(conn, config, source)
        except sqlite3.Error as error:
            await conn.close()
            raise StoreError(f"opening database {config.path}: {error}") from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, config, cursor_column)

    async def close(self) -> None:
        await self._conn.close()

    async def count_unresolved(self) -> int:
        sql = f"SELECT COUNT(*) FROM {self._table} WHERE {self._country} IS NULL"
        return await self._scalar(sql)

    async def unresolved_chunks(self, size: int = READ_CHUNK) -> AsyncIterator[list[Row]]:
        """Yield NULL-country rows in bounded chunks, each read finished before it is yielded.

        Keyset pagination (rowid > last) keeps each read short and the whole walk linear, and
        rows that stay NULL (failed look-ups) are not read twice in one pass.
        """
        cursor_col = self._cursor_column
        query = (
            f"SELECT {self._ip}, {cursor_col} FROM {self._table} "
            f"WHERE {self._country} IS NULL AND {cursor_col} > ? ORDER BY {cursor_col} LIMIT ?"
        )
        last: Any = -(2**63) if cursor_col == "rowid" else ""
        while True:
            async with self._conn.execute(query, (last, size)) as cur:
                # fetchall ends the statement, so no read lock is kept past this line.
                rows = list(await cur.fetchall())
            if not rows:
                return
            last = rows[-1][1]
            yield [Row(str(key), pos) for key, pos in rows if key is not None]
            if len(rows) < size:
                return

    async def write(self, updates: Sequence[Update], resolved_at: str) -> int:
        """Write one batch of results in one transaction; returns the rows changed.

        Raises:
            sqlite3.OperationalError: "database is locked" after busy_timeout (caller skips the
                batch and retries next pass), or any other failure (nothing is committed).
        """
        if not updates:
            return 0
        written = self._config.columns.written()
        assignments = ", ".join(f"{_quote(col)} = ?" for col in written.values())
        # The `IS NULL` guard is the promise never to overwrite what the app wrote meanwhile.
        sql = (
            f"UPDATE {self._table} SET {assignments} "
            f"WHERE {self._ip} = ? AND {self._country} IS NULL"
        )
        params = [
            (*(_field(update, name, resolved_at) for name in written), update.key)
            for update in updates
        ]
        await self._take_write_lock()
        try:
            # One executemany is one hop to the sqlite thread; rowcount sums every UPDATE's rows.
            async with self._conn.executemany(sql, params) as cur:
                changed = max(cur.rowcount, 0)
            await self._conn.execute("COMMIT")
        except BaseException:
            # After some errors (disk full, I/O) SQLite has rolled back already; a ROLLBACK
            # then fails with "no transaction is active" and would hide the error that matters.
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
            raise
        return changed

    def hurry(self, grace: float = STOP_GRACE) -> None:
        """A stop is under way: wait at most `grace` more seconds for the app's write lock."""
        self._give_up_at = asyncio.get_running_loop().time() + grace

    async def _take_write_lock(self) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout for the app's lock, in short slices.

        SQLite's own busy wait cannot be interrupted, so a long busy_timeout would hold a stop
        hostage; between slices `hurry()` can cut the wait short.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.busy_timeout
        await self._conn.execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")
        try:
            while True:
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    now = loop.time()
                    if not is_locked(error) or now >= min(deadline, self._give_up_at):
                        raise
        finally:
            # COMMIT may still wait for readers to finish: it gets the whole busy_timeout.
            await self._conn.execute(self._busy_pragma)

    async def status(self) -> StatusCounts:
        """Counts for `geod status`; reads in chunks like a pass does."""
        rows = await self._scalar(f"SELECT COUNT(*) FROM {self._table}")
        unresolved = unresolvable = 0
        async for chunk in self.unresolved_chunks():
            unresolved += len(chunk)
            unresolvable += sum(1 for row in chunk if sendable(row.key) is None)
        query = (
            f"SELECT {self._country}, COUNT(*) AS n FROM {self._table} "
            f"WHERE {self._country} IS NOT NULL AND {self._country} != '' "
            f"GROUP BY {self._country} ORDER BY n DESC, {self._country} LIMIT 10"
        )
        async with self._conn.execute(query) as cur:
            top = [(str(code), int(n)) for code, n in await cur.fetchall()]
        return StatusCounts(rows, unresolved, unresolvable, top)

    async def _scalar(self, sql: str) -> int:
        async with self._conn.execute(sql) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def is_locked(error: BaseException) -> bool:
    """The app held its lock past busy_timeout: skip for now, try again next pass."""
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError | StoreError) and (
        "database is locked" in text or "database is busy" in text)


def _probe(uri: str) -> None:
    sqlite3.connect(uri, uri=True).close()


def _field(update: Update, name: str, resolved_at: str) -> str | None:
    if name == "updated_at":
        return resolved_at
    if name == "source":
        return update.source
    value: str | None = getattr(update.geo, name)
    return value


async def _prepare_table(conn: aiosqlite.Connection, config: DatabaseConfig, source: str) -> str:
    """Create the table if allowed, check the mapped columns, and pick the pagination column."""
    columns = await _columns(conn, config.table)
    if not columns:
        if not config.create:
            raise ConfigError(
                source,
                "database.table",
                f"table {config.table!r} does not exist in {config.path} "
                "(set create = true to let geod create it)",
            )
        await conn.execute(_create_sql(config))
        columns = await _columns(conn, config.table)
    for name, column in _mapped_columns(config).items():
        if column and column.lower() not in columns:
            raise ConfigError(
                source,
                f"database.columns.{name}",
                f"column {column!r} does not exist in table {config.table!r}",
            )
    try:
        await conn.execute(f"SELECT rowid FROM {_quote(config.table)} LIMIT 0")
    except sqlite3.OperationalError:  # a WITHOUT ROWID table: page on its key instead
        return _quote(config.columns.ip)
    return "rowid"


def _mapped_columns(config: DatabaseConfig) -> dict[str, str]:
    """Setting name -> column name for every column geod reads or writes."""
    cols = config.columns
    return {"ip": cols.ip, "country_code": cols.country_code, **cols.written()}


async def _columns(conn: aiosqlite.Connection, table: str) -> set[str]:
    async with conn.execute("SELECT name FROM pragma_table_info(?)", (table,)) as cur:
        return {str(name).lower() for (name,) in await cur.fetchall()}


def _create_sql(config: DatabaseConfig) -> str:
    """The default schema, under the configured names."""
    cols = config.columns
    others = [column for name, column in cols.written().items() if name != "country_code"]
    body = ", ".join(
        [f"{_quote(cols.ip)} TEXT PRIMARY KEY", f"{_quote(cols.country_code)} TEXT"]
        + [f"{_quote(column)} TEXT" for column in others]
    )
    return f"CREATE TABLE IF NOT EXISTS {_quote(config.table)} ({body})"
