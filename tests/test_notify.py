"""The sd_notify protocol module against real AF_UNIX datagram sockets, in process."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from geod.notify import (
    Notifier,
    monotonic_usec,
    one_line,
    socket_address,
    watchdog_interval,
    watchdog_loop,
)
from tests.conftest import events


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the $NOTIFY_SOCKET value that names it."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


@pytest.mark.parametrize(("value", "expected"), [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@geod/notify", b"\0geod/notify"),
    ("", None),
    ("@", None),
    ("relative/path", None),
    ("vsock:2:1234", None),
])  # fmt: skip
def test_socket_address(value: str, expected: str | bytes | None) -> None:
    """Paths and `@abstract` names are used; anything else means "not under systemd"."""
    assert socket_address(value) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "43"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])  # fmt: skip
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """Half of WATCHDOG_USEC, in seconds; off when unset, malformed or for another PID."""
    assert watchdog_interval(environ, pid=42) == expected


def test_messages_reach_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    """Each call sends one datagram of newline-separated KEY=value fields."""
    sock, path = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.ready("ready: up")
    assert notifier.status("pass in progress: 1/2 rows")
    assert notifier.watchdog()
    assert notifier.stopping("stopping")
    received = [sock.recv(4096).decode() for _ in range(4)]
    assert received == [
        "READY=1\nSTATUS=ready: up",
        "STATUS=pass in progress: 1/2 rows",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]
    notifier.close()


def test_reloading_carries_the_monotonic_clock(receiver: tuple[socket.socket, str]) -> None:
    """RELOADING=1 goes with MONOTONIC_USEC= of CLOCK_MONOTONIC, as systemd 253+ requires."""
    sock, path = receiver
    notifier = Notifier(path)
    before = monotonic_usec()
    notifier.reloading()
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()
    assert abs(int(fields["MONOTONIC_USEC"]) / 1e6 - time.monotonic()) < 5
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    """An `@name` socket is the abstract namespace: a leading NUL, no file."""
    name = f"geod-notify-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_without_notify_socket_nothing_is_sent(logs: list[MutableMapping[str, Any]]) -> None:
    """No $NOTIFY_SOCKET: every call is a quiet no-op."""
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog()
    assert logs == []


def test_failed_sends_are_logged_once_and_never_raise(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    """A socket nobody listens on gives one `sd_notify_failed` warning, however many sends."""
    notifier = Notifier(str(tmp_path / "nobody-here"))
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    [warning] = events(logs, "sd_notify_failed")
    assert warning["log_level"] == "warning"
    assert warning["socket"].endswith("nobody-here")
    notifier.close()


def test_status_text_is_kept_to_one_line(receiver: tuple[socket.socket, str]) -> None:
    """A newline in a STATUS= value would start a new field, so it is folded into a space."""
    sock, path = receiver
    notifier = Notifier(path)
    notifier.status("line one\nREADY=1")
    assert sock.recv(4096) == b"STATUS=line one READY=1"
    notifier.close()
    assert len(one_line("x " * 500)) == 200


async def test_watchdog_loop_pings_every_interval() -> None:
    """The loop sends WATCHDOG=1, sleeps the interval, and stops when cancelled."""
    sent: list[str] = []
    slept: list[float] = []

    class Recorder(Notifier):
        def send(self, *fields: str) -> bool:
            sent.extend(fields)
            return True

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        await watchdog_loop(Recorder("/unused"), 7.5, sleep=sleep)
    assert sent == ["WATCHDOG=1"] * 3
    assert slept == [7.5] * 3
