"""Defect 8: an operator's package: version, man pages that cannot drift, shipped files."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from geod import __version__, cli, manpage
from geod.config import load_config
from geod.install import install_files
from tests.proc import REPO, run_geod


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_committed_man_pages_equal_what_the_sources_generate(name: str) -> None:
    """geod(8) and geod.toml(5) are what the parser and the schema generate today
    (after a change: `python -m geod.manpage`)."""
    committed = (manpage.MAN_DIR / name).read_text(encoding="utf-8")
    assert committed == manpage.PAGES[name](), f"regenerate: python -m geod.manpage ({name})"


def test_every_config_key_is_documented() -> None:
    """Every schema key has its one line in config.example.toml, so geod.toml(5) explains it."""
    why = manpage._descriptions()
    missing = [key for key, _, _ in manpage.schema_keys() if not why.get(key)]
    assert missing == []
    page = manpage.geod_toml_5()
    assert all(f"\\fB{key.rpartition('.')[2]}\\fR" in page for key, _, _ in manpage.schema_keys())


def test_every_command_is_in_geod_8() -> None:
    """Each sub-command of the parser appears in geod(8)."""
    page = manpage.geod_8()
    for name in ("run", "once", "explain", "check\\-config", "status", "install\\-files",
                 "demo"):
        assert f"\\fB{name}\\fR" in page, name


def test_version_names_what_geod_runs_on() -> None:
    """`geod --version`: the version, then Python, SQLite, aiohttp and the rir data."""
    result = run_geod("--version")
    first, second = result.stdout.splitlines()
    assert first == f"geod {__version__}"
    assert f"SQLite {sqlite3.sqlite_version}" in second and "aiohttp " in second, second
    assert "rir data iptocc " in second and f"Python {sys.version.split()[0]}" in second


def test_install_files_places_everything_and_keeps_a_config(tmp_path: Path) -> None:
    """install-files puts unit, sysusers, config and man pages in place; a second run keeps
    the operator's config and leaves the new example beside it."""
    out = io.StringIO()
    install_files(tmp_path, out, executable="/srv/venv/bin/geod")
    unit = (tmp_path / "etc/systemd/system/geod.service").read_text()
    assert "ExecStart=/srv/venv/bin/geod run --config /etc/geod/config.toml" in unit
    assert "/opt/geod" not in unit
    for path in ("usr/lib/sysusers.d/geod.conf", "usr/local/share/man/man8/geod.8",
                 "usr/local/share/man/man5/geod.toml.5"):
        assert (tmp_path / path).is_file(), path
    config = tmp_path / "etc/geod/config.toml"
    assert load_config(config).database.path == "/var/lib/geod/geo.db"
    config.write_text("# mine\n")
    install_files(tmp_path, io.StringIO())
    assert config.read_text() == "# mine\n"
    assert (tmp_path / "etc/geod/config.example.toml").is_file()


def test_install_files_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`geod install-files --root DIR` needs no config and lists what it installed."""
    assert cli.main(["install-files", "--root", str(tmp_path)]) == 0
    assert f"installed {tmp_path}/etc/geod/config.toml" in capsys.readouterr().out


@pytest.mark.slow
def test_wheel_carries_unit_sysusers_config_and_man_pages(tmp_path: Path) -> None:
    """The built wheel holds every shipped file (package data), so pip installs them."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(REPO)], check=True, timeout=300)
    [wheel] = tmp_path.glob("geod-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("geod.service", "geod.sysusers", "config.example.toml", "man/geod.8",
                 "man/geod.toml.5"):
        assert f"geod/data/{name}" in names, name
