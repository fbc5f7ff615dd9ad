"""SqliteStore's own ways: schema creation, files, rowid paging, read locks, journal mode.

What every store promises (mapping, chunks, guarded writes, lock waits, counts) is in
test_store_contract.py, run against SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from geod.config import DatabaseConfig
from geod.errors import ConfigError, StoreError
from geod.records import Geo, Update
from geod.sqlite_store import SqliteStore
from tests.conftest import MakeDb

GEO = Geo("US", "United States", "AS15169", "Google LLC")


def db_config(path: Path, **changes: object) -> DatabaseConfig:
    return replace(DatabaseConfig(path=str(path)), **changes)  # type: ignore[arg-type]


async def test_creates_default_schema_when_missing(tmp_path: Path) -> None:
    """With create = true a missing file and table are created with the default schema."""
    path = tmp_path / "new.db"
    store = await SqliteStore.open(db_config(path), "geod.toml")
    await store.close()
    conn = sqlite3.connect(path)
    cols = [row[1] for row in conn.execute("PRAGMA table_info(geo_cache)")]
    conn.close()
    assert cols == ["ip", "country_code", "country_name", "asn", "org", "cached_at"]


async def test_missing_table_without_create_is_a_config_error(make_db: MakeDb) -> None:
    """create = false and no table: a ConfigError naming [database] table."""
    path = make_db(schema="CREATE TABLE other (x, y)", insert="INSERT INTO other VALUES (?, ?)")
    with pytest.raises(ConfigError) as info:
        await SqliteStore.open(db_config(path, create=False), "geod.toml")
    expected = "geod.toml: [database] table: table 'geo_cache' does not exist"
    assert str(info.value).startswith(expected)


async def test_missing_file_without_create_is_not_created(tmp_path: Path) -> None:
    """create = false never creates a database file; the error is a StoreError."""
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError, match="opening database"):
        await SqliteStore.open(db_config(path, create=False), "geod.toml")
    assert not path.exists()


async def test_chunks_page_without_rowid(make_db: MakeDb) -> None:
    """WITHOUT ROWID tables page on their key instead of rowid."""
    path = make_db(
        [(f"9.9.9.{i}", None) for i in range(10)],
        schema="CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
        "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT) WITHOUT ROWID",
    )
    store = await SqliteStore.open(db_config(path), "geod.toml")
    chunks = [chunk async for chunk in store.due_chunks(size=3)]
    keys = [row.key for chunk in chunks for row in chunk]
    await store.close()
    assert sorted(keys) == sorted(f"9.9.9.{i}" for i in range(10))


async def test_no_read_lock_is_held_between_chunks(make_db: MakeDb) -> None:
    """Between two chunks another connection can write and commit at once (no open read)."""
    path = make_db([(f"8.8.4.{i}", None) for i in range(10)])
    store = await SqliteStore.open(db_config(path), "geod.toml")
    chunks = store.due_chunks(size=5)
    first = await anext(chunks)
    other = sqlite3.connect(path, timeout=0)
    other.execute("UPDATE geo_cache SET country_code = 'FR' WHERE ip = '8.8.4.9'")
    other.commit()  # would raise "database is locked" if a read transaction were still open
    other.close()
    rest = [chunk async for chunk in chunks]
    await store.close()
    assert len(first) == 5
    assert sum(len(chunk) for chunk in rest) == 4


async def test_journal_mode_is_left_alone(make_db: MakeDb) -> None:
    """geod does not change the app's journal mode."""
    path = make_db([("8.8.8.8", None)])
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    store = await SqliteStore.open(db_config(path), "geod.toml")
    await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z")
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


