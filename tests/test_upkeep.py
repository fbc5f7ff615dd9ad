"""Upkeep (`upkeep`) over real tables in both stores (`app_db`: SQLite and PostgreSQL): fills
that never overwrite, refreshes that write once and only into rows the app left alone, mmdb
builds re-checked, NULL rows first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from geod.config import Config
from geod.errors import StoreBusy
from geod.negcache import NegativeCache
from geod.provider import Provider
from geod.records import Geo, Lookup, Outcome, PassSummary
from geod.resolve import Pass
from geod.store import open_store
from geod.upkeep import Cursor, OneWindow, for_pass
from tests.conftest import FakeClock, Logs, MakeConfig, events, make_daemon, read_rows
from tests.fake_ipapi import FakeIpApi
from tests.mmdb_files import geolite2_asn, geolite2_country, ipinfo_lite, write_mmdb
from tests.store_backends import SqliteBackend, StoreBackend

NOW = "2026-11-29T12:00:00Z"
OLD = "2026-09-01T00:00:00Z"  # older than the default 30 days
RECENT = "2026-11-20T00:00:00Z"
SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
          "asn TEXT, org TEXT, cached_at TEXT, source TEXT)")
INSERT = ("INSERT INTO geo_cache (ip, country_code, country_name, asn, org, cached_at, source) "
          "VALUES (?, ?, ?, ?, ?, ?, ?)")
# Counts every UPDATE that reaches a row: "written once" is a number, not an impression.
WRITES = {
    "sqlite": "CREATE TABLE writes (ip TEXT); CREATE TRIGGER count_writes AFTER UPDATE ON "
              "geo_cache BEGIN INSERT INTO writes VALUES (new.ip); END;",
    "postgresql": "CREATE TABLE writes (ip TEXT); CREATE FUNCTION count_writes() RETURNS trigger "
                  "LANGUAGE plpgsql AS $$ BEGIN INSERT INTO writes VALUES (NEW.ip); RETURN NEW; "
                  "END $$; CREATE TRIGGER count_writes AFTER UPDATE ON geo_cache FOR EACH ROW "
                  "EXECUTE FUNCTION count_writes();",
}
# The app's schema refusing one row (issue 10, finding 1), in each store's own words.
REFUSE_ONE = {
    "sqlite": "CREATE TRIGGER no BEFORE UPDATE ON geo_cache WHEN NEW.ip = '8.8.4.4' "
              "BEGIN SELECT RAISE(ABORT, 'no to 8.8.4.4'); END",
    "postgresql": "CREATE FUNCTION no() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.ip = '8.8.4.4' THEN RAISE EXCEPTION 'no to 8.8.4.4'; END IF; "
                  "RETURN NEW; END $$; CREATE TRIGGER no BEFORE UPDATE ON geo_cache FOR EACH ROW "
                  "EXECUTE FUNCTION no();",
}


class Scripted:
    """A provider that answers from a table and records what it was asked."""

    def __init__(self, name: str, answers: dict[str, Geo], *, metered: bool = False,
                 before_answer: Callable[[], None] | None = None) -> None:
        self.name = name
        self.batch_size = 100
        self.metered = metered
        self.answers = answers
        self.batches: list[list[str]] = []
        self.before_answer = before_answer

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        self.batches.append(list(addresses))
        if self.before_answer is not None:
            self.before_answer()
        return [Lookup(a, Outcome.RESOLVED, geo=self.answers[a], source=self.name)
                if a in self.answers else Lookup(a, Outcome.MISS, source=self.name)
                for a in addresses]


def make_table(app_db: StoreBackend, rows: list[tuple[Any, ...]]) -> StoreBackend:
    app_db.make(rows, schema=SCHEMA, insert=INSERT)
    app_db.script(WRITES[app_db.name])
    return app_db


def writes(db: StoreBackend) -> list[str]:
    return [str(ip) for (ip,) in db.query("SELECT ip FROM writes")]


@pytest.fixture
def config_for(make_config: MakeConfig) -> Callable[..., Config]:
    def make(db: StoreBackend, refresh: dict[str, Any] | None = None,
             **tables: dict[str, Any]) -> Config:
        return make_config(**{"database": db.database,
                              "database.columns": {"source": "source"},
                              "refresh": refresh or {}, **tables})
    return make


async def upkeep_pass(config: Config, chain: Sequence[Provider], clock: FakeClock, *,
                      may_spend: Callable[[], bool] = lambda: True,
                      cursor: Cursor | None = None,
                      negcache: NegativeCache | None = None) -> PassSummary:
    """One real pass with upkeep, as the daemon runs it, at wall time NOW."""
    store = await open_store(config)
    try:
        upkeep = for_pass(config, store, chain, negcache or NegativeCache(600, 86400, clock),
                          cursor or Cursor(), may_spend, lambda: NOW)
        return await Pass(store, chain, NegativeCache(600, 86400, clock), clock=clock,
                          now_utc=lambda: NOW, upkeep=upkeep).run()
    finally:
        await store.close()


# -- fill: what is there stays -----------------------------------------------------------------

APP_ROWS = [
    # No country yet, but the app knew a name, an AS holder: geod adds the country only.
    ("8.8.8.8", None, "USA (app)", None, "App Org", None, None),
    # A country without asn: the AS may be filled, the app's name and org stay.
    ("8.8.4.4", "US", "USA (app)", None, "App Org", RECENT, None),
    ("77.88.8.8", "RU", None, "AS1", None, RECENT, None),
]


@pytest.mark.parametrize("chain", ["mmdb", "rir", "ip-api", "mmdb+asn"])
async def test_an_apps_values_survive_every_provider(
        chain: str, app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str], tmp_path: Path) -> None:
    """Whatever answers, every non-NULL value the app wrote is still there after the pass."""
    db = make_table(app_db, APP_ROWS)
    if chain == "mmdb+asn":  # GeoLite2 Country plus GeoLite2 ASN
        country = write_mmdb(tmp_path / "c.mmdb", {
            "8.8.0.0/16": geolite2_country("US", "United States"),
            "77.88.0.0/16": geolite2_country("RU", "Russia")})
        asn = write_mmdb(tmp_path / "asn.mmdb", {"8.8.0.0/16": geolite2_asn(15169, "GOOGLE"),
                                                 "77.88.0.0/16": geolite2_asn(13238, "YANDEX")},
                         database_type="GeoLite2-ASN")
        mmdb = {"path": str(country), "asn_path": str(asn)}
    else:  # IPinfo Lite: country and AS in one file
        country = write_mmdb(tmp_path / "c.mmdb", {
            "8.8.0.0/16": ipinfo_lite("US", "United States of America", "AS15169", "Google LLC"),
            "77.88.0.0/16": ipinfo_lite("RU", "Russian Federation", "AS13238", "YANDEX LLC")},
            database_type="ipinfo lite")
        mmdb = {"path": str(country)}
    config = config_for(db, resolve={"providers": [chain.removesuffix("+asn")]}, mmdb=mmdb,
                        ipapi={"url": fake_server[1]})
    before = {ip: row for ip, row in read_rows(db).items()}
    summary = await make_daemon(config, fake_clock).run_once()
    assert summary is not None and summary.resolved == 1
    after = read_rows(db)
    for ip, old in before.items():
        for column, value in old.items():
            if value is not None and column not in ("cached_at", "source"):
                assert after[ip][column] == value, (chain, ip, column)
    assert after["8.8.8.8"]["country_code"] is not None
    # The NULL name of the RU row follows from its code, whoever else can answer.
    assert after["77.88.8.8"]["country_name"] == "Russia"


async def test_fill_asks_offline_first_and_ipapi_only_with_spare_quota(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """A fill the file cannot make goes to the metered provider only while quota is spare."""
    db = make_table(app_db, [("8.8.8.8", "US", "United States", None, None, RECENT, None)])
    offline = Scripted("rir", {"8.8.8.8": Geo("US", "United States")})
    metered = Scripted("ip-api", {"8.8.8.8": Geo("US", "United States", "AS15169", "Google LLC")},
                       metered=True)
    config = config_for(db)
    spent = await upkeep_pass(config, [metered, offline], fake_clock, may_spend=lambda: False)
    assert (offline.batches, metered.batches, spent.filled) == ([["8.8.8.8"]], [], 0)
    # Not backed off for lack of quota: the next pass with quota to spare fills it.
    summary = await upkeep_pass(config, [metered, offline], fake_clock)
    assert (metered.batches, summary.filled) == ([["8.8.8.8"]], 1)
    row = read_rows(db)["8.8.8.8"]
    assert (row["asn"], row["org"], row["cached_at"], row["source"]) == \
        ("AS15169", "Google LLC", RECENT, None)  # a fill is not a refresh: no new timestamp


async def test_a_missing_name_is_filled_without_asking_anyone(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """The name follows from the code, in the configured style; no provider is asked."""
    db = make_table(app_db, [("77.88.8.8", "RU", None, "AS13238", "YANDEX", RECENT, None)])
    provider = Scripted("ip-api", {}, metered=True)
    summary = await upkeep_pass(config_for(db, resolve={"country_names": "iso"}), [provider],
                                fake_clock)
    assert (summary.filled, provider.batches) == (1, [])
    assert read_rows(db)["77.88.8.8"]["country_name"] == "Russian Federation"


# -- refresh -----------------------------------------------------------------------------------

async def test_a_stale_row_with_a_new_country_is_written_once_and_counted_changed(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """geod's old row moves to the new country in one write; the app's old row is not touched."""
    db = make_table(app_db, [
        ("8.8.8.8", "DE", "Germany", "AS3320", "Deutsche Telekom AG", OLD, "ip-api"),
        ("8.8.4.4", "DE", "Germany", "AS3320", "Deutsche Telekom AG", OLD, None),  # the app's
    ])
    provider = Scripted("rir", {a: Geo("FR", "France") for a in ("8.8.8.8", "8.8.4.4")})
    config = config_for(db)
    summary = await upkeep_pass(config, [provider], fake_clock)
    assert (summary.changed, summary.confirmed, summary.filled) == (1, 0, 0)
    rows = read_rows(db)
    # What the answer lacks (rir knows no AS) keeps its value; the rest is the new answer.
    assert rows["8.8.8.8"] == {"ip": "8.8.8.8", "country_code": "FR", "country_name": "France",
                               "asn": "AS3320", "org": "Deutsche Telekom AG", "cached_at": NOW,
                               "source": "rir"}
    assert rows["8.8.4.4"]["country_code"] == "DE"
    again = await upkeep_pass(config, [provider], fake_clock)
    assert (again.changed, again.confirmed) == (0, 0)
    assert writes(db) == ["8.8.8.8"]
    assert provider.batches == [["8.8.8.8"]]


async def test_a_stale_row_that_still_holds_is_confirmed_and_only_its_timestamp_moves(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """Same answer: counted confirmed; the values stay, the timestamp says when it was checked."""
    db = make_table(app_db, [("8.8.8.8", "US", "United States", None, None, OLD, "rir")])
    summary = await upkeep_pass(config_for(db), [Scripted("rir", {
        "8.8.8.8": Geo("US", "United States")})], fake_clock)
    assert (summary.changed, summary.confirmed) == (0, 1)
    row = read_rows(db)["8.8.8.8"]
    assert (row["country_code"], row["cached_at"], row["source"]) == ("US", NOW, "rir")


async def test_app_rows_are_refreshed_only_when_asked_to(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """`app_after` opts the app's own rows in; geod's `after = "off"` keeps its rows out."""
    db = make_table(app_db, [("8.8.8.8", "DE", "Germany", "AS1", "x", OLD, None),
                              ("8.8.4.4", "DE", "Germany", "AS1", "x", OLD, "rir")])
    provider = Scripted("rir", {a: Geo("FR", "France") for a in ("8.8.8.8", "8.8.4.4")})
    summary = await upkeep_pass(config_for(db, {"after": "off", "app_after": "60d"}),
                                [provider], fake_clock)
    assert summary.changed == 1
    rows = read_rows(db)
    assert (rows["8.8.8.8"]["country_code"], rows["8.8.4.4"]["country_code"]) == ("FR", "DE")


async def test_a_row_the_app_rewrote_during_the_lookup_is_left_alone(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """No lock is held across the look-up: a row that changed meanwhile is not written."""
    db = make_table(app_db, [("8.8.8.8", "DE", "Germany", None, None, OLD, "ip-api"),
                              ("8.8.4.4", "DE", "Germany", None, None, OLD, "ip-api")])

    def app_writes() -> None:
        db.script("UPDATE geo_cache SET country_code = 'IT', country_name = 'Italy', "
                  "cached_at = '2026-11-29T11:59:00Z' WHERE ip = '8.8.8.8'")

    provider = Scripted("rir", {a: Geo("FR", "France") for a in ("8.8.8.8", "8.8.4.4")},
                        before_answer=app_writes)
    summary = await upkeep_pass(config_for(db), [provider], fake_clock)
    assert (summary.changed, summary.superseded) == (1, 1)
    rows = read_rows(db)
    assert (rows["8.8.8.8"]["country_code"], rows["8.8.8.8"]["source"]) == ("IT", "ip-api")
    assert rows["8.8.4.4"]["country_code"] == "FR"


async def test_null_rows_are_asked_first_and_upkeep_stops_when_quota_is_not_spare(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """The metered provider hears the NULL rows before any stale one, and no more than spare."""
    stale = [(f"8.8.{i}.1", "DE", "Germany", "AS1", "x", OLD, "ip-api") for i in range(250)]
    fresh = [(f"9.9.{i}.1", None, None, None, None, None, None) for i in range(150)]
    db = make_table(app_db, stale + fresh)
    metered = Scripted("ip-api", {f"{p}.{i}.1": Geo("FR", "France", "AS2", "y")
                                  for p in ("8.8", "9.9") for i in range(250)}, metered=True)
    budget = iter([True, False])  # one upkeep request's worth of spare quota
    summary = await upkeep_pass(config_for(db), [metered], fake_clock,
                                may_spend=lambda: next(budget, False))
    assert [b[0].startswith("9.9.") for b in metered.batches] == [True, True, False]
    assert (summary.resolved, summary.changed) == (150, 100)


async def test_upkeep_examines_per_pass_rows_and_resumes_where_it_stopped(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """A bounded look per pass, round robin over the table, so a pass stays short."""
    db = make_table(app_db, [(f"8.8.{i}.1", "DE", "Germany", "AS1", "x", OLD, "rir")
                              for i in range(5)])
    provider = Scripted("rir", {f"8.8.{i}.1": Geo("DE", "Germany") for i in range(5)})
    config, cursor = config_for(db, {"per_pass": 2}), Cursor()
    counts = [(await upkeep_pass(config, [provider], fake_clock, cursor=cursor)).confirmed
              for _ in range(4)]
    assert counts == [2, 2, 1, 0]
    assert [len(batch) for batch in provider.batches] == [2, 2, 1]


# -- a new mmdb build ----------------------------------------------------------------------------

async def test_rows_from_an_older_mmdb_build_are_rechecked_offline(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str], tmp_path: Path, logs: Logs) -> None:
    """geoipupdate brings a new build: the rows the old one answered are re-checked from the
    file on the next pass (and never sent to ip-api), then left alone until the next build."""
    path = write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "US"),
                                           "8.8.4.0/24": geolite2_country("US", "US")},
                      build_epoch=1_764_000_000)
    db = make_table(app_db, [("8.8.8.8", None, None, None, None, None, None),
                              ("8.8.4.4", None, None, None, None, None, None)])
    config = config_for(db, {"fill": False}, resolve={"providers": ["mmdb", "ip-api"]},
                        mmdb={"path": str(path)}, ipapi={"url": fake_server[1]})
    summaries: list[PassSummary] = []

    def done(summary: PassSummary) -> None:
        summaries.append(summary)
        if len(summaries) == 1:
            write_mmdb(path, {"8.8.8.0/24": geolite2_country("DE", "Germany"),
                              "8.8.4.0/24": geolite2_country("US", "US")},
                       build_epoch=1_764_300_000)
        if len(summaries) == 3:
            daemon.request_stop()

    daemon = make_daemon(config, fake_clock, done)
    await daemon.run()
    rows = read_rows(db)
    assert {ip: (r["country_code"], r["source"]) for ip, r in rows.items()} == {
        "8.8.8.8": ("DE", "mmdb:1764300000"), "8.8.4.4": ("US", "mmdb:1764300000")}
    assert [(s.resolved, s.changed, s.confirmed) for s in summaries] == \
        [(2, 0, 0), (0, 1, 1), (0, 0, 0)]
    assert fake_server[0].sent_ips() == []
    [journal] = events(logs, "upkeep_complete")  # the journal says it, in numbers
    assert {k: journal[k] for k in ("examined", "changed", "confirmed", "due")} == \
        {"examined": 2, "changed": 1, "confirmed": 1, "due": {"rebuild": 2}}


def test_ipapi_upkeep_gets_one_windows_time_a_pass(fake_clock: FakeClock) -> None:
    """Spare quota is spent for about one window from upkeep's first request, then no more."""
    spend = OneWindow(lambda: True, fake_clock, 60.0)
    assert spend()
    fake_clock.advance(59)
    assert spend()
    fake_clock.advance(2)
    assert not spend()
    assert not OneWindow(lambda: False, fake_clock)()  # and never more than is spare


