"""The daemon's Status changes and the STATUS= wording, in process with fake time (no sockets)."""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from geod.config import Config, load_config
from geod.notify import Notifier
from geod.records import PassSummary
from geod.status import Phase, Status
from geod.systemd import SystemdStatus, next_line, pass_line, progress_line, wait_line
from tests.conftest import FakeClock, MakeDb, events, make_daemon, toml_text, write_config
from tests.fake_ipapi import FakeIpApi

NOON = datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)


class Recorder:
    """Records each change of the daemon's Status as a short tuple."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, status: Status) -> None:
        phase = status.phase
        if phase is Phase.PASSING:
            self.calls.append(("progress", status.done, status.total))
        elif phase is Phase.PASSED:
            last = status.last
            self.calls.append(("passed", last.resolved if last else status.last_error))
        elif phase is Phase.IDLE:
            self.calls.append(("idle", status.wait_s))
        else:
            self.calls.append((phase.value,))


@pytest.fixture
async def batch_url(aiohttp_server: Any, fake_clock: FakeClock) -> tuple[FakeIpApi, str]:
    fake = FakeIpApi(limit=2, window=60, clock=fake_clock)
    server: TestServer = await aiohttp_server(fake.app)
    return fake, str(server.make_url("/batch"))


def _config(tmp_path: Path, url: str) -> Config:
    text = toml_text({"daemon": {"interval": 600}, "ipapi": {"url": url, "batch_size": 1}})
    return load_config(write_config(tmp_path / "geod.toml", text))


async def test_status_changes_through_the_lifecycle(
        make_db: MakeDb, tmp_path: Path, fake_clock: FakeClock,
        batch_url: tuple[FakeIpApi, str]) -> None:
    """Start, progress per batch, the rate-limit wait, pass end, reload and stop, in order."""
    make_db([("8.8.8.8", None), ("1.1.1.1", None), ("9.9.9.9", None)])
    recorder = Recorder()

    def done(summary: PassSummary) -> None:
        (daemon.request_reload if daemon.passes == 1 else daemon.request_stop)()

    daemon = make_daemon(_config(tmp_path, batch_url[1]), fake_clock, done, recorder)
    await daemon.run()
    assert recorder.calls == [
        ("ready",),
        ("progress", 0, 3), ("progress", 1, 3), ("progress", 2, 3),
        ("rate_limited",), ("progress", 3, 3),
        ("passed", 3),
        ("reloading",), ("ready",),
        ("passed", 0),
        ("stopping",),
    ]


async def test_a_failed_pass_then_the_idle_wait(
        make_db: MakeDb, tmp_path: Path, fake_clock: FakeClock,
        batch_url: tuple[FakeIpApi, str]) -> None:
    """A pass that fails leaves no summary and its error; then the wait for the next begins."""
    db = make_db([("8.8.8.8", None)])
    config = load_config(write_config(tmp_path / "geod.toml", f"""
[database]
create = false
[ipapi]
url = "{batch_url[1]}"
"""))
    recorder = Recorder()

    def changed(status: Status) -> None:
        recorder(status)
        if status.phase is Phase.READY:
            db.unlink()  # the pass that follows cannot open the database
        elif status.phase is Phase.IDLE:
            daemon.request_stop()

    daemon = make_daemon(config, fake_clock, on_change=changed)
    await daemon.run()
    assert [call[0] for call in recorder.calls] == ["ready", "passed", "idle", "stopping"]
    assert "opening database" in recorder.calls[1][1]
    assert recorder.calls[2] == ("idle", 600)


@pytest.mark.parametrize(("summary", "error", "expected"), [
    (PassSummary(unresolved=120, resolved=118, failed=0), "",
     "last pass 12:00:05: 118/120 resolved"),
    (PassSummary(unresolved=1200, resolved=400, failed=800), "",
     "last pass 12:00:05: 400/1,200 resolved, 800 failed"),
    (PassSummary(), "", "last pass 12:00:05: nothing to resolve"),
    (None, "opening database /x.db: unable to open database file",
     "last pass 12:00:05 failed: opening database /x.db: unable to open database file"),
])  # fmt: skip
def test_pass_line(summary: PassSummary | None, error: str, expected: str) -> None:
    """The last pass in one line: when, and rows resolved of rows unresolved (or the error)."""
    assert pass_line(summary, error, NOON) == expected


def test_idle_progress_and_wait_lines() -> None:
    """Idle, progress and wait lines read as the issue's examples do."""
    last = "last pass 12:00:05: 118/120 resolved"
    assert next_line(last, 600, NOON) == f"{last}; next pass 12:10:05 (in 600 s)"
    assert next_line("", 30, NOON) == "first pass 12:00:35 (in 30 s)"
    assert progress_line(400, 1200) == "pass in progress: 400/1,200 rows"
    assert wait_line(23.1, 400, 1200) == \
        "waiting 23 s for the ip-api rate-limit window (pass 400/1,200 rows)"
    assert wait_line(0.2, 0, 1).startswith("waiting 1 s ")


def test_status_changes_speak_sd_notify(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """Each phase becomes the right message; a reload after READY says so and re-logs."""
    sent: list[tuple[str, ...]] = []
    reloaded: list[Config] = []

    class Recording(Notifier):
        def send(self, *fields: str) -> bool:
            sent.append(tuple(f.split("=", 1)[0] if f.startswith("MONOTONIC") else f
                              for f in fields))
            return True

    notify = SystemdStatus(Recording("/unused"), now=lambda: NOON, on_reload=reloaded.append)
    status = Status(Config())

    def enter(phase: Phase) -> None:
        status.enter(phase)
        notify(status)

    enter(Phase.READY)
    status.progress((), 0, 2)
    enter(Phase.PASSING)
    status.wait_s = 3.1
    enter(Phase.RATE_LIMITED)
    status.pass_ended(PassSummary(unresolved=2, resolved=2), "", 0.0)
    enter(Phase.PASSED)
    status.wait_s = 600
    enter(Phase.IDLE)
    enter(Phase.RELOADING)
    enter(Phase.READY)
    enter(Phase.STOPPING)
    assert sent == [
        ("READY=1", "STATUS=ready: database geo.db opened"),
        ("STATUS=pass in progress: 0/2 rows",),
        ("STATUS=waiting 3 s for the ip-api rate-limit window (pass 0/2 rows)",),
        ("STATUS=last pass 12:00:05: 2/2 resolved",),
        ("STATUS=last pass 12:00:05: 2/2 resolved; next pass 12:10:05 (in 600 s)",),
        ("RELOADING=1", "MONOTONIC_USEC", "STATUS=reloading the config"),
        ("READY=1", "STATUS=config reloaded"),
        ("STOPPING=1", "STATUS=stopping"),
    ]
    assert reloaded == [status.config]


async def test_a_reload_that_moves_metrics_listen_warns(
        make_db: MakeDb, tmp_path: Path, fake_clock: FakeClock,
        logs: list[MutableMapping[str, Any]], batch_url: tuple[FakeIpApi, str]) -> None:
    """metrics.listen is bound at start: a reload that changes it says a restart is needed."""
    make_db([("8.8.8.8", None)])
    config = _config(tmp_path, batch_url[1])

    def done(summary: PassSummary) -> None:
        if daemon.passes == 1:
            Path(config.source).write_text(Path(config.source).read_text()
                                           + '[metrics]\nlisten = "127.0.0.1:9999"\n')
            daemon.request_reload()
        else:
            daemon.request_stop()

    daemon = make_daemon(config, fake_clock, done)
    await daemon.run()
    assert events(logs, "restart_required")[0]["key"] == "metrics.listen"
