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
import time
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

    def __init__(
        self, read: Callable[[], Status], wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = r = CollectorRegistry()
        Info("geod_build", "geod and Python versions", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        PidOnlyProcessCollector(registry=r)
        r.register(StatusCollector(read, wall_clock))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class PidOnlyProcessCollector(ProcessCollector):
    """prometheus-client's `process_*` series, working under the unit's ProcSubset=pid.

    ProcessCollector reads the boot time from /proc/stat, which ProcSubset=pid hides, and then
    exports nothing at all. The boot time is also the wall clock less the time since boot
    (CLOCK_BOOTTIME counts suspend, as /proc/stat's btime does), so it is taken from there on
    every host; everything else the collector reads is under /proc/<pid>, which stays visible.
    """

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class StatusCollector(Collector):
    """geod's own metrics, computed from one read of the Status per scrape."""

    def __init__(
        self, read: Callable[[], Status], wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._read = read
        self._wall_clock = wall_clock

    def collect(self) -> Iterable[Metric]:
        status = self._read()
        yield GaugeMetricFamily(
            "geod_unresolved_rows",
            "NULL-country rows: counted when a pass starts, less the rows it resolved",
            value=status.unresolved)
        yield from self._backlog(status)
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
        upkeep = CounterMetricFamily(
            "geod_rows_upkept", "Rows with a country kept up by passes that ended normally: "
            "filled (a NULL name/asn/org set), confirmed or changed (re-resolved), superseded "
            "(rewritten by the app during the look-up, left alone)", labels=["result"])
        for result in ("filled", "confirmed", "changed", "superseded"):
            upkeep.add_metric([result], status.rows_upkept[result])
        yield upkeep
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


    def _backlog(self, status: Status) -> Iterable[Metric]:
        backlog = status.backlog
        yield GaugeMetricFamily(
            "geod_pending_rows",
            "Due rows geod will ask about: address sendable, not backing off (as of the "
            "running or last pass; rows a running pass has not reached count here)",
            value=backlog.pending)
        yield GaugeMetricFamily(
            "geod_backing_off_rows",
            "Due rows whose look-up failed or missed: asked again when their back-off ends",
            value=backlog.backing_off)
        yield GaugeMetricFamily(
            "geod_unresolvable_rows",
            "Due rows geod never sends: NULL, private, reserved or invalid address",
            value=backlog.never)
        yield GaugeMetricFamily(
            "geod_backlog_drain_seconds",
            "Pending rows over the rate providers settled rows at in the running or last pass "
            "(rate-limit waits included): 0 with none pending, NaN before any rate is known",
            value=backlog.drain_seconds())
        if status.config.database.columns.updated_at:  # a timestamp column is mapped
            oldest = backlog.oldest_pending
            age = 0.0 if oldest is None else max(self._wall_clock() - oldest, 0.0)
            yield GaugeMetricFamily(
                "geod_oldest_pending_age_seconds",
                "Age of the oldest pending row, by its timestamp column (0 when none is pending "
                "or none has a readable time)", value=age)


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

