"""Daemon lifecycle in-process, with fake time: schedule, reload, stop, errors inside a pass."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from geod.config import Config
from geod.daemon import Daemon
from geod.errors import ConfigError
from geod.records import PassSummary
from geod.status import Phase, Status
from tests.conftest import (
    FakeClock,
    Logs,
    MakeConfig,
    MakeDb,
    events,
    make_daemon,
    read_rows,
)
from tests.fake_ipapi import FakeIpApi
from tests.store_backends import StoreBackend


@pytest.fixture
def make_config(make_config: MakeConfig, fake_server: tuple[FakeIpApi, str],
                request: pytest.FixtureRequest) -> MakeConfig:
    """conftest's factory with this module's defaults; `extra` lands in [ipapi]. A test that
    takes `app_db` runs against its table (SQLite, then PostgreSQL), others against geo.db."""
    tables = ({"database": request.getfixturevalue("app_db").database}
              if "app_db" in request.fixturenames else {})

    def make(extra: str = "", interval: float = 600, initial_delay: float = 0) -> Config:
        return make_config(extra, daemon={"interval": interval, "initial_delay": initial_delay},
                           **tables, ipapi={"url": fake_server[1]})
    return make


async def reload_after_first_pass(config: Config, clock: FakeClock,
                                  before_reload: Callable[[Daemon], None]) -> Daemon:
    """Run a daemon that, after its first pass, calls `before_reload` and asks for a reload;
    it stops after the second pass."""
    def done(summary: PassSummary) -> None:
        if daemon.passes == 1:
            before_reload(daemon)
            daemon.request_reload()
        else:
            daemon.request_stop()

    daemon = make_daemon(config, clock, done)
    await daemon.run()
    return daemon


async def test_schedule_waits_initial_delay_then_interval(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """It logs the schedule, waits initial_delay, then passes every interval until stopped."""
    app_db([("8.8.8.8", None)])
    summaries: list[PassSummary] = []

    def done(summary: PassSummary) -> None:
        summaries.append(summary)
        if len(summaries) == 3:
            daemon.request_stop()

    daemon = make_daemon(make_config(interval=600, initial_delay=30), fake_clock, done)
    await daemon.run()
    assert events(logs, "geo_re_resolve_scheduled")[0]["interval_seconds"] == 600
    assert fake_clock.sleeps == [30, 600, 600]
    assert summaries[0].resolved == 1
    assert [len(events(logs, e)) for e in ("geo_re_resolve_complete", "geo_re_resolve_skip")] \
        == [1, 2]
    assert events(logs, "shutdown")


async def test_reload_mid_pass_coalesces_into_one_pass(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """Many reload requests during a pass give exactly one extra pass right after it."""
    app_db([("8.8.8.8", None)])
    fake, _ = fake_server
    started = asyncio.Event()
    release = asyncio.Event()
    original = fake.answer_for

    passes: list[PassSummary] = []

    def done(summary: PassSummary) -> None:
        passes.append(summary)
        if len(passes) == 2:
            daemon.request_stop()

    daemon = make_daemon(make_config(interval=600), fake_clock, done)

    async def hold() -> None:
        await started.wait()
        for _ in range(50):
            daemon.request_reload()
        release.set()

    def answer(ip: str, fields: set[str] | None) -> dict[str, object]:
        started.set()
        return original(ip, fields)

    fake.answer_for = answer  # type: ignore[method-assign]
    holder = asyncio.create_task(hold())
    await daemon.run()
    await holder
    assert len(passes) == 2
    assert len(events(logs, "config_reloaded")) == 1
    # The second pass came from the reload, not from the interval: no 600 s sleep before it.
    assert 600 not in fake_clock.sleeps


async def test_reload_applies_new_config_and_clears_negative_cache(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """A reload re-reads the file (new batch size), clears the negative cache, passes now."""
    app_db([("8.8.8.8", None)])
    config = make_config()

    def before_reload(daemon: Daemon) -> None:
        daemon.negcache.record_failure("1.2.3.4")
        Path(config.source).write_text(Path(config.source).read_text() + "batch_size = 7\n")

    daemon = await reload_after_first_pass(config, fake_clock, before_reload)
    assert daemon.config.ipapi.batch_size == 7
    assert daemon.chain is not None
    [ipapi] = [p for p in daemon.chain.providers if p.name == "ip-api"]
    assert ipapi.batch_size == 7
    assert events(logs, "negative_cache_cleared")[0]["entries"] == 1
    assert len(daemon.negcache) == 0


async def test_invalid_reload_keeps_old_config_and_still_passes(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """A bad config on reload logs config_reload_failed (error), keeps the old one, passes."""
    app_db([("8.8.8.8", None)])
    config = make_config()

    def before_reload(daemon: Daemon) -> None:
        Path(config.source).write_text("[daemon]\ninterval = -1\n")

    daemon = await reload_after_first_pass(config, fake_clock, before_reload)
    [failed] = events(logs, "config_reload_failed")
    assert failed["log_level"] == "error" and "[daemon] interval" in failed["reason"]
    assert daemon.config is config
    assert daemon.passes == 2


@pytest.mark.parametrize(
    "bad",
    ["key = 918273645546372819", 'key_file = "{fifo}"', "batch_size = " + "[" * 50_000],
    ids=["secret-number", "fifo-key-file", "deep-nesting"],
)
async def test_hostile_reload_is_logged_without_secrets_and_the_daemon_goes_on(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs, tmp_path: Path, bad: str) -> None:
    """A reloaded config with a numeric key, a FIFO as key_file or absurd nesting logs
    config_reload_failed (the key's value not in it) and the old config stays in use."""
    make_db([("8.8.8.8", None)])
    config = make_config()
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)

    def before_reload(daemon: Daemon) -> None:
        text = Path(config.source).read_text()
        Path(config.source).write_text(text + bad.replace("{fifo}", str(fifo)) + "\n")

    daemon = await reload_after_first_pass(config, fake_clock, before_reload)
    [failed] = events(logs, "config_reload_failed")
    assert "[ipapi]" in failed["reason"] or "invalid TOML" in failed["reason"]
    assert "918273645546372819" not in failed["reason"]
    assert daemon.config is config and daemon.passes == 2


