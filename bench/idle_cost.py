"""Idle cost of `geod run`: CPU, memory and wake-ups while it sleeps between passes; start-up time.

Starts the fake ip-api server and `geod run` (interval one hour) on a small table, waits for the
first pass to end, then reads /proc/PID/stat (CPU), /proc/PID/status (RSS) and the context
switches of every thread over `--seconds` of sleeping. A busy-polling loop shows up as CPU and
as wake-ups per second. Start-up is measured to READY=1 on a NOTIFY_SOCKET datagram socket when
geod sends one (sd_notify), otherwise to its first log line; the report says which.

    python -m bench.idle_cost --json bench/out/idle_cost.json            # as systemd runs it
    python -m bench.idle_cost --watchdog-sec 0                           # the bare daemon
    python -m bench.idle_cost --metrics                                  # + /metrics

By default geod runs as the shipped unit would have it: WATCHDOG_USEC for WatchdogSec=30 (a
WATCHDOG=1 ping every 15 s, when the code has sd_notify) and, with --metrics, a Prometheus
endpoint on a loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.proc import REPO, _base_env, start_fake_ipapi, write_geod_config

TICK = os.sysconf("SC_CLK_TCK")
PUBLIC = ["8.8.8.8", "1.1.1.1", "8.8.4.4", "9.9.9.9", "2606:4700:4700::1111"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    # Fields after the ")" that closes the command name; utime and stime are the 14th and 15th.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / TICK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def switches(pid: int) -> int:
    """Context switches of every thread so far: each is (at most) one wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


class Watch:
    """Reads geod's JSON log lines and NOTIFY_SOCKET datagrams, noting when things happen."""

    def __init__(self, proc: subprocess.Popen[str], notify: socket.socket, t0: float) -> None:
        self.t0 = t0
        self.first_line: float | None = None
        self.first_pass: float | None = None
        self.ready: float | None = None
        self.watchdog_pings = 0
        self.events: list[str] = []
        self.done = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_log, args=(proc,), daemon=True),
            threading.Thread(target=self._read_notify, args=(notify,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_log(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - self.t0
            if self.first_line is None:
                self.first_line = now
            try:
                event = str(json.loads(line).get("event"))
            except (ValueError, AttributeError):
                event = "?"
            self.events.append(event)
            if event in ("geo_re_resolve_complete", "geo_re_resolve_skip"):
                if self.first_pass is None:
                    self.first_pass = now
                self.done.set()

    def _read_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            lines = data.split(b"\n")
            if b"READY=1" in lines and self.ready is None:
                self.ready = time.monotonic() - self.t0
            self.watchdog_pings += b"WATCHDOG=1" in lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(seconds: float, root: Path, watchdog_sec: float, metrics: bool) -> dict[str, Any]:
    db = root / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [(ip,) for ip in PUBLIC])
    conn.close()
    notify_path = root / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    with start_fake_ipapi(root) as fake:
        listen = f"127.0.0.1:{free_port()}" if metrics else ""
        # An unknown [metrics] table would be a config error in code without metrics.
        extra = f'[metrics]\nlisten = "{listen}"\n' if metrics else ""
        config = write_geod_config(root / "geod.toml", db=db, url=fake.batch_url, interval=3600,
                                   extra=extra)
        env = {"NOTIFY_SOCKET": str(notify_path)}
        if watchdog_sec > 0:
            env["WATCHDOG_USEC"] = str(int(watchdog_sec * 1_000_000))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "geod", "--config", str(config), "run"],
            cwd=REPO, env=_base_env(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            watch = Watch(proc, notify, t0)
            if not watch.done.wait(30):
                raise RuntimeError(f"no first pass within 30 s: {watch.events}")
            time.sleep(1.0)  # let the first pass's last log line and the READY datagram land
            cpu0, sw0, w0 = cpu_seconds(proc.pid), switches(proc.pid), time.monotonic()
            lines0, pings0 = len(watch.events), watch.watchdog_pings
            time.sleep(seconds)
            cpu1, sw1, w1 = cpu_seconds(proc.pid), switches(proc.pid), time.monotonic()
            rss, hwm = status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")
            threads = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
            lines1, pings1 = len(watch.events), watch.watchdog_pings
            stop0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
            stop_s = time.monotonic() - stop0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
    wall = w1 - w0
    ready_source = "READY=1 (sd_notify)" if watch.ready is not None else "first log line"
    return {
        "watchdog_sec": watchdog_sec,
        "metrics": listen or "off",
        "idle_seconds": round(wall, 1),
        "idle_cpu_s": round(cpu1 - cpu0, 3),
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 4),
        "wakeups_per_s": round((sw1 - sw0) / wall, 2),
        "rss_mib": round(rss / 1024, 1),
        "peak_rss_mib": round(hwm / 1024, 1),
        "threads": threads,
        "log_lines_while_idle": lines1 - lines0,
        "watchdog_pings_while_idle": pings1 - pings0,
        "startup_cpu_s": round(cpu0, 2),  # start-up and the first pass
        "start_to_ready_s": round(watch.ready if watch.ready is not None
                                  else watch.first_line or 0.0, 3),
        "ready_measured_by": ready_source,
        "start_to_first_log_line_s": round(watch.first_line or 0.0, 3),
        "start_to_first_pass_done_s": round(watch.first_pass or 0.0, 3),
        "sigterm_to_exit_s": round(stop_s, 3),
        "exit_code": code,
        "cpu_tick_s": 1 / TICK,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured")
    parser.add_argument("--watchdog-sec", type=float, default=30.0,
                        help="WatchdogSec= to pretend (0 = no watchdog); the unit ships 30")
    parser.add_argument("--metrics", action="store_true", help="serve /metrics meanwhile")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="geod-idle-") as tmp:
        result = measure(args.seconds, Path(tmp), args.watchdog_sec, args.metrics)
    for key, value in result.items():
        print(f"{key:28} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
