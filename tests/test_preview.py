"""`geod explain` and `geod once --dry-run` as the operator runs them: the real process, a real
table in either store (`app_db`) and .mmdb file, the fake ip-api. They write nothing, take no
fleet lease and spend no quota unless asked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from geod.negcache import NegativeCache
from geod.ratelimit import BAN_PAUSE, RateGovernor
from geod.state import StateFile
from tests.conftest import FakeClock, read_rows, toml_value, write_config
from tests.mmdb_files import geolite2_country, write_mmdb
from tests.proc import FakeServer, run_geod, start_fake_ipapi
from tests.store_backends import StoreBackend

SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
          "asn TEXT, org TEXT, cached_at TEXT, source TEXT)")
INSERT = "INSERT INTO geo_cache VALUES (?, ?, ?, ?, ?, ?, ?)"
ROWS = [
    ("8.8.8.8", None, None, None, None, None, None),  # due: the file answers
    ("9.9.9.9", None, None, None, None, None, None),  # due: only ip-api could answer
    ("10.0.0.1", None, None, None, None, None, None),  # never sent
    ("77.88.8.8", "DE", "Germany", "AS1", "x", "2026-01-01T00:00:00Z", "ip-api"),  # stale
    ("1.1.1.1", "AU", None, "AS13335", "Cloudflare", "2099-01-01T00:00:00Z", None),  # a gap
]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeServer]:
    with start_fake_ipapi(tmp_path) as server:
        yield server


@pytest.fixture
def setup(tmp_path: Path, app_db: StoreBackend, fake: FakeServer) -> tuple[Path, StoreBackend]:
    """(config, table): chain mmdb, ip-api; the file knows 8.8.8.0/24 and 77.88.0.0/16."""
    write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States"),
                                     "77.88.0.0/16": geolite2_country("RU", "Russia")},
               build_epoch=1_764_000_000)
    db = app_db(ROWS, schema=SCHEMA, insert=INSERT)
    database = "\n".join(f"{key} = {toml_value(value)}" for key, value in db.database.items())
    config = write_config(tmp_path / "geod.toml", f"""
