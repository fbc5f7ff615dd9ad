"""Database faults: locks held too long, a read-only file, a file deleted or replaced, a dropped
table, a full disk. The real daemon pass on fake time against the fake server, then the
invariants; the daemon carries on (errors inside a pass are logged, never fatal).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geod.errors import PermissionProblem
from tests.conftest import FakeClock, Logs, events
from tests.fake_ipapi import FakeIpApi
from tests.faults.conftest import NEVER_SENT, PUBLIC, MakeConfig, daemon, lock_held
from tests.faults.invariants import assert_invariants, integrity, snapshot


def set_journal_mode(db: Path, mode: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA journal_mode = {mode}")
    conn.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
async def test_write_lock_held_longer_than_busy_timeout(
        journal: str, make_config: MakeConfig, fake_clock: FakeClock, fault_db: Path,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """The app holds its write lock past busy_timeout: batches are skipped, nothing half-written."""
    fake, _ = fake_server
    set_journal_mode(fault_db, journal)
    before = snapshot(fault_db)
    config = make_config()
    with lock_held(fault_db):
        summary = await daemon(config, fake_clock).run_once()
    assert summary is not None
    assert (summary.resolved, summary.locked) == (0, len(PUBLIC)), summary
    assert sorted(e["rows"] for e in events(logs, "database_locked")) == [4, 5]  # 1.0.0.1: 2
    assert_invariants(before, fault_db, fake.requests)
    summary = await daemon(config, fake_clock).run_once()  # the lock is gone: next pass writes
    assert summary is not None and summary.resolved == len(PUBLIC)
    assert_invariants(before, fault_db, fake.requests)


async def test_exclusive_lock_during_a_running_daemon(
        make_config: MakeConfig, fake_clock: FakeClock, fault_db: Path,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """Even reads blocked (EXCLUSIVE) during `run`: the pass ends with a database_locked
    warning (not an error: it is the app's normal life), and the next pass works."""
    fake, _ = fake_server
    before = snapshot(fault_db)
    geod = daemon(make_config(), fake_clock)
    await geod.startup()
    try:
        with lock_held(fault_db, "EXCLUSIVE"):
            assert await geod.run_pass() is None
        [locked] = events(logs, "database_locked")
        assert locked["log_level"] == "warning" and locked["action"] == "retry_next_pass"
        assert events(logs, "geo_re_resolve_error") == []
        summary = await geod.run_pass()
    finally:
        await geod.shutdown()
    assert summary is not None and summary.resolved == len(PUBLIC)
    assert_invariants(before, fault_db, fake.requests)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """Make `folder` a read-only bind mount (root ignores file modes, not a ro mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    result = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True,
                            check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


async def test_read_only_database(make_config: MakeConfig, fake_clock: FakeClock,
                                  fault_db: Path, fake_server: tuple[FakeIpApi, str],
                                  logs: Logs) -> None:
    """A read-only file: start-up refuses, naming the fix; a pass that meets it fails with a
    clear error and writes nothing; then it heals."""
    fake, _ = fake_server
    before = snapshot(fault_db)
    folder = fault_db.parent / "ro"
    folder.mkdir()
    db = folder / "geo.db"
    shutil.copy(fault_db, db)
    config = make_config(db=db)
    with read_only_folder(folder), pytest.raises(PermissionProblem, match="ReadWritePaths="):
        await daemon(config, fake_clock).startup()
    geod = daemon(config, fake_clock)
    await geod.startup()  # writable at start; the file system turns read-only under it
    with read_only_folder(folder):
        try:
            assert await geod.run_pass() is None
        finally:
            await geod.shutdown()
        [error] = events(logs, "geo_re_resolve_error")
        assert "readonly database" in error["error"], error
        assert snapshot(db) == before
        assert_invariants(before, db, fake.requests)
    summary = await daemon(config, fake_clock).run_once()
    assert summary is not None and summary.resolved == len(PUBLIC)
    assert_invariants(before, db, fake.requests)


@pytest.mark.parametrize("create", [True, False], ids=["create", "no-create"])
async def test_file_deleted_between_passes(create: bool, make_config: MakeConfig,
                                           fake_clock: FakeClock, fault_db: Path,
                                           fake_server: tuple[FakeIpApi, str],
                                           logs: Logs) -> None:
    """A deleted file: with create, a new empty table; without, a logged error; never a crash."""
    fake, _ = fake_server
    geod = daemon(make_config(database=f"create = {str(create).lower()}"), fake_clock)
    await geod.startup()
    try:
        fault_db.unlink()
        result = await geod.run_pass()
        if create:
            assert result is not None and result.unresolved == 0
            assert snapshot(fault_db) == {}
        else:
            assert result is None and not fault_db.exists()
            [error] = events(logs, "geo_re_resolve_error")
            assert "unable to open database file" in error["error"]
    finally:
        await geod.shutdown()
    assert fake.requests == []
    assert_invariants({}, fault_db, fake.requests, rows_may_vanish=True)


def replacement(path: Path) -> dict[str, Any]:
    """Write a different table to `path` (a restored backup, say) and return its snapshot."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip, country_code) VALUES (?, ?)",
                         [("9.9.9.9", None), ("8.8.8.8", "US"), ("149.112.112.112", None),
                          ("10.1.1.1", None)])
    conn.close()
    return snapshot(path)


