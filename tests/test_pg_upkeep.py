"""Upkeep's reads and writes in PostgreSQL beyond what both stores share (`test_upkeep`): typed
columns the app chose, a row the app holds locked, and a read-only session that refuses writes."""

from __future__ import annotations

import time

import psycopg
import pytest

from geod.config import ColumnsConfig
from geod.errors import StoreError
from geod.pg_store import PgStore
from geod.records import Change, Geo, Update, UpkeepQuery
from geod.store import open_store
from tests.conftest import MakeConfig
from tests.pg_helpers import make_pg_table, pg_config, read_pg_rows

TYPED = ("CREATE TABLE geo_cache (ip inet PRIMARY KEY, country_code char(2), "
         "country_name varchar(80), asn TEXT, org TEXT, cached_at timestamptz, source TEXT)")
COLUMNS = ColumnsConfig(source="source")
STALE = UpkeepQuery(geod_sources=("ip-api", "rir"), geod_before="2026-10-30T12:00:00Z")


async def test_timestamps_are_read_compared_and_guarded_as_geods_utc_text(pg_url: str) -> None:
    """A timestamptz column is read as ISO UTC text (whatever the session's zone, fractions
    kept), the cutoff compares in time, and a write guarded by what was read lands."""
    make_pg_table(pg_url, [
        ("8.8.8.8", "DE", "2026-09-01 00:00:00.123456+02", "ip-api"),  # stale
        ("8.8.4.4", "DE", "2026-10-30 13:00:00+01", "rir"),  # 12:00 UTC: not before the cutoff
        ("1.1.1.1", "AU", "2026-10-30 12:59:59+01", "rir"),  # 11:59:59 UTC: stale
    ], schema=TYPED, insert="INSERT INTO geo_cache (ip, country_code, cached_at, source) "
                            "VALUES (%s, %s, %s, %s)")
    store = await PgStore.open(pg_config(pg_url, columns=COLUMNS), "geod.toml")
    try:
        await store._conn.execute("SET TimeZone = 'America/New_York'")  # noqa: SLF001
        [rows] = [chunk async for chunk in store.upkeep_chunks(STALE)]
        assert [(row.key, row.values["updated_at"]) for row in rows] == [
            ("1.1.1.1", "2026-10-30T11:59:59Z"), ("8.8.8.8", "2026-08-31T22:00:00.123456Z")]
        assert rows[0].values["country_code"] == "AU"  # char(2) as its text
        stale = rows[1]
        sets = {"country_code": "US", "updated_at": "2026-11-29T12:00:00Z"}
        counts = await store.write_changes([Change(stale.key, stale.values, sets, "changed")])
        again = await store.write_changes([Change(stale.key, stale.values, sets, "changed")])
    finally:
        await store.close()
    assert (counts, again) == ({"changed": 1}, {"changed": 0})  # the row moved on
    row = read_pg_rows(pg_url)["8.8.8.8"]
    assert (row["country_code"], row["cached_at"].isoformat()) == \
        ("US", "2026-11-29T12:00:00+00:00")


async def test_a_row_the_app_holds_is_left_alone_without_waiting(pg_url: str) -> None:
    """Upkeep's write skips a row the app has locked (it is being rewritten) and writes the
    rest at once: no wait on the app's row locks while geod holds its own."""
    make_pg_table(pg_url, [("8.8.8.8", "DE", "2026-01-01T00:00:00Z", "rir"),
                           ("8.8.4.4", "DE", "2026-01-01T00:00:00Z", "rir")],
                  schema=TYPED.replace("timestamptz", "text"),
                  insert="INSERT INTO geo_cache (ip, country_code, cached_at, source) "
                         "VALUES (%s, %s, %s, %s)")
    store = await PgStore.open(pg_config(pg_url, busy_timeout=30, columns=COLUMNS),
                               "geod.toml")
    try:
        [rows] = [chunk async for chunk in store.upkeep_chunks(STALE)]
        changes = [Change(row.key, row.values, {"country_code": "FR"}, "changed")
                   for row in rows]
        with psycopg.connect(pg_url) as app:  # a transaction, open until the block ends
            app.execute("UPDATE geo_cache SET org = 'app' WHERE ip = '8.8.8.8'")
            started = time.perf_counter()
            counts = await store.write_changes(changes)
            took = time.perf_counter() - started
    finally:
        await store.close()
    assert counts == {"changed": 1}
    assert took < 5.0  # not busy_timeout (30 s)
    rows_now = read_pg_rows(pg_url)
    assert (rows_now["8.8.8.8"]["country_code"], rows_now["8.8.4.4"]["country_code"]) == \
        ("DE", "FR")


async def test_a_readonly_store_cannot_write(pg_url: str, make_config: MakeConfig) -> None:
    """`geod status`, `explain` and a dry run open the store read-only: never a fleet's store
    (even with geod_schema set), and a session whose writes the server itself refuses."""
    make_pg_table(pg_url, [("8.8.8.8", None, None, None)], schema=TYPED,
                  insert="INSERT INTO geo_cache (ip, country_code, cached_at, source) "
                         "VALUES (%s, %s, %s, %s)")
    config = make_config(database={"url": pg_url, "geod_schema": "geod"})
    store = await open_store(config, readonly=True)
    try:
        assert isinstance(store, PgStore)  # no leases, no attempt log
        assert (await store.read_row("8.8.8.8") or {})["country_code"] is None
        assert await store.read_row("not an address") is None  # not an inet: no such row
        with pytest.raises(StoreError, match="read-only transaction"):
            await store.write([Update("8.8.8.8", Geo("US"))], "2026-11-29T12:00:00Z")
    finally:
        await store.close()
    assert read_pg_rows(pg_url)["8.8.8.8"]["country_code"] is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regnamespace('geod')::text").fetchone() == (None,)