[database]
{database}
[database.columns]
source = "source"
[resolve]
providers = ["mmdb", "ip-api"]
[mmdb]
path = "c.mmdb"
[ipapi]
url = "{fake.batch_url}"
[log]
level = "warning"
""")
    return config, db


def table(db: StoreBackend) -> dict[str, dict[str, Any]]:
    return read_rows(db)


def test_dry_run_lists_the_changes_and_writes_nothing(setup: tuple[Path, StoreBackend],
                                                      fake: FakeServer) -> None:
    """A diff of every row the pass would write; the file and ip-api's quota are untouched."""
    config, db = setup
    before = table(db)
    result = run_geod("once", "--dry-run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["resolved  8.8.8.8", "  country_code: NULL -> 'US'"]
    assert "changed   77.88.8.8" in lines and "  country_code: 'DE' -> 'RU'" in lines
    assert "filled    1.1.1.1" in lines and "  country_name: NULL -> 'Australia'" in lines
    assert lines[-1].startswith("dry run: nothing written; unresolved=3 ")
    assert table(db) == before
    assert fake.batches() == []


@pytest.mark.parametrize("app_db", ["postgresql"], indirect=True)
def test_a_dry_run_in_a_fleet_takes_no_lease(setup: tuple[Path, StoreBackend],
                                            fake: FakeServer) -> None:
    """With `geod_schema` set, the dry run still previews every due row (not a claim's share)
    and leaves geod's schema alone: no lease, no attempt log, not even the tables created."""
    config, db = setup
    config.write_text(config.read_text().replace("[database.columns]",
                                                 'geod_schema = "geod"\n[database.columns]'))
    before = table(db)
    result = run_geod("once", "--dry-run", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    planned = {row["ip"]: row["kind"] for row in json.loads(result.stdout)["would_write"]}
    assert planned == {"8.8.8.8": "resolved", "77.88.8.8": "changed", "1.1.1.1": "filled"}
    assert table(db) == before
    assert db.query("SELECT to_regnamespace('geod')::text") == [(None,)]
    assert fake.batches() == []


def test_dry_run_json_and_ask_ipapi(setup: tuple[Path, StoreBackend], fake: FakeServer) -> None:
    """--json is one object; --ask-ipapi is the one way a preview spends quota."""
    config, db = setup
    result = run_geod("once", "--dry-run", "--json", "--ask-ipapi", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_ip = {row["ip"]: row for row in data["would_write"]}
    assert by_ip["9.9.9.9"]["kind"] == "resolved"
    assert by_ip["77.88.8.8"]["fields"]["country_code"] == {"from": "DE", "to": "RU"}
    assert data["summary"]["resolved_by"] == {"mmdb": 1, "ip-api": 1}
    assert fake.batches()[0] == ["9.9.9.9"]
    assert table(db)["9.9.9.9"]["country_code"] is None


def test_explain_shows_the_row_each_answer_and_the_write(setup: tuple[Path, StoreBackend],
                                                          fake: FakeServer) -> None:
    """Stored row, verdict, answers in chain order (ip-api not asked), what a pass would write."""
    config, db = setup
    result = run_geod("explain", "77.88.8.8", "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "verdict      stale: re-resolved with capacity the NULL rows leave" in out
    assert "  mmdb     resolved   country_code='RU'" in out
    assert "  ip-api   not asked  reason='spends ip-api quota; add --ask-ipapi'" in out
    assert "would write  (changed)\n  country_code: 'DE' -> 'RU'" in out
    assert fake.batches() == []
    private = run_geod("explain", "10.0.0.1", "--json", "--config", str(config))
    data = json.loads(private.stdout)
    assert (data["verdict"], data["answers"], data["would_write"]) == \
        ("never sent: the address is private", [], None)
    asked = json.loads(run_geod("explain", "9.9.9.9", "--json", "--ask-ipapi",
                                "--config", str(config)).stdout)
    assert [a["provider"] for a in asked["answers"]] == ["mmdb", "ip-api"]
    assert asked["would_write"]["kind"] == "resolved"
    assert fake.batches() == [["9.9.9.9"]]
    assert db.query("SELECT COUNT(*) FROM geo_cache WHERE country_code IS NULL") == [(3,)]


def test_explain_shows_the_back_off_and_pause_the_state_file_holds(
        tmp_path: Path, setup: tuple[Path, StoreBackend], fake: FakeServer) -> None:
    """With the daemon's state file: the address's real back-off (pass and upkeep) and an
    ip-api ban, as wall-clock times; the file is read, never written."""
    config, _ = setup
    clock = FakeClock()
    governor = RateGovernor(0, clock, clock.sleep)
    negcache, upkeep = NegativeCache(600, 86400, clock), NegativeCache(600, 86400, clock)
    negcache.record_failure("9.9.9.9")
    negcache.record_failure("9.9.9.9")  # 2 failures: 1200 s from now
    upkeep.record_failure("77.88.8.8")
    governor.refuse("banned", BAN_PAUSE)
    state = tmp_path / "state.json"
    StateFile(state, governor, negcache, clock, upkeep_negcache=upkeep).save()
    written, mtime = state.read_bytes(), state.stat().st_mtime_ns
    config.write_text(config.read_text() + f'[daemon]\nstate_file = "{state}"\n')
    data = json.loads(run_geod("explain", "9.9.9.9", "--json", "--config", str(config)).stdout)
    assert data["state"]["backoff"]["failures"] == 2
    assert data["state"]["upkeep_backoff"] is None
    next_attempt = datetime.fromisoformat(data["state"]["backoff"]["next_attempt"])
    assert abs(next_attempt.timestamp() - (time.time() + 1200)) < 30
    assert data["state"]["ipapi_pause_reason"] == "banned"
    assert "paused (banned) until" in data["ipapi_pause"]
    text = run_geod("explain", "77.88.8.8", "--config", str(config)).stdout
    assert "back-off     upkeep: 1 failure(s), next attempt " in text
    assert "ip-api       paused (banned) until " in text
    assert state.read_bytes() == written and state.stat().st_mtime_ns == mtime
    missing = tmp_path / "none.json"
    config.write_text(config.read_text().replace(str(state), str(missing)))
    data = json.loads(run_geod("explain", "9.9.9.9", "--json", "--config", str(config)).stdout)
    assert data["backoff"].startswith(f"unknown: state file {missing} not read")
    assert not missing.exists()
