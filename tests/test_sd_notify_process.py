"""A real `geod run` talking sd_notify to a real AF_UNIX datagram socket, as systemd would see it.

One daemon runs the whole scenario once (start, a pass paced by a 3 s rate-limit window, SIGHUP,
SIGTERM) and each test checks one promise against what the socket received. Wall-clock tests:
each wait is bounded.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.proc import GeodProcess, closed_port_url, run_geod, start_fake_ipapi, write_geod_config
from tests.sd_helpers import Message, notify_listener

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 400_000  # pings every 0.2 s
WINDOW_S = 3  # the fake ip-api's rate-limit window: one request, then a 3 s wait


@dataclass
class Transcript:
    messages: list[Message]
    reload_sent_at_usec: int  # CLOCK_MONOTONIC when the test sent SIGHUP
    exit_code: int

    def index(self, key: str, value: str | None = None, after: int = 0) -> int:
        for i in range(after, len(self.messages)):
            if self.messages[i].has(key, value):
                return i
        raise AssertionError(f"no {key}={value} after #{after}: {self.statuses()}")

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.messages if "STATUS" in m.fields]


def _status_starts(prefix: str) -> object:
    return lambda m: m.fields.get("STATUS", "").startswith(prefix)


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transcript]:
    """Run the scenario once: start, one paced pass, SIGHUP and its pass, SIGTERM."""
    tmp = tmp_path_factory.mktemp("sd")
    db = tmp / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [("8.8.8.8",), ("1.1.1.1",)])
    conn.close()
    with start_fake_ipapi(tmp, limit=1, window=WINDOW_S) as fake, notify_listener() as sd:
        config = write_geod_config(tmp / "geod.toml", db=db, url=fake.batch_url, batch_size=1)
        env = {"NOTIFY_SOCKET": sd.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with GeodProcess(config, env=env) as geod:
            first_pass, _ = sd.wait_for(_status_starts("last pass"), timeout=20,
                                        describe=geod.describe)  # type: ignore[arg-type]
            sd.wait_for(lambda m: "next pass" in m.fields.get("STATUS", ""), after=first_pass,
                        describe=geod.describe)
            mark = len(sd.snapshot())
            sent_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            geod.proc.send_signal(signal.SIGHUP)
            ready, _ = sd.wait_for(lambda m: m.has("READY", "1"), after=mark,
                                   describe=geod.describe)
            sd.wait_for(_status_starts("last pass"), after=ready,  # type: ignore[arg-type]
                        describe=geod.describe)
            geod.proc.send_signal(signal.SIGTERM)
            code = geod.wait(15)
            time.sleep(0.1)  # let the listener thread take the last datagram off the socket
            yield Transcript(sd.snapshot(), sent_at, code)


def test_ready_comes_once_started_and_before_any_pass(transcript: Transcript) -> None:
    """READY=1 is sent once the database is open, before the first pass reports anything."""
    ready = transcript.index("READY", "1")
    assert "opened" in transcript.messages[ready].fields["STATUS"]
    first_pass = next(i for i, m in enumerate(transcript.messages)
                      if "pass" in m.fields.get("STATUS", ""))
    assert ready < first_pass


def test_status_tells_progress_wait_and_last_pass(transcript: Transcript) -> None:
    """STATUS= shows the pass's progress, the rate-limit wait, then the last pass and the next."""
    statuses = transcript.statuses()
    assert "pass in progress: 0/2 rows" in statuses
    assert "pass in progress: 1/2 rows" in statuses
    waits = [s for s in statuses if s.startswith("waiting ")]
    assert waits and waits[0].endswith("s for the ip-api rate-limit window (pass 1/2 rows)")
    done = [s for s in statuses if s.startswith("last pass ")]
    assert done[0].endswith(": 2/2 resolved")
    assert any(s.startswith(done[0] + "; next pass ") for s in statuses)


