"""Helpers for real-process tests: the fake ip-api server, `geod` one-shot runs and `geod run`.

Every wait is bounded, every pipe is drained by a thread (so a chatty child never blocks on a
full pipe), and every process started here is killed and reaped when its context ends.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.02  # how often bounded waits look again


def _base_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The parent's environment without GEOD_CONFIG (tests set it explicitly), plus `env`."""
    merged = {k: v for k, v in os.environ.items() if k != "GEOD_CONFIG"}
    merged["PYTHONUNBUFFERED"] = "1"
    merged.update(env or {})
    return merged


def _reap(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """Terminate `proc` if it still runs, kill it if it lingers, and always reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(grace)


def _drain(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    """Copy lines from `stream` into `sink` until EOF, then put None."""
    try:
        for line in stream:
            sink.put(line.rstrip("\n"))
    finally:
        sink.put(None)


# -- the fake ip-api server -------------------------------------------------------------------


class FakeServer(NamedTuple):
    """A running `python -m tests.fake_ipapi`; unpacks as (url, proc, log_path)."""

    url: str  # base URL, e.g. http://127.0.0.1:PORT (the batch endpoint is url + "/batch")
    proc: subprocess.Popen[str]
    log_path: Path

    @property
    def batch_url(self) -> str:
        return self.url + "/batch"

    def requests(self) -> list[dict[str, Any]]:
        """Every request the server recorded so far (one JSON line each in --log)."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def batches(self) -> list[list[str]]:
        """The ips of every POST /batch, in arrival order."""
        return [
            list(r["ips"])
            for r in self.requests()
            if r["method"] == "POST" and r["path"] == "/batch"
        ]

    def sent_ips(self) -> list[str]:
        return [ip for batch in self.batches() for ip in batch]


@contextmanager
def start_fake_ipapi(
    tmp_path: Path, limit: int = 15, window: float = 60.0, faults: Sequence[str] = (),
    per_client: bool = False,
) -> Iterator[FakeServer]:
    """Start the fake ip-api server on a free loopback port; stop it when the block ends.

    `faults` are `--fault` specs (`Fault.parse`), queued for the first requests in order.
    """
    log_path = tmp_path / f"fake-ipapi-{time.monotonic_ns()}.jsonl"
    stderr_path = log_path.with_suffix(".stderr")
    cmd = [
        sys.executable, "-m", "tests.fake_ipapi", "--host", "127.0.0.1", "--port", "0",
        "--limit", str(limit), "--window", str(window), "--log", str(log_path),
        *(arg for spec in faults for arg in ("--fault", spec)),
        *(["--per-client"] if per_client else []),
    ]  # fmt: skip
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_base_env(None), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        try:
            first = lines.get(timeout=10)
        except queue.Empty:
            first = None
        if first is None or not first.startswith("listening http://"):
            raise AssertionError(
                f"fake ip-api did not start: {first!r}; stderr: "
                f"{stderr_path.read_text(encoding='utf-8')[-2000:]}"
            )
        yield FakeServer(first.split(" ", 1)[1].strip(), proc, log_path)
    finally:
        _reap(proc)
        reader.join(5)
        proc.stdout.close()


def closed_port_url() -> str:
    """A batch URL on a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/batch"


# -- geod -------------------------------------------------------------------------------------


def write_geod_config(
    path: Path,
    *,
    db: Path | str,
    url: str,
    interval: float = 3600,
    initial_delay: float = 0,
    batch_size: int = 100,
    level: str = "info",
    fmt: str = "json",
    max_attempts: int = 5,
    extra: str = "",
) -> Path:
    """Write a geod config for tests; `extra` is appended verbatim (more TOML tables).

    `db` is a SQLite path, or a postgresql:// URL (written as [database] url).
    """
    path.write_text(
        f"""\
[daemon]
interval = {interval}
initial_delay = {initial_delay}

[database]
{"url" if str(db).startswith("postgresql://") else "path"} = {json.dumps(str(db))}

[ipapi]
url = {json.dumps(url)}
batch_size = {batch_size}
max_attempts = {max_attempts}
timeout = 5

[log]
level = {json.dumps(level)}
format = {json.dumps(fmt)}
{extra}""",
        encoding="utf-8",
    )
    return path


def run_geod(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 20, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m geod ARGS` to completion (killed after `timeout`); output captured as text.

    GEOD_CONFIG is removed from the inherited environment unless `env` sets it.
    """
    return subprocess.run(
        [sys.executable, "-m", "geod", *args],
        env=_base_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


class GeodProcess:
    """`geod --config CONFIG run` as a subprocess whose JSON log lines (stdout) are collected.

    Use as a context manager: on exit a still-running daemon is terminated, then killed.
    """

    def __init__(self, config: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.events: list[dict[str, Any]] = []  # parsed JSON lines, in order
        self.other_lines: list[str] = []  # stdout lines that were not JSON objects
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._stdout_done = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(config), "run"],
            env=_base_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> GeodProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- readers (threads) ----------------------------------------------------------------------

    def _read_stdout(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
                with self._cond:
                    if isinstance(parsed, dict):
                        self.events.append(parsed)
                    else:
                        self.other_lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._stdout_done = True
                self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.stderr_lines.append(line.rstrip("\n"))

    # -- queries --------------------------------------------------------------------------------

    def pass_events(self) -> list[tuple[str, int]]:
        """(event, pass_id) of every pass start and completion, in order: passes that overlap
        or repeat show up here."""
        with self._cond:
            return [
                (e["event"], e["pass_id"]) for e in self.events
                if e["event"] in ("geo_re_resolve_start", "geo_re_resolve_complete")
            ]  # fmt: skip

    def named(self, name: str) -> list[dict[str, Any]]:
        """Every event called `name` logged so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def names(self) -> list[str]:
        with self._cond:
            return [str(e.get("event")) for e in self.events]

    def mark(self) -> int:
        """The number of events so far: pass it as `after` to wait only for later ones."""
        with self._cond:
            return len(self.events)

    def wait_for_event(
        self, name: str, timeout: float = 10, count: int = 1, after: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """Wait until `count` events called `name` (with `fields`) are logged after index `after`.

        Returns the count-th one. Raises AssertionError (with the output so far) on timeout or
        when the daemon's stdout closed first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    e for e in self.events[after:]
                    if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
                ]  # fmt: skip
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self._stdout_done:
                    why = "timed out" if left <= 0 else "stdout closed"
                    raise AssertionError(
                        f"{why} waiting for {count}x {name} {fields or ''} (got {len(found)})\n"
                        + self.describe()
                    )
                self._cond.wait(min(left, POLL_S * 5))

    def describe(self) -> str:
        """The output so far, for assertion messages."""
        with self._cond:
            out = [json.dumps(e) for e in self.events[-40:]] + self.other_lines[-10:]
            err = self.stderr_lines[-20:]
        return "stdout:\n  " + "\n  ".join(out) + "\nstderr:\n  " + "\n  ".join(err)

    # -- control --------------------------------------------------------------------------------

    def send(self, sig: signal.Signals) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"geod exited ({self.proc.returncode}) before {sig.name}\n" + self.describe()
            )
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        """Wait for the exit and return its code; kills the daemon (and fails) on timeout."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"geod still running after {timeout}s\n" + self.describe()
            ) from None
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
