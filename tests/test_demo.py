"""`geod demo` (the README's offline main job) and the example configs under examples/."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from geod.cli import main
from geod.config import load_config
from geod.demo import ROWS
from tests.conftest import read_rows
from tests.mmdb_files import geolite2_country, write_mmdb

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_demo_resolves_public_rows_offline_and_shows_both_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Public IPv4/IPv6 rows get RIR countries; private, invalid and app rows stay as they were."""
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "before the pass:" in out and "after the pass:" in out
    assert "resolved_by=rir:12" in out and "unresolvable=6" in out and "missed=1" in out
    rows = read_rows(tmp_path / "demo.db")
    assert len(rows) == len(ROWS)
    assert rows["8.8.8.8"]["country_code"] == "US" and rows["8.8.8.8"]["source"] == "rir"
    assert rows["2001:200::1"]["country_name"] == "Japan"
    assert rows[" 80.0.0.1 "]["country_code"] == "GB"  # stored with spaces, written back as is
    for untouched in ("10.0.0.5", "fd12:3456::1", "not-an-ip", "2d00::1"):
        assert rows[untouched]["country_code"] is None
    assert rows["46.4.0.1"]["source"] is None  # the app's own row: left alone
    assert rows["100.64.1.1"]["country_code"] == ""


def test_demo_starts_from_a_fresh_table_each_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Running it again shows the same holes being filled, not an already-resolved table."""
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split("\n")[:24] == first.split("\n")[:24]
    assert load_config(tmp_path / "demo.toml").resolve.providers == ("rir",)


@pytest.mark.slow
def test_demo_as_a_command(tmp_path: Path) -> None:
    """`python -m geod demo` in a fresh process: exit 0, the tables on stdout, no log noise."""
    result = subprocess.run([sys.executable, "-m", "geod", "demo", "--dir", "demo"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "United States" in result.stdout and result.stderr == ""


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_examples_are_valid_configs(example: Path) -> None:
    """Every example config loads as it is."""
    assert load_config(example).resolve.providers


def test_examples_cover_the_common_setups() -> None:
    """ip-api only, offline only, offline then ip-api, next to an app's table."""
    chains = {path.stem: load_config(path).resolve.providers for path in EXAMPLES}
    assert chains["ipapi-only"] == ("ip-api",)
    assert "ip-api" not in chains["offline-only"]
    assert chains["offline-then-ipapi"][-1] == "ip-api"
    assert load_config(ROOT / "examples/next-to-app.toml").database.create is False


def test_next_to_app_example_writes_the_apps_columns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The next-to-an-app example, pointed at a copy of such a table, fills its columns."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE ip_geo (addr TEXT PRIMARY KEY, cc TEXT, country TEXT, "
                     "isp TEXT, looked_up TEXT, geo_source TEXT)")
        conn.execute("INSERT INTO ip_geo (addr) VALUES ('8.8.8.8'), ('10.0.0.1')")
    conn.close()
    mmdb = write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "United States")})
    text = (ROOT / "examples/next-to-app.toml").read_text()
    text = text.replace("/srv/dashboard/data/app.db", str(db))
    text = text.replace("/var/lib/GeoIP/GeoLite2-Country.mmdb", str(mmdb))
    text = text.replace('providers = ["mmdb", "ip-api"]', 'providers = ["mmdb"]')
    config = tmp_path / "geod.toml"
    config.write_text(text)
    assert main(["once", "--config", str(config)]) == 0
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT addr, cc, country, substr(geo_source, 1, 4) FROM ip_geo "
                            "ORDER BY addr")
        assert rows.fetchall() == [("10.0.0.1", None, None, None),
                                   ("8.8.8.8", "US", "United States", "mmdb")]
    finally:
        conn.close()
