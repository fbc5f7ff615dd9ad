"""The app's schema is whatever it is: triggers, constraints, views, generated columns, NULLs.

A row the schema refuses is confined to that row (counted, logged, backed off); a value the app
wrote is never overwritten, whatever the provider left out; a table geod cannot page or write
is refused with a clear error, never read as empty. Real SQLite files, a fake provider.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geod.config import DatabaseConfig
from geod.errors import ConfigError
from geod.negcache import NegativeCache
from geod.records import Geo, Lookup, Outcome
from geod.sqlite_store import SqliteStore
from tests.conftest import FakeClock, Logs, MakeDb, events, make_pass, read_rows

PUBLIC = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "4.4.4.4", "208.67.222.222"]


class Answers:
    """A provider that resolves every address it is asked, with or without asn/org."""

    name = "fake"
    batch_size = 100

    def __init__(self, *, asn: bool = True, code: str = "NL") -> None:
        self.asn = asn
        self.code = code
        self.asked: list[str] = []

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        self.asked += addresses
        geo = Geo(self.code, "Netherlands", "AS1" if self.asn else None,
                  "Org" if self.asn else None)
        return [Lookup(a, Outcome.RESOLVED, geo=geo, source=self.name) for a in addresses]


def _schema(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


# -- finding 1: a row the schema refuses ----------

REFUSING = {
    "trigger-abort": ["CREATE TRIGGER no BEFORE UPDATE ON geo_cache WHEN NEW.ip = '1.1.1.1' "
                      "BEGIN SELECT RAISE(ABORT, 'no to 1.1.1.1'); END"],
    "trigger-fail": ["CREATE TRIGGER no BEFORE UPDATE ON geo_cache WHEN NEW.ip = '1.1.1.1' "
                     "BEGIN SELECT RAISE(FAIL, 'no to 1.1.1.1'); END"],
    "trigger-rollback": ["CREATE TRIGGER no BEFORE UPDATE ON geo_cache WHEN NEW.ip = '1.1.1.1' "
                         "BEGIN SELECT RAISE(ROLLBACK, 'no to 1.1.1.1'); END"],
}


@pytest.mark.parametrize("statements", list(REFUSING.values()), ids=list(REFUSING))
async def test_a_refusing_trigger_costs_its_row_only(
    statements: list[str], make_db: MakeDb, fake_clock: FakeClock, logs: Logs
) -> None:
    """Finding 1: one refused row used to abort the pass (nothing after it was ever written)."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC])
    _schema(db, *statements)
    negcache = NegativeCache(600, 86400, fake_clock)
    summary = await make_pass(db, [Answers()], negcache, fake_clock)
    assert (summary.resolved, summary.refused) == (4, 1)
    rows = read_rows(db)
    assert rows["1.1.1.1"]["country_code"] is None
    assert all(rows[ip]["country_code"] == "NL" for ip in PUBLIC if ip != "1.1.1.1")
    [refusal] = events(logs, "row_refused")
    assert refusal["address"] == "1.1.1.1" and refusal["reason"] == "no to 1.1.1.1"
    assert refusal["log_level"] == "warning"
    # Backed off: the next pass does not ask about it again.
    again = Answers()
    second = await make_pass(db, [again], negcache, fake_clock)
    assert again.asked == [] and second.backed_off == 1


