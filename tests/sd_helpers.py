"""Real-process helpers for the service tests: a notify socket standing in for systemd, the fake
ip-api server as a process, and `geod run` as a subprocess.

Every wait is bounded and every process started here is killed and reaped when its block ends.
(A subset of what a shared `tests/proc.py` offers; fold into it once both are on main.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Message:
    """One sd_notify datagram: when it arrived (monotonic) and its KEY=value fields."""

    at: float
    fields: dict[str, str]

    def has(self, key: str, value: str | None = None) -> bool:
        return key in self.fields and (value is None or self.fields[key] == value)


class NotifyListener:
    """An AF_UNIX datagram socket like systemd's notify socket; a thread collects what arrives.

    `abstract=True` binds in the abstract namespace and gives `@name` as `$NOTIFY_SOCKET`.
    """

    def __init__(self, *, abstract: bool = False) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._dir = tempfile.mkdtemp(prefix="geod-sd-")  # short: sun_path has 108 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"geod-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = "@" + name
        else:
            self.env_value = os.path.join(self._dir, "notify")
            self.sock.bind(self.env_value)
        self.sock.settimeout(0.05)
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cond:
                self.messages.append(Message(time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(
        self, match: Callable[[Message], bool], timeout: float = 10, after: int = 0,
        describe: Callable[[], str] = lambda: "",
    ) -> tuple[int, Message]:  # fmt: skip
        """The first message at index >= `after` that `match`es, with its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(after, len(self.messages)):
                    if match(self.messages[index]):
                        return index, self.messages[index]
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "\n  ".join(str(m.fields) for m in self.messages[-30:])
                    raise AssertionError(f"no matching sd_notify message; got:\n  {got}\n"
                                         + describe())
                self._cond.wait(min(left, 0.1))

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        if os.path.exists(os.path.join(self._dir, "notify")):
            os.unlink(os.path.join(self._dir, "notify"))
        os.rmdir(self._dir)


@contextmanager
def notify_listener(*, abstract: bool = False) -> Iterator[NotifyListener]:
    listener = NotifyListener(abstract=abstract)
    try:
        yield listener
    finally:
        listener.close()


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    drop = {"GEOD_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(5)


@contextmanager
def fake_ipapi_process(limit: int = 15, window: float = 60.0) -> Iterator[str]:
    """`python -m tests.fake_ipapi` on a free loopback port; yields its batch URL."""
    cmd = [sys.executable, "-m", "tests.fake_ipapi", "--port", "0",
           "--limit", str(limit), "--window", str(window)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env({}), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()  # the server prints this line before anything
        assert first.startswith("listening http://"), f"fake ip-api did not start: {first!r}"
        yield first.split(" ", 1)[1] + "/batch"
    finally:
        _reap(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def write_config(path: Path, *, db: Path, url: str, extra: str = "", batch_size: int = 100,
                 interval: float = 3600) -> Path:  # fmt: skip
    """A geod config for subprocess tests (JSON logs, so lines can be parsed)."""
    path.write_text(f"""\
[daemon]
interval = {interval}
[database]
path = {json.dumps(str(db))}
[ipapi]
url = {json.dumps(url)}
batch_size = {batch_size}
timeout = 5
[log]
format = "json"
{extra}""", encoding="utf-8")
    return path


class GeodRun:
    """`python -m geod --config CONFIG run` with stdout/stderr collected by threads."""

    def __init__(self, config: Path, env: Mapping[str, str]) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(config), "run"],
            cwd=REPO, env=_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))

    def events(self) -> list[str]:
        """The `event` of every JSON log line so far."""
        names = []
        for line in list(self.stdout):
            try:
                names.append(str(json.loads(line).get("event")))
            except ValueError:
                continue
        return names

    def describe(self) -> str:
        return ("stdout:\n  " + "\n  ".join(self.stdout[-30:])
                + "\nstderr:\n  " + "\n  ".join(self.stderr[-20:]))  # fmt: skip

    def wait(self, timeout: float = 15) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"geod still running after {timeout} s\n{self.describe()}") \
                from None
        for thread in self._threads:
            thread.join(5)
        return code

    def close(self) -> None:
        _reap(self.proc)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def geod_run(config: Path, env: Mapping[str, str] | None = None) -> Iterator[GeodRun]:
    run = GeodRun(config, env or {})
    try:
        yield run
    finally:
        run.close()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
