"""The real `geod` process against hostile lifecycles: signals during start-up, a vanished reader.

A database held EXCLUSIVE by the app keeps start-up waiting (up to busy_timeout); the signal
handlers are installed before that wait, so SIGTERM exits 0 at once and SIGHUP is remembered.
A stdout whose reader went away turns logging off instead of ending the pass.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import MakeDb, read_rows
from tests.proc import REPO, GeodProcess, _base_env, _reap, closed_port_url, write_geod_config

pytestmark = pytest.mark.slow

PUBLIC = ["8.8.8.8", "1.1.1.1", "9.9.9.9"]


def rir_config(tmp_path: Path, db: Path, busy_timeout: float = 60) -> Path:
    """A `run` config resolving offline (rir), so nothing but the database can make it wait."""
    config = write_geod_config(tmp_path / "geod.toml", db=db, url=closed_port_url(),
                               extra='[resolve]\nproviders = ["rir"]\n')
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[database]\n", f"[database]\nbusy_timeout = {busy_timeout}\n"),
                      encoding="utf-8")
    return config


@contextmanager
def exclusive_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold `db` the way a busy app can: an EXCLUSIVE transaction (no reader gets in)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE geo_cache SET cached_at = cached_at")  # a write: the lock is real
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.close()


def catches(pid: int, sig: signal.Signals) -> bool:
    """True once the process has a handler for `sig` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def wait_for(check: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_sigterm_while_startup_waits_for_a_locked_database_exits_0_promptly(
    tmp_path: Path, make_db: MakeDb
) -> None:
    """Finding 22: SIGTERM during the start-up wait used to exit 143 (no handler yet)."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC])
    config = rir_config(tmp_path, db)
    with exclusive_lock(db), GeodProcess(config) as geod:
        wait_for(lambda: catches(geod.proc.pid, signal.SIGTERM))
        time.sleep(0.5)  # well into the busy wait: the lock is the only thing it waits for
        assert geod.proc.poll() is None
        sent = time.monotonic()
        geod.send(signal.SIGTERM)
        assert geod.wait(10) == 0
        assert time.monotonic() - sent < 3  # busy_timeout is 60 s
        assert geod.stderr_lines == []
    assert all(row["country_code"] is None for row in read_rows(db).values())


def test_sighup_while_startup_waits_is_one_pass_after_start(
    tmp_path: Path, make_db: MakeDb
) -> None:
    """Finding 22: SIGHUP during the start-up wait used to kill geod (129); now it is
    remembered: once the lock goes, the config is reloaded and exactly one pass runs."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC])
    config = rir_config(tmp_path, db)
    with GeodProcess(config) as geod:
        with exclusive_lock(db):
            wait_for(lambda: catches(geod.proc.pid, signal.SIGHUP))
            geod.send(signal.SIGHUP)
            geod.send(signal.SIGHUP)
            time.sleep(0.3)
            assert geod.proc.poll() is None
        done = geod.wait_for_event("geo_re_resolve_complete")
        assert done["resolved"] == len(PUBLIC)
        names = geod.names()
        assert names.index("config_reloaded") < names.index("geo_re_resolve_start")
        geod.send(signal.SIGTERM)
        assert geod.wait(10) == 0
        assert [e for e, _ in geod.pass_events()].count("geo_re_resolve_start") == 1
    assert {row["country_code"] for row in read_rows(db).values()} == {"US", "AU"}


def _closed_stdout_run(args: list[str], config: Path) -> subprocess.Popen[str]:
    """`geod ARGS` whose stdout is a pipe nobody reads: its read end is closed at once."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(config), *args], cwd=REPO,
            env=_base_env(None), stdin=subprocess.DEVNULL, stdout=write_end,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_run_with_a_vanished_stdout_reader_keeps_working(tmp_path: Path, make_db: MakeDb) -> None:
    """Finding 23: the first log line raised BrokenPipeError through the pass (exit 1, answers
    dropped); now logging goes quiet, the pass writes every row, and SIGTERM exits 0."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC])
    proc = _closed_stdout_run(["run"], rir_config(tmp_path, db))
    try:
        wait_for(lambda: all(r["country_code"] for r in read_rows(db).values())
                 or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        _reap(proc)
        if proc.stderr is not None:
            proc.stderr.close()
    assert {row["country_code"] for row in read_rows(db).values()} == {"US", "AU"}


def test_once_with_a_vanished_stdout_reader_writes_and_exits_0(
    tmp_path: Path, make_db: MakeDb
) -> None:
    """Finding 23 for `geod once`: the summary has no reader, the results are still written."""
    db = make_db(rows=[(ip, None) for ip in PUBLIC])
    proc = _closed_stdout_run(["once"], rir_config(tmp_path, db))
    try:
        assert proc.wait(20) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        _reap(proc)
        if proc.stderr is not None:
            proc.stderr.close()
    assert {row["country_code"] for row in read_rows(db).values()} == {"US", "AU"}


def test_demo_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    """`geod demo | head -1`: output the reader no longer wants is not an error."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "geod", "demo", "--dir", str(tmp_path / "demo")], cwd=REPO,
            env=_base_env(None), stdin=subprocess.DEVNULL, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")
