"""geod's writes to the app's SQLite table: short transactions, a refused row confined to itself.

A pass's results and upkeep's changes are each one short transaction (`sqlite_waits`). When the
app's schema refuses a row (a trigger's RAISE, CHECK, UNIQUE, a STRICT type), the batch is written
again row by row, each in its own transaction, and the refused rows are left out and reported:
one row never blocks the others, pass after pass. Private to `sqlite_store`.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import aiosqlite

from geod.config import DatabaseConfig
from geod.records import Change, Refusal, Update, Written
from geod.sqlite_schema import Layout, quote
from geod.sqlite_upkeep import change_statements, unguarded
from geod.sqlite_waits import Until, is_refusal, store_error, transaction

# Fields a write never replaces once they hold a value (COALESCE): what the app wrote survives.
# The country itself is guarded by the due predicate; the timestamp and source are geod's record
# of its own write (a row whose country geod writes gets geod's source).
KEPT = ("country_name", "asn", "org")
Item = TypeVar("Item")
Counts = dict[str, int]  # rows written, per kind ("changed" for a pass's write)
Guarded = tuple[str, str, tuple[Any, ...]]  # (kind, UPDATE, its parameters): one upkeep row


class Writer:
    """Writes into one table (or view) under the store's due predicate."""

    def __init__(self, conn: aiosqlite.Connection, config: DatabaseConfig, layout: Layout,
                 due: str, due_params: tuple[Any, ...]) -> None:
        self._conn = conn
        self._config = config
        self._layout = layout
        self._table = quote(config.table)
        self._ip = quote(config.columns.ip)
        self._due = due
        self._due_params = due_params
        self._update_sql = update_sql(config, due)

    async def results(self, updates: Sequence[Update], resolved_at: str, until: Until) -> Written:
        """A pass's batch, only into rows still due. Raises: StoreBusy, StoreError."""
        params = [self._params(update, resolved_at) for update in updates]
        refused: list[Refusal] = []
        counts = await self._confined(
            params, self._apply, until, "writing results",
            lambda index, error: refused.append(Refusal(updates[index].key, str(error))))
        return Written(counts.get("changed", 0), tuple(refused))

    async def changes(self, changes: Sequence[Change], until: Until) -> Counts:
        """Upkeep's changes, each only where the row still holds what was read; rows written
        per kind, and the refused ones under "refused". Raises: StoreBusy, StoreError."""
        counts = unguarded(changes)
        work = [(kind, sql, row) for kind, sql, rows in change_statements(self._config, changes)
                for row in rows]
        if not work:
            return counts
        refused: list[int] = []
        written = await self._confined(work, self._apply_changes, until, "writing upkeep",
                                       lambda index, _: refused.append(index))
        for kind, n in written.items():
            counts[kind] = counts.get(kind, 0) + n
        if refused:
            counts["refused"] = len(refused)
        return counts

    async def _confined(
        self, items: list[Item], apply: Callable[[list[Item]], Awaitable[Counts]], until: Until,
        doing: str, refuse: Callable[[int, sqlite3.Error], None],
    ) -> Counts:
        """`apply(items)` in one transaction; if the schema refuses a row, each item alone.

        Refused items are handed to `refuse` (index, error) and left out; the others' counts
        are added up. Raises: StoreBusy, StoreError.
        """
        try:
            return await transaction(self._conn, partial(apply, items), doing, until)
        except sqlite3.Error as error:
            if not is_refusal(error):
                raise store_error(doing, error) from None
        total: Counts = {}
        for index, item in enumerate(items):
            try:
                # One transaction per row (a trigger's RAISE(ROLLBACK) ends any transaction,
                # so savepoints could not confine it); rare, and each is as short as a batch.
                result = await transaction(self._conn, partial(apply, [item]), doing, until)
            except sqlite3.Error as error:
                if not is_refusal(error):
                    raise store_error(doing, error) from None
                refuse(index, error)
                continue
            for kind, n in result.items():
                total[kind] = total.get(kind, 0) + n
        return total

    async def _apply(self, params: list[tuple[Any, ...]]) -> Counts:
        if not self._layout.is_view:
            # One executemany is one hop to the sqlite thread; rowcount sums every UPDATE's rows.
            async with self._conn.executemany(self._update_sql, params) as cur:
                return {"changed": max(cur.rowcount, 0)}
        # A view's INSTEAD OF trigger does the writing, and SQLite does not count those rows:
        # count the batch's due rows before and after instead.
        keys = list({row[-1 - len(self._due_params)] for row in params})
        before = await self._due_among(keys)
        await self._conn.executemany(self._update_sql, params)
        return {"changed": before - await self._due_among(keys)}

    async def _apply_changes(self, items: list[Guarded]) -> Counts:
        """Upkeep's guarded UPDATEs; returns the rows they hit per kind."""
        done: Counts = {}
        for (kind, sql), group in itertools.groupby(items, key=lambda item: item[:2]):
            rows = [row for _, _, row in group]
            if self._layout.is_view:  # the trigger's rows are not counted: count the WHERE's
                where = sql.split(" WHERE ", 1)[1]  # its marks are the last of each row
                count = f"SELECT COUNT(*) FROM {self._table} WHERE {where}"
                for row in rows:
                    hit = await self._conn.execute_fetchall(count, row[-where.count("?"):])
                    await self._conn.execute(sql, row)
                    done[kind] = done.get(kind, 0) + int(next(iter(hit))[0])
                continue
            async with self._conn.executemany(sql, rows) as cur:
                done[kind] = done.get(kind, 0) + max(cur.rowcount, 0)
        return done

    async def _due_among(self, keys: list[Any]) -> int:
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT COUNT(*) FROM {self._table} WHERE {self._ip} IN ({marks}) AND {self._due}"
        async with self._conn.execute(sql, (*keys, *self._due_params)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    def _params(self, update: Update, resolved_at: str) -> tuple[Any, ...]:
        values = (update.value(name, resolved_at) for name in self._config.columns.written())
        return (*values, update.key, *self._due_params)


def update_sql(config: DatabaseConfig, due: str) -> str:
    """The guarded UPDATE of one row.

    Two rules a reader might "simplify" away: the due guard is the promise never to overwrite a
    row the app filled meanwhile, and COALESCE keeps every name/asn/org the app already put in a
    row it left without a country: geod only fills those holes (`KEPT`).
    """
    parts = []
    for name, column in config.columns.written().items():
        col = quote(column)
        parts.append(f"{col} = COALESCE({col}, ?)" if name in KEPT else f"{col} = ?")
    return (f"UPDATE {quote(config.table)} SET {', '.join(parts)} "
            f"WHERE {quote(config.columns.ip)} = ? AND {due}")

