"""`geod run` as a real process: schedule, SIGHUP reloads, SIGTERM/SIGINT stops, JSON logs.

Each test runs the daemon against the fake ip-api server (another process) and a temp database,
with a one-hour interval: any pass after the first one can only have been started by a signal.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from geod.ipapi import FIELDS
from tests.conftest import MakeDb, read_rows
from tests.fake_ipapi import FakeIpApi, parse_fields
from tests.proc import GeodProcess, closed_port_url, start_fake_ipapi, write_geod_config

pytestmark = pytest.mark.slow

INTERVAL = 3600


def add_rows(db: Path, ips: list[str]) -> None:
    """Insert NULL-country rows, as the app does between passes."""
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [(ip,) for ip in ips])
    conn.close()


def country_of(db: Path) -> dict[str, str | None]:
    return {ip: row["country_code"] for ip, row in read_rows(db).items()}


def expected_country(ip: str) -> str:
    return str(FakeIpApi().answer_for(ip, parse_fields(FIELDS))["countryCode"])


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Poll `check` until it is true (bounded)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_startup_schedules_and_first_pass_resolves(tmp_path: Path, make_db: MakeDb) -> None:
    """Startup logs the schedule, the first pass resolves every row, SIGTERM when idle exits 0."""
    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]
    # The app's own row is complete: no upkeep (a fill) adds requests to what is counted here.
    db = make_db(rows=[*((ip, None, None, None, None) for ip in public),
                       ("9.9.9.9", "US", "United States", "AS19281", "Quad9")],
                 insert="INSERT INTO geo_cache (ip, country_code, country_name, asn, org) "
                        "VALUES (?, ?, ?, ?, ?)")
    with start_fake_ipapi(tmp_path) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url,
                                interval=INTERVAL)  # fmt: skip
        with GeodProcess(cfg) as geod:
            scheduled = geod.wait_for_event("geo_re_resolve_scheduled")
            assert scheduled["interval_seconds"] == INTERVAL
            assert scheduled["initial_delay_seconds"] == 0
            done = geod.wait_for_event("geo_re_resolve_complete")
            assert done["resolved"] == len(public) and done["failed"] == 0
            assert done["pass_id"] == 1 and done["level"] == "info"
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
            assert geod.wait_for_event("shutdown")["passes"] == 1
            assert geod.other_lines == [] and geod.stderr_lines == []
        assert sorted(fake.sent_ips()) == sorted(public)
    countries = country_of(db)
    assert countries == {**{ip: expected_country(ip) for ip in public}, "9.9.9.9": "US"}


def test_nothing_to_do_logs_skip(tmp_path: Path, make_db: MakeDb) -> None:
    """A pass with no NULL rows logs geo_re_resolve_skip (no_unresolved_ips) and sends nothing."""
    # Complete rows: with a NULL asn/org the 8.8.8.8 row would be filled (upkeep), and whether
    # that request went out before the SIGTERM would be a race.
    db = make_db(rows=[("8.8.8.8", "US", "United States", "AS15169", "Google LLC"),
                       ("1.1.1.1", "", None, None, None)],
                 insert="INSERT INTO geo_cache (ip, country_code, country_name, asn, org) "
                        "VALUES (?, ?, ?, ?, ?)")
    with start_fake_ipapi(tmp_path) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        with GeodProcess(cfg) as geod:
            skip = geod.wait_for_event("geo_re_resolve_skip")
            assert skip["reason"] == "no_unresolved_ips" and skip["pass_id"] == 1
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
            assert geod.named("geo_re_resolve_start") == []
        assert fake.requests() == []


def test_sighup_reloads_clears_negative_cache_and_passes_now(
    tmp_path: Path, make_db: MakeDb
) -> None:
    """SIGHUP re-reads the config, empties the back-off cache and starts a pass at once."""
    public = ["8.8.8.8", "1.1.1.1", "8.8.4.4"]
    db = make_db(rows=[(ip, None) for ip in public])
    cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=closed_port_url(), max_attempts=1)
    with start_fake_ipapi(tmp_path) as fake, GeodProcess(cfg) as geod:
        first = geod.wait_for_event("geo_re_resolve_complete")
        assert first["failed"] == len(public) and first["resolved"] == 0  # all backing off now
        write_geod_config(cfg, db=db, url=fake.batch_url, max_attempts=1)
        mark = geod.mark()
        geod.send(signal.SIGHUP)
        second = geod.wait_for_event("geo_re_resolve_complete", after=mark)
        # Without the cache clear these addresses would still be backing off (ttl 600 s).
        assert second["resolved"] == len(public) and second["backed_off"] == 0
        assert second["pass_id"] == 2
        after = geod.names()[mark:]
        assert after.index("config_reloaded") < after.index("negative_cache_cleared")
        assert after.index("negative_cache_cleared") < after.index("geo_re_resolve_start")
        assert geod.wait_for_event("negative_cache_cleared")["entries"] == len(public)
        assert geod.wait_for_event("config_reloaded")["path"] == str(cfg)
        assert sorted(fake.sent_ips()) == sorted(public)
        geod.send(signal.SIGTERM)
        assert geod.wait(10) == 0
    assert country_of(db) == {ip: expected_country(ip) for ip in public}


def test_sighup_applies_new_batch_size(tmp_path: Path, make_db: MakeDb) -> None:
    """A batch_size changed in the file before SIGHUP is used by the very next pass."""
    first_rows = ["8.8.8.8", "1.1.1.1", "8.8.4.4", "9.9.9.9"]
    later_rows = ["1.0.0.1", "208.67.222.222", "208.67.220.220", "4.2.2.2"]
    db = make_db(rows=[(ip, None) for ip in first_rows])
    # A one-second window keeps geod's spreading of requests over the window short.
    with start_fake_ipapi(tmp_path, limit=15, window=1) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete")
            assert fake.batches() == [first_rows]
            add_rows(db, later_rows)
            write_geod_config(cfg, db=db, url=fake.batch_url, batch_size=2)
            mark = geod.mark()
            geod.send(signal.SIGHUP)
            done = geod.wait_for_event("geo_re_resolve_complete", after=mark)
            assert done["resolved"] == len(later_rows)
            assert fake.batches()[1:] == [later_rows[:2], later_rows[2:]]
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0


def test_sighup_applies_new_log_level(tmp_path: Path, make_db: MakeDb) -> None:
    """A log level changed before SIGHUP applies at once: at `warning` the info events vanish."""
    db = make_db(rows=[("8.8.8.8", None)])
    with start_fake_ipapi(tmp_path, window=1) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete")
            quiet_from = geod.mark()
            add_rows(db, ["1.1.1.1"])
            write_geod_config(cfg, db=db, url=fake.batch_url, level="warning")
            geod.send(signal.SIGHUP)
            # The pass still runs (the row gets written) but logs nothing at info.
            wait_until(lambda: country_of(db)["1.1.1.1"] is not None)
            write_geod_config(cfg, db=db, url=fake.batch_url, level="info")
            geod.send(signal.SIGHUP)
            reloaded = geod.wait_for_event("config_reloaded", after=quiet_from)
            skip = geod.wait_for_event("geo_re_resolve_skip", after=quiet_from)
            assert skip["pass_id"] == 3  # pass 2 ran, silently
            assert geod.names()[quiet_from] == "config_reloaded"  # nothing logged in between
            assert len(geod.named("config_reloaded")) == 1 and reloaded["level"] == "info"
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
        assert fake.sent_ips() == ["8.8.8.8", "1.1.1.1"]


@pytest.mark.parametrize(
    "bad",
    ["[daemon\ninterval = 5\n", "[ipapi]\nbatch_size = 500\n"],
    ids=["invalid-toml", "out-of-range"],
)
def test_sighup_with_invalid_config_keeps_running(
    bad: str, tmp_path: Path, make_db: MakeDb
) -> None:
    """An invalid config on SIGHUP logs config_reload_failed; the daemon keeps the old one."""
    db = make_db(rows=[("8.8.8.8", None)])
    with start_fake_ipapi(tmp_path, window=1) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete")
            add_rows(db, ["1.1.1.1"])
            cfg.write_text(bad, encoding="utf-8")
            mark = geod.mark()
            geod.send(signal.SIGHUP)
            failed = geod.wait_for_event("config_reload_failed", after=mark)
            assert failed["level"] == "error"
            assert failed["reason"].startswith(f"{cfg}: ")
            assert geod.wait_for_event("negative_cache_cleared", after=mark)["entries"] == 0
            done = geod.wait_for_event("geo_re_resolve_complete", after=mark)
            assert done["resolved"] == 1
            assert geod.named("config_reloaded") == []
            assert geod.proc.poll() is None
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
        assert fake.sent_ips() == ["8.8.8.8", "1.1.1.1"]  # still the old URL, batch size etc.


def test_sighup_burst_during_pass_coalesces(tmp_path: Path, make_db: MakeDb) -> None:
    """Twenty SIGHUPs during a pass lead to exactly one follow-up pass; passes never overlap."""
    # Two batches of one against one request per 2 s window: the pass waits ~2 s for the second.
    # The private row stays NULL for ever, so the follow-up pass is a real (start/complete) pass.
    db = make_db(rows=[("8.8.8.8", None), ("1.1.1.1", None), ("10.0.0.1", None)])
    with start_fake_ipapi(tmp_path, limit=1, window=2) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url, batch_size=1)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("rate_limit_wait")
            assert geod.named("geo_re_resolve_complete") == []  # still inside pass 1
            for _ in range(20):
                geod.send(signal.SIGHUP)
            geod.wait_for_event("geo_re_resolve_complete", count=2)
            # Any further pass would start right away (its wake-up is already set): give it
            # a moment to show itself before stopping.
            time.sleep(0.5)
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
            assert geod.pass_events() == [
                ("geo_re_resolve_start", 1), ("geo_re_resolve_complete", 1),
                ("geo_re_resolve_start", 2), ("geo_re_resolve_complete", 2),
            ]  # fmt: skip
            assert len(geod.named("config_reloaded")) == 1
            assert geod.wait_for_event("shutdown")["passes"] == 2
        assert fake.batches() == [["8.8.8.8"], ["1.1.1.1"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_during_rate_limit_wait_keeps_answered_batches(
    sig: signal.Signals, tmp_path: Path, make_db: MakeDb
) -> None:
    """SIGTERM/SIGINT in a 30 s rate-limit wait exits 0 at once; answered batches stay written."""
    public = ["8.8.8.8", "1.1.1.1", "8.8.4.4"]
    db = make_db(rows=[(ip, None) for ip in public])
    with start_fake_ipapi(tmp_path, limit=1, window=30) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url, batch_size=1)
        with GeodProcess(cfg) as geod:
            wait = geod.wait_for_event("rate_limit_wait")
            assert wait["wait_s"] > 20
            sent = time.monotonic()
            geod.send(sig)
            assert geod.wait(10) == 0
            assert time.monotonic() - sent < 5
            assert geod.wait_for_event("geo_re_resolve_interrupted")["reason"] == "stop"
            assert geod.wait_for_event("shutdown")["passes"] == 0
            assert geod.named("geo_re_resolve_complete") == []
            assert geod.stderr_lines == []
        assert fake.batches() == [["8.8.8.8"]]
    row = read_rows(db)["8.8.8.8"]
    assert row["country_code"] == expected_country("8.8.8.8") and row["cached_at"]
    assert country_of(db) == {"8.8.8.8": row["country_code"], "1.1.1.1": None, "8.8.4.4": None}
