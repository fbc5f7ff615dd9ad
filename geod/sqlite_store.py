"""The app's SQLite table, seen through geod's narrow window: due rows in, results out.

Opened once per pass (a replaced or deleted file is noticed, a new path takes effect), never
changes the app's settings (journal mode etc.), never holds a lock across an HTTP call: reads are
bounded chunks that finish before the caller goes to the network, and each batch of results is
one short write transaction. SQLite's lock slicing, probe and schema checks stay in here; callers
see the `store.Store` Protocol and `StoreBusy`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import PurePath
from typing import Any

import aiosqlite

from geod.config import DatabaseConfig
from geod.errors import ConfigError, StoreBusy, StoreError
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
)

READ_CHUNK = 1000
# Fields a write never replaces once they hold a value (COALESCE): what the app wrote survives.
# The country itself is guarded by the due predicate; the timestamp and source are geod's record
# of its own write.
KEPT = ("country_name", "asn", "org")
LOCK_SLICE_MS = 200  # how long one attempt at the write lock waits inside SQLite


def _quote(identifier: str) -> str:
    # Identifiers were validated against a strict pattern in config; quoting keeps keywords safe.
    return f'"{identifier}"'


class SqliteStore:
    """A `Store` over one SQLite table: the NULL-country rows are the due ones."""

    def __init__(self, conn: aiosqlite.Connection, config: DatabaseConfig, cursor_column: str):
        self._conn = conn
        self._config = config
        self._cursor_column = cursor_column
        self._table = _quote(config.table)
        self._ip = _quote(config.columns.ip)
        self._country = _quote(config.columns.country_code)
        # The one "due rows" predicate and its bound values: what a pass reads, counts, and
        # guards its writes with. A NULL country is a hole the app left; anything else is the
        # app's and never touched. (A refresh by age would add `OR <updated_at> < ?` here.)
        self._due = f"{self._country} IS NULL"
        self._due_params: tuple[Any, ...] = ()
        self._busy_pragma = f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000)}"

    @classmethod
    async def open(
        cls, config: DatabaseConfig, source: str, *, readonly: bool = False
    ) -> SqliteStore:
        """Connect, create or verify the table, and return a ready store.

        `readonly` (`geod status`) opens with SQLite's mode=ro: nothing is created or changed.
        SQLite's busy wait cannot be interrupted, so one long wait would hold a stop hostage for
        up to busy_timeout: each attempt waits one slice, and a cancellation lands between them.

        Raises:
            ConfigError: the table or a mapped column is missing and `create` is off.
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
        loop = asyncio.get_running_loop()
        give_up = loop.time() + config.busy_timeout
        sliced = replace(config, busy_timeout=min(config.busy_timeout, LOCK_SLICE_MS / 1000))
        while True:
            try:
                store = await cls._open_once(sliced, source, mode)
            except StoreBusy:
                if loop.time() >= give_up:
                    raise
                continue  # the attempt itself waited a slice inside SQLite
            full = cls(store._conn, config, store._cursor_column)
            await full._conn.execute(full._busy_pragma)
            return full

    @classmethod
    async def _open_once(cls, config: DatabaseConfig, source: str, mode: str) -> SqliteStore:
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
            raise _store_error(f"opening database {config.path}", error) from None
        try:
            cursor_column = await _prepare_table(conn, config, source)
        except sqlite3.Error as error:
            await conn.close()
            raise _store_error(f"opening database {config.path}", error) from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, config, cursor_column)

    async def close(self) -> None:
        await self._conn.close()

    async def count_due(self) -> int:
        """Rows a pass would read now. Raises: StoreBusy."""
        sql = f"SELECT COUNT(*) FROM {self._table} WHERE {self._due}"
        return await self._scalar(sql, self._due_params)

    async def due_counts(self) -> DueCount:
        """Due rows and how many have a NULL ip, in one COUNT query. Raises: StoreBusy."""
        sql = f"SELECT COUNT(*), COUNT(*) - COUNT({self._ip}) FROM {self._table} WHERE {self._due}"
        try:
            async with self._conn.execute(sql, self._due_params) as cur:
                row = await cur.fetchone()
        except sqlite3.OperationalError as error:
            _raise_if_locked("counting due rows", error)
            raise
        return DueCount(int(row[0]), int(row[1])) if row else DueCount()

    async def due_chunks(self, size: int = READ_CHUNK) -> AsyncIterator[list[Row]]:
        """Yield due rows in bounded chunks, each read finished before it is yielded.

        Keyset pagination (rowid > last) keeps each read short and the whole walk linear, and
        rows that stay due (failed look-ups) are not read twice in one pass. Each row carries the
        mapped timestamp column (`Row.stamp`), so the pass can tell how old its backlog is.
        Raises: StoreBusy.
        """
        cursor_col = self._cursor_column
        column = self._config.columns.updated_at
        stamp = _quote(column) if column else "NULL"
        query = (
            f"SELECT {self._ip}, {cursor_col}, {stamp} FROM {self._table} "
            f"WHERE {self._due} AND {cursor_col} > ? ORDER BY {cursor_col} LIMIT ?"
        )
        last: Any = -(2**63) if cursor_col == "rowid" else ""
        while True:
            try:
                async with self._conn.execute(query, (*self._due_params, last, size)) as cur:
                    # fetchall ends the statement, so no read lock is kept past this line.
                    rows = list(await cur.fetchall())
            except sqlite3.OperationalError as error:
                _raise_if_locked("reading due rows", error)
                raise
            if not rows:
                return
            last = rows[-1][1]
            yield [Row(str(key), pos, when) for key, pos, when in rows if key is not None]
            if len(rows) < size:
                return

    async def write(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline | None = None
    ) -> int:
        """Write one batch of results in one transaction; returns the rows changed.

        Waits for the app's lock up to busy_timeout, or until `deadline.at` if that comes first.

        Raises:
            StoreBusy: the lock was not had in time (nothing written; retry next pass).
            sqlite3.Error: any other failure (nothing is committed).
        """
        if not updates:
            return 0
        written = self._config.columns.written()
        assignments = ", ".join(
            f"{_quote(col)} = COALESCE({_quote(col)}, ?)" if name in KEPT else f"{_quote(col)} = ?"
            for name, col in written.items()
        )
        # The due guard is the promise never to overwrite what the app wrote meanwhile; the
        # per-column COALESCE keeps a name/asn/org the app put in a row without a country.
        sql = f"UPDATE {self._table} SET {assignments} WHERE {self._ip} = ? AND {self._due}"
        params = [
            (*(_field(update, name, resolved_at) for name in written), update.key,
             *self._due_params)
            for update in updates
        ]
        await self._take_write_lock(deadline or WriteDeadline())
        try:
            # One executemany is one hop to the sqlite thread; rowcount sums every UPDATE's rows.
            async with self._conn.executemany(sql, params) as cur:
                changed = max(cur.rowcount, 0)
            await self._conn.execute("COMMIT")
        except BaseException as error:
            # After some errors (disk full, I/O) SQLite has rolled back already; a ROLLBACK
            # then fails with "no transaction is active" and would hide the error that matters.
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError) and _is_locked(error):
                raise _store_error("writing results", error) from None
            raise
        return changed

    async def upkeep_chunks(
        self, query: UpkeepQuery, after: Any = None, size: int = READ_CHUNK
    ) -> AsyncIterator[list[Stored]]:
        """Yield rows with a country that `query` selects, in key order after `after`.

        Each chunk carries the mapped values as read: an upkeep write is guarded by them.
        Raises: StoreBusy.
        """
        where, params = self._upkeep_where(query)
        if not where:
            return
        written = self._config.columns.written()
        names = list(written)
        cursor_col = self._cursor_column
        sql = (
            f"SELECT {self._ip}, {cursor_col}, {', '.join(_quote(c) for c in written.values())} "
            f"FROM {self._table} WHERE {self._country} IS NOT NULL AND {self._country} != '' "
            f"AND ({where}) AND {cursor_col} > ? ORDER BY {cursor_col} LIMIT ?"
        )
        last: Any = after if after is not None else (-(2**63) if cursor_col == "rowid" else "")
        while True:
            try:
                async with self._conn.execute(sql, (*params, last, size)) as cur:
                    rows = list(await cur.fetchall())
            except sqlite3.OperationalError as error:
                _raise_if_locked("reading rows to keep up", error)
                raise
            if not rows:
                return
            last = rows[-1][1]
            yield [Stored(str(row[0]), row[1], dict(zip(names, row[2:], strict=True)))
                   for row in rows if row[0] is not None]
            if len(rows) < size:
                return

    def _upkeep_where(self, query: UpkeepQuery) -> tuple[str, list[Any]]:
        """The SQL form of `query` over the mapped columns (rules on unmapped ones drop out)."""
        cols = self._config.columns
        rules: list[str] = []
        params: list[Any] = []
        fill = [_quote(getattr(cols, name)) for name in query.fill if getattr(cols, name, "")]
        if fill:
            rules.append(" OR ".join(f"{col} IS NULL" for col in fill))
        src, ts = _quote(cols.source) if cols.source else "", _quote(cols.updated_at)
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
        where = " OR ".join(f"({rule})" for rule in rules)
        return where, params

    async def write_changes(
        self, changes: Sequence[Change], deadline: WriteDeadline | None = None
    ) -> dict[str, int]:
        """Write upkeep changes in one transaction; returns rows written per `Change.kind`.

        Each row is written only if it still holds every value in `expected` (the app may have
        rewritten it while geod looked it up: then it is left alone, and not counted).
        Raises: StoreBusy, sqlite3.Error (nothing committed).
        """
        cols = self._config.columns
        groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
        for change in changes:
            if not change.sets:
                continue
            shape = (change.kind, tuple(change.sets), tuple(change.expected))
            groups.setdefault(shape, []).append(
                (*change.sets.values(), change.key, *change.expected.values()))
        counts = {change.kind: 0 for change in changes}
        for change in changes:  # nothing to set (no timestamp/source mapped): nothing can race
            if not change.sets:
                counts[change.kind] += 1
        if not groups:
            return counts
        await self._take_write_lock(deadline or WriteDeadline())
        try:
            for (kind, sets, expected), params in groups.items():
                assignments = ", ".join(f"{_quote(getattr(cols, name))} = ?" for name in sets)
                # The optimistic guard: every mapped value as read. `IS` matches NULL to NULL.
                guard = " AND ".join(f"{_quote(getattr(cols, name))} IS ?" for name in expected)
                sql = (f"UPDATE {self._table} SET {assignments} WHERE {self._ip} = ?"
                       + (f" AND {guard}" if guard else ""))
                async with self._conn.executemany(sql, params) as cur:
                    counts[kind] += max(cur.rowcount, 0)
            await self._conn.execute("COMMIT")
        except BaseException as error:
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError) and _is_locked(error):
                raise _store_error("writing upkeep", error) from None
            raise
        return counts

    async def read_row(self, key: str) -> dict[str, Any] | None:
        """The mapped values of the rows whose key is `key` (for `geod explain`); None if none."""
        written = self._config.columns.written()
        sql = (f"SELECT {', '.join(_quote(c) for c in written.values())} FROM {self._table} "
               f"WHERE {self._ip} = ? LIMIT 1")
        async with self._conn.execute(sql, (key,)) as cur:
            row = await cur.fetchone()
        return dict(zip(written, row, strict=True)) if row is not None else None

    async def _take_write_lock(self, deadline: WriteDeadline) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout for the app's lock, in short slices.

        SQLite's own busy wait cannot be interrupted, so a long busy_timeout would hold a stop
        hostage; between slices the caller's `deadline` can cut the wait short.
        """
        loop = asyncio.get_running_loop()
        timeout_at = loop.time() + self._config.busy_timeout
        await self._conn.execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")
        try:
            while True:
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    if not _is_locked(error):
                        raise
                    if loop.time() >= min(timeout_at, deadline.at):
                        raise _store_error("writing results", error) from None
        finally:
            # COMMIT may still wait for readers to finish: it gets the whole busy_timeout.
            await self._conn.execute(self._busy_pragma)

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Nothing to share: this process's negative cache is the only attempt log."""

    async def clear_attempts(self) -> int | None:
        return None

    async def report(self) -> StoreReport:
        """Counts for `geod status`. Raises: StoreBusy."""
        rows = await self._scalar(f"SELECT COUNT(*) FROM {self._table}")
        due = await self.count_due()
        query = (
            f"SELECT {self._country}, COUNT(*) AS n FROM {self._table} "
            f"WHERE {self._country} IS NOT NULL AND {self._country} != '' "
            f"GROUP BY {self._country} ORDER BY n DESC, {self._country} LIMIT 10"
        )
        async with self._conn.execute(query) as cur:
            top = [(str(code), int(n)) for code, n in await cur.fetchall()]
        return StoreReport(rows, due, top)

    async def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        try:
            async with self._conn.execute(sql, params) as cur:
                row = await cur.fetchone()
        except sqlite3.OperationalError as error:
            _raise_if_locked("reading the table", error)
            raise
        return int(row[0]) if row else 0


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text


def _raise_if_locked(doing: str, error: sqlite3.Error) -> None:
    if _is_locked(error):
        raise StoreBusy(f"{doing}: {error}") from None


def _store_error(doing: str, error: sqlite3.Error) -> StoreError:
    """StoreBusy for the app's lock (retry later), StoreError for anything else."""
    kind = StoreBusy if _is_locked(error) else StoreError
    return kind(f"{doing}: {error}")


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