def test_watchdog_keeps_ticking_through_a_rate_limit_wait(transcript: Transcript) -> None:
    """WATCHDOG=1 arrives every WATCHDOG_USEC/2 from the event loop, also while geod waits."""
    wait_at = next(i for i, m in enumerate(transcript.messages)
                   if m.fields.get("STATUS", "").startswith("waiting "))
    end = next(i for i, m in enumerate(transcript.messages)
               if i > wait_at and m.fields.get("STATUS", "").startswith("pass in progress: 2/2"))
    pings = [m.at for m in transcript.messages[wait_at:end] if m.has("WATCHDOG", "1")]
    span = transcript.messages[end].at - transcript.messages[wait_at].at
    assert span >= WINDOW_S - 0.5  # it really waited for the window
    half = WATCHDOG_USEC / 2 / 1e6
    assert len(pings) >= span / half - 3
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < half * 2, gaps  # never a missed beat
    assert min(gaps) > half / 2, gaps  # and not a busy loop


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(transcript: Transcript) -> None:
    """SIGHUP gives RELOADING=1 with MONOTONIC_USEC=, then READY=1 once the config is re-read."""
    reloading = transcript.index("RELOADING", "1")
    fields = transcript.messages[reloading].fields
    usec = int(fields["MONOTONIC_USEC"])
    assert transcript.reload_sent_at_usec <= usec < transcript.reload_sent_at_usec + 5_000_000
    ready = transcript.index("READY", "1", after=reloading)
    assert transcript.messages[ready].fields["STATUS"] == "config reloaded"


def test_sigterm_sends_stopping_and_exits_zero(transcript: Transcript) -> None:
    """SIGTERM gives STOPPING=1 and a clean exit 0."""
    stopping = transcript.index("STOPPING", "1")
    assert stopping > transcript.index("RELOADING", "1")
    assert transcript.exit_code == 0


def test_abstract_socket_gets_ready_after_the_database_exists(tmp_path: Path) -> None:
    """An abstract `@name` NOTIFY_SOCKET works; READY=1 comes only once the table exists."""
    db = tmp_path / "new.db"  # geod creates it (create = true) while opening the database
    with notify_listener(abstract=True) as sd:
        config = write_geod_config(tmp_path / "geod.toml", db=db, url=closed_port_url())
        with GeodProcess(config, env={"NOTIFY_SOCKET": sd.env_value}) as geod:
            sd.wait_for(lambda m: m.has("READY", "1"), describe=geod.describe)
            with sqlite3.connect(db) as conn:  # at READY the database is open and prepared
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            conn.close()
            assert "geo_cache" in tables
            geod.proc.send_signal(signal.SIGTERM)
            assert geod.wait(15) == 0
        sd.wait_for(lambda m: m.has("STOPPING", "1"), timeout=2)
    assert sd.env_value.startswith("@")


def test_no_ready_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    """A database that cannot be opened ends `geod run` with exit 1 and never sends READY=1."""
    db = tmp_path / "missing-dir" / "geo.db"
    with notify_listener() as sd:
        config = write_geod_config(tmp_path / "geod.toml", db=db, url=closed_port_url())
        with GeodProcess(config, env={"NOTIFY_SOCKET": sd.env_value}) as geod:
            assert geod.wait(15) == 1
            assert any("database directory" in line for line in geod.stderr_lines), \
                geod.describe()
        time.sleep(0.1)
        assert not any(m.has("READY") for m in sd.snapshot())



def test_once_and_status_never_notify(tmp_path: Path) -> None:
    """`geod once` and `geod status` send nothing to $NOTIFY_SOCKET: only `run` is a service."""
    db = tmp_path / "geo.db"
    with notify_listener() as sd:
        config = write_geod_config(tmp_path / "geod.toml", db=db, url=closed_port_url())
        env = {"NOTIFY_SOCKET": sd.env_value, "WATCHDOG_USEC": "400000"}
        for command in ("once", "status", "check-config"):
            result = run_geod("--config", str(config), command, env=env)
            assert result.returncode == 0, result.stderr
        time.sleep(0.2)
        assert sd.snapshot() == []
