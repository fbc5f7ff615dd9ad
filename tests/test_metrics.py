"""Prometheus metrics: the collector reading the Status, the /metrics endpoint, a running daemon."""

from __future__ import annotations

import platform
import signal
import socket
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from geod import __version__
from geod.cli import main
from geod.config import Config, IpApiConfig
from geod.ipapi import IpApiProvider
from geod.metrics import Metrics, MetricsServer
from geod.provider import make_session
from geod.ratelimit import RateGovernor
from geod.records import Lookup, Outcome, PassSummary
from geod.status import Status
from tests.conftest import FakeClock, write_config
from tests.proc import GeodProcess, start_fake_ipapi, write_geod_config
from tests.sd_helpers import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def test_metrics_read_the_status() -> None:
    """Pass progress, waits and pass ends in the Status show as counters, gauges and histogram."""
    status = Status(Config())
    metrics = Metrics(lambda: status)
    status.progress((), 0, 120)
    resolved = Lookup("8.8.8.8", Outcome.RESOLVED, source="ip-api")
    failed = Lookup("1.1.1.1", Outcome.FAILED, source="ip-api")
    status.progress([resolved, resolved, failed], 3, 120)
    before = samples(metrics.render()[0].decode())
    assert value(before, "geod_unresolved_rows") == 120
    assert value(before, "geod_last_success_timestamp_seconds") == 0
    assert value(before, "geod_passes_total", result="error") == 0  # present from the start
    assert value(before, "geod_rows_upkept_total", result="changed") == 0
    status.negative_cache_entries = 7
    status.rate_limit_waited_s = 23.5
    status.api_responses.update(["200", "200", "429", "error"])
    status.pass_ended(PassSummary(unresolved=120, resolved=118, filled=4, confirmed=30,
                                  changed=6, superseded=1, duration_s=2.5), "",
                      1_800_000_000.0)
    status.pass_ended(None, "opening database x: unable to open database file", 1.0)
    after = samples(metrics.render()[0].decode())
    assert value(after, "geod_build_info", version=__version__,
                 python=platform.python_version()) == 1
    assert value(after, "geod_unresolved_rows") == 2
    assert value(after, "geod_passes_total", result="success") == 1
    assert value(after, "geod_passes_total", result="error") == 1
    assert value(after, "geod_pass_duration_seconds_count") == 1
    assert value(after, "geod_pass_duration_seconds_sum") == 2.5
    assert value(after, "geod_pass_duration_seconds_bucket", le="5.0") == 1
    assert value(after, "geod_pass_duration_seconds_bucket", le="1.0") == 0
    assert value(after, "geod_pass_duration_seconds_bucket", le="+Inf") == 1
    assert value(after, "geod_lookups_total", provider="ip-api", result="resolved") == 2
    assert value(after, "geod_lookups_total", provider="ip-api", result="failed") == 1
    assert value(after, "geod_rows_resolved_total") == 118
    assert [value(after, "geod_rows_upkept_total", result=r)
            for r in ("filled", "confirmed", "changed", "superseded")] == [4, 30, 6, 1]
    assert value(after, "geod_api_requests_total", status="200") == 2
    assert value(after, "geod_api_requests_total", status="error") == 1
    assert value(after, "geod_api_rate_limited_total") == 1
    assert value(after, "geod_rate_limit_wait_seconds_total") == 23.5
    assert value(after, "geod_negative_cache_entries") == 7
    assert value(after, "geod_last_success_timestamp_seconds") == 1_800_000_000


async def test_endpoint_serves_text_and_openmetrics() -> None:
    """/metrics answers in the text format, or OpenMetrics when the scraper asks for it."""
    metrics = Metrics(lambda: Status(Config()))
    server = MetricsServer(metrics, "127.0.0.1", free_port())
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "geod_passes_total" in samples_names(await response.text())
            headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with session.get(url, headers=headers) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).endswith("# EOF\n")
            async with session.get(f"http://127.0.0.1:{server.port}/") as response:
                assert response.status == 404
    finally:
        await server.stop()


def samples_names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


