"""Shared pieces of the fault suite: a mixed table, a config maker, a daemon maker, a lock.

The fake server on fake time is the root conftest's `fake_server`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geod.config import Config
from geod.daemon import Daemon
from tests.conftest import FakeClock, MakeConfig, MakeDb, make_daemon
from tests.fake_ipapi import FakeIpApi

# Stored keys: public ones (two of them one address), ones that must never leave the host, and
# rows the app already decided (a country, or '' for "looked up, unknown").
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "8.8.4.4", "9.9.9.9", "208.67.222.222", "2606:4700:4700::1111",
    "::ffff:4.2.2.2", " 1.0.0.1 ", "1.0.0.1",
]  # fmt: skip
NEVER_SENT = [
    "10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "100.64.0.1", "224.0.0.1",
    "64:ff9b::a00:1", "not-an-ip", "",
]  # fmt: skip
DECIDED = [
    ("8.26.56.26", "FR", "France", "AS1", "Example", "2024-01-01T00:00:00Z"),
    ("4.4.4.4", "", None, None, None, None),
]
ADDRESSES = 8  # distinct public addresses in PUBLIC


@pytest.fixture
def fault_db(make_db: MakeDb) -> Path:
    """The mixed table every in-process scenario starts from."""
    db = make_db([(ip, None) for ip in [*PUBLIC, *NEVER_SENT]])
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO geo_cache VALUES (?, ?, ?, ?, ?, ?)", DECIDED)
    conn.close()
    return db


@pytest.fixture
def make_config(make_config: MakeConfig, fault_db: Path,
                fake_server: tuple[FakeIpApi, str]) -> MakeConfig:
    """make_config(url=, database="more TOML", db=other file, **ipapi): a loaded config."""

    def make(url: str | None = None, database: str = "", db: Path | None = None,
             **ipapi: Any) -> Config:
        settings = {"url": url or fake_server[1], "batch_size": 4, "max_attempts": 3,
                    "timeout": 0.5, **ipapi}
        # `database` is more of [database]: that table goes last.
        return make_config(database, ipapi=settings,
                           database={"path": str(db or fault_db), "busy_timeout": 0.3})

    return make


def daemon(config: Config, clock: FakeClock) -> Daemon:
    """The real daemon on fake time, without signal handlers (tests call request_* instead)."""
    return make_daemon(config, clock)


@contextlib.contextmanager
def lock_held(db: Path, how: str = "IMMEDIATE") -> Iterator[subprocess.Popen[str]]:
    """Another process holds a `BEGIN <how>` transaction on `db` until the block ends."""
    code = (
        "import sqlite3, sys\n"
        f"conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        f"conn.execute('BEGIN {how}')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "conn.execute('ROLLBACK')\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
