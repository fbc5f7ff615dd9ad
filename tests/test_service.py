"""The daemon's hooks and the STATUS= wording, in process with fake time (no sockets needed)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from geod.config import Config, load_config
from geod.daemon import Daemon
from geod.hooks import Fanout, Hooks, OnPassDone
from geod.notify import Notifier
from geod.records import Lookup, PassSummary
from geod.service import SystemdHooks, next_line, pass_line, progress_line, wait_line
from tests.conftest import FakeClock, MakeDb, events, write_config
from tests.fake_ipapi import FakeIpApi

NOON = datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)


class Recorder(Hooks):
    """Records each hook call as a short tuple."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def started(self, config: Config) -> None:
        self.calls.append(("started",))

    def reloading(self) -> None:
        self.calls.append(("reloading",))

    def reloaded(self, config: Config) -> None:
        self.calls.append(("reloaded",))

    def waiting(self, seconds: float) -> None:
        self.calls.append(("waiting", seconds))

    def pass_progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        self.calls.append(("progress", len(lookups), done, total))

    def rate_limit_wait(self, seconds: float) -> None:
        assert seconds > 0
        self.calls.append(("rate_limit_wait",))  # how long depends on the governor's pacing

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        self.calls.append(("pass_done", summary.resolved if summary else error))

    def stopping(self) -> None:
        self.calls.append(("stopping",))


@pytest.fixture
async def batch_url(aiohttp_server: Any, fake_clock: FakeClock) -> tuple[FakeIpApi, str]:
    fake = FakeIpApi(limit=2, window=60, clock=fake_clock)
    server: TestServer = await aiohttp_server(fake.app)
    return fake, str(server.make_url("/batch"))


def _config(tmp_path: Path, url: str) -> Config:
    return load_config(write_config(tmp_path / "geod.toml", f"""
[daemon]
interval = 600
[ipapi]
url = "{url}"
batch_size = 1
"""))


async def test_daemon_calls_hooks_through_its_lifecycle(
        make_db: MakeDb, tmp_path: Path, fake_clock: FakeClock,
        batch_url: tuple[FakeIpApi, str]) -> None:
    """Start, progress per batch, the rate-limit wait, pass end, idle, reload and stop, in order."""
    make_db([("8.8.8.8", None), ("1.1.1.1", None), ("9.9.9.9", None)])
    recorder = Recorder()
    passes = 0

    def done(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        (daemon.request_reload if passes == 1 else daemon.request_stop)()

    daemon = Daemon(_config(tmp_path, batch_url[1]), clock=fake_clock, sleep=fake_clock.sleep,
                    handle_signals=False, hooks=Fanout(recorder, OnPassDone(done)))
    await daemon.run()
    assert recorder.calls == [
        ("started",),
        ("progress", 0, 0, 3), ("progress", 1, 1, 3), ("progress", 1, 2, 3),
        ("rate_limit_wait",), ("progress", 1, 3, 3),
        ("pass_done", 3),
        ("reloading",), ("reloaded",),
        ("pass_done", 0),
        ("stopping",),
    ]


async def test_hooks_hear_of_a_failed_pass_then_the_idle_wait(
        make_db: MakeDb, tmp_path: Path, fake_clock: FakeClock,
        batch_url: tuple[FakeIpApi, str]) -> None:
    """A pass that fails reports None and its error; then the wait for the next is announced."""
    db = make_db([("8.8.8.8", None)])
    config = load_config(write_config(tmp_path / "geod.toml", f"""
[database]
create = false
[ipapi]
url = "{batch_url[1]}"
"""))

    class Scripted(Recorder):
        def started(self, config: Config) -> None:
            super().started(config)
            db.unlink()  # the pass that follows cannot open the database

        def waiting(self, seconds: float) -> None:
            super().waiting(seconds)
            daemon.request_stop()

    recorder = Scripted()
    daemon = Daemon(config, clock=fake_clock, sleep=fake_clock.sleep, handle_signals=False,
                    hooks=recorder)
    await daemon.run()
    assert [call[0] for call in recorder.calls] == ["started", "pass_done", "waiting", "stopping"]
    assert "opening database" in recorder.calls[1][1]
    assert recorder.calls[2] == ("waiting", 600)


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


def test_systemd_hooks_speak_sd_notify(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """Each hook becomes the right message; a reload that moves metrics.listen warns."""
    sent: list[tuple[str, ...]] = []

    class Recording(Notifier):
        def send(self, *fields: str) -> bool:
            sent.append(tuple(f.split("=", 1)[0] if f.startswith("MONOTONIC") else f
                              for f in fields))
            return True

    hooks = SystemdHooks(Recording("/unused"), now=lambda: NOON)
    config = Config()
    hooks.started(config)
    hooks.pass_progress((), 0, 2)
    hooks.rate_limit_wait(3.1)
    hooks.pass_done(PassSummary(unresolved=2, resolved=2))
    hooks.waiting(600)
    hooks.reloading()
    moved = load_config(write_config(tmp_path / "moved.toml",
                                     '[metrics]\nlisten = "127.0.0.1:9999"\n'))
    hooks.reloaded(moved)
    hooks.stopping()
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
    assert events(logs, "restart_required")[0]["key"] == "metrics.listen"

