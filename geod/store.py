"""The storage seam: what a pass needs from the app's table, whatever database holds it.

A store hands out the *due* rows (today: a NULL country) in bounded chunks and writes results
back under the same predicate as a guard, so a value the app wrote is never overwritten. Its one
busy error is `StoreBusy`; lock waits end at the `WriteDeadline` the caller hands in. Knows no
SQL: `sqlite_store` and `pg_store` implement it (`pg_fleet` adds leases for several instances),
and `open_store` picks the implementation from the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from geod.config import Config
from geod.errors import StoreBusy, StoreError
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

__all__ = ["STOP_GRACE", "Store", "StoreBusy", "open_store", "write_through_stop"]

STOP_GRACE = 2.0  # seconds a stop still waits for the app's lock to write an answered batch

T = TypeVar("T")


async def write_through_stop(start: Callable[[WriteDeadline], Awaitable[T]],
                             on_stop: Callable[[asyncio.Future[T]], None]) -> T:
    """Run the write `start(deadline)` to its end even if the pass is cancelled meanwhile.

    What a provider already answered must survive a stop (SIGTERM): the write is shielded,
    and on cancellation its deadline moves to at most STOP_GRACE from now (keep the batch if
    the app's lock goes soon, don't hold up the stop); `on_stop` is then told how the write
    ended before the cancellation goes on. Raises: what the write raises, or CancelledError.
    """
    deadline = WriteDeadline()
    write = asyncio.ensure_future(start(deadline))
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        deadline.at = min(deadline.at, asyncio.get_running_loop().time() + STOP_GRACE)
        await asyncio.wait([write])
        if not write.cancelled():
            on_stop(write)
        raise


class Store(Protocol):
    """The app's table as a pass sees it. Every method may raise `StoreBusy`."""

    async def count_due(self) -> int:
        """Rows a pass would read now."""
        ...

    async def due_counts(self) -> DueCount:
        """Due rows and how many of them have no key, in one query (a pass's first read)."""
        ...

    def due_chunks(self, size: int = ...) -> AsyncIterator[list[Row]]:
        """Due rows in bounded chunks; no lock is held between chunks."""
        ...

    async def write(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline | None = None
    ) -> Written:
        """Write one batch, only into rows still due, never over a value the app wrote.

        A row the app's schema refuses is left out and reported in `Written.refused`; the
        others are written. Returns the rows changed and the refusals.
        """
        ...

    def upkeep_chunks(self, query: UpkeepQuery, after: Any = ..., size: int = ...
                      ) -> AsyncGenerator[list[Stored], None]:
        """Rows with a country that `query` selects, in bounded chunks in cursor order after
        `after` (a `Stored.cursor`; None: from the start), each with its values as read."""
        ...

    async def write_changes(self, changes: Sequence[Change],
                            deadline: WriteDeadline | None = None) -> dict[str, int]:
        """Write upkeep's changes in one short transaction; rows written per `Change.kind`.

        A row is written only if it still holds every value in `Change.expected` (optimistic:
        no lock is held across the look-up); rows the app's schema refuses count as "refused".
        """
        ...

    async def read_row(self, key: str) -> dict[str, Any] | None:
        """The mapped values of a row whose key is `key` (`geod explain`); None if none."""
        ...

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Told each chunk's outcomes (row key -> outcome) once the pass is done with it.

        A store shared by several instances keeps its attempt log here; others ignore it.
        """
        ...

    async def clear_attempts(self) -> int | None:
        """SIGHUP: clear a shared attempt log; returns its entries, None when there is none."""
        ...

    async def report(self) -> StoreReport:
        """Counts for `geod status`."""
        ...

    async def close(self) -> None: ...


async def open_store(config: Config, *, readonly: bool = False) -> Store:
    """The store `[database]` describes, opened and checked.

    `readonly` (`geod status`, `check-config`): nothing is created or changed.

    Raises:
        ConfigError: the table or a mapped column is missing and `create` is off.
        PermissionProblem: root would create a database the service could not write.
        StoreError: the database cannot be opened (`StoreBusy`: it is locked right now).
    """
    # Each implementation is imported here, not at the top: the pass imports this module for the
    # Protocol and must not pull in a concrete store (nor psycopg, which SQLite users lack).
    if not config.database.url:
        from geod.sqlite_store import SqliteStore

        return await SqliteStore.open(config.database, config.source, readonly=readonly)
    try:  # psycopg is the optional `postgresql` extra: SQLite users never import it
        from geod.pg_fleet import open_pg_store
    except ImportError as missing:
        raise StoreError(
            f"[database] url needs the PostgreSQL driver ({missing.name} is not installed): "
            "pip install 'geod[postgresql]'") from None
    return await open_pg_store(config, claim=not readonly)
