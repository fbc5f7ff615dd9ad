"""`geod run` as a service: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and metrics.

Only `geod run` comes here; `once`, `status` and `check-config` neither notify systemd nor serve
metrics. The STATUS= lines that `systemctl status` shows are built by pure functions, so their
wording is tested without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import structlog

from geod.config import Config
from geod.daemon import Daemon
from geod.hooks import Fanout, Hooks, OnReloaded
from geod.hostport import split_host_port
from geod.metrics import Metrics, MetricsServer
from geod.notify import Notifier, watchdog_interval, watchdog_loop
from geod.records import Lookup, PassSummary

log = structlog.get_logger("geod.service")


def progress_line(done: int, total: int) -> str:
    return f"pass in progress: {done:,}/{total:,} rows"


def wait_line(seconds: float, done: int, total: int) -> str:
    return (
        f"waiting {max(round(seconds), 1)} s for the ip-api rate-limit window "
        f"(pass {done:,}/{total:,} rows)"
    )


def pass_line(summary: PassSummary | None, error: str, at: datetime) -> str:
    """What the last pass did, e.g. "last pass 12:00:05: 118/120 resolved"."""
    when = f"last pass {at:%H:%M:%S}"
    if summary is None:
        return f"{when} failed: {error}"
    if summary.unresolved == 0:
        return f"{when}: nothing to resolve"
    failed = f", {summary.failed:,} failed" if summary.failed else ""
    return f"{when}: {summary.resolved:,}/{summary.unresolved:,} resolved{failed}"


def next_line(last: str, seconds: float, now: datetime) -> str:
    """The idle STATUS: the last pass (if any) and when the next one starts."""
    at = now + timedelta(seconds=seconds)
    nxt = f"next pass {at:%H:%M:%S} (in {round(seconds):,} s)"
    return f"{last}; {nxt}" if last else f"first pass {at:%H:%M:%S} (in {round(seconds):,} s)"


class SystemdHooks(Hooks):
    """Turns the daemon's hooks into sd_notify messages and one-line STATUS= texts."""

    def __init__(
        self, notifier: Notifier, now: Callable[[], datetime] = lambda: datetime.now().astimezone()
    ) -> None:
        self.notifier = notifier
        self._now = now
        self._config: Config | None = None
        self._last = ""
        self._done = self._total = 0

    def started(self, config: Config) -> None:
        self._config = config
        self.notifier.ready(f"ready: database {config.database.path} opened")

    def reloading(self) -> None:
        self.notifier.reloading("reloading the config")

    def reloaded(self, config: Config) -> None:
        old, self._config = self._config, config
        if old is not None and old.metrics.listen != config.metrics.listen:
            log.warning("restart_required", key="metrics.listen", reason="bound at start")
        self.notifier.ready("config reloaded")

    def waiting(self, seconds: float) -> None:
        self.notifier.status(next_line(self._last, seconds, self._now()))

    def pass_progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        self._done, self._total = done, total
        self.notifier.status(progress_line(done, total))

    def rate_limit_wait(self, seconds: float) -> None:
        self.notifier.status(wait_line(seconds, self._done, self._total))

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        self._last = pass_line(summary, error, self._now())
        self.notifier.status(self._last)

    def stopping(self) -> None:
        self.notifier.stopping("stopping")


async def run(
    config: Config,
    *,
    on_reload: Callable[[Config], None] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Run the daemon with its service duties until SIGTERM/SIGINT.

    Raises:
        GeodError: the metrics address cannot be bound, or the daemon cannot start.
    """
    notifier = Notifier.from_environ(environ)
    hooks: list[Hooks] = [SystemdHooks(notifier)]
    metrics: Metrics | None = None
    server: MetricsServer | None = None
    watchdog: asyncio.Task[None] | None = None
    try:
        if config.metrics.listen:
            metrics = Metrics()
            candidate = MetricsServer(metrics, *split_host_port(config.metrics.listen))
            await candidate.start()
            server = candidate
            log.info("metrics_listening", listen=config.metrics.listen)
            hooks.append(metrics)
        interval = watchdog_interval(environ, os.getpid())
        if interval is not None and notifier.enabled:
            watchdog = asyncio.create_task(watchdog_loop(notifier, interval))
        if on_reload is not None:
            hooks.append(OnReloaded(on_reload))
        daemon = Daemon(config, hooks=Fanout(*hooks))
        if metrics is not None:
            metrics.watch_negative_cache(lambda: len(daemon.negcache))
            metrics.watch_rate_limit_wait(lambda: daemon.governor.waited_s)
        await daemon.run()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if server is not None:
            await server.stop()
        notifier.close()
