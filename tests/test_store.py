"""Store: schema creation and checks, chunked reads, NULL-guarded writes, status counts."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from geod.config import ColumnsConfig, DatabaseConfig
from geod.errors import ConfigError, StoreBusy, StoreError
from geod.records import Geo, Update, WriteDeadline
from geod.sqlite_store import SqliteStore
from tests.conftest import MakeDb, read_rows

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


async def test_missing_mapped_column_is_a_config_error(make_db: MakeDb) -> None:
    """A mapped column the table lacks is named in the error."""
    path = make_db(schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT)")
    with pytest.raises(ConfigError, match=r"\[database.columns\] country_name: column"):
        await SqliteStore.open(db_config(path), "geod.toml")


async def test_unmapped_columns_are_neither_required_nor_written(make_db: MakeDb) -> None:
    """Columns mapped to "" may be absent, and only the mapped ones are written."""
    path = make_db(
        [("8.8.8.8", None)],
        schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT, seen TEXT)",
    )
    columns = ColumnsConfig(country_name="", asn="", org="", updated_at="")
    store = await SqliteStore.open(db_config(path, columns=columns), "geod.toml")
    assert await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z") == 1
    await store.close()
    assert read_rows(path)["8.8.8.8"] == {"ip": "8.8.8.8", "country_code": "US", "seen": None}


async def test_app_column_names_are_mapped(make_db: MakeDb) -> None:
    """An app table with its own column names is read and written through the mapping."""
    path = make_db(
        [("1.1.1.1", None)],
        schema='CREATE TABLE hosts (addr TEXT, cc TEXT, "select" TEXT, asnum TEXT, o TEXT, t TEXT)',
        insert="INSERT INTO hosts (addr, cc) VALUES (?, ?)",
    )
    columns = ColumnsConfig(ip="addr", country_code="cc", country_name="select", asn="asnum",
                            org="o", updated_at="t")
    store = await SqliteStore.open(db_config(path, table="hosts", columns=columns), "geod.toml")
    chunks = [chunk async for chunk in store.due_chunks()]
    assert [row.key for row in chunks[0]] == ["1.1.1.1"]
    await store.write([Update("1.1.1.1", GEO)], "2026-11-28T10:00:00Z")
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute('SELECT cc, "select", asnum, o, t FROM hosts').fetchone() == (
        "US", "United States", "AS15169", "Google LLC", "2026-11-28T10:00:00Z")
    conn.close()


async def test_chunks_are_bounded_and_cover_every_null_row(make_db: MakeDb) -> None:
    """Reads come in chunks of at most `size`, skip resolved rows and see each NULL row once."""
    rows = [(f"8.8.{i // 256}.{i % 256}", None if i % 3 else "DE") for i in range(2500)]
    path = make_db(rows)
    store = await SqliteStore.open(db_config(path), "geod.toml")
    chunks = [chunk async for chunk in store.due_chunks(size=700)]
    await store.close()
    keys = [row.key for chunk in chunks for row in chunk]
    assert max(len(chunk) for chunk in chunks) <= 700
    assert sorted(keys) == sorted(ip for ip, cc in rows if cc is None)


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


async def test_write_never_overwrites_what_the_app_wrote(make_db: MakeDb) -> None:
    """Only rows still NULL at write time change; '' and codes the app set are kept."""
    path = make_db([("8.8.8.8", None), ("1.1.1.1", ""), ("9.9.9.9", "CH")])
    store = await SqliteStore.open(db_config(path), "geod.toml")
    updates = [Update(ip, GEO) for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9")]
    assert await store.write(updates, "2026-11-28T10:00:00Z") == 1
    await store.close()
    rows = read_rows(path)
    assert rows["8.8.8.8"]["country_code"] == "US"
    assert rows["8.8.8.8"]["asn"] == "AS15169"
    assert rows["1.1.1.1"]["country_code"] == ""
    assert rows["9.9.9.9"]["country_code"] == "CH"


async def test_write_keeps_a_name_asn_org_the_app_put_in_a_row_without_country(
        make_db: MakeDb) -> None:
    """Per-column COALESCE: the country is filled, the app's own values stay (NULLs filled)."""
    path = make_db([("8.8.8.8", None, "USA (app)", None, "App Org")],
                   insert="INSERT INTO geo_cache (ip, country_code, country_name, asn, org) "
                          "VALUES (?, ?, ?, ?, ?)")
    store = await SqliteStore.open(db_config(path), "geod.toml")
    assert await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z") == 1
    await store.close()
    assert read_rows(path)["8.8.8.8"] == {
        "ip": "8.8.8.8", "country_code": "US", "country_name": "USA (app)", "asn": "AS15169",
        "org": "App Org", "cached_at": "2026-11-28T10:00:00Z"}


async def test_write_is_keyed_on_the_stored_string(make_db: MakeDb) -> None:
    """A row stored with whitespace or as IPv4-mapped IPv6 is written under its own key."""
    path = make_db([(" 8.8.8.8", None), ("::ffff:8.8.8.8", None)])
    store = await SqliteStore.open(db_config(path), "geod.toml")
    written = await store.write(
        [Update(" 8.8.8.8", GEO), Update("::ffff:8.8.8.8", GEO)], "2026-11-28T10:00:00Z")
    await store.close()
    assert written == 2
    assert {row["country_code"] for row in read_rows(path).values()} == {"US"}


async def test_locked_database_raises_after_busy_timeout(make_db: MakeDb) -> None:
    """While another connection holds the write lock, a write fails with StoreBusy ('locked')."""
    path = make_db([("8.8.8.8", None)])
    store = await SqliteStore.open(db_config(path, busy_timeout=0.05), "geod.toml")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="database is locked"):
            await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z") == 1
    await store.close()


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


async def test_report_counts(make_db: MakeDb) -> None:
    """report() counts rows, due (NULL) rows and the top countries."""
    path = make_db([("8.8.8.8", None), ("10.0.0.1", None), ("junk", None), ("1.1.1.1", "AU"),
                    ("1.0.0.1", "AU"), ("9.9.9.9", "CH"), ("4.4.4.4", "")])
    store = await SqliteStore.open(db_config(path), "geod.toml")
    counts = await store.report()
    await store.close()
    assert (counts.rows, counts.due) == (7, 3)
    assert counts.top_countries == [("AU", 2), ("CH", 1)]


async def test_deadline_cuts_a_long_lock_wait_short(make_db: MakeDb) -> None:
    """With busy_timeout 30 s and the app holding its lock, moving the write's deadline up ends
    the wait within a slice."""
    import asyncio

    path = make_db([("8.8.8.8", None)])
    store = await SqliteStore.open(db_config(path, busy_timeout=30), "geod.toml")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    try:
        deadline = WriteDeadline()
        write = asyncio.ensure_future(
            store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z", deadline))
        await asyncio.sleep(0.3)
        assert not write.done()  # still waiting on the app, in slices
        started = loop.time()
        deadline.at = loop.time() + 0.1
        with pytest.raises(StoreBusy, match="locked"):
            await write
        assert loop.time() - started < 1.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await store.write([Update("8.8.8.8", GEO)], "2026-11-28T10:00:00Z") == 1
    await store.close()
