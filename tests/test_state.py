"""The state file: a restarted geod remembers the window, the back-offs and a refusal.

A "restart" is a new Daemon on a new monotonic clock (boot time differs) over the same world:
the fake server and the wall clock both run on `world`, which only moves when geod sleeps.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geod.config import Config, load_config
from geod.daemon import Daemon
from geod.records import PassSummary
from geod.status import Phase, Status
from tests.conftest import FakeClock, Logs, MakeDb, events, write_config
from tests.fake_ipapi import FakeIpApi, Fault

IPS = [f"8.8.{i}.{i}" for i in range(1, 50)]


@pytest.fixture
def world() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)  # wall-clock seconds


@pytest.fixture
async def server(aiohttp_server: Any, world: FakeClock) -> tuple[FakeIpApi, str]:
    fake = FakeIpApi(limit=15, window=60, clock=world)
    srv = await aiohttp_server(fake.app)
    return fake, str(srv.make_url("/batch"))


@pytest.fixture
def config(tmp_path: Path, server: tuple[FakeIpApi, str]) -> Callable[..., Config]:
    def make(extra: str = "", state: str = "state.json") -> Config:
        return load_config(write_config(tmp_path / "geod.toml", f"""
[daemon]
state_file = "{state}"
[ipapi]
url = "{server[1]}"
batch_size = 1
max_attempts = 1
{extra}
"""))
    return make


def booted(config: Config, world: FakeClock, boot: float) -> Daemon:
    """A geod process whose monotonic clock started at `boot` (wall time)."""
    return Daemon(config, clock=lambda: world() - boot, sleep=world.sleep, wall_clock=world,
                  handle_signals=False)


def geod_times(fake: FakeIpApi) -> list[float]:
    return [r.time for r in fake.requests if r.tenant == "geod"]


async def test_small_backlog_goes_out_at_once(make_db: MakeDb, config: Callable[..., Config],
                                              server: tuple[FakeIpApi, str],
                                              world: FakeClock) -> None:
    """8 batches fit in the window: all are sent without a single wait."""
    fake, _ = server
    make_db([(ip, None) for ip in IPS[:8]])
    start = world()
    summary = await booted(config(), world, boot=0).run_once()
    assert summary is not None and summary.resolved == 8
    assert geod_times(fake) == [start] * 8 and world.sleeps == []


async def test_large_backlog_is_paced(make_db: MakeDb, config: Callable[..., Config],
                                      server: tuple[FakeIpApi, str], world: FakeClock) -> None:
    """40 batches do not fit: they are spread over the windows, without a 429."""
    fake, _ = server
    make_db([(ip, None) for ip in IPS[:40]])
    start = world()
    summary = await booted(config(), world, boot=0).run_once()
    assert summary is not None and summary.resolved == 40
    times = geod_times(fake)
    assert sum(t < start + 1 for t in times) < 10  # not the whole first window at once
    assert times[-1] - start >= 120 and fake.count_429() == 0


async def test_a_restart_mid_window_waits_for_the_remembered_reset(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock) -> None:
    """After a restart in a spent window, nothing is sent before the reset the file remembers."""
    fake, _ = server
    db = make_db([(ip, None) for ip in IPS[:2]])
    fake.spend(13, tenant="dashboard")
    window_start = world()
    await booted(config(), world, boot=0).run_once()  # spends the last two
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO geo_cache (ip, country_code) VALUES (?, NULL)",
                         [(ip,) for ip in IPS[2:5]])
    world.advance(10)
    summary = await booted(config(), world, boot=world() - 3.0).run_once()  # a fresh boot
    assert summary is not None and summary.resolved == 3
    later = geod_times(fake)[2:]
    assert later and min(later) >= window_start + 60
    assert fake.count_429() == 0


async def test_without_a_state_file_a_restart_sends_blind(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock, tmp_path: Path) -> None:
    """The control for the test above: with no state kept, the restarted geod gets a 429."""
    fake, _ = server
    make_db([(ip, None) for ip in IPS[:5]])
    fake.spend(15, tenant="dashboard")
    (tmp_path / "state.json").unlink(missing_ok=True)
    await booted(config(state=""), world, boot=0).run_once()
    assert fake.count_429("geod") >= 1


async def test_a_failed_address_waits_out_its_back_off_after_a_restart(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock) -> None:
    """An address that failed before a restart is not asked again before its back-off ends."""
    fake, _ = server
    make_db([(IPS[0], None)])
    fake.faults.append(Fault("status", status=500))
    first = await booted(config(), world, boot=0).run_once()
    assert first is not None and first.failed == 1
    world.advance(60)
    again = await booted(config(), world, boot=world() - 1).run_once()
    assert again is not None and again.backed_off == 1 and len(fake.requests) == 1
    world.advance(600)  # negative_cache.ttl
    last = await booted(config(), world, boot=world() - 1).run_once()
    assert last is not None and last.resolved == 1


async def test_a_403_is_not_retried_after_a_restart(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock, logs: Logs) -> None:
    """A ban is logged at error with the unban page, and no restart asks again for hours."""
    fake, _ = server
    make_db([(ip, None) for ip in IPS[:3]])
    fake.banned.add("geod")
    await booted(config(), world, boot=0).run_once()
    assert len(fake.requests) == 1  # the first 403 stops the pass asking
    [banned] = events(logs, "ipapi_banned")
    assert banned["log_level"] == "error" and "unban" in banned["unban"]
    for _ in range(5):  # a restart loop
        world.advance(60)
        await booted(config(), world, boot=world() - 1).run_once()
    assert len(fake.requests) == 1
    # One warning, not one per batch (the restarts find the addresses backing off anyway).
    assert len(events(logs, "ipapi_paused")) == 1 and len(events(logs, "lookup_failed")) == 1
    world.advance(6 * 3600)
    fake.banned.clear()  # unbanned by hand meanwhile
    summary = await booted(config(), world, boot=world() - 1).run_once()
    assert summary is not None and summary.resolved == 3


async def test_a_refused_key_is_not_retried_until_the_key_changes(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock, logs: Logs) -> None:
    """A pro key's refusal is an error, no loop (even across restarts); a new key is tried."""
    fake, _ = server
    fake.keys = frozenset({"good-key"})
    make_db([(ip, None) for ip in IPS[:2]])
    await booted(config('key = "bad-key"'), world, boot=0).run_once()
    await booted(config('key = "bad-key"'), world, boot=world() - 1).run_once()
    assert len(fake.requests) == 1
    assert events(logs, "ipapi_key_refused")[0]["log_level"] == "error"
    state = (Path(config().daemon.state_file)).read_text()
    assert "bad-key" not in state  # only a fingerprint is kept
    world.advance(600)  # the addresses' own back-off (negative_cache.ttl)
    summary = await booted(config('key = "good-key"'), world, boot=world() - 1).run_once()
    assert summary is not None and summary.resolved == 2


