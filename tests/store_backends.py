"""One face for both stores in tests: make the app's table, open a store on it, read it back.

Contract tests take the `store_backend` fixture (conftest), parametrized over SQLite and
PostgreSQL, so one scenario runs against both stores instead of being copied per store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import psycopg

from geod.config import DatabaseConfig
from geod.pg_store import PgStore
from geod.sqlite_store import SqliteStore
from geod.store import Store
from tests.conftest import DEFAULT_SCHEMA
from tests.pg_helpers import make_pg_table, pg_config, read_pg_rows

DEFAULT_INSERT = "INSERT INTO geo_cache (ip, country_code) VALUES (?, ?)"


class StoreBackend(Protocol):
    name: str

    @property
    def database(self) -> dict[str, Any]:
        """The `[database]` settings that point geod at this table (for make_config)."""

    @property
    def where(self) -> str:
        """The SQLite path or the PostgreSQL URL (for write_geod_config's `db`)."""

    def __call__(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
                 insert: str = DEFAULT_INSERT) -> StoreBackend:
        """make(), returning this backend: a drop-in for the make_db fixture."""

    def make(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
             insert: str = DEFAULT_INSERT) -> None:
        """Create the app's table with `schema` and insert `rows` (`?` placeholders)."""

    def read(self, table: str = "geo_cache", key: str = "ip") -> dict[str, dict[str, Any]]:
        """Every row of `table`, keyed by its `key` column."""

    def script(self, text: str) -> None:
        """Run the app's own SQL (statements, no parameters): triggers, the app's writes."""

    def query(self, text: str) -> list[tuple[Any, ...]]:
        """The rows of one SELECT the test runs as the app."""

    async def open(self, **changes: Any) -> Store:
        """A store on the table, with DatabaseConfig fields replaced by `changes`."""

    def hold_lock(self) -> AbstractContextManager[None]:
        """The app holding what keeps writers out of its table, until the block ends."""


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def database(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    @property
    def where(self) -> str:
        return str(self.path)

    def __call__(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
                 insert: str = DEFAULT_INSERT) -> SqliteBackend:
        self.make(rows, schema, insert)
        return self

    def make(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
             insert: str = DEFAULT_INSERT) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(schema)
            conn.executemany(insert, list(rows))
        conn.close()

    def read(self, table: str = "geo_cache", key: str = "ip") -> dict[str, dict[str, Any]]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608
        finally:
            conn.close()
        return {str(row[key]): dict(row) for row in rows}

    def script(self, text: str) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.executescript(text)
        conn.close()

    def query(self, text: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path) as conn:
            rows = [tuple(row) for row in conn.execute(text)]
        conn.close()
        return rows

    async def open(self, **changes: Any) -> SqliteStore:
        config = replace(DatabaseConfig(path=str(self.path)), **changes)
        return await SqliteStore.open(config, "geod.toml")

    @contextmanager
    def hold_lock(self) -> Iterator[None]:
        holder = sqlite3.connect(self.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()


class PgBackend:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def database(self) -> dict[str, Any]:
        return {"url": self.url}

    @property
    def where(self) -> str:
        return self.url

    def __call__(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
                 insert: str = DEFAULT_INSERT) -> PgBackend:
        self.make(rows, schema, insert)
        return self

    def make(self, rows: Iterable[tuple[Any, ...]] = (), schema: str = DEFAULT_SCHEMA,
             insert: str = DEFAULT_INSERT) -> None:
        make_pg_table(self.url, rows, schema, insert.replace("?", "%s"))

    def read(self, table: str = "geo_cache", key: str = "ip") -> dict[str, dict[str, Any]]:
        return read_pg_rows(self.url, table, key)

    def script(self, text: str) -> None:
        with psycopg.connect(self.url) as conn:  # no parameters: one script, many statements
            conn.execute(text)  # type: ignore[arg-type]  # test-owned SQL text

    def query(self, text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return [tuple(row) for row in conn.execute(text).fetchall()]  # type: ignore[arg-type]

    async def open(self, **changes: Any) -> PgStore:
        return await PgStore.open(pg_config(self.url, **changes), "geod.toml")

    @contextmanager
    def hold_lock(self) -> Iterator[None]:
        # EXCLUSIVE lets readers in and keeps every writer out, as SQLite's write lock does.
        with psycopg.connect(self.url) as holder:
            holder.execute("LOCK TABLE geo_cache IN EXCLUSIVE MODE")
            yield
