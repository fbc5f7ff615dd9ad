"""The provider chain (`chain`) in the daemon: real .mmdb files, the fake ip-api, reloads, config
errors."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from geod.cli import main
from geod.config import Config
from geod.errors import ConfigError
from geod.records import PassSummary
from tests.conftest import (
    FakeClock,
    Logs,
    MakeConfig,
    MakeDb,
    events,
    make_daemon,
    read_rows,
    write_config,
)
from tests.fake_ipapi import FakeIpApi
from tests.mmdb_files import geolite2_country, write_mmdb


@pytest.fixture
def mmdb_path(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "GeoLite2-Country.mmdb", {
        "8.8.8.0/24": geolite2_country("US", "United States"),
        "2001:200::/23": geolite2_country("JP", "Japan"),
    })


@pytest.fixture
def make_config(make_config: MakeConfig, fake_server: tuple[FakeIpApi, str],
                mmdb_path: Path) -> MakeConfig:
    """conftest's factory with this module's defaults: a source column, the fake ip-api."""
    def make(providers: str = '["mmdb", "ip-api"]', extra: str = "",
             country_names: str = "common") -> Config:
        more = (f'[resolve]\nproviders = {providers}\ncountry_names = "{country_names}"\n'
                f'[mmdb]\npath = "{mmdb_path.name}"\n{extra}')
        return make_config(more, **{"database.columns": {"source": "source"},
                                    "ipapi": {"url": fake_server[1]}})
    return make


SOURCE_SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT, source TEXT)"
)


def provider_of(source: str | None) -> str | None:
    """The provider in a `source` value: "mmdb:<build epoch>" -> "mmdb"."""
    return source.split(":")[0] if source else source


def add_rows(db: Path, *ips: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [(ip,) for ip in ips])
    conn.close()


async def test_ipapi_is_asked_only_for_what_the_file_missed(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """mmdb first: ip-api receives only the remainder, and the counts say who answered."""
    db = make_db([(ip, None) for ip in ("8.8.8.8", "2001:200::1", "9.9.9.9", "1.1.1.1")],
                 schema=SOURCE_SCHEMA)
    fake, _ = fake_server
    summary = await make_daemon(make_config(), fake_clock).run_once()
    # The NULL rows' request first; then upkeep asks, with the quota left, for the AS of the
    # rows the country-only file answered (a fill: their country stays the file's).
    asked = [r.ips for r in fake.requests if r.method == "POST"]
    assert asked == [["9.9.9.9", "1.1.1.1"], ["8.8.8.8", "2001:200::1"]]
    assert summary is not None and summary.resolved_by == {"mmdb": 2, "ip-api": 2}
    # ip-api places 2001:200::1 in FR, the file in JP: another country's AS is not the row's.
    assert summary.filled == 1
    rows = read_rows(db)
    assert (rows["8.8.8.8"]["asn"], rows["2001:200::1"]["asn"]) == ("AS43639", None)
    [complete] = events(logs, "geo_re_resolve_complete")
    assert complete["resolved_by"] == {"mmdb": 2, "ip-api": 2}
    sources = {ip: provider_of(row["source"]) for ip, row in read_rows(db).items()}
    assert sources == {"8.8.8.8": "mmdb", "2001:200::1": "mmdb", "9.9.9.9": "ip-api",
                       "1.1.1.1": "ip-api"}


async def test_offline_providers_never_wait_for_the_rate_governor(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str]) -> None:
    """With ip-api's window used up, a chain the local providers fully answer never waits."""
    make_db([(ip, None) for ip in ("8.8.8.8", "1.0.16.1", "2001:4860::1")],
            schema=SOURCE_SCHEMA)
    fake, _ = fake_server
    fake.spend(15, tenant="dashboard")
    daemon = make_daemon(make_config('["mmdb", "rir", "ip-api"]'), fake_clock)
    daemon.governor.observe(0, 60)  # as if ip-api had just said X-Rl: 0, X-Ttl: 60
    summary = await daemon.run_once()
    assert summary is not None and summary.resolved_by == {"mmdb": 1, "rir": 2, "ip-api": 0}
    assert fake_clock.sleeps == []
    assert fake.sent_ips() == []


