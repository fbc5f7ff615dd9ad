"""geod's writes to the app's PostgreSQL table: each batch one statement, a refused row confined.

A pass's results and upkeep's changes are each one UPDATE statement (autocommit: one short
transaction), cancelled server-side when the caller's deadline passes. When the app's schema
refuses a row (a constraint, a value its column type cannot take, a trigger's RAISE), the batch
is written again one row per statement and the refused rows are reported: one row never blocks
the others, pass after pass. Private to `pg_store`, with the error mapping both share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from geod.config import DatabaseConfig
from geod.errors import StoreBusy, StoreError
from geod.pg_upkeep import UpkeepSql, kinds
from geod.records import Change, Refusal, Update, WriteDeadline, Written
from geod.sqlite_upkeep import unguarded
from geod.sqlite_write import KEPT

DEADLINE_SLICE_S = 0.2  # how often a write waiting on a table lock looks at its deadline
Item = TypeVar("Item")
Result = TypeVar("Result")


class PgBusy(StoreBusy):
    """A lock or statement deadline passed: skip this batch, try again next pass."""


class PgWriter:
    """Writes into one table over the store's connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], config: DatabaseConfig,
                 types: dict[str, str], upkeep: UpkeepSql) -> None:
        self._conn = conn
        self._written = config.columns.written()
        self._results_sql = results_sql(config, types)
        self._upkeep = upkeep

    async def results(self, updates: Sequence[Update], resolved_at: str,
                      deadline: WriteDeadline) -> Written:
        """A pass's batch, only into rows still NULL. Raises: PgBusy, StoreError."""
        changed, refused = await self._confined(
            updates, lambda batch: self._results(batch, resolved_at, deadline))
        return Written(sum(changed), tuple(Refusal(u.key, why) for u, why in refused))

    async def changes(self, changes: Sequence[Change], deadline: WriteDeadline
                      ) -> dict[str, int]:
        """Upkeep's changes, each only where the row still holds what was read; rows written
        per kind, the refused ones under "refused". Raises: PgBusy, StoreError."""
        counts = unguarded(changes)
        work = [change for change in changes if change.sets]
        if not work:
            return counts
        written, refused = await self._confined(
            work, lambda batch: self._changes(batch, deadline))
        for found in written:
            for kind, n in found.items():
                counts[kind] = counts.get(kind, 0) + n
        if refused:
            counts["refused"] = len(refused)
        return counts

    async def _results(self, updates: Sequence[Update], resolved_at: str,
                       deadline: WriteDeadline) -> int:
        params = [[update.key for update in updates]] + [
            [update.value(name, resolved_at) for update in updates] for name in self._written]
        return max((await self._until(self._results_sql, params, deadline)).rowcount, 0)

    async def _changes(self, changes: Sequence[Change], deadline: WriteDeadline
                       ) -> dict[str, int]:
        cur = await self._until(self._upkeep.write(), self._upkeep.write_params(changes),
                                deadline)
        return kinds(await cur.fetchall())

    async def _confined(
        self, items: Sequence[Item], run: Callable[[Sequence[Item]], Awaitable[Result]]
    ) -> tuple[list[Result], list[tuple[Item, str]]]:
        """`run(items)`, one statement; if the app's schema refuses a row, each item alone.

        Returns the results, and the refused items with the database's message. A refused
        row costs that row only: every statement is its own transaction (autocommit).
        Raises: PgBusy, StoreError (for anything that is not a refusal).
        """
        try:
            return [await run(items)], []
        except psycopg.Error as error:
            if not is_refusal(error):
                raise store_error("writing", error) from None
        results: list[Result] = []
        refused: list[tuple[Item, str]] = []
        for item in items:
            try:
                results.append(await run([item]))
            except psycopg.Error as error:
                if not is_refusal(error):
                    raise store_error("writing", error) from None
                refused.append((item, first_line(error)))
        return results, refused

    async def _until(self, statement_sql: sql.Composed, params: Any, deadline: WriteDeadline
                     ) -> psycopg.AsyncCursor[Any]:
        """Run one statement; once `deadline.at` passes it is cancelled on the server
        (QueryCanceled, which `store_error` makes PgBusy). Raises: psycopg.Error."""
        loop = asyncio.get_running_loop()
        statement = asyncio.ensure_future(self._conn.execute(statement_sql, params))
        # A slice, not one wait: the pass may move the deadline up (a stop) meanwhile.
        while not statement.done():
            left = deadline.at - loop.time()
            if left <= 0:
                await self._conn.cancel_safe()
                await asyncio.wait([statement])
                break
            await asyncio.wait([statement], timeout=min(left, DEADLINE_SLICE_S))
        return statement.result()


def is_refusal(error: psycopg.Error) -> bool:
    """Did the app's schema refuse this row: a constraint (23xxx), a value its column type
    cannot take (22xxx), or a trigger's RAISE EXCEPTION (P0001)? Anything else is about every
    row (a lock, the connection, permissions) and fails the write whole."""
    return isinstance(error, psycopg.errors.IntegrityError | psycopg.errors.DataError
                      | psycopg.errors.RaiseException)


def results_sql(config: DatabaseConfig, types: dict[str, str]) -> sql.Composed:
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


def store_error(doing: str, error: psycopg.Error) -> StoreError:
    """Deadlines become PgBusy (retry next pass); the rest a StoreError with context."""
    text = first_line(error)
    if isinstance(error, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return PgBusy(f"database is busy: {doing}: {text}")
    return StoreError(f"{doing} the PostgreSQL table: {text}")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
