"""The command line contract: arguments, config selection, exit codes, output streams."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest

from geod import cli
from geod.ipapi import FIELDS
from geod.validate import country_name
from tests.conftest import MakeDb, read_rows, write_config
from tests.fake_ipapi import FakeIpApi, parse_fields
from tests.proc import REPO, FakeServer, _base_env, run_geod, start_fake_ipapi, write_geod_config
from tests.store_backends import StoreBackend

EXIT_CONFIG = 78
SUMMARY = re.compile(
    r"unresolved=\d+ retried=\d+ resolved=\d+ failed=\d+ unresolvable=\d+ backed_off=\d+ "
    r"locked=\d+ missed=\d+ refused=\d+ filled=\d+ confirmed=\d+ changed=\d+ superseded=\d+ "
    r"duration_s=\d+(\.\d+)?( resolved_by=[a-z-]+:\d+(,[a-z-]+:\d+)*)?"
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SECRET = "k3y-d0-n0t-l3ak-9f8e7d"  # noqa: S105 - a made-up key that must never be shown

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeServer]:
    with start_fake_ipapi(tmp_path) as server:
        yield server


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A valid config in its own folder, with a relative database path and a key."""
    folder = tmp_path / "etc"
    folder.mkdir()
    return write_config(
        folder / "geod.toml",
        f'[database]\npath = "data.db"\n\n[ipapi]\nkey = "{SECRET}"\n\n[log]\nformat = "json"\n',
    )


