"""`geod run` under systemd: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and metrics.

Only `geod run` comes here; `once`, `status` and `check-config` neither notify systemd nor serve
metrics. The STATUS= lines that `systemctl status` shows are built by pure functions, so their
wording is tested without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog

from geod.config import Config
from geod.daemon import Daemon
from geod.hostport import split_host_port
from geod.metrics import Metrics, MetricsServer
from geod.notify import Notifier, watchdog_interval, watchdog_loop
from geod.records import PassSummary
from geod.status import Phase, Status

log = structlog.get_logger("geod.systemd")


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


class SystemdStatus:
    """The daemon's one `on_change` observer in `geod run`: sd_notify messages from its Status."""

    def __init__(
        self,
        notifier: Notifier,
        now: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        on_reload: Callable[[Config], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self._now = now
        self._on_reload = on_reload
        self._last = ""

    def __call__(self, status: Status) -> None:
        phase, notifier = status.phase, self.notifier
        if phase is Phase.READY and status.previous is Phase.RELOADING:
            notifier.ready("config reloaded")
            if self._on_reload is not None:
                self._on_reload(status.config)
        elif phase is Phase.READY:
            notifier.ready(f"ready: database {status.config.database.path} opened")
        elif phase is Phase.PASSING:
            notifier.status(progress_line(status.done, status.total))
        elif phase is Phase.RATE_LIMITED:
            notifier.status(wait_line(status.wait_s, status.done, status.total))
        elif phase is Phase.PASSED:
            self._last = pass_line(status.last, status.last_error, self._now())
            notifier.status(self._last)
        elif phase is Phase.IDLE:
            notifier.status(next_line(self._last, status.wait_s, self._now()))
        elif phase is Phase.RELOADING:
            notifier.reloading("reloading the config")
        elif phase is Phase.STOPPING:
            notifier.stopping("stopping")


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
    server: MetricsServer | None = None
    watchdog: asyncio.Task[None] | None = None
    try:
        daemon = Daemon(config, on_change=SystemdStatus(notifier, on_reload=on_reload))
        if config.metrics.listen:
            candidate = MetricsServer(Metrics(daemon.snapshot),
                                      *split_host_port(config.metrics.listen))
            await candidate.start()
            server = candidate
            log.info("metrics_listening", listen=config.metrics.listen)
        interval = watchdog_interval(environ, os.getpid())
        if interval is not None and notifier.enabled:
            watchdog = asyncio.create_task(watchdog_loop(notifier, interval))
        await daemon.run()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if server is not None:
            await server.stop()
        notifier.close()
