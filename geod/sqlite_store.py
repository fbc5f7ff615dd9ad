"""The app's SQLite table, seen through geod's narrow window: due rows in, results out.

Opened once per pass (a replaced or deleted file is noticed, a new path takes effect), never
changes the app's settings (journal mode etc.), never holds a lock across an HTTP call: reads are
bounded chunks that finish before the caller goes to the network, and each batch of results is
one short write transaction. Every wait for the app's lock, at open, in every read and write, is
taken in short slices (`sqlite_waits`), so a stop ends it within a slice, and a COMMIT never
keeps the app's new readers out for long. What geod relies on in the app's schema is verified by
`sqlite_schema`; writes, and the rule that a row the schema refuses costs that row only, are in
`sqlite_write`; upkeep's SQL is built in `sqlite_upkeep`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import PurePath
from typing import Any

import aiosqlite

from geod.config import DatabaseConfig
from geod.errors import StoreError
from geod.preflight import create_database
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
from geod.sqlite_schema import Layout, inspect_table, quote
from geod.sqlite_upkeep import upkeep_select, upkeep_where
from geod.sqlite_waits import Until, connect, read, sliced, store_error
from geod.sqlite_write import Writer

READ_CHUNK = 1000


class SqliteStore:
    """A `Store` over one SQLite table (or view): the NULL-country rows are the due ones."""

    def __init__(self, conn: aiosqlite.Connection, config: DatabaseConfig, layout: Layout):
        self._conn = conn
        self._config = config
        self._layout = layout
        self._table = quote(config.table)
        self._ip = quote(config.columns.ip)
        self._country = quote(config.columns.country_code)
        # The one "due rows" predicate and its bound values: what a pass reads, counts, and
        # guards its writes with. A NULL country is a hole the app left; anything else is the
        # app's and never touched.
        self._due = f"{self._country} IS NULL"
        self._due_params: tuple[Any, ...] = ()
        self._writer = Writer(conn, config, layout, self._due, self._due_params)

    @classmethod
    async def open(
        cls, config: DatabaseConfig, source: str, *, readonly: bool = False
    ) -> SqliteStore:
        """Connect, create or verify the table, and return a ready store.

        `readonly` (`geod status`) opens with SQLite's mode=ro: nothing is created or changed.

        Raises:
            ConfigError: the table or a mapped column is missing (and `create` is off), or it
                is something geod cannot write (a generated column, a view with no INSTEAD OF
                UPDATE trigger).
            PermissionProblem: root would create a database the service could not write.
            StoreBusy: the app held its lock past busy_timeout while the table was checked.
            StoreError: the database cannot be opened or read.
        """
        if readonly:
            config = replace(config, create=False)
            if not await asyncio.to_thread(os.path.isfile, config.path):
                raise StoreError(f"opening database {config.path}: no such database file")
        elif config.create:  # a new database is private (0600) whatever the umask
            await asyncio.to_thread(create_database, config.path)
        mode = "ro" if readonly else "rw"
        uri = f"{PurePath(config.path).as_uri()}?mode={mode}"  # config made the path absolute
        try:
            # Probe with plain sqlite3 first: when aiosqlite.connect itself fails (0.22), its
            # worker thread later calls into the event loop, which prints a traceback if the
            # loop has closed by then (`geod once` / `status` exiting on that very error).
            await asyncio.to_thread(_probe, uri)
            conn = await connect(uri)
        except sqlite3.Error as error:
            raise store_error(f"opening database {config.path}", error) from None
        try:
            until = asyncio.get_running_loop().time() + config.busy_timeout
            layout = await sliced(lambda: inspect_table(conn, config, source),
                                  f"opening database {config.path}", lambda: until)
        except sqlite3.Error as error:
            await conn.close()
            raise store_error(f"opening database {config.path}", error) from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, config, layout)

    async def close(self) -> None:
        await self._conn.close()

    async def count_due(self) -> int:
        """Rows a pass would read now (a NULL address among them). Raises: StoreBusy."""
        return (await self.due_counts()).rows

    async def due_counts(self) -> DueCount:
        """Due rows and how many have a NULL ip, in one COUNT query. Raises: StoreBusy."""
        sql = f"SELECT COUNT(*), COUNT(*) - COUNT({self._ip}) FROM {self._table} WHERE {self._due}"
        rows = await self._read(sql, self._due_params, "counting due rows")
        return DueCount(int(rows[0][0]), int(rows[0][1])) if rows else DueCount()

    async def due_chunks(self, size: int = READ_CHUNK) -> AsyncIterator[list[Row]]:
        """Yield due rows with an address in bounded chunks, each read finished before it is
        yielded (rows whose address is NULL are counted by `due_counts`, never handed out).

        Keyset pagination on a key that exists (the real rowid, or the address column of a view
        / WITHOUT ROWID table): each read is short, the walk linear, and a row that stays due is
        not read twice. Each row carries the mapped timestamp column (`Row.stamp`), so the pass
        can tell how old its backlog is. Raises: StoreBusy.
        """
        cursor = self._layout.cursor
        column = self._config.columns.updated_at
        stamp = quote(column) if column else "NULL"
        head = (f"SELECT {self._ip}, {cursor}, {stamp} FROM {self._table} "
                f"WHERE {self._due} AND {self._ip} IS NOT NULL")
        tail = f"ORDER BY {cursor} LIMIT ?"
        last: Any = None
        while True:
            if last is None:  # from the very first, whatever type the key has
                sql, params = f"{head} {tail}", (*self._due_params, size)
            else:
                sql, params = f"{head} AND {cursor} > ? {tail}", (*self._due_params, last, size)
            rows = await self._read(sql, params, "reading due rows")
            if not rows:
                return
            last = rows[-1][1]
            yield [Row(str(key), pos, when) for key, pos, when in rows]
            if len(rows) < size:
                return

    async def write(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline | None = None
    ) -> Written:
        """Write one batch of results in one short transaction; returns what was written.

        Waits for the app's lock up to busy_timeout, or until `deadline.at` if that comes
        first. A batch the app's schema refuses (a trigger, CHECK, UNIQUE, STRICT type) is
        written again row by row, each in its own transaction, and the refused rows reported.

        Raises:
            StoreBusy: the lock was not had in time (nothing written; retry next pass).
            StoreError: the database refused the write as a whole (read-only, full, I/O).
        """
        if not updates:
            return Written(0)
        return await self._writer.results(updates, resolved_at, self._until(deadline))

    async def upkeep_chunks(
        self, query: UpkeepQuery, after: Any = None, size: int = READ_CHUNK
    ) -> AsyncGenerator[list[Stored], None]:
        """Yield rows with a country that `query` selects, in key order after `after`.

        Each chunk carries the mapped values as read: an upkeep write is guarded by them.
        Raises: StoreBusy.
        """
        where, params = upkeep_where(self._config.columns, query)
        if not where:
            return
        names = list(self._config.columns.written())
        cursor = self._layout.cursor
        last = after
        while True:
            first = last is None
            sql = upkeep_select(self._config, cursor, where, first=first)
            bound = (*params, size) if first else (*params, last, size)
            rows = await self._read(sql, bound, "reading rows to keep up")
            if not rows:
                return
            last = rows[-1][1]
            yield [Stored(str(row[0]), row[1], dict(zip(names, row[2:], strict=True)))
                   for row in rows]
            if len(rows) < size:
                return

    async def write_changes(
        self, changes: Sequence[Change], deadline: WriteDeadline | None = None
    ) -> dict[str, int]:
        """Write upkeep changes in one transaction; returns rows written per `Change.kind`.

        Each row is written only if it still holds every value in `expected` (the app may have
        rewritten it while geod looked it up: then it is left alone, and not counted). Rows the
        app's schema refuses are left alone too, counted under "refused".
        Raises: StoreBusy, StoreError (nothing committed).
        """
        return await self._writer.changes(changes, self._until(deadline))

    async def read_row(self, key: str) -> dict[str, Any] | None:
        """The mapped values of the rows whose key is `key` (for `geod explain`); None if none."""
        written = self._config.columns.written()
        sql = (f"SELECT {', '.join(quote(c) for c in written.values())} FROM {self._table} "
               f"WHERE {self._ip} = ? LIMIT 1")
        rows = await self._read(sql, (key,), "reading a row")
        return dict(zip(written, rows[0], strict=True)) if rows else None

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Nothing to share: this process's negative cache is the only attempt log."""

    async def clear_attempts(self) -> int | None:
        return None

    async def report(self) -> StoreReport:
        """Counts for `geod status`. Raises: StoreBusy."""
        rows = await self._read(f"SELECT COUNT(*) FROM {self._table}", (), "reading the table")
        due = await self.count_due()
        query = (
            f"SELECT {self._country}, COUNT(*) AS n FROM {self._table} "
            f"WHERE {self._country} IS NOT NULL AND {self._country} != '' "
            f"GROUP BY {self._country} ORDER BY n DESC, {self._country} LIMIT 10"
        )
        top = [(str(code), int(n)) for code, n in await self._read(query, (), "reading")]
        return StoreReport(int(rows[0][0]) if rows else 0, due, top)

    # -- helpers --------------------------------------------------------------------------------

    def _until(self, deadline: WriteDeadline | None) -> Until:
        """busy_timeout from now, or the caller's deadline (moved up by a stop) if sooner."""
        give_up = asyncio.get_running_loop().time() + self._config.busy_timeout
        deadline = deadline or WriteDeadline()
        return lambda: min(give_up, deadline.at)

    async def _read(self, sql: str, params: tuple[Any, ...], doing: str) -> list[Any]:
        until = asyncio.get_running_loop().time() + self._config.busy_timeout
        return await read(self._conn, sql, params, doing, lambda: until)


def _probe(uri: str) -> None:
    sqlite3.connect(uri, uri=True).close()