async def test_file_replaced_between_passes(make_config: MakeConfig, fake_clock: FakeClock,
                                            fault_db: Path,
                                            fake_server: tuple[FakeIpApi, str]) -> None:
    """A file swapped between passes is the one the next pass reads and writes."""
    fake, _ = fake_server
    geod = daemon(make_config(), fake_clock)
    await geod.startup()
    try:
        first = await geod.run_pass()
        assert first is not None and first.resolved == len(PUBLIC)
        new = fault_db.with_name("new.db")
        before = replacement(new)
        os.replace(new, fault_db)
        second = await geod.run_pass()
    finally:
        await geod.shutdown()
    assert second is not None and (second.resolved, second.unresolvable) == (2, 1)
    after = assert_invariants(before, fault_db, fake.requests)
    assert after["8.8.8.8"]["country_code"] == "US"


async def test_file_replaced_during_a_pass(make_config: MakeConfig, fake_clock: FakeClock,
                                           fault_db: Path, fake_server: tuple[FakeIpApi, str],
                                           logs: Logs) -> None:
    """Swapped while a request is out: SQLite refuses to write the moved file (its journal
    would belong to the new one), the pass fails and says so, the new file is untouched."""
    fake, _ = fake_server
    original = fake.answer_for
    before: dict[str, Any] = {}

    def answer(ip: str, fields: set[str] | None) -> dict[str, object]:
        if not before:
            new = fault_db.with_name("new.db")
            before.update(replacement(new))
            os.replace(new, fault_db)
        return original(ip, fields)

    fake.answer_for = answer  # type: ignore[method-assign]
    assert await daemon(make_config(), fake_clock).run_once() is None
    [error] = events(logs, "geo_re_resolve_error")
    assert "readonly database" in error["error"], error
    assert snapshot(fault_db) == before
    assert_invariants(before, fault_db, fake.requests)
    fake.answer_for = original  # type: ignore[method-assign]
    summary = await daemon(make_config(), fake_clock).run_once()
    assert summary is not None and summary.resolved == 2
    assert_invariants(before, fault_db, fake.requests)


@pytest.mark.parametrize("create", [True, False], ids=["create", "no-create"])
async def test_table_dropped_between_passes(create: bool, make_config: MakeConfig,
                                            fake_clock: FakeClock, fault_db: Path,
                                            fake_server: tuple[FakeIpApi, str],
                                            logs: Logs) -> None:
    """A dropped table: re-created empty (create) or a logged config error; never a crash."""
    fake, _ = fake_server
    geod = daemon(make_config(database=f"create = {str(create).lower()}"), fake_clock)
    await geod.startup()
    try:
        with sqlite3.connect(fault_db) as conn:
            conn.execute("DROP TABLE geo_cache")
        conn.close()
        result = await geod.run_pass()
        summary = await geod.run_pass()  # and again: still no crash
    finally:
        await geod.shutdown()
    if create:
        assert result is not None and summary is not None and result.unresolved == 0
    else:
        assert result is None and summary is None
        errors = events(logs, "geo_re_resolve_error")
        assert len(errors) == 2 and "table 'geo_cache' does not exist" in errors[0]["error"]
    assert fake.requests == []
    assert_invariants({}, fault_db, fake.requests, rows_may_vanish=True)