@pytest.mark.parametrize(("schema", "bad"), [
    ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT "
     "CHECK (country_code IS NULL OR ip != '9.9.9.9'), country_name TEXT, asn TEXT, org TEXT, "
     "cached_at TEXT)", "9.9.9.9"),
    ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
     "asn TEXT, org TEXT UNIQUE, cached_at TEXT)", "*"),
    ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
     "asn INTEGER, org TEXT, cached_at TEXT) STRICT", "*"),
], ids=["check", "unique", "strict"])
async def test_constraints_confine_to_the_row(
    schema: str, bad: str, make_db: MakeDb, fake_clock: FakeClock, logs: Logs
) -> None:
    """Finding 1: CHECK, UNIQUE and a STRICT type refuse rows; the pass goes on past them."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC], schema=schema)
    summary = await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    rows = read_rows(db)
    if bad == "*":  # UNIQUE: the first row takes "Org", the rest are refused; STRICT: all are
        assert summary.refused == len(PUBLIC) - summary.resolved
        assert summary.resolved + summary.refused == len(PUBLIC)
    else:
        assert (summary.resolved, summary.refused) == (4, 1)
        assert rows[bad]["country_code"] is None
    assert len(events(logs, "row_refused")) == summary.refused


# -- finding 2: never NULL over the app's values ----------

async def test_a_provider_without_asn_keeps_the_apps_asn_and_org(
    make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 2: a provider without asn/org used to write NULL over the app's values."""
    db = make_db(rows=[("8.8.8.8", None, "AS15169", "Google"), ("1.1.1.1", None, None, None)],
                 insert="INSERT INTO geo_cache (ip, country_code, asn, org) VALUES (?, ?, ?, ?)")
    summary = await make_pass(db, [Answers(asn=False)], NegativeCache(600, 86400, fake_clock),
                              fake_clock)
    assert summary.resolved == 2
    rows = read_rows(db)
    assert (rows["8.8.8.8"]["asn"], rows["8.8.8.8"]["org"]) == ("AS15169", "Google")
    assert rows["8.8.8.8"]["country_code"] == "NL"
    assert (rows["1.1.1.1"]["asn"], rows["1.1.1.1"]["org"]) == (None, None)


