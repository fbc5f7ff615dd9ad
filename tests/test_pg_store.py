"""PgStore against a real PostgreSQL 15: mapping, chunked reads, guarded writes, counts, locks."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from geod.errors import ConfigError, StoreError
from geod.pg_store import PgStore
from geod.records import Geo, Update, Written
from tests.pg_helpers import make_pg_table, pg_config, read_pg_rows

GEO = Geo("US", "United States", "AS15169", "Google LLC")
AT = "2026-11-28T10:00:00Z"


async def test_missing_table_is_a_config_error_and_nothing_is_created(pg_url: str) -> None:
    """geod creates nothing in the app's database: a missing table names [database] table."""
    with pytest.raises(ConfigError, match=r"\[database\] table: table 'geo_cache' does not exist"):
        await PgStore.open(pg_config(pg_url), "geod.toml")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('geo_cache')").fetchone() == (None,)


async def test_unreachable_server_is_a_store_error(pg_url: str) -> None:
    """A server that is not there: a StoreError naming the URL, not a traceback."""
    url = "postgresql://postgres@/x?host=/nonexistent&port=1"
    with pytest.raises(StoreError, match="connecting to postgresql://postgres@/x"):
        await PgStore.open(pg_config(url), "geod.toml")


async def test_inet_keys_and_typed_columns(pg_url: str) -> None:
    """An inet ip column and a timestamptz stamp column are paged and written through casts."""
    make_pg_table(
        pg_url, [(f"9.9.9.{i}", None) for i in range(10)] + [("2001:db8::1", None)],
        schema="CREATE TABLE geo_cache (ip inet PRIMARY KEY, country_code char(2), "
        "country_name varchar(80), asn TEXT, org TEXT, cached_at timestamptz)")
    store = await PgStore.open(pg_config(pg_url), "geod.toml")
    chunks = [chunk async for chunk in store.due_chunks(size=3)]
    keys = [row.key for chunk in chunks for row in chunk]
    assert sorted(keys) == sorted([f"9.9.9.{i}" for i in range(10)] + ["2001:db8::1"])
    assert await store.write([Update("9.9.9.9", GEO), Update("2001:db8::1", GEO)], AT) == Written(2)
    await store.close()
    rows = read_pg_rows(pg_url)
    assert rows["9.9.9.9"]["country_code"] == "US"
    assert rows["9.9.9.9"]["cached_at"].isoformat() == "2026-11-28T10:00:00+00:00"
    assert rows["2001:db8::1"]["asn"] == "AS15169"


async def test_no_transaction_is_open_between_chunks(pg_url: str) -> None:
    """Between two chunks geod's session is idle, not idle in a transaction, and holds no locks."""
    make_pg_table(pg_url, [(f"8.8.4.{i}", None) for i in range(10)])
    store = await PgStore.open(pg_config(pg_url), "geod.toml")
    chunks = store.due_chunks(size=5)
    first = await anext(chunks)
    with psycopg.connect(pg_url, autocommit=True) as other:
        states = other.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = 'geod'").fetchall()
        locks = other.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'geod'").fetchone()
        other.execute("SET lock_timeout = '5ms'")
        other.execute("UPDATE geo_cache SET country_code = 'FR' WHERE ip = '8.8.4.9'")
    rest = [chunk async for chunk in chunks]
    await store.close()
    assert states == [("idle",)]
    assert locks == (0,)
    assert len(first) == 5
    assert sum(len(chunk) for chunk in rest) == 4