async def test_table_dropped_during_a_pass(make_config: MakeConfig, fake_clock: FakeClock,
                                           fault_db: Path, fake_server: tuple[FakeIpApi, str],
                                           logs: Logs) -> None:
    """Dropped while a request is out: the write fails, the pass is logged as failed."""
    fake, _ = fake_server
    original = fake.answer_for

    def answer(ip: str, fields: set[str] | None) -> dict[str, object]:
        with sqlite3.connect(fault_db) as conn:
            conn.execute("DROP TABLE IF EXISTS geo_cache")
        conn.close()
        return original(ip, fields)

    fake.answer_for = answer  # type: ignore[method-assign]
    geod = daemon(make_config(database="create = false"), fake_clock)
    await geod.startup()
    try:
        assert await geod.run_pass() is None
    finally:
        await geod.shutdown()
    [error] = events(logs, "geo_re_resolve_error")
    assert "no such table" in error["error"]
    assert integrity(fault_db) == "ok"
    assert_invariants({}, fault_db, fake.requests, rows_may_vanish=True)


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder` (needs root); skips the test where it cannot."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited file system needs root and mount(8)")
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the file system under `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(b"\0" * 4096):
            pass
    return filler


async def test_disk_full(make_config: MakeConfig, fake_clock: FakeClock, fault_db: Path,
                         fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """No space for the journal or new pages: the pass fails, says why, and the file is intact."""
    fake, _ = fake_server
    with small_filesystem(fault_db.parent / "small") as folder:
        db = folder / "geo.db"
        shutil.copy(fault_db, db)
        with sqlite3.connect(db) as conn:  # many rows, so a write needs new pages
            conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)",
                             [(f"8.8.{i // 256}.{i % 256}",) for i in range(1, 400)])
        conn.close()
        before = snapshot(db)
        config = make_config(db=db, batch_size=100)
        filler = fill(folder)
        geod = daemon(config, fake_clock)
        await geod.startup()
        try:
            assert await geod.run_pass() is None
            [error] = events(logs, "geo_re_resolve_error")
            assert "full" in error["error"], error
            assert snapshot(db) == before
            assert_invariants(before, db, fake.requests)
            filler.unlink()
            summary = await geod.run_pass()
        finally:
            await geod.shutdown()
        assert summary is not None and summary.resolved == len(before) - len(NEVER_SENT) - 2
        assert_invariants(before, db, fake.requests)


async def test_error_that_already_rolled_back_is_the_one_reported(
        make_config: MakeConfig, fake_clock: FakeClock, fault_db: Path,
        fake_server: tuple[FakeIpApi, str], logs: Logs) -> None:
    """An error after which SQLite has rolled back by itself (as on a full disk; here an app's
    trigger doing RAISE(ROLLBACK)) is the error logged, not a failed second ROLLBACK; being the
    schema's refusal, it is confined to each row and the pass ends normally."""
    fake, _ = fake_server
    with sqlite3.connect(fault_db) as conn:
        conn.execute("CREATE TRIGGER app_says_no BEFORE UPDATE ON geo_cache "
                     "BEGIN SELECT RAISE(ROLLBACK, 'the app says no'); END")
    conn.close()
    before = snapshot(fault_db)
    summary = await daemon(make_config(), fake_clock).run_once()
    assert summary is not None and summary.refused == summary.retried > 0
    refusals = events(logs, "row_refused")
    assert len(refusals) == summary.refused
    assert {event["reason"] for event in refusals} == {"the app says no"}
    assert not events(logs, "geo_re_resolve_error")
    assert_invariants(before, fault_db, fake.requests)