async def test_a_provider_with_asn_fills_only_the_holes(
    make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 2: an app's value beats geod's answer, column by column."""
    db = make_db(rows=[("8.8.8.8", None, "AS15169", None)],
                 insert="INSERT INTO geo_cache (ip, country_code, asn, org) VALUES (?, ?, ?, ?)")
    await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    row = read_rows(db)["8.8.8.8"]
    assert (row["asn"], row["org"], row["country_name"]) == ("AS15169", "Org", "Netherlands")


# -- finding 3: a view, a column named rowid ----------

async def test_a_writable_view_is_read_and_written(
    make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 3: a VIEW geo_cache used to be paged on a NULL rowid: nothing read, exit 0."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC],
                 schema="CREATE TABLE visits (ip TEXT PRIMARY KEY, country_code TEXT, "
                        "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)",
                 insert="INSERT INTO visits (ip, country_code) VALUES (?, ?)")
    _schema(db, "CREATE VIEW geo_cache AS SELECT * FROM visits",
            "CREATE TRIGGER geo_cache_update INSTEAD OF UPDATE ON geo_cache BEGIN "
            "UPDATE visits SET country_code = NEW.country_code, country_name = NEW.country_name,"
            " asn = NEW.asn, org = NEW.org, cached_at = NEW.cached_at WHERE ip = OLD.ip; END")
    summary = await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    assert summary.resolved == len(PUBLIC)
    assert all(row["country_code"] == "NL" for row in read_rows(db, "visits").values())


async def test_a_view_geod_cannot_write_is_refused_at_open(make_db: MakeDb) -> None:
    """Finding 3: a view without an INSTEAD OF UPDATE trigger is a clear config error."""
    db = make_db(schema="CREATE TABLE visits (ip TEXT, country_code TEXT, country_name TEXT, "
                        "asn TEXT, org TEXT, cached_at TEXT)",
                 insert="INSERT INTO visits (ip, country_code) VALUES (?, ?)")
    _schema(db, "CREATE VIEW geo_cache AS SELECT * FROM visits")
    with pytest.raises(ConfigError, match="is a view without an INSTEAD OF UPDATE trigger"):
        await SqliteStore.open(DatabaseConfig(path=str(db)), "geod.toml")


@pytest.mark.parametrize("schema", [
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT, rowid INTEGER)",
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT, rowid TEXT, _rowid_ TEXT, oid TEXT)",
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT) WITHOUT ROWID",
], ids=["rowid-column", "all-aliases-shadowed", "without-rowid"])
async def test_a_table_whose_rowid_is_not_a_rowid_is_read_in_full(
    schema: str, make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 3: a column named rowid (NULL here) used to make geod read nothing."""
    ips = [f"8.8.{i // 200}.{i % 200 + 1}" for i in range(2500)]  # more than one chunk
    db = make_db(rows=[(ip, None) for ip in ips], schema=schema)
    summary = await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    assert summary.resolved == len(ips)


# -- finding 4: generated columns ----------

async def test_a_generated_column_mapped_as_a_target_is_named_as_such(make_db: MakeDb) -> None:
    """Finding 4: a generated column used to be reported as "does not exist"."""
    db = make_db(schema="CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                        "country_name TEXT GENERATED ALWAYS AS (upper(country_code)), "
                        "asn TEXT, org TEXT, cached_at TEXT)")
    with pytest.raises(ConfigError) as caught:
        await SqliteStore.open(DatabaseConfig(path=str(db)), "geod.toml")
    assert str(caught.value) == (
        "geod.toml: [database.columns] country_name: column 'country_name' is a generated "
        "column of 'geo_cache': geod cannot write it (map a plain column, or leave it unset)")


async def test_a_generated_address_column_is_read(make_db: MakeDb, fake_clock: FakeClock) -> None:
    """Finding 4: a generated column geod only reads (the address) is fine."""
    db = make_db(rows=[(f"{ip}:80", None) for ip in PUBLIC],
                 schema="CREATE TABLE geo_cache (peer TEXT, country_code TEXT, "
                        "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT, "
                        "ip TEXT GENERATED ALWAYS AS (substr(peer, 1, instr(peer, ':') - 1)))",
                 insert="INSERT INTO geo_cache (peer, country_code) VALUES (?, ?)")
    summary = await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    assert summary.resolved == len(PUBLIC)


# -- finding 5: NULL addresses ----------

async def test_null_addresses_are_unresolvable_in_every_count(
    make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 5: NULL-ip rows were counted unresolved but in no category."""
    db = make_db(rows=[(None, None), (None, None), ("8.8.8.8", None), ("10.0.0.1", None)],
                 schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT, country_name TEXT, "
                        "asn TEXT, org TEXT, cached_at TEXT)")
    summary = await make_pass(db, [Answers()], NegativeCache(600, 86400, fake_clock), fake_clock)
    assert summary.unresolved == 4
    assert (summary.resolved, summary.unresolvable) == (1, 3)
    assert summary.unresolved == (summary.resolved + summary.unresolvable + summary.failed
                                  + summary.missed + summary.backed_off + summary.locked
                                  + summary.refused)


# -- finding 25: one address, two spellings, two chunks ----------

async def test_an_address_spelled_twice_in_two_chunks_is_asked_once(
    make_db: MakeDb, fake_clock: FakeClock
) -> None:
    """Finding 25: the second spelling, in a later 1,000-row chunk, used to be asked again."""
    filler = [f"8.8.{i // 200}.{i % 200 + 1}" for i in range(1200)]
    rows = [("2001:4860:4860::8888", None), *((ip, None) for ip in filler),
            ("2001:4860:4860:0:0:0:0:8888", None)]
    db = make_db(rows=rows)
    provider = Answers()
    summary = await make_pass(db, [provider], NegativeCache(600, 86400, fake_clock), fake_clock)
    assert provider.asked.count("2001:4860:4860::8888") == 1
    assert len(provider.asked) == len(set(provider.asked))
    assert summary.resolved == len(rows)
    assert read_rows(db)["2001:4860:4860:0:0:0:0:8888"]["country_code"] == "NL"


# -- the class: random app schemas ----------

_COLUMNS = ("country_name", "asn", "org")
_RAISES = ("ABORT", "FAIL", "ROLLBACK", "IGNORE")


@st.composite
def app_schemas(draw: st.DrawFn) -> tuple[str, list[str], list[tuple[str, str | None, ...]]]:
    """A table with random constraints, random triggers and random pre-filled values."""
    strict = draw(st.booleans())
    types = {c: draw(st.sampled_from(["TEXT", "INTEGER", "ANY"] if strict else ["TEXT", ""]))
             for c in _COLUMNS}
    defs = ["ip TEXT" + draw(st.sampled_from([" PRIMARY KEY", " UNIQUE", ""])),
            "country_code TEXT" + draw(st.sampled_from(
                ["", " CHECK (country_code IS NULL OR country_code != 'NL')",
                 " CHECK (length(country_code) = 2 OR country_code IS NULL)"]))]
    for column in _COLUMNS:
        extra = draw(st.sampled_from(["", " UNIQUE", f" CHECK ({column} IS NULL OR "
                                      f"length({column}) < 4)", " NOT NULL DEFAULT 'app'"]))
        defs.append(f"{column} {types[column]}{extra}")
    defs.append("cached_at TEXT")
    schema = f"CREATE TABLE geo_cache ({', '.join(defs)}){' STRICT' if strict else ''}"
    ips = draw(st.lists(st.sampled_from(PUBLIC), min_size=1, max_size=5, unique=True))
    triggers = []
    for index in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(PUBLIC))
        how = draw(st.sampled_from(_RAISES))
        message = "" if how == "IGNORE" else f", 'app refuses {target}'"
        triggers.append(f"CREATE TRIGGER t{index} BEFORE UPDATE ON geo_cache "
                        f"WHEN NEW.ip = '{target}' BEGIN SELECT RAISE({how}{message}); END")
    rows = [(ip, *(draw(st.sampled_from([None, "v"])) for _ in _COLUMNS)) for ip in ips]
    return schema, triggers, rows


def _accepts(db: Path, ip: str, geo: Geo) -> bool:
    """Would the schema take geod's write of `ip` alone, now? (Tried, then rolled back.)"""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        cur = conn.execute(
            "UPDATE geo_cache SET country_code = ?, country_name = COALESCE(country_name, ?), "
            "asn = COALESCE(asn, ?), org = COALESCE(org, ?), cached_at = ? "
            "WHERE ip = ? AND country_code IS NULL",
            (geo.country_code, geo.country_name, geo.asn, geo.org, "t", ip))
        return cur.rowcount == 1
    except sqlite3.IntegrityError:
        return False
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(app=app_schemas(), asn=st.booleans())
async def test_any_app_schema_a_pass_never_aborts_never_overwrites_and_fills_what_it_may(
    app: tuple[str, list[str], list[tuple[str, str | None, ...]]], asn: bool,
    tmp_path_factory: pytest.TempPathFactory, fake_clock: FakeClock,
) -> None:
    """The class of findings 1-2: whatever the schema, a pass ends normally, every non-NULL
    value the app wrote is still there, and every row the schema accepts is resolved."""
    schema, triggers, rows = app
    db = tmp_path_factory.mktemp("app") / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute(schema)
        for ip, *values in rows:
            try:
                conn.execute("INSERT INTO geo_cache (ip, country_name, asn, org) "
                             "VALUES (?, ?, ?, ?)", (ip, *values))
            except sqlite3.IntegrityError:
                pass  # the schema refuses the app's own row: it is not there
        for trigger in triggers:
            conn.execute(trigger)
    conn.close()
    before = read_rows(db)
    provider = Answers(asn=asn)
    geo = Geo("NL", "Netherlands", "AS1" if asn else None, "Org" if asn else None)
    summary = await make_pass(db, [provider], NegativeCache(600, 86400, fake_clock), fake_clock)
    after = read_rows(db)
    assert summary.resolved + summary.refused <= len(before)
    for ip, old in before.items():
        for column, value in old.items():
            if value is not None and column != "cached_at":
                assert after[ip][column] == value, (ip, column)
        if after[ip]["country_code"] is None:
            assert not _accepts(db, ip, geo), f"{ip} was left although the schema accepts it"
