"""How geod waits for the app's SQLite locks: in slices a stop can cut, never holding PENDING long.

SQLite's own busy wait cannot be interrupted, so geod's connection waits at most `SLICE_S` inside
SQLite; longer waits are loops of slices (`sliced`), between which the event loop runs, a stop's
cancellation lands and the caller's time limit is checked. A write is one short transaction
(`transaction`): a COMMIT that waits for the app's readers (rollback journal: SQLite's PENDING lock
turns away every read the app starts meanwhile) gives up after `COMMIT_PATIENCE_S`, rolls back,
lets the readers through and tries again while time remains. Private to `sqlite_store`.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from geod.errors import StoreBusy, StoreError

SLICE_S = 0.05  # one wait inside SQLite (busy_timeout); a stop or deadline acts between slices
# How long a COMMIT may hold SQLite's PENDING lock waiting for the app's readers to finish
# (rollback-journal databases): meanwhile every read the app starts is refused. Past this, geod
# rolls back, lets the readers in for a moment, and tries the batch again.
COMMIT_PATIENCE_S = SLICE_S
READERS_FIRST_S = (0.1, 0.2, 0.4, 0.8)  # the pauses after such rollbacks, then the last again
T = TypeVar("T")
Until = Callable[[], float]  # when to give up, in event-loop time (may move up: a stop)

# Primary result codes that mean "this row, as geod would write it, is not acceptable to the
# app's schema": CHECK, UNIQUE, NOT NULL, a STRICT type, a trigger's RAISE(ABORT | FAIL |
# ROLLBACK) are all SQLITE_CONSTRAINT. Anything else (busy, read-only, full, I/O, a table that
# has gone, a trigger calling what does not exist) is about every row: the write fails whole.
_ROW_REFUSALS = {sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG}


async def sliced(op: Callable[[], Awaitable[T]], doing: str, until: Until) -> T:
    """Run `op` (SQLite waits at most one slice inside it) until the app's lock lets it through.

    Raises:
        StoreBusy: still locked when `until()` passed.
        sqlite3.Error: anything else, as raised.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await op()
        except sqlite3.OperationalError as error:
            if not is_locked(error):
                raise
            if loop.time() >= until():
                raise StoreBusy(f"{doing}: {error}") from None


async def read(conn: aiosqlite.Connection, sql: str, params: Any, doing: str,
               until: Until) -> list[Any]:
    """All rows of one query, waiting for the app's lock in slices.

    Raises: StoreBusy (time is up), StoreError (anything else).
    """
    async def attempt() -> list[Any]:
        async with conn.execute(sql, params) as cur:
            # fetchall ends the statement, so no read lock is kept past this line.
            return list(await cur.fetchall())

    try:
        return await sliced(attempt, doing, until)
    except sqlite3.Error as error:
        raise store_error(doing, error) from None


async def transaction(conn: aiosqlite.Connection, apply: Callable[[], Awaitable[T]],
                      doing: str, until: Until) -> T:
    """BEGIN IMMEDIATE, `apply()`, COMMIT: all or nothing. Returns what `apply` returned.

    Raises: StoreBusy (time is up), sqlite3.Error (nothing is committed).
    """
    loop = asyncio.get_running_loop()
    for attempt in itertools.count():
        await sliced(lambda: conn.execute("BEGIN IMMEDIATE"), doing, until)
        try:
            result = await apply()
            commit_by = loop.time() + COMMIT_PATIENCE_S
            await sliced(lambda: conn.execute("COMMIT"), doing,
                         lambda: min(commit_by, until()))  # noqa: B023 - used in this iteration
            return result
        except StoreBusy:
            await rollback(conn)
            if loop.time() >= until():
                raise
        except BaseException:
            await rollback(conn)
            raise
        # The app's readers held on past COMMIT_PATIENCE_S: let them (and the ones we kept
        # out) through, then try again from BEGIN, while time remains.
        pause = READERS_FIRST_S[min(attempt, len(READERS_FIRST_S) - 1)]
        await asyncio.sleep(max(min(pause, until() - loop.time()), 0))
    raise AssertionError("unreachable")


async def rollback(conn: aiosqlite.Connection) -> None:
    # After some errors (disk full, I/O, a trigger's RAISE(ROLLBACK)) SQLite has rolled back
    # already; a ROLLBACK then fails with "no transaction is active" and would hide the error
    # that matters.
    if conn.in_transaction:
        await conn.execute("ROLLBACK")


async def connect(uri: str) -> aiosqlite.Connection:
    """aiosqlite.connect, closed again if cancelled meanwhile (else its thread outlives us)."""
    async def attempt() -> aiosqlite.Connection:
        return await aiosqlite.connect(uri, uri=True, timeout=SLICE_S, isolation_level=None)

    connecting = asyncio.ensure_future(attempt())
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        await asyncio.wait([connecting])
        if not connecting.cancelled() and connecting.exception() is None:
            await connecting.result().close()
        raise


def is_refusal(error: sqlite3.Error) -> bool:
    """Did the app's schema refuse this one row (a constraint, a trigger, a STRICT type)?"""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _ROW_REFUSALS


def is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text


def store_error(doing: str, error: sqlite3.Error) -> StoreError:
    """StoreBusy for the app's lock (retry later), StoreError for anything else."""
    kind = StoreBusy if is_locked(error) else StoreError
    return kind(f"{doing}: {error}")
