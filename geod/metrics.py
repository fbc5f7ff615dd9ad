"""Prometheus metrics: a registry fed by the daemon's hooks, served on `/metrics` by aiohttp.

Off unless `[metrics] listen` is set. The server runs on the daemon's own event loop (no thread,
no second HTTP stack), and prometheus-client renders the exposition, so its format is the real
one. The metric names are an interface (dashboards and alerts use them): the README lists them.
"""

from __future__ import annotations

import errno
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from geod import __version__
from geod.errors import GeodError
from geod.hooks import Hooks
from geod.records import Lookup, PassSummary

# A pass is a second with little to do, minutes when the rate limit paces thousands of rows.
PASS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)


class Metrics(Hooks):
    """Every metric geod exports, in a registry of its own, updated from the daemon's hooks."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.registry = r = CollectorRegistry()
        self._wall_clock = wall_clock
        Info("geod_build", "geod and Python versions", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        ProcessCollector(registry=r)
        self.unresolved = Gauge(
            "geod_unresolved_rows",
            "NULL-country rows: counted when a pass starts, less the rows it resolved",
            registry=r,
        )
        self.passes = Counter(
            "geod_passes", "Passes finished, by result (success or error)", ["result"], registry=r
        )
        self.pass_duration = Histogram(
            "geod_pass_duration_seconds", "How long passes took", buckets=PASS_BUCKETS, registry=r
        )
        self.lookups = Counter(
            "geod_lookups", "Addresses looked up, by provider and result", ["provider", "result"],
            registry=r,
        )  # fmt: skip
        self.rows_resolved = Counter(
            "geod_rows_resolved", "Rows written with a country", registry=r
        )
        self.api_requests = Counter(
            "geod_api_requests", "HTTP requests to look-up APIs, by status (error = no answer)",
            ["status"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "geod_api_rate_limited", "HTTP 429 answers (the rate limit was exceeded)", registry=r
        )
        self._waited: Callable[[], float] = lambda: 0.0
        r.register(_ReadCounter(
            "geod_rate_limit_wait_seconds",
            "Seconds spent waiting before requests: for the window to reset, or pacing to "
            "share the quota with other programs",
            lambda: self._waited(),
        ))  # fmt: skip
        self.negative_cache = Gauge(
            "geod_negative_cache_entries", "Addresses in the negative cache (backing off)",
            registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "geod_last_success_timestamp_seconds",
            "Unix time the last pass finished without error (0 = none yet)",
            registry=r,
        )
        for result in ("success", "error"):
            self.passes.labels(result)  # present at 0 from the start, so rate() works at once

    def watch_negative_cache(self, size: Callable[[], int]) -> None:
        """Read the negative cache's size at each scrape."""
        self.negative_cache.set_function(lambda: float(size()))

    def watch_rate_limit_wait(self, waited_s: Callable[[], float]) -> None:
        """Read the governor's running total of seconds waited at each scrape.

        The total, not `rate_limit_wait` hooks: those report only waits for a new window,
        while the short pacing waits of fair sharing are time spent waiting too.
        """
        self._waited = waited_s

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- hooks ------------------------------------------------------------------------------

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        trace = aiohttp.TraceConfig()

        async def on_end(
            session: aiohttp.ClientSession, context: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:  # fmt: skip
            status = params.response.status
            self.api_requests.labels(str(status)).inc()
            if status == 429:
                self.rate_limited.inc()

        async def on_exception(
            session: aiohttp.ClientSession, context: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:  # fmt: skip
            self.api_requests.labels("error").inc()

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_exception)
        return [trace]

    def pass_progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        if done == 0 and not lookups:
            self.unresolved.set(total)
        for lookup in lookups:
            self.lookups.labels(lookup.source or "unknown", lookup.outcome.value).inc()

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        if summary is None:
            self.passes.labels("error").inc()
            return
        self.passes.labels("success").inc()
        self.pass_duration.observe(summary.duration_s)
        self.rows_resolved.inc(summary.resolved)
        self.unresolved.set(max(summary.unresolved - summary.resolved, 0))
        self.last_success.set(self._wall_clock())


class _ReadCounter(Collector):
    """A counter whose value is read from elsewhere at scrape time (a running total)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class MetricsServer:
    """`/metrics` over HTTP on the daemon's loop; `start` fails in one line if it cannot bind."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        # No access log: a scrape every 15 s would drown geod's own events.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            GeodError: the address cannot be bound (in use, not local, permission denied).
        """
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as error:
            await self._runner.cleanup()
            reason = (
                "address already in use" if error.errno == errno.EADDRINUSE
                else (error.strerror or str(error)).lower()
            )  # fmt: skip
            where = f"[{self.host}]" if ":" in self.host else self.host
            raise GeodError(f"metrics: cannot listen on {where}:{self.port}: {reason}") from None

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

