"""Process faults on a real `geod run`: SIGTERM mid-request, mid-wait and mid-write, SIGKILL and
restart, a burst of 100 SIGHUPs, a bad or missing config on reload. The fake ip-api server runs
as its own process; every wait is on a log event or a condition, with a bound.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geod.store import STOP_GRACE
from tests.conftest import MakeDb
from tests.faults.conftest import lock_held
from tests.faults.invariants import assert_invariants, batch_requests, snapshot
from tests.proc import FakeServer, GeodProcess, start_fake_ipapi, write_geod_config

pytestmark = pytest.mark.slow

PUBLIC = ["8.8.8.8", "1.1.1.1", "8.8.4.4", "9.9.9.9", "208.67.222.222", "1.0.0.1"]
PRIVATE = ["10.0.0.1", "192.168.0.1", "::1", "not-an-ip"]
SLEEP_SYSCALLS = {"35", "230"}  # nanosleep, clock_nanosleep: SQLite's busy handler sleeping


def table(make_db: MakeDb, public: list[str] = PUBLIC) -> Path:
    # The app's own rows are complete: no upkeep (a fill) adds requests to what is counted here.
    return make_db([*((ip, None, None, None, None) for ip in [*public, *PRIVATE]),
                    ("4.4.4.4", "DE", "Germany", "AS3356", "Level 3 Parent, LLC"),
                    ("4.2.2.2", "", None, None, None)], insert=FULL_ROW)


FULL_ROW = "INSERT INTO geo_cache (ip, country_code, country_name, asn, org) VALUES (?, ?, ?, ?, ?)"


def unpaced_config(cfg: Path, db: Path, url: str, **settings: Any) -> Path:
    """A config with share = "off": requests go back to back until X-Rl says stop, instead of
    being spread over the window (which would make a short test wait for a minute)."""
    write_geod_config(cfg, db=db, url=url, **settings)
    cfg.write_text(cfg.read_text().replace("[ipapi]", '[ipapi]\nshare = "off"'))
    return cfg


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sent(fake: FakeServer) -> list[str]:
    return [ip for r in batch_requests(fake.requests()) for ip in r["ips"]]


def test_sigterm_during_a_request(tmp_path: Path, make_db: MakeDb) -> None:
    """SIGTERM while a request hangs: exit 0 at once; the batch answered before it is kept."""
    db = table(make_db)
    before = snapshot(db)
    # The first request is answered, the second hangs for longer than the test waits.
    with start_fake_ipapi(tmp_path, faults=["slow@0", "slow@30"]) as fake:
        cfg = unpaced_config(tmp_path / "geod.toml", db, fake.batch_url, batch_size=3)
        with GeodProcess(cfg) as geod:
            wait_until(lambda: len(fake.batches()) == 2, "the second request to arrive")
            started = time.monotonic()
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
            assert time.monotonic() - started < 5
            assert geod.wait_for_event("geo_re_resolve_interrupted")["reason"] == "stop"
            after = assert_invariants(before, db, fake.requests(), geod=geod, stopped=True)
    written = [ip for ip in PUBLIC if after[ip]["country_code"]]
    assert written == fake.batches()[0]


def test_sigterm_during_a_rate_limit_wait(tmp_path: Path, make_db: MakeDb) -> None:
    """SIGTERM in a 30 s X-Ttl wait: exit 0 at once; answered batches are kept."""
    db = table(make_db)
    before = snapshot(db)
    with start_fake_ipapi(tmp_path, limit=1, window=30) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url, batch_size=2)
        with GeodProcess(cfg) as geod:
            assert geod.wait_for_event("rate_limit_wait")["wait_s"] > 20
            geod.send(signal.SIGTERM)
            assert geod.wait(5) == 0
            after = assert_invariants(before, db, fake.requests(), geod=geod, stopped=True)
    assert [ip for ip in PUBLIC if after[ip]["country_code"]] == PUBLIC[:2]


def in_sqlite_busy_wait(pid: int) -> bool:
    """True while one of `pid`'s threads sleeps in SQLite's busy handler (nothing else sleeps)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "syscall").read_text().split()[0] in SLEEP_SYSCALLS:
                return True
        except (OSError, IndexError):
            continue
    return False


@pytest.mark.parametrize(
    ("released", "busy"),
    [(True, 3), (False, 1), (False, 30)],
    ids=["lock-released", "lock-kept", "lock-kept-long-busy-timeout"],
)
def test_sigterm_during_a_write(released: bool, busy: int, tmp_path: Path,
                                make_db: MakeDb) -> None:
    """SIGTERM while the write waits on the app's lock: the answered batch is written if the
    lock goes soon, else skipped whole; either way exit 0 well within TimeoutStopSec (10 s),
    whatever busy_timeout says, and the file intact."""
    if not Path(f"/proc/self/task/{threading.get_native_id()}/syscall").exists():
        pytest.skip("/proc/PID/task/TID/syscall is not readable here")
    db = table(make_db)
    before = snapshot(db)
    with start_fake_ipapi(tmp_path) as fake, lock_held(db) as holder:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        # busy_timeout belongs in [database], which the helper writes first.
        cfg.write_text(cfg.read_text().replace("[ipapi]", f"busy_timeout = {busy}\n\n[ipapi]"))
        with GeodProcess(cfg) as geod:
            wait_until(lambda: in_sqlite_busy_wait(geod.proc.pid), "geod to wait on the lock")
            started = time.monotonic()
            geod.send(signal.SIGTERM)
            if released:
                time.sleep(0.2)  # the stop lands meanwhile (either order must keep the batch)
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(5)
            assert geod.wait(min(busy, STOP_GRACE) + 5) == 0
            assert time.monotonic() - started < min(busy, STOP_GRACE) + 2
            after = assert_invariants(before, db, fake.requests(), geod=geod, stopped=True)
    resolved = [ip for ip in PUBLIC if after[ip]["country_code"]]
    assert resolved == (PUBLIC if released else [])


