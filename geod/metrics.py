"""Prometheus metrics: a custom collector that reads the daemon's `Status` at scrape time.

Off unless `[metrics] listen` is set. Nothing is pushed: each scrape reads the one status the
daemon keeps (Prometheus's own pull model), so there are no hooks to keep in step. The server
runs on the daemon's own event loop (no thread, no second HTTP stack), and prometheus-client
renders the exposition, so its format is the real one. The metric names are an interface
(dashboards and alerts use them): the README lists them.
"""

from __future__ import annotations

import errno
import platform
from collections.abc import Callable, Iterable
from itertools import accumulate

from aiohttp import web
from prometheus_client import CollectorRegistry, Info, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from geod import __version__
from geod.errors import GeodError
from geod.status import PASS_BUCKETS, Status


class Metrics:
    """Every metric geod exports, in a registry of its own; `read` gives the current Status."""

    def __init__(self, read: Callable[[], Status]) -> None:
        self.registry = r = CollectorRegistry()
        Info("geod_build", "geod and Python versions", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        ProcessCollector(registry=r)
        r.register(StatusCollector(read))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class StatusCollector(Collector):
    """geod's own metrics, computed from one read of the Status per scrape."""

    def __init__(self, read: Callable[[], Status]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        status = self._read()
        yield GaugeMetricFamily(
            "geod_unresolved_rows",
            "NULL-country rows: counted when a pass starts, less the rows it resolved",
            value=status.unresolved)
        passes = CounterMetricFamily(
            "geod_passes", "Passes finished, by result (success or error)", labels=["result"])
        for result in ("success", "error"):  # present at 0 from the start, so rate() works
            passes.add_metric([result], status.passes[result])
        yield passes
        yield _durations(status)
        lookups = CounterMetricFamily("geod_lookups", "Addresses looked up, by provider and result",
                                      labels=["provider", "result"])
        for (provider, result), count in sorted(status.lookups.items()):
            lookups.add_metric([provider, result], count)
        yield lookups
        yield CounterMetricFamily("geod_rows_resolved", "Rows written with a country",
                                  value=status.rows_resolved)
        requests = CounterMetricFamily(
            "geod_api_requests", "HTTP requests to look-up APIs, by status (error = no answer)",
            labels=["status"])
        for code, count in sorted(status.api_responses.items()):
            requests.add_metric([code], count)
        yield requests
        yield CounterMetricFamily("geod_api_rate_limited",
                                  "HTTP 429 answers (the rate limit was exceeded)",
                                  value=status.api_responses["429"])
        yield CounterMetricFamily(
            "geod_rate_limit_wait_seconds",
            "Seconds spent waiting before requests: for the window to reset, or pacing to "
            "share the quota with other programs", value=status.rate_limit_waited_s)
        yield GaugeMetricFamily("geod_negative_cache_entries",
                                "Addresses in the negative cache (backing off)",
                                value=status.negative_cache_entries)
        yield GaugeMetricFamily("geod_last_success_timestamp_seconds",
                                "Unix time the last pass finished without error (0 = none yet)",
                                value=status.last_success_at)


def _durations(status: Status) -> HistogramMetricFamily:
    bounds = [str(float(le)) for le in PASS_BUCKETS] + ["+Inf"]  # "5.0", as Histogram does
    return HistogramMetricFamily(
        "geod_pass_duration_seconds", "How long passes took",
        buckets=list(zip(bounds, accumulate(status.durations), strict=True)),
        sum_value=status.duration_sum)


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