async def test_replaced_file_is_used_by_the_running_daemon(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        mmdb_path: Path, logs: Logs) -> None:
    """geoipupdate replaces the file between passes: the next pass answers from the new one."""
    db = make_db([("8.8.8.8", None)], schema=SOURCE_SCHEMA)
    summaries: list[PassSummary] = []

    def done(summary: PassSummary) -> None:
        summaries.append(summary)
        if len(summaries) == 1:
            write_mmdb(mmdb_path, {"8.8.4.0/24": geolite2_country("DE", "Germany")})
            add_rows(db, "8.8.4.4")
        else:
            daemon.request_stop()

    daemon = make_daemon(make_config('["mmdb"]', "[daemon]\ninterval = 60"), fake_clock, done)
    await daemon.run()
    rows = read_rows(db)
    assert (rows["8.8.8.8"]["country_code"], rows["8.8.4.4"]["country_code"]) == ("US", "DE")
    assert len(events(logs, "mmdb_opened")) == 2


async def test_every_provider_writes_the_configured_names_and_a_reload_switches_them(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        mmdb_path: Path) -> None:
    """mmdb, rir and ip-api rows all get `country_names`' spelling; SIGHUP applies a new one."""
    write_mmdb(mmdb_path, {"8.8.8.0/24": geolite2_country("KR", "Korea (South)")})
    # 8.8.8.x: the file (KR); 77.88.8.x: rir (RU); 2d00::2 and ::a: rir has no allocation, so
    # the fake ip-api answers (GB for both).
    db = make_db([(ip, None) for ip in ("8.8.8.8", "77.88.8.8", "2d00::2")],
                 schema=SOURCE_SCHEMA)
    chain = '["mmdb", "rir", "ip-api"]'
    passes = 0
    styles: list[str | None] = []  # the ip-api provider's: the fake's places read alike in both

    def done(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        assert daemon.chain is not None
        by_name = {provider.name: provider for provider in daemon.chain.providers}
        styles.append(getattr(by_name.get("ip-api"), "names", None))
        if passes == 1:
            make_config(chain, country_names="common")  # rewrites the file the daemon reloads
            add_rows(db, "8.8.8.9", "77.88.8.9", "2d00::a")
            daemon.request_reload()
        else:
            daemon.request_stop()

    daemon = make_daemon(make_config(chain, country_names="iso"), fake_clock, done)
    await daemon.run()
    rows = read_rows(db)
    names = {ip: (provider_of(row["source"]), row["country_name"]) for ip, row in rows.items()}
    assert names == {
        "8.8.8.8": ("mmdb", "Korea, Republic of"),
        "77.88.8.8": ("rir", "Russian Federation"),
        "2d00::2": ("ip-api", "United Kingdom"),
        "8.8.8.9": ("mmdb", "South Korea"),
        "77.88.8.9": ("rir", "Russia"),
        "2d00::a": ("ip-api", "United Kingdom"),
    }
    assert styles == ["iso", "common"]


async def test_reload_with_a_corrupt_file_keeps_the_old_reader(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        mmdb_path: Path, logs: Logs) -> None:
    """SIGHUP with a broken file: an error is logged and the old data keeps answering."""
    db = make_db([("8.8.8.8", None)], schema=SOURCE_SCHEMA)
    passes = 0

    def done(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        if passes == 1:
            broken = mmdb_path.with_name("broken")
            broken.write_bytes(b"\x00" * 64)
            os.replace(broken, mmdb_path)
            add_rows(db, "8.8.8.9")
            daemon.request_reload()
        else:
            daemon.request_stop()

    daemon = make_daemon(make_config('["mmdb"]'), fake_clock, done)
    await daemon.run()
    assert read_rows(db)["8.8.8.9"]["country_code"] == "US"
    [failed] = events(logs, "mmdb_reload_failed")
    assert failed["log_level"] == "error" and "not a MaxMind DB file" in failed["reason"]


async def test_reload_that_adds_a_missing_file_goes_on_without_it(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """A reload naming an unusable file logs an error; the rest of the chain still runs."""
    db = make_db([("8.8.8.8", None)], schema=SOURCE_SCHEMA)
    config = make_config('["rir"]')
    passes = 0

    def done(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        if passes == 1:
            Path(config.source).write_text(
                '[database.columns]\nsource = "source"\n[resolve]\nproviders = ["mmdb", "rir"]\n'
                '[mmdb]\npath = "gone.mmdb"\n')
            add_rows(db, "1.0.16.1")
            daemon.request_reload()
        else:
            daemon.request_stop()

    daemon = make_daemon(config, fake_clock, done)
    await daemon.run()
    assert read_rows(db)["1.0.16.1"]["source"] == "rir"
    [failed] = events(logs, "mmdb_reload_failed")
    assert failed["action"] == "left_out_of_chain" and "gone.mmdb" in failed["path"]
    assert daemon.chain is not None
    assert [provider.name for provider in daemon.chain.providers] == ["rir"]


async def test_startup_with_a_missing_file_is_a_config_error(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        mmdb_path: Path) -> None:
    """A file that will not open at start-up fails before any pass, naming [mmdb] path."""
    make_db(schema=SOURCE_SCHEMA)
    config = make_config()
    await asyncio.to_thread(mmdb_path.unlink)
    with pytest.raises(ConfigError, match=r"\[mmdb\] path: cannot open .*No such file"):
        await make_daemon(config, fake_clock).run()


def _config(tmp_path: Path, mmdb: str, providers: str = '["mmdb", "rir"]') -> Path:
    return write_config(tmp_path / "geod.toml",
                        f'[resolve]\nproviders = {providers}\n[mmdb]\n{mmdb}\n')


@pytest.mark.parametrize("command", ["once", "check-config"])
@pytest.mark.parametrize(
    ("providers", "mmdb", "setup", "message"),
    [
        ('["maxmind"]', "", None,
         "[resolve] providers: unknown provider 'maxmind' (known: ip-api, mmdb, rir)"),
        ('["rir", "rir"]', "", None, "[resolve] providers: 'rir' is listed twice"),
        ('["mmdb"]', "", None, '[mmdb] path: must be set when [resolve] providers has "mmdb"'),
        ('["mmdb"]', 'path = "x.mmdb"', None,
         "[mmdb] path: cannot open {dir}/x.mmdb: No such file or directory"),
        ('["mmdb"]', 'path = "x.mmdb"', lambda p: p.write_bytes(b"junk"),
         "[mmdb] path: cannot open {dir}/x.mmdb: not a MaxMind DB file"),
        ('["mmdb"]', 'path = "x.mmdb"', lambda p: p.mkdir(),
         "[mmdb] path: cannot open {dir}/x.mmdb: Is a directory"),
        ('["mmdb"]', 'path = "good.mmdb"\nasn_path = "x.mmdb"', None,
         "[mmdb] asn_path: cannot open {dir}/x.mmdb: No such file or directory"),
    ],
    ids=["unknown", "twice", "no-path", "missing", "corrupt", "directory", "asn-missing"],
)
def test_config_errors_exit_78_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, providers: str,
        mmdb: str, setup: Callable[[Path], object] | None, message: str) -> None:
    """Provider mistakes are config errors: exit 78, naming the file, the key and the cause."""
    write_mmdb(tmp_path / "good.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States")})
    if setup is not None:
        setup(tmp_path / "x.mmdb")
    path = _config(tmp_path, mmdb, providers)
    assert main([command, "--config", str(path)]) == 78
    expected = f"geod: {path}: " + message.format(dir=tmp_path)
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file geod may not read is a config error naming the permission problem."""
    db = write_mmdb(tmp_path / "x.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States")})
    db.chmod(0)
    path = _config(tmp_path, 'path = "x.mmdb"')
    assert main(["once", "--config", str(path)]) == 78
    assert "[mmdb] path: cannot open" in (err := capsys.readouterr().err)
    assert "Permission denied" in err


def test_every_configurable_provider_has_a_factory() -> None:
    """config.PROVIDERS (what a config may name) and chain.FACTORIES (what can be built) agree."""
    from geod.chain import FACTORIES
    from geod.config import PROVIDERS

    assert sorted(FACTORIES) == sorted(PROVIDERS)