def test_sigkill_mid_pass_then_restart(tmp_path: Path, make_db: MakeDb) -> None:
    """SIGKILL in the middle of a pass, then a restart: what was committed stays, no row that was
    written is asked again, and the restart finishes the rest exactly once."""
    public = [f"8.8.{i}.{i}" for i in range(1, 21)]
    db = table(make_db, public)
    before = snapshot(db)
    cfg = tmp_path / "geod.toml"
    with start_fake_ipapi(tmp_path, limit=3, window=60) as first:
        unpaced_config(cfg, db, first.batch_url, batch_size=2)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("rate_limit_wait")  # three batches in, waiting for the window
            geod.proc.kill()
            geod.wait(5)
        killed = assert_invariants(before, db, first.requests())
    done_before = [ip for ip in public if killed[ip]["country_code"]]
    assert done_before == public[:6] == sent(first)
    with start_fake_ipapi(tmp_path) as second:
        unpaced_config(cfg, db, second.batch_url, batch_size=2)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete")
            after = assert_invariants(killed, db, second.requests(), geod=geod)
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
    assert sent(second) == public[6:]  # each once, none of the six already written
    assert all(after[ip]["country_code"] for ip in public)


def test_sigkill_at_random_moments(tmp_path: Path, make_db: MakeDb) -> None:
    """Killed anywhere (reading, asking, writing) five times: the file is never corrupt, and
    every row written is right; a final run finishes the table."""
    rng = random.Random(6)
    public = [f"8.{i // 250}.{i % 250}.1" for i in range(1, 1501)]
    db = table(make_db, public)
    before = snapshot(db)
    cfg = tmp_path / "geod.toml"
    with start_fake_ipapi(tmp_path, limit=10_000, window=60) as fake:
        write_geod_config(cfg, db=db, url=fake.batch_url, batch_size=100)
        for _ in range(5):
            with GeodProcess(cfg) as geod:
                geod.wait_for_event("geo_re_resolve_scheduled")
                time.sleep(rng.uniform(0.0, 0.4))
                geod.proc.kill()
                geod.wait(5)
            assert_invariants(before, db, fake.requests())
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete", timeout=30)
            after = assert_invariants(before, db, fake.requests(), geod=geod)
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
    assert all(after[ip]["country_code"] for ip in public)


def test_a_hundred_sighups_in_one_second(tmp_path: Path, make_db: MakeDb) -> None:
    """100 SIGHUPs within a second during a pass: no crash, no overlap, one follow-up pass."""
    db = table(make_db, PUBLIC[:2])
    before = snapshot(db)
    with start_fake_ipapi(tmp_path, limit=1, window=4) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url, batch_size=1)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("rate_limit_wait")
            for _ in range(100):  # about half a second in all
                geod.send(signal.SIGHUP)
                time.sleep(0.005)
            assert geod.named("geo_re_resolve_complete") == [], "the pass ended too soon"
            geod.wait_for_event("geo_re_resolve_complete", count=2)
            time.sleep(0.5)  # a third pass would start at once: give it the chance to show
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
            assert geod.pass_events() == [
                ("geo_re_resolve_start", 1), ("geo_re_resolve_complete", 1),
                ("geo_re_resolve_start", 2), ("geo_re_resolve_complete", 2),
            ]  # fmt: skip
            assert len(geod.named("config_reloaded")) == 1
            assert_invariants(before, db, fake.requests(), geod=geod, stopped=True)


def add_rows(db: Path, ips: list[str]) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [(ip,) for ip in ips])
    conn.close()


def test_bad_and_missing_config_on_reload(tmp_path: Path, make_db: MakeDb) -> None:
    """An invalid config, then a deleted one, on SIGHUP: logged, old config kept, passes run;
    a valid file again is picked up by the next SIGHUP."""
    db = table(make_db, PUBLIC[:1])
    before = snapshot(db)
    with start_fake_ipapi(tmp_path, window=1) as fake:
        cfg = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url)
        with GeodProcess(cfg) as geod:
            geod.wait_for_event("geo_re_resolve_complete")
            for step, (break_it, why) in enumerate([
                (lambda: cfg.write_text("[ipapi]\nbatch_size = 0\n"), "must be 1..100"),
                (cfg.unlink, "cannot read config: No such file or directory"),
            ]):
                add_rows(db, [PUBLIC[step + 1]])
                break_it()
                mark = geod.mark()
                geod.send(signal.SIGHUP)
                failed = geod.wait_for_event("config_reload_failed", after=mark)
                assert why in failed["reason"]
                assert geod.wait_for_event("geo_re_resolve_complete", after=mark)["resolved"] == 1
            write_geod_config(cfg, db=db, url=fake.batch_url, batch_size=7)
            mark = geod.mark()
            geod.send(signal.SIGHUP)
            geod.wait_for_event("config_reloaded", after=mark)
            assert geod.wait_for_event("geo_re_resolve_complete", after=mark)["retried"] == 0
            assert_invariants(before, db, fake.requests(), geod=geod)
            geod.send(signal.SIGTERM)
            assert geod.wait(10) == 0
    assert sent(fake) == PUBLIC[:3]