async def test_a_lock_during_upkeep_ends_upkeep_not_the_pass(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """The NULL rows' results stand and the pass succeeds; upkeep tries again next pass."""
    db = make_table(app_db, [("8.8.8.8", None, None, None, None, None, None),
                              ("8.8.4.4", "DE", "Germany", "AS1", "x", OLD, "rir")])
    provider = Scripted("rir", {a: Geo("FR", "France") for a in ("8.8.8.8", "8.8.4.4")})
    config = config_for(db)
    store = await open_store(config)

    class Locked:
        """The app holds its lock through upkeep's read."""

        async def upkeep_chunks(self, *args: Any) -> AsyncIterator[list[Any]]:
            raise StoreBusy("reading rows to keep up: database is locked")
            yield []  # an async generator, as the real one

    try:
        upkeep = for_pass(config, store, [provider], NegativeCache(600, 86400, fake_clock),
                          Cursor(), lambda: True, lambda: NOW)
        assert upkeep is not None
        upkeep.store = Locked()  # type: ignore[assignment]  # only upkeep_chunks is reached
        summary = await Pass(store, [provider], NegativeCache(600, 86400, fake_clock),
                             clock=fake_clock, now_utc=lambda: NOW, upkeep=upkeep).run()
    finally:
        await store.close()
    assert (summary.resolved, summary.changed) == (1, 0)
    assert events(logs, "database_locked")[0]["during"] == "upkeep"


# -- the app's schema: upkeep's writes are confined like a pass's (issue 10, findings 1 and 3) ---

async def test_a_row_the_schema_refuses_during_upkeep_costs_that_row_only(
        app_db: StoreBackend, config_for: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """A trigger refusing one refresh used to fail upkeep's whole write, and with it the pass."""
    stale = ["8.8.8.8", "8.8.4.4", "1.1.1.1"]
    db = make_table(app_db, [(ip, "DE", "Germany", None, None, OLD, "rir") for ip in stale])
    db.script(REFUSE_ONE[db.name])
    provider = Scripted("rir", {ip: Geo("FR", "France") for ip in stale})
    summary = await upkeep_pass(config_for(db), [provider], fake_clock)
    assert (summary.changed, summary.superseded) == (2, 0)
    rows = read_rows(db)
    assert [rows[ip]["country_code"] for ip in stale] == ["FR", "DE", "FR"]
    [refused] = events(logs, "row_refused")
    assert (refused["during"], refused["rows"]) == ("upkeep", 1)


async def test_upkeep_reads_and_writes_through_a_writable_view(
        tmp_path: Path, config_for: Callable[..., Config], fake_clock: FakeClock) -> None:
    """A view's INSTEAD OF trigger does the writing: its rows are counted, not 'superseded'.

    SQLite only: geod's PostgreSQL store writes tables (it locks rows by ctid)."""
    db = SqliteBackend(tmp_path / "geo.db")
    db.make([("8.8.8.8", "DE", "Germany", None, None, OLD, "rir")],
            schema=SCHEMA.replace("geo_cache", "visits"),
            insert=INSERT.replace("geo_cache", "visits"))
    db.script(
        "CREATE VIEW geo_cache AS SELECT * FROM visits;"
        "CREATE TRIGGER geo_cache_update INSTEAD OF UPDATE ON geo_cache BEGIN "
        "UPDATE visits SET country_code = NEW.country_code, country_name = NEW.country_name,"
        " asn = NEW.asn, org = NEW.org, cached_at = NEW.cached_at, source = NEW.source "
        "WHERE ip = OLD.ip; END;")
    provider = Scripted("rir", {"8.8.8.8": Geo("FR", "France")})
    summary = await upkeep_pass(config_for(db), [provider], fake_clock)
    assert (summary.changed, summary.superseded) == (1, 0)
    assert read_rows(db, "visits")["8.8.8.8"]["country_code"] == "FR"