async def test_a_row_the_app_is_writing_is_skipped_not_waited_for(pg_url: str) -> None:
    """While the app holds a row lock, geod writes the other rows at once and leaves that one."""
    make_pg_table(pg_url, [("8.8.8.8", None), ("1.1.1.1", None)])
    store = await PgStore.open(pg_config(pg_url, busy_timeout=30), "geod.toml")
    with psycopg.connect(pg_url) as app:  # a transaction, open until the block ends
        app.execute("UPDATE geo_cache SET org = 'app' WHERE ip = '8.8.8.8'")
        started = time.perf_counter()
        written = await store.write([Update("8.8.8.8", GEO), Update("1.1.1.1", GEO)], AT)
        took = time.perf_counter() - started
        # The app's transaction still goes through without waiting on geod.
        app.execute("SET LOCAL lock_timeout = '5ms'")
        app.execute("UPDATE geo_cache SET org = 'app2' WHERE ip = '1.1.1.1'")
    await store.close()
    assert written == Written(1)
    assert took < 5.0  # not busy_timeout (30 s): no row-lock wait at all
    rows = read_pg_rows(pg_url)
    assert rows["8.8.8.8"]["country_code"] is None
    assert rows["1.1.1.1"]["country_code"] == "US"


async def test_session_limits_are_set_server_side(pg_url: str) -> None:
    """lock_timeout follows busy_timeout; statement and idle-transaction limits are set."""
    make_pg_table(pg_url)
    store = await PgStore.open(pg_config(pg_url, busy_timeout=2.5), "geod.toml")
    with psycopg.connect(pg_url, autocommit=True) as other:
        (pid,) = other.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'geod'").fetchone() or (0,)
    conn = store._conn  # noqa: SLF001 - reading the session's own settings
    shown = [(await (await conn.execute(f"SHOW {name}")).fetchone() or ("",))[0]
             for name in ("lock_timeout", "statement_timeout",
                          "idle_in_transaction_session_timeout")]
    await store.close()
    assert pid != 0
    assert shown == ["2500ms", "1min", "10s"]


async def test_app_writer_never_waits_long_on_geod(pg_url: str) -> None:
    """An app updating rows non-stop while geod writes batches over them: its longest wait."""
    rows = [(f"8.{i // 65536}.{i // 256 % 256}.{i % 256}", None) for i in range(4000)]
    make_pg_table(pg_url, rows)
    store = await PgStore.open(pg_config(pg_url), "geod.toml")
    waits: list[float] = []
    done = asyncio.Event()

    async def app_writer() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as app:
            i = 0
            while not done.is_set():
                ip = rows[(i * 7919) % len(rows)][0]
                started = time.perf_counter()
                await app.execute("UPDATE geo_cache SET org = 'app' WHERE ip = %s", (ip,))
                waits.append(time.perf_counter() - started)
                i += 1

    writer = asyncio.create_task(app_writer())
    async for chunk in store.due_chunks(size=100):
        await store.write([Update(row.key, GEO) for row in chunk], AT)
    done.set()
    await writer
    await store.close()
    assert len(waits) > 10
    # One 100-row UPDATE takes milliseconds; a lock held across anything else would show here.
    assert max(waits) < 1.0, max(waits)


@pytest.mark.parametrize("refusal", [
    "CREATE FUNCTION no() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.ip = '1.1.1.1' THEN RAISE EXCEPTION 'no to 1.1.1.1'; END IF; RETURN NEW; END $$; "
    "CREATE TRIGGER no BEFORE UPDATE ON geo_cache FOR EACH ROW EXECUTE FUNCTION no()",
    "ALTER TABLE geo_cache ADD CONSTRAINT no CHECK (country_code IS NULL OR ip <> '1.1.1.1')",
], ids=["trigger", "check"])
async def test_a_row_the_schema_refuses_costs_that_row_only(pg_url: str, refusal: str) -> None:
    """Issue 10, finding 1, on PostgreSQL: one refused row used to fail the whole batch, pass
    after pass. It is left out and reported; the other rows are written."""
    make_pg_table(pg_url, [("8.8.8.8", None), ("1.1.1.1", None), ("9.9.9.9", None)])
    with psycopg.connect(pg_url) as conn:
        conn.execute(refusal)
    store = await PgStore.open(pg_config(pg_url), "geod.toml")
    written = await store.write([Update(ip, GEO) for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9")],
                                AT)
    await store.close()
    assert written.changed == 2
    [refused] = written.refused
    assert refused.key == "1.1.1.1" and "no" in refused.reason
    rows = read_pg_rows(pg_url)
    assert [rows[ip]["country_code"] for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9")] == \
        ["US", None, "US"]