SUPERSCRIPT = '{"version": 1, "governor": {"remaining": "\u00b2"}}'.encode()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"version": 99}', SUPERSCRIPT,
                                     b"[]", b'{"version": 1, "governor": {}, "backoff": 5}'])
async def test_a_corrupt_state_file_is_a_warning(
        make_db: MakeDb, config: Callable[..., Config], world: FakeClock, logs: Logs,
        content: bytes) -> None:
    """A corrupt or foreign state file is ignored with a warning; the pass runs as usual."""
    make_db([(IPS[0], None)])
    cfg = config()
    Path(cfg.daemon.state_file).write_bytes(content)
    summary = await booted(cfg, world, boot=0).run_once()
    assert summary is not None and summary.resolved == 1
    [warning] = events(logs, "state_ignored")
    assert warning["log_level"] == "warning"
    assert json.loads(Path(cfg.daemon.state_file).read_text())["version"] == 1  # rewritten


async def test_a_missing_state_file_is_a_warning(make_db: MakeDb, config: Callable[..., Config],
                                                 world: FakeClock, logs: Logs) -> None:
    """The first start finds no file: a warning, then a normal pass that creates it."""
    make_db([(IPS[0], None)])
    cfg = config()
    await booted(cfg, world, boot=0).run_once()
    assert events(logs, "state_not_found")[0]["log_level"] == "warning"
    assert Path(cfg.daemon.state_file).exists()


