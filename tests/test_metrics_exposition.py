"""The real exposition of a real `geod run` with `[metrics] listen`: what Prometheus will read.

`promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it) lints it; the
test also proves there are no `_created` duplicates and that `process_*` and the backlog gauges
are there. The same scrape under the shipped unit (ProcSubset=pid) is in the systemd e2e.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.proc import GeodProcess
from tests.sd_helpers import free_port
from tests.test_metrics import samples

CONFIG = """\
[database]
path = "geo.db"

[resolve]
providers = ["rir"]

[metrics]
listen = "127.0.0.1:{port}"

[log]
format = "json"
"""


def scrape_after_first_pass(url: str, geod: GeodProcess, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                text: str = response.read().decode()
            if 'geod_passes_total{result="success"} 1.0' in text:
                return text
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("no pass in time\n" + geod.describe())


@pytest.mark.slow
def test_real_exposition_is_clean(tmp_path: Path) -> None:
    db = tmp_path / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip, cached_at) VALUES (?, ?)",
                         [("8.8.8.8", "2026-11-29 09:00:00"), ("10.0.0.1", None), (None, None)])
    conn.close()
    port = free_port()
    config = tmp_path / "geod.toml"
    config.write_text(CONFIG.format(port=port), encoding="utf-8")
    with GeodProcess(config) as geod:
        text = scrape_after_first_pass(f"http://127.0.0.1:{port}/metrics", geod)
    assert "_created" not in text
    parsed = samples(text)
    names = {name for name, _ in parsed}
    assert {"process_start_time_seconds", "process_cpu_seconds_total",
            "process_resident_memory_bytes", "process_open_fds"} <= names
    assert parsed[("geod_pending_rows", ())] == 0
    assert parsed[("geod_backing_off_rows", ())] == 0
    assert parsed[("geod_unresolvable_rows", ())] == 2  # the private address and the NULL ip
    assert parsed[("geod_backlog_drain_seconds", ())] == 0
    assert parsed[("geod_oldest_pending_age_seconds", ())] == 0
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: apt-get install prometheus (.ci/run does)")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30, check=False)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), text
