"""Hostile mmdb files: metadata out of range, a corrupt record, a FIFO, a forged database_type.

Any exception from opening or inspecting a file is a config error at start (exit 78 naming the
key) and a logged error with the old reader kept on reload; a record that cannot be decoded fails
that one address, and the next provider is asked.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from geod.config import MmdbConfig
from geod.mmdb import MmdbOpenError, MmdbProvider, WatchedReader
from geod.negcache import NegativeCache
from geod.records import Outcome
from geod.rir import RirProvider
from tests.conftest import FakeClock, Logs, MakeDb, events, make_pass, read_rows
from tests.mmdb_files import corrupt_text, geolite2_country, with_build_epoch, write_mmdb
from tests.proc import GeodProcess, closed_port_url, run_geod, write_geod_config

GOOD = {"8.8.8.0/24": geolite2_country("US", "United States")}


def good_db(path: Path) -> Path:
    return write_mmdb(path, GOOD)


def test_build_epoch_out_of_range_is_an_open_error(tmp_path: Path) -> None:
    """build_epoch = 2**64-1 opened fine and then raised OverflowError while logging it."""
    path = with_build_epoch(good_db(tmp_path / "c.mmdb"), 2**64 - 1)
    with pytest.raises(MmdbOpenError) as caught:
        WatchedReader(str(path))
    assert str(caught.value) == (
        f"cannot open {path}: unusable metadata: build_epoch 18446744073709551615 is not a date"
    )


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifo_or_device_is_an_open_error_without_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO at mmdb.path used to block the open for ever; a device is no database either."""
    path = tmp_path / "c.mmdb"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(MmdbOpenError, match=r"not a regular file"):
        WatchedReader(str(path))


def _mmdb_config(tmp_path: Path, db: Path, mmdb: Path) -> Path:
    return write_geod_config(
        tmp_path / "geod.toml", db=db, url=closed_port_url(),
        extra=f'[resolve]\nproviders = ["mmdb"]\n[mmdb]\npath = "{mmdb}"\n',
    )  # fmt: skip


def test_start_with_out_of_range_metadata_exits_78(tmp_path: Path, make_db: MakeDb) -> None:
    """Finding 14: start-up exited 1 ("unexpected error"); now 78 naming [mmdb] path."""
    mmdb = with_build_epoch(good_db(tmp_path / "c.mmdb"), 2**64 - 1)
    config = _mmdb_config(tmp_path, make_db(rows=[("8.8.8.8", None)]), mmdb)
    result = run_geod("--config", str(config), "once")
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith(f"geod: {config}: [mmdb] path: cannot open {mmdb}: ")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sighup_after_bad_replacement_keeps_old_reader(tmp_path: Path, make_db: MakeDb) -> None:
    """Finding 14: a SIGHUP after the file was replaced by one with out-of-range metadata killed
    the daemon; now it logs mmdb_reload_failed, keeps the old reader and resolves with it."""
    mmdb = good_db(tmp_path / "c.mmdb")
    db = make_db(rows=[("8.8.8.8", None)])
    config = _mmdb_config(tmp_path, db, mmdb)
    with GeodProcess(config) as geod:
        geod.wait_for_event("geo_re_resolve_complete")
        bad = with_build_epoch(good_db(tmp_path / "new.mmdb"), 2**64 - 1)
        shutil.move(bad, mmdb)  # replaced atomically, as geoipupdate does
        add_row(db, "8.8.8.9")
        mark = geod.mark()
        geod.send(signal.SIGHUP)
        failed = geod.wait_for_event("mmdb_reload_failed", after=mark)
        assert failed["action"] == "kept_old_reader" and failed["level"] == "error"
        done = geod.wait_for_event("geo_re_resolve_complete", after=mark)
        assert done["resolved"] == 1
        assert geod.proc.poll() is None
        geod.send(signal.SIGTERM)
        assert geod.wait(10) == 0
    assert read_rows(db)["8.8.8.9"]["country_code"] == "US"


def add_row(db: Path, ip: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO geo_cache (ip) VALUES (?)", (ip,))
    conn.close()


async def test_corrupt_record_fails_that_address_and_the_next_provider_answers(
    tmp_path: Path, make_db: MakeDb, fake_clock: FakeClock, logs: Logs
) -> None:
    """Finding 15: one undecodable record used to end the pass (0 of 3,001 rows written); now
    that address is FAILED in mmdb, rir answers it, and every other row is resolved by mmdb."""
    mmdb = write_mmdb(tmp_path / "c.mmdb", {
        "8.8.0.0/16": geolite2_country("US", "United States"),
        "1.1.1.0/24": geolite2_country("AU", "Corruptland"),
    })  # fmt: skip
    corrupt_text(mmdb, "Corruptland")
    others = [f"8.8.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    db = make_db(rows=[("1.1.1.1", None), *((ip, None) for ip in others)])
    provider = MmdbProvider.open(MmdbConfig(path=str(mmdb)))
    lookup = (await provider.resolve(["1.1.1.1"]))[0]
    assert lookup.outcome is Outcome.FAILED
    assert lookup.reason == f"corrupt record in {mmdb}: InvalidDatabaseError"
    try:
        summary = await make_pass(db, [provider, RirProvider()],
                                  NegativeCache(600, 86400, fake_clock), fake_clock)
    finally:
        provider.close()
    assert summary.resolved == 3001
    assert summary.resolved_by == {"mmdb": 3000, "rir": 1}
    rows = read_rows(db)
    assert rows["1.1.1.1"]["country_code"] == "AU"  # from rir's registry data
    assert all(rows[ip]["country_code"] == "US" for ip in others)
    assert events(logs, "mmdb_record_unreadable")[0]["path"] == str(mmdb)


async def test_provider_that_raises_fails_its_batch_only(
    tmp_path: Path, make_db: MakeDb, fake_clock: FakeClock, logs: Logs
) -> None:
    """A provider that breaks its never-raise promise fails its batch; the next one answers."""

    class Broken:
        name = "broken"
        batch_size = 10

        async def resolve(self, addresses: object) -> list[object]:
            raise KeyError("surprise")

    db = make_db(rows=[("1.1.1.1", None), ("8.8.8.8", None)])
    summary = await make_pass(db, [Broken(), RirProvider()],  # type: ignore[list-item]
                              NegativeCache(600, 86400, fake_clock), fake_clock)
    assert summary.resolved_by == {"broken": 0, "rir": 2}
    assert events(logs, "provider_error")[0]["reason"] == "broken raised KeyError: 'surprise'"