async def test_state_file_defaults_to_the_state_directory(tmp_path: Path,
                                                          config: Callable[..., Config],
                                                          world: FakeClock) -> None:
    """No state_file: $STATE_DIRECTORY/state.json (systemd's StateDirectory=); neither: none."""
    cfg = config(state="")
    daemon = Daemon(cfg, clock=world, sleep=world.sleep, handle_signals=False,
                    environ={"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert daemon.state is not None and daemon.state.path == tmp_path / "a" / "state.json"
    assert Daemon(cfg, clock=world, handle_signals=False, environ={}).state is None


async def test_a_reload_clears_the_back_offs_on_disk_but_keeps_the_quota(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock) -> None:
    """SIGHUP forgets the back-offs (and saves that at once) but not what the window has left."""
    fake, _ = server
    make_db([(IPS[0], None), (IPS[1], None)])
    fake.spend(13, tenant="dashboard")
    fake.faults.extend([Fault("slow"), Fault("status", status=500)])  # IPS[1] fails
    cfg = config()
    state_file = Path(cfg.daemon.state_file)
    on_disk: list[dict[str, Any]] = []

    def done(summary: PassSummary) -> None:
        if daemon.passes == 1:
            on_disk.append(json.loads(state_file.read_text()))
            daemon.request_reload()
        else:
            daemon.request_stop()

    phases: list[Phase] = []

    def changed(status: Status) -> None:
        if status.phase is Phase.READY and phases[-1:] == [Phase.RELOADING]:  # reload over
            on_disk.append(json.loads(state_file.read_text()))
        phases.append(status.phase)
        if status.phase is Phase.PASSED and status.last is not None:
            done(status.last)

    daemon = Daemon(cfg, clock=world, sleep=world.sleep, wall_clock=world, handle_signals=False,
                    on_change=changed)
    await asyncio.wait_for(daemon.run(), timeout=10)
    before, after = on_disk
    assert [entry[0] for entry in before["backoff"]] == [IPS[1]]
    assert after["backoff"] == []
    assert after["governor"]["remaining"] == before["governor"]["remaining"] == 1
    assert after["governor"]["reset_at"] == before["governor"]["reset_at"]


UPKEEP_SCHEMA = ("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                 "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT, source TEXT)")
UPKEEP_INSERT = ("INSERT INTO geo_cache (ip, country_code, country_name, asn, org, cached_at, "
                 "source) VALUES (?, ?, ?, ?, ?, ?, ?)")


async def test_an_upkeep_address_waits_out_its_back_off_after_a_restart(
        make_db: MakeDb, config: Callable[..., Config], server: tuple[FakeIpApi, str],
        world: FakeClock) -> None:
    """Upkeep's own back-offs (rows with a country) are kept too: no re-ask after a restart."""
    fake, _ = server
    make_db([(IPS[0], "DE", "Germany", "AS1", "x", "2000-01-01T00:00:00Z", "ip-api")],
            schema=UPKEEP_SCHEMA, insert=UPKEEP_INSERT)
    cfg = config('[database.columns]\nsource = "source"')
    fake.faults.append(Fault("status", status=500))  # the refresh's look-up fails
    first = await booted(cfg, world, boot=0).run_once()
    assert first is not None and len(fake.requests) == 1
    on_disk = json.loads(Path(cfg.daemon.state_file).read_text())
    assert [entry[0] for entry in on_disk["upkeep_backoff"]] == [IPS[0]]
    world.advance(60)
    await booted(cfg, world, boot=world() - 1).run_once()
    assert len(fake.requests) == 1  # still backing off: not asked
    world.advance(600)  # negative_cache.ttl
    last = await booted(cfg, world, boot=world() - 1).run_once()
    assert last is not None and len(fake.requests) == 2 and last.changed == 1