def check_config(argv: list[str], capsys: Capsys) -> tuple[int, dict[str, object], str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


# -- arguments and config selection ------------------------------------------------------------


def test_version() -> None:
    """`geod --version` prints `geod 0.1.0` first on stdout and exits 0 (details: test_package)."""
    result = run_geod("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "geod 0.1.0"


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_config_option_before_or_after_subcommand(cfg: Path, before: bool, capsys: Capsys) -> None:
    """--config is honoured both before and after the subcommand."""
    argv = (
        ["--config", str(cfg), "check-config"] if before else ["check-config", "--config", str(cfg)]
    )
    code, shown, err = check_config(argv, capsys)
    assert code == 0, err
    assert shown["source"] == str(cfg)


def test_geod_config_env_is_used_without_option(cfg: Path) -> None:
    """Without --config, the file named by $GEOD_CONFIG is loaded (real process environment)."""
    result = run_geod("check-config", env={"GEOD_CONFIG": str(cfg)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == str(cfg)


def test_config_option_wins_over_env(
    cfg: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config takes precedence over $GEOD_CONFIG (which here names a missing file)."""
    monkeypatch.setenv("GEOD_CONFIG", str(tmp_path / "nowhere.toml"))
    code, shown, err = check_config(["check-config", "--config", str(cfg)], capsys)
    assert code == 0, err
    assert shown["source"] == str(cfg)


def test_env_config_errors_name_the_env_file(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $GEOD_CONFIG naming a missing file is that file's error (exit 78), not the default's."""
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv("GEOD_CONFIG", str(missing))
    assert cli.main(["check-config"]) == EXIT_CONFIG
    assert str(missing) in capsys.readouterr().err


def test_check_config_prints_effective_config_redacted(cfg: Path, tmp_path: Path) -> None:
    """check-config prints the effective config as JSON: db path absolute, key redacted."""
    result = run_geod("--config", "etc/geod.toml", "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["database"]["path"] == str(cfg.parent / "data.db")
    assert shown["ipapi"]["key"] == "<redacted>"
    assert shown["ipapi"]["url"] == "https://pro.ip-api.com/batch"  # a key selects pro
    assert shown["daemon"] == {"interval": 600.0, "initial_delay": 0.0, "state_file": ""}
    assert SECRET not in result.stdout and SECRET not in result.stderr
    db = cfg.parent / "data.db"
    note = f"geod: note: {db} does not exist yet: geod run creates it (mode 0600)\n"
    assert result.stderr == note
    assert not db.exists()  # check-config changes nothing


# -- config errors: exit 78, one line naming file, key and problem ----------------------------

ConfigCase = Callable[[Path, MakeDb], Path]


def _text(body: str) -> ConfigCase:
    def make(tmp_path: Path, make_db: MakeDb) -> Path:
        return write_config(tmp_path / "geod.toml", body)

    return make


def _missing(tmp_path: Path, make_db: MakeDb) -> Path:
    return tmp_path / "missing.toml"


def _directory(tmp_path: Path, make_db: MakeDb) -> Path:
    path = tmp_path / "conf.d"
    path.mkdir()
    return path


def _unreadable(tmp_path: Path, make_db: MakeDb) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file anyway (the directory case covers EISDIR)")
    path = write_config(tmp_path / "geod.toml", "")
    path.chmod(0)
    return path


def _no_table(tmp_path: Path, make_db: MakeDb) -> Path:
    make_db(schema="CREATE TABLE other (ip TEXT)", insert="INSERT INTO other VALUES (?)")
    return write_config(tmp_path / "geod.toml", '[database]\npath = "geo.db"\ncreate = false\n')


def _no_asn_column(tmp_path: Path, make_db: MakeDb) -> Path:
    make_db(schema="CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                   "country_name TEXT, org TEXT, cached_at TEXT)")  # fmt: skip
    return write_config(tmp_path / "geod.toml", '[database]\npath = "geo.db"\ncreate = false\n')


CONFIG_ERRORS: dict[str, tuple[ConfigCase, str]] = {
    "missing": (_missing, ": cannot read config: No such file or directory"),
    "directory": (_directory, ": cannot read config: Is a directory"),
    "unreadable": (_unreadable, ": cannot read config: Permission denied"),
    "invalid-toml": (_text("[daemon\ninterval = 5\n"), ": invalid TOML: "),
    "unknown-key": (_text("[daemon]\nintervall = 5\n"), ": [daemon] intervall: unknown key"),
    "unknown-table": (_text("[deamon]\ninterval = 5\n"), ": deamon: unknown key"),
    "out-of-range": (
        _text("[ipapi]\nbatch_size = 500\n"),
        ": [ipapi] batch_size: must be 1..100, got 500",
    ),
    "wrong-type": (_text('[daemon]\ninterval = "5"\n'), ": [daemon] interval: must be a number"),
    "bad-table-identifier": (
        _text('[database]\ntable = "geo cache; DROP"\n'),
        ": [database] table: must be an SQL identifier",
    ),
    "bad-column-identifier": (
        _text('[database.columns]\nasn = "1asn"\n'),
        ": [database.columns] asn: must be an SQL identifier",
    ),
}
STORE_CONFIG_ERRORS: dict[str, tuple[ConfigCase, str]] = {
    "missing-table": (_no_table, ": [database] table: table 'geo_cache' does not exist"),
    "missing-column": (_no_asn_column, ": [database.columns] asn: column 'asn' does not exist"),
}


def _assert_config_error(code: int, err: str, path: Path, expected: str) -> None:
    assert code == EXIT_CONFIG, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"geod: {path}"), err
    assert expected in lines[0], err


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
@pytest.mark.parametrize("command", ["check-config", "once", "status"])
def test_config_errors_exit_78_with_one_line(
    case: str, command: str, tmp_path: Path, make_db: MakeDb, capsys: Capsys
) -> None:
    """An unusable config exits 78 with one stderr line naming the file, the key and the problem."""
    make, expected = CONFIG_ERRORS[case]
    path = make(tmp_path, make_db)
    code = cli.main(["--config", str(path), command])
    out, err = capsys.readouterr()
    _assert_config_error(code, err, path, expected)
    assert out == ""


@pytest.mark.parametrize("case", list(STORE_CONFIG_ERRORS))
@pytest.mark.parametrize("command", ["once", "status"])
def test_create_false_schema_errors_exit_78(
    case: str, command: str, tmp_path: Path, make_db: MakeDb, capsys: Capsys
) -> None:
    """With create = false, a missing table or mapped column is a config error naming the key."""
    make, expected = STORE_CONFIG_ERRORS[case]
    path = make(tmp_path, make_db)
    code = cli.main(["--config", str(path), command])
    out, err = capsys.readouterr()
    _assert_config_error(code, err, path, expected)
    assert out == ""


@pytest.mark.parametrize("command", ["check-config", "once", "run"])
def test_config_error_exit_code_of_real_process(command: str, tmp_path: Path) -> None:
    """The real process exits 78 with one line and no traceback (here: an unknown key)."""
    path = write_config(tmp_path / "geod.toml", "[daemon]\nintervall = 5\n")
    result = run_geod("--config", str(path), command)
    expected = ": [daemon] intervall: unknown key"
    _assert_config_error(result.returncode, result.stderr, path, expected)
    assert result.stdout == ""


def test_missing_table_exit_code_of_real_run(tmp_path: Path, make_db: MakeDb) -> None:
    """`geod run` with create = false and no table exits 78 at startup, before any pass."""
    path = _no_table(tmp_path, make_db)
    result = run_geod("--config", str(path), "run")
    _assert_config_error(result.returncode, result.stderr, path, ": [database] table: ")
    assert _events(result.stdout) == ["geod_starting"]  # versions first, then nothing


# -- database cannot be opened: exit 1 ---------------------------------------------------------

REPEATS = 2  # a stray traceback (see below) is a race: run a few processes at once


@pytest.mark.parametrize("where", ["missing-dir", "directory"])
@pytest.mark.parametrize("command", ["once", "status", "run"])
def test_unopenable_database_exits_1_with_one_line(
    where: str, command: str, tmp_path: Path
) -> None:
    """A database that cannot be opened exits 1 with one line naming it, never a traceback."""
    db = tmp_path / "nowhere" / "geo.db"
    if where == "directory":
        db = tmp_path / "dbdir"
        db.mkdir()
    path = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(path), command],
            env=_base_env(None),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(REPEATS)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=20)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    if command == "status":  # read-only: it never creates, so it says the file is not there
        expected = f"geod: opening database {db}: no such database file"
    elif where == "missing-dir":  # the start-up check names the directory
        expected = f"geod: database directory {db.parent} does not exist"
    else:
        expected = f"geod: opening database {db}: unable to open database file"
    for code, out, err in results:
        assert code == 1, err
        assert "Traceback" not in err, err
        assert err.splitlines() == [expected]
        assert _events(out) == (["geod_starting"] if command == "run" else [])


def _events(stdout: str) -> list[str]:
    return [json.loads(line)["event"] for line in stdout.splitlines()]


def test_failed_open_finishes_sqlite_worker_before_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """A failed open lets aiosqlite's worker thread finish before the event loop closes.

    aiosqlite stops its worker after a failed connect without waiting for it; if the loop is
    closed first, the worker dies with "Event loop is closed" and prints a traceback on stderr.
    The scheduler decides who wins, so the worker is slowed down here to make the race certain.
    """
    real_worker = aiosqlite.core._connection_worker_thread

    class LateQueue:
        def __init__(self, inner: Any) -> None:
            self.inner, self.taken = inner, 0

        def get(self) -> Any:
            item = self.inner.get()
            self.taken += 1
            if self.taken > 1:  # the stop after the failed connect: a busy host runs it late
                time.sleep(0.3)
            return item

    def late_worker(tx: Any) -> None:
        late: Any = LateQueue(tx)
        real_worker(late)

    died: list[str] = []
    monkeypatch.setattr(aiosqlite.core, "_connection_worker_thread", late_worker)
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(repr(args.exc_value)))
    before = set(threading.enumerate())
    path = write_geod_config(
        tmp_path / "geod.toml", db=tmp_path / "nowhere" / "geo.db", url="http://127.0.0.1:9/b"
    )

    code = cli.main(["--config", str(path), "status"])

    for thread in set(threading.enumerate()) - before:
        thread.join(5)
    assert code == 1
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert died == []


# -- once -------------------------------------------------------------------------------------

PUBLIC = {  # stored key -> the normal form geod sends
    "8.8.8.8": "8.8.8.8",
    "1.1.1.1": "1.1.1.1",
    "2606:4700:4700::1111": "2606:4700:4700::1111",
    "::ffff:8.8.4.4": "8.8.4.4",
    " 9.9.9.10 ": "9.9.9.10",
}
NEVER_SENT = [
    "10.0.0.1", "192.168.1.1", "172.16.5.4", "127.0.0.1", "100.64.0.1", "169.254.1.1",
    "224.0.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "64:ff9b::a00:1", "fe80::1%eth0",
    "not-an-ip", "", "999.1.1.1",
]  # fmt: skip
ALREADY_SET = {  # rows the app resolved (or marked '') before: never touched
    "1.0.0.1": ("FR", "France", "AS13335", "Cloudflare", "2024-01-01T00:00:00Z"),
    "8.26.56.26": ("", None, None, None, None),
}


def expected_row(address: str) -> dict[str, str | None]:
    """What geod must write for `address`, from the fake's deterministic answer."""
    answer = FakeIpApi().answer_for(address, parse_fields(FIELDS))
    return {
        "country_code": str(answer["countryCode"]),
        "country_name": country_name(str(answer["countryCode"])),  # geod's one name per code
        "asn": str(answer["as"]).split()[0],
        "org": str(answer["as"]).split(maxsplit=1)[1],  # the AS holder, not ip-api's `org`
    }


def test_once_resolves_rows_and_prints_one_summary(
    tmp_path: Path, app_db: StoreBackend, fake: FakeServer
) -> None:
    """`once` writes the fake's answers, prints one summary line and logs JSON to stderr only,
    in SQLite and in PostgreSQL alike."""
    nulls = [(ip, None, None, None, None, None) for ip in [*PUBLIC, *NEVER_SENT]]
    db = app_db(rows=[*nulls, *((ip, *values) for ip, values in ALREADY_SET.items())],
                insert="INSERT INTO geo_cache VALUES (?, ?, ?, ?, ?, ?)")
    before = read_rows(db)
    path = write_geod_config(tmp_path / "geod.toml", db=db.where, url=fake.batch_url, fmt="auto")

    result = run_geod("--config", str(path), "once")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and SUMMARY.fullmatch(lines[0]), result.stdout
    counts = dict(part.split("=") for part in lines[0].split())
    assert counts["unresolved"] == str(len(PUBLIC) + len(NEVER_SENT))
    assert counts["resolved"] == counts["retried"] == str(len(PUBLIC))
    assert counts["unresolvable"] == str(len(NEVER_SENT))
    assert counts["failed"] == "0"
    logged = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert "geo_re_resolve_complete" in [entry["event"] for entry in logged]
    assert "Traceback" not in result.stderr

    rows = read_rows(db)
    for stored, sent in PUBLIC.items():
        row = rows[stored]
        assert {k: row[k] for k in ("country_code", "country_name", "asn", "org")} == (
            expected_row(sent)
        )
        assert re.fullmatch(r"[A-Z]{2}", row["country_code"])
        assert re.fullmatch(r"AS\d+", row["asn"])
        assert TIMESTAMP.match(row["cached_at"]), row
    for ip in [*NEVER_SENT, *ALREADY_SET]:
        assert rows[ip] == before[ip]
    assert sorted(fake.sent_ips()) == sorted(PUBLIC.values())


def test_once_with_nothing_to_do(tmp_path: Path, app_db: StoreBackend, fake: FakeServer) -> None:
    """`once` on a table without NULL rows or gaps sends nothing and prints a zero summary."""
    db = app_db(rows=[("8.8.8.8", "US", "United States", "AS15169", "Google LLC"),
                      ("1.1.1.1", "", None, None, None)],
                insert="INSERT INTO geo_cache (ip, country_code, country_name, asn, org) "
                       "VALUES (?, ?, ?, ?, ?)")
    path = write_geod_config(tmp_path / "geod.toml", db=db.where, url=fake.batch_url)
    result = run_geod("--config", str(path), "once")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unresolved=0 retried=0 resolved=0 ")
    assert [json.loads(x)["event"] for x in result.stderr.splitlines()] == [
        "geo_re_resolve_skip", "shutdown",
    ]  # fmt: skip
    assert fake.requests() == []


# -- status -----------------------------------------------------------------------------------


@pytest.fixture
def status_db(tmp_path: Path, app_db: StoreBackend) -> Path:
    """A config for a table in each store in turn (`app_db`); status is the same for both."""
    rows = [
        ("8.8.8.8", "US"), ("8.8.4.4", "US"), ("1.1.1.1", "DE"), ("9.9.9.9", ""),
        ("2.2.2.2", None), ("10.0.0.1", None), ("junk", None), (None, None),
    ]  # fmt: skip
    # No PRIMARY KEY: PostgreSQL would refuse the NULL ip (SQLite's keys may be NULL).
    db = app_db(rows=rows, schema="CREATE TABLE geo_cache (ip TEXT, country_code TEXT, "
                "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
    return write_geod_config(tmp_path / "geod.toml", db=db.where, url="http://127.0.0.1:9/batch")


def test_status_json(status_db: Path, capsys: Capsys) -> None:
    """`status --json` prints one JSON object with rows, unresolved, unresolvable, top_countries."""
    assert cli.main(["--config", str(status_db), "status", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    assert json.loads(out) == {
        "rows": 8,
        "unresolved": 4,
        "unresolvable": 3,  # the private, the invalid and the NULL address
        "top_countries": [["US", 2], ["DE", 1]],
    }
    assert err == ""


def test_status_text(status_db: Path, app_db: StoreBackend) -> None:
    """`status` prints the same counts for people, naming the database and table."""
    result = run_geod("--config", str(status_db), "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{app_db.where} (table geo_cache)" in out
    assert re.search(r"^rows\s+8$", out, re.M), out
    assert re.search(r"^unresolved\s+4$", out, re.M), out
    assert re.search(r"^unresolvable\s+3\b", out, re.M), out
    assert re.search(r"^top countries\s+US 2, DE 1$", out, re.M), out
    assert result.stderr == ""


def test_check_config_for_reload_leaves_the_key_file_unread(tmp_path: Path) -> None:
    """Defect 5: `check-config --quiet --no-key-file` (the unit's ExecReload=) validates the
    config without the credential only the main process can read; a bad config still fails."""
    db = tmp_path / "geo.db"
    sqlite3.connect(db).close()
    path = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    path.write_text(path.read_text().replace(
        "[ipapi]\n", '[ipapi]\nkey_file = "$CREDENTIALS_DIRECTORY/ipapi-key"\n'))
    assert run_geod("--config", str(path), "check-config", "--quiet").returncode == 78
    quiet = run_geod("--config", str(path), "check-config", "--quiet", "--no-key-file")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    path.write_text(path.read_text() + "[daemon]\n")  # a second [daemon] table: invalid TOML
    bad = run_geod("--config", str(path), "check-config", "--quiet", "--no-key-file")
    assert bad.returncode == 78 and bad.stderr.startswith(f"geod: {path}: invalid TOML"), bad.stderr


def test_check_config_for_reload_leaves_the_postgresql_password_unread(tmp_path: Path) -> None:
    """The README's PostgreSQL unit (password_file from LoadCredential=): `systemctl reload`
    runs `check-config --no-key-file` without $CREDENTIALS_DIRECTORY (systemd 252 gives
    ExecReload= no credentials in the sandbox), so it must neither read the password nor log
    in with it; before, every reload of such a unit failed with exit 78."""
    path = tmp_path / "geod.toml"
    path.write_text('[database]\nurl = "postgresql://geod@127.0.0.1:9/app"\n'
                    'password_file = "$CREDENTIALS_DIRECTORY/pg-password"\n')
    strict = run_geod("--config", str(path), "check-config", "--quiet")
    assert strict.returncode == 78 and "password_file" in strict.stderr, strict.stderr
    quiet = run_geod("--config", str(path), "check-config", "--quiet", "--no-key-file")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    loud = run_geod("--config", str(path), "check-config", "--no-key-file")
    assert loud.returncode == 0
    assert "PostgreSQL login was not checked" in loud.stderr, loud.stderr
