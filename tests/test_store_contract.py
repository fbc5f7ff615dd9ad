"""What every store promises, run against SQLite and PostgreSQL alike (`app_db`)."""

from __future__ import annotations

import asyncio

import pytest

from geod.config import ColumnsConfig
from geod.errors import ConfigError, StoreBusy
from geod.records import Geo, Update, WriteDeadline, Written
from tests.store_backends import StoreBackend

GEO = Geo("US", "United States", "AS15169", "Google LLC")
AT = "2026-11-28T10:00:00Z"


async def test_unmapped_columns_are_neither_required_nor_written(
        app_db: StoreBackend) -> None:
    """Columns mapped to "" may be absent, and only the mapped ones are written."""
    app_db.make([("8.8.8.8", None)],
                       schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT, seen TEXT)")
    columns = ColumnsConfig(country_name="", asn="", org="", updated_at="")
    store = await app_db.open(columns=columns)
    assert await store.write([Update("8.8.8.8", GEO)], AT) == Written(1)
    await store.close()
    assert app_db.read()["8.8.8.8"] == {"ip": "8.8.8.8", "country_code": "US",
                                               "seen": None}


async def test_app_column_names_are_mapped(app_db: StoreBackend) -> None:
    """An app table with its own column names (one a keyword) is read and written through them."""
    app_db.make(
        [("1.1.1.1", None)],
        schema='CREATE TABLE hosts (addr TEXT, cc TEXT, "select" TEXT, asnum TEXT, o TEXT, t TEXT)',
        insert="INSERT INTO hosts (addr, cc) VALUES (?, ?)")
    columns = ColumnsConfig(ip="addr", country_code="cc", country_name="select", asn="asnum",
                            org="o", updated_at="t")
    store = await app_db.open(table="hosts", columns=columns)
    chunks = [chunk async for chunk in store.due_chunks()]
    assert [row.key for row in chunks[0]] == ["1.1.1.1"]
    assert await store.write([Update("1.1.1.1", GEO)], AT) == Written(1)
    await store.close()
    row = app_db.read("hosts", key="addr")["1.1.1.1"]
    assert (row["cc"], row["select"], row["asnum"], row["o"], row["t"]) == (
        "US", "United States", "AS15169", "Google LLC", AT)


async def test_chunks_are_bounded_and_cover_every_null_row(app_db: StoreBackend) -> None:
    """Reads come in chunks of at most `size`, skip resolved rows and see each NULL row once."""
    rows = [(f"8.8.{i // 256}.{i % 256}", None if i % 3 else "DE") for i in range(2500)]
    app_db.make(rows)
    store = await app_db.open()
    chunks = [chunk async for chunk in store.due_chunks(size=700)]
    await store.close()
    keys = [row.key for chunk in chunks for row in chunk]
    assert max(len(chunk) for chunk in chunks) <= 700
    assert sorted(keys) == sorted(ip for ip, cc in rows if cc is None)
    assert len(keys) == len(set(keys))


async def test_write_never_overwrites_what_the_app_wrote(app_db: StoreBackend) -> None:
    """Only rows still NULL at write time change; '' and codes the app set are kept."""
    app_db.make([("8.8.8.8", None), ("1.1.1.1", ""), ("9.9.9.9", "CH")])
    store = await app_db.open()
    updates = [Update(ip, GEO) for ip in ("8.8.8.8", "1.1.1.1", "9.9.9.9")]
    assert await store.write(updates, AT) == Written(1)
    await store.close()
    rows = app_db.read()
    assert rows["8.8.8.8"]["country_code"] == "US"
    assert rows["8.8.8.8"]["asn"] == "AS15169"
    assert rows["1.1.1.1"]["country_code"] == ""
    assert rows["9.9.9.9"]["country_code"] == "CH"