async def test_stop_during_rate_limit_wait_keeps_results(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str]) -> None:
    """A stop during an X-Ttl wait ends the run at once; batches already answered are kept."""
    db = app_db([("8.8.8.8", None), ("1.1.1.1", None), ("9.9.9.9", None)])
    fake, _ = fake_server
    fake.spend(13, tenant="dashboard")  # two requests left in this window
    stopped_in_wait = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if seconds > 10:  # the rate-limit wait: stop here, as SIGTERM would
            daemon.request_stop()
            stopped_in_wait.set()
        await fake_clock.sleep(seconds)
        await asyncio.Event().wait()  # a real wait would still be running

    daemon = Daemon(make_config("batch_size = 1\nshare = \"off\""), clock=fake_clock, sleep=sleep,
                    handle_signals=False)
    await asyncio.wait_for(daemon.run(), timeout=5)
    assert stopped_in_wait.is_set()
    resolved = [ip for ip, row in read_rows(db).items() if row["country_code"]]
    assert len(resolved) == 2


async def test_errors_inside_a_pass_do_not_stop_the_daemon(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """A database that disappears between passes is logged as an error; the daemon goes on."""
    db = make_db([("8.8.8.8", None)])
    config = make_config('[database]\ncreate = false')
    passes = 0

    def done(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        db.unlink()

    daemon = make_daemon(config, fake_clock, done)
    original = daemon.run_pass

    async def run_pass_and_stop_after_error() -> PassSummary | None:
        result = await original()
        if events(logs, "geo_re_resolve_error"):
            daemon.request_stop()
        return result

    daemon.run_pass = run_pass_and_stop_after_error  # type: ignore[method-assign]
    await daemon.run()
    [error] = events(logs, "geo_re_resolve_error")[:1]
    assert error["log_level"] == "error" and "opening database" in error["error"]
    assert passes == 1


async def test_startup_fails_fast_on_missing_table(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock) -> None:
    """A missing table with create = false is a ConfigError before any pass."""
    make_db(schema="CREATE TABLE other (a, b)", insert="INSERT INTO other VALUES (?, ?)")
    daemon = make_daemon(make_config('[database]\ncreate = false'), fake_clock)
    with pytest.raises(ConfigError, match=r"\[database\] table"):
        await daemon.run()


async def test_run_once_returns_the_summary(
        app_db: StoreBackend, make_config: Callable[..., Config], fake_clock: FakeClock) -> None:
    """run_once runs exactly one pass and returns its summary."""
    app_db([("8.8.8.8", None), ("10.0.0.1", None)])
    summary = await make_daemon(make_config(), fake_clock).run_once()
    assert summary is not None
    assert (summary.resolved, summary.unresolvable) == (1, 1)


async def test_a_database_locked_for_the_read_is_a_warning(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        logs: Logs) -> None:
    """If the app holds an exclusive lock past busy_timeout, the pass warns and the next runs."""
    import sqlite3

    db = make_db([("8.8.8.8", None)])
    daemon = make_daemon(make_config("[database]\nbusy_timeout = 0.05"), fake_clock)
    await daemon.startup()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # readers are shut out in rollback-journal mode
    try:
        assert await daemon.run_pass() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    summary = await daemon.run_pass()
    await daemon.shutdown()
    assert events(logs, "database_locked")[0]["log_level"] == "warning"
    assert events(logs, "geo_re_resolve_error") == []
    assert summary is not None and summary.resolved == 1


async def test_reload_interrupts_a_rate_limit_wait(
        make_db: MakeDb, make_config: Callable[..., Config], fake_clock: FakeClock,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """SIGHUP during a wait for the next window reloads at once; the new pass waits again."""
    make_db([(ip, None) for ip in ("8.8.8.8", "8.8.4.4", "9.9.9.9")])
    fake, _ = fake_server
    fake.spend(14, tenant="dashboard")  # one request left in this window
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        if seconds > 10:  # a wait for the next window
            waits.append(seconds)
            if len(waits) == 1:
                daemon.request_reload()  # as SIGHUP would, at the start of the wait
                await asyncio.Event().wait()  # a real wait would still be running
        await fake_clock.sleep(seconds)

    def changed(status: Status) -> None:
        if status.phase is Phase.PASSED and status.last is not None:
            daemon.request_stop()

    daemon = Daemon(make_config("batch_size = 1"), clock=fake_clock, sleep=sleep,
                    handle_signals=False, on_change=changed)
    await asyncio.wait_for(daemon.run(), timeout=5)
    assert events(logs, "geo_re_resolve_interrupted")[0]["reason"] == "reload"
    assert events(logs, "negative_cache_cleared")
    assert len(waits) >= 2  # the second pass still waited for the window: the quota is kept
    assert fake.count_429("geod") == 0


async def test_backlog_hint_ends_with_the_null_rows(
        make_config: Callable[..., Config], fake_clock: FakeClock) -> None:
    """After each batch the governor hears the pass's batches still to go; once the NULL rows
    are done it hears 'unknown' (None), so upkeep's requests after them are paced, not burst."""
    daemon = make_daemon(make_config("batch_size = 100"), fake_clock)
    daemon._progress([], 50, 301)
    assert daemon.governor.backlog == 3
    daemon._progress([], 301, 301)
    assert daemon.governor.backlog is None