async def test_api_requests_are_counted_by_status(aiohttp_server: Any) -> None:
    """ip-api counts each request by HTTP status, 429s apart, and no answer as error."""
    statuses = iter([200, 429, 500])

    async def batch(request: web.Request) -> web.Response:
        return web.json_response([], status=next(statuses))

    app = web.Application()
    app.router.add_post("/batch", batch)
    server = await aiohttp_server(app)
    clock = FakeClock()
    responses: Counter[str] = Counter()
    governor = RateGovernor(0, clock, clock.sleep)
    async with make_session() as session:
        ok = str(server.make_url("/batch"))
        for url in (ok, ok, ok, f"http://127.0.0.1:{free_port()}/batch"):
            config = IpApiConfig(url=url, max_attempts=1)
            provider = IpApiProvider(config, session, governor, sleep=clock.sleep,
                                     responses=responses)
            await provider.resolve(["8.8.8.8"])
    status = Status(Config())
    status.api_responses.update(responses)
    parsed = samples(Metrics(lambda: status).render()[0].decode())
    assert value(parsed, "geod_api_requests_total", status="200") == 1
    assert value(parsed, "geod_api_requests_total", status="429") == 1
    assert value(parsed, "geod_api_requests_total", status="500") == 1
    assert value(parsed, "geod_api_requests_total", status="error") == 1
    assert value(parsed, "geod_api_rate_limited_total") == 1


def test_port_in_use_is_a_one_line_startup_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`geod run` with a metrics port already taken exits 1 with one clear line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "geod.toml", f"""
[database]
path = "geo.db"
[metrics]
listen = "127.0.0.1:{port}"
[log]
format = "json"
""")
        assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == f"geod: metrics: cannot listen on 127.0.0.1:{port}: address already in use\n"


@pytest.mark.slow
def test_scraped_values_move_as_passes_run(tmp_path: Path) -> None:
    """Scraping a running `geod run`: the backlog falls and counters rise pass after pass."""
    db = tmp_path / "geo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.executemany("INSERT INTO geo_cache (ip) VALUES (?)",
                         [("8.8.8.8",), ("1.1.1.1",), ("10.0.0.1",)])
    conn.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with start_fake_ipapi(tmp_path, limit=1, window=2) as fake:
        config = write_geod_config(tmp_path / "geod.toml", db=db, url=fake.batch_url,
                                   batch_size=1, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        with GeodProcess(config) as geod:
            first = scrape_until(url, lambda s: passes(s) >= 1, geod.describe)
            assert value(first, "geod_unresolved_rows") == 1  # the private address stays NULL
            assert value(first, "geod_lookups_total", provider="ip-api", result="resolved") == 2
            assert value(first, "geod_api_requests_total", status="200") == 2
            assert value(first, "geod_rate_limit_wait_seconds_total") > 1
            assert value(first, "geod_last_success_timestamp_seconds") > time.time() - 60
            assert value(first, "geod_pass_duration_seconds_count") == 1
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT INTO geo_cache (ip) VALUES ('9.9.9.9')")
            conn.close()
            geod.proc.send_signal(signal.SIGHUP)
            second = scrape_until(url, lambda s: passes(s) >= 2, geod.describe)
            assert value(second, "geod_lookups_total", provider="ip-api", result="resolved") == 3
            assert value(second, "geod_api_requests_total", status="200") == 3
            assert value(second, "geod_pass_duration_seconds_count") == 2
            assert value(second, "geod_unresolved_rows") == 1
            assert value(second, "geod_negative_cache_entries") == 0  # SIGHUP cleared it
            geod.proc.send_signal(signal.SIGTERM)
            assert geod.wait() == 0


def passes(parsed: Samples) -> float:
    return value(parsed, "geod_passes_total", result="success")


def scrape_until(url: str, ready: Callable[[Samples], bool], describe: Callable[[], str],
                 timeout: float = 15) -> Samples:
    """Scrape `url` until `ready(samples)` holds; fail with the daemon's output on timeout."""
    deadline = time.monotonic() + timeout
    last: Samples = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                last = samples(response.read().decode())
            if ready(last):
                return last
        except (OSError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"metrics never got there: {sorted(last.items())[:40]}\n"
                         + describe())
