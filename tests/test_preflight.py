"""Start-up checks: a database geod cannot write is refused before READY, naming file and fix.

Most of these run as root (CI does), where the kernel ignores modes: the rule for another user
is checked through `Identity`, and the real-process test drops to `nobody` with setpriv.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from geod import cli
from geod.config import DatabaseConfig
from geod.errors import EXIT_NOPERM, PermissionProblem
from geod.preflight import Identity, check_access, create_database, probe_write
from geod.sqlite_store import SqliteStore
from tests.proc import REPO, _base_env, write_geod_config

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setpriv)")
NOBODY = Identity("nobody", 65534, frozenset({65534}))


def wal_database(path: Path) -> sqlite3.Connection:
    """An app's WAL database, left open (as a running app does), so -wal and -shm exist."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                 "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
    conn.execute("INSERT INTO geo_cache (ip) VALUES ('8.8.8.8')")
    conn.commit()
    return conn


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's tmp_path is root-only)."""
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="geod-preflight-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_companion_files_are_checked_for_the_users_group(tmp_path: Path) -> None:
    """Defect 2: a group-writable geo.db with a 0644 -wal beside it names the -wal and the fix."""
    db = tmp_path / "geo.db"
    conn = wal_database(db)
    try:
        app = Identity("app", 4242, frozenset({4243}))
        for path in (tmp_path, db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            os.chown(path, 4242 + 1, 4243)  # owned by another user, group app
        tmp_path.chmod(0o775)
        db.chmod(0o664)
        Path(f"{db}-shm").chmod(0o664)
        Path(f"{db}-wal").chmod(0o644)  # what the README's old chmod left behind
        with pytest.raises(PermissionProblem) as caught:
            check_access(str(db), app)
        message = str(caught.value)
        assert f"may not read and write {db}-wal (owner " in message, message
        assert "mode 0644" in message and "user app (groups 4243)" in message, message
        assert message.endswith(f"fix: chmod g+rw {db}*"), message
        Path(f"{db}-wal").chmod(0o664)
        assert check_access(str(db), app) == []
    finally:
        conn.close()


def test_a_directory_of_another_group_suggests_group_and_chmod(tmp_path: Path) -> None:
    """A directory the user may not write: the fix names Group= and the chmod."""
    folder = tmp_path / "app"
    folder.mkdir()
    folder.chmod(0o755)
    os.chown(folder, 4242, 4243)
    with pytest.raises(PermissionProblem) as caught:
        check_access(str(folder / "geo.db"), NOBODY)
    assert str(caught.value).endswith(
        f"fix: chmod g+wx {folder} and run geod in group 4243 "
        "(systemctl edit geod: [Service] Group=4243)"
    )


def test_config_dir_is_not_the_databases_place(tmp_path: Path) -> None:
    """Defect 1: a database beside a root-owned 0755 config folder is refused for the service
    user, with the file's owner and mode."""
    etc = tmp_path / "etc"
    etc.mkdir()
    etc.chmod(0o755)
    os.chown(etc, 0, 0)
    with pytest.raises(PermissionProblem) as caught:
        check_access(str(etc / "geo.db"), NOBODY)
    assert f"may not write and enter {etc} (owner root:root, mode 0755); fix: put the database " \
        "where geod may write: under /var/lib/geod" in str(caught.value)


def test_a_new_database_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Finding 27: a database geod creates is 0600 even under umask 000."""
    db = tmp_path / "geo.db"
    old = os.umask(0)
    try:
        assert create_database(str(db))
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


@needs_root
def test_root_refuses_to_create_a_database_the_service_cannot_write(tmp_path: Path) -> None:
    """Defect 3: root does not create a root-owned database in the service user's folder."""
    state = tmp_path / "geod"
    state.mkdir()
    os.chown(state, 65534, 65534)
    path = write_geod_config(tmp_path / "geod.toml", db=state / "geo.db",
                             url="http://127.0.0.1:9/batch")
    assert cli.main(["--config", str(path), "once"]) == EXIT_NOPERM
    assert not (state / "geo.db").exists()


def test_status_never_creates_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 26: `geod status` on a mistyped path says so and creates nothing."""
    db = tmp_path / "gep.db"
    path = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    assert cli.main(["--config", str(path), "status"]) == 1
    assert f"opening database {db}: no such database file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geod.toml"]


def test_status_opens_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`geod status` adds no table and changes no byte of an existing database."""
    db = tmp_path / "geo.db"
    sqlite3.connect(db).close()  # an empty database: no table yet
    path = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    assert cli.main(["--config", str(path), "status"]) == 78  # no table (create is read-only)
    assert db.read_bytes() == b""


def test_write_probe_passes_on_a_writable_database(tmp_path: Path) -> None:
    """The probe begins and rolls back a write transaction and leaves no change."""
    db = tmp_path / "geo.db"
    conn = wal_database(db)
    conn.close()
    before = db.read_bytes()
    assert probe_write(str(db)) is True
    assert db.read_bytes() == before


@needs_root
def test_real_run_as_another_user_exits_77_naming_the_wal(shared_dir: Path) -> None:
    """Defect 2, real process: `geod run` as a user whose group may write geo.db but not the
    app's 0644 -wal exits 77 at start-up with the file, owner, mode, user and fix."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    app = shared_dir / "app"
    app.mkdir()
    app.chmod(0o775)
    db = app / "geo.db"
    conn = wal_database(db)
    try:
        for path in (app, db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            os.chown(path, 0, 65534)  # root's files, group nogroup: geod runs in that group
        db.chmod(0o664)
        Path(f"{db}-shm").chmod(0o664)
        Path(f"{db}-wal").chmod(0o644)
        config = write_geod_config(shared_dir / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
        config.chmod(0o644)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "geod", "--config", str(config), "run"],
            env=_base_env(None), cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        conn.close()
    assert result.returncode == EXIT_NOPERM, result.stderr
    assert result.stderr.startswith(f"geod: user nobody (groups nogroup) may not read and write "
                                    f"{db}-wal (owner root:nogroup, mode 0644); fix: chmod g+rw "
                                    f"{db}*"), result.stderr


def test_check_config_as_root_reports_what_the_service_user_would_meet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config --user nobody` judges the folder by nobody's rights, not the caller's,
    and changes nothing."""
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o755)
    db = folder / "geo.db"
    path = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    assert cli.main(["--config", str(path), "check-config", "--user", "nobody"]) == EXIT_NOPERM
    err = capsys.readouterr().err
    assert f"geod: user nobody (groups nogroup) may not write and enter {folder}" in err, err
    assert cli.main(["--config", str(path), "check-config", "--quiet"]) == 0  # as this user
    assert not db.exists()


async def test_store_creates_a_private_database(tmp_path: Path) -> None:
    """Finding 27 through the real path (`geod once`/`run` open the Store): 0600 under umask 0."""
    db = tmp_path / "geo.db"
    old = os.umask(0)
    try:
        store = await SqliteStore.open(DatabaseConfig(path=str(db)), "geod.toml")
        await store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