async def test_write_is_keyed_on_the_stored_string(app_db: StoreBackend) -> None:
    """A row stored with whitespace or as IPv4-mapped IPv6 is written under its own key."""
    app_db.make([(" 8.8.8.8", None), ("::ffff:8.8.8.8", None)])
    store = await app_db.open()
    written = await store.write([Update(" 8.8.8.8", GEO), Update("::ffff:8.8.8.8", GEO)], AT)
    await store.close()
    assert written == Written(2)
    assert {row["country_code"] for row in app_db.read().values()} == {"US"}


async def test_values_are_bound_not_spliced(app_db: StoreBackend) -> None:
    """A hostile value from a provider is stored verbatim, never run."""
    app_db.make([("8.8.8.8", None)])
    evil = Geo("US", "x'); DROP TABLE geo_cache; --", None, "O'Reilly")
    store = await app_db.open()
    assert await store.write([Update("8.8.8.8", evil)], AT) == Written(1)
    await store.close()
    assert app_db.read()["8.8.8.8"]["country_name"] == evil.country_name


async def test_report_counts(app_db: StoreBackend) -> None:
    """report() counts rows, due (NULL) rows and the top countries."""
    app_db.make([("8.8.8.8", None), ("10.0.0.1", None), ("junk", None), ("1.1.1.1", "AU"),
                        ("1.0.0.1", "AU"), ("9.9.9.9", "CH"), ("4.4.4.4", "")])
    store = await app_db.open()
    counts = await store.report()
    assert await store.count_due() == 3
    await store.close()
    assert (counts.rows, counts.due) == (7, 3)
    assert counts.top_countries == [("AU", 2), ("CH", 1)]


async def test_missing_mapped_column_is_a_config_error(app_db: StoreBackend) -> None:
    """A mapped column the table lacks is named in the error."""
    app_db.make(schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT)")
    with pytest.raises(ConfigError, match=r"\[database.columns\] country_name: column"):
        await app_db.open()


async def test_lock_held_past_busy_timeout_is_store_busy(app_db: StoreBackend) -> None:
    """While the app keeps writers out, a write gives up after busy_timeout with StoreBusy and
    writes nothing; once the app lets go, the same write goes through."""
    app_db.make([("8.8.8.8", None)])
    store = await app_db.open(busy_timeout=0.05)
    with app_db.hold_lock(), pytest.raises(StoreBusy):
        await store.write([Update("8.8.8.8", GEO)], AT)
    assert await store.write([Update("8.8.8.8", GEO)], AT) == Written(1)
    await store.close()


async def test_deadline_cuts_a_long_lock_wait_short(app_db: StoreBackend) -> None:
    """With busy_timeout 30 s and the app holding its lock, moving the write's deadline up (a
    stop) ends the wait within a slice, as StoreBusy."""
    app_db.make([("8.8.8.8", None)])
    store = await app_db.open(busy_timeout=30)
    loop = asyncio.get_running_loop()
    with app_db.hold_lock():
        deadline = WriteDeadline()
        write = asyncio.ensure_future(store.write([Update("8.8.8.8", GEO)], AT, deadline))
        await asyncio.sleep(0.3)
        assert not write.done()  # still waiting on the app
        started = loop.time()
        deadline.at = loop.time() + 0.1
        with pytest.raises(StoreBusy):
            await write
        assert loop.time() - started < 1.0
    assert await store.write([Update("8.8.8.8", GEO)], AT) == Written(1)
    await store.close()


async def test_write_keeps_a_name_asn_org_the_app_put_in_a_row_without_country(
        app_db: StoreBackend) -> None:
    """Per-column COALESCE: the country is filled, the app's own values stay (NULLs filled)."""
    app_db.make([("8.8.8.8", None, "USA (app)", None, "App Org")],
                insert="INSERT INTO geo_cache (ip, country_code, country_name, asn, org) "
                       "VALUES (?, ?, ?, ?, ?)")
    store = await app_db.open()
    assert await store.write([Update("8.8.8.8", GEO)], AT) == Written(1)
    await store.close()
    assert app_db.read()["8.8.8.8"] == {
        "ip": "8.8.8.8", "country_code": "US", "country_name": "USA (app)", "asn": "AS15169",
        "org": "App Org", "cached_at": AT}
