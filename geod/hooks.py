"""What the daemon tells the outside world about itself: one no-op base class of hooks.

`Daemon` calls these at a few safe points of its lifecycle; `geod run` passes an object that
turns them into sd_notify messages and Prometheus metrics (`service`). Hooks run on the event
loop between awaits, so they must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp

from geod.config import Config
from geod.records import Lookup, PassSummary


class Hooks:
    """Every hook does nothing; subclasses override the ones they care about."""

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """aiohttp tracing for the daemon's HTTP session (metrics count requests by status)."""
        return []

    def started(self, config: Config) -> None:
        """The config is loaded and the database opened: the daemon is ready."""

    def reloading(self) -> None:
        """A reload (SIGHUP) begins at a safe point between passes."""

    def reloaded(self, config: Config) -> None:
        """The reload is over; `config` is the one in force (the old one if the new was bad)."""

    def waiting(self, seconds: float) -> None:
        """The daemon sleeps `seconds` (or until woken) before the next pass."""

    def pass_progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        """A pass began (`done` 0, no look-ups) or one batch came back: `done` of `total` rows."""

    def rate_limit_wait(self, seconds: float) -> None:
        """The pass waits `seconds` for the ip-api rate-limit window to reset."""

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        """A pass ended: its summary, or None and the error that ended it."""

    def stopping(self) -> None:
        """The daemon is shutting down."""


class Fanout(Hooks):
    """Calls every hook of each of `hooks`, in order."""

    def __init__(self, *hooks: Hooks) -> None:
        self.hooks = hooks

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        return [trace for hook in self.hooks for trace in hook.trace_configs()]

    def started(self, config: Config) -> None:
        for hook in self.hooks:
            hook.started(config)

    def reloading(self) -> None:
        for hook in self.hooks:
            hook.reloading()

    def reloaded(self, config: Config) -> None:
        for hook in self.hooks:
            hook.reloaded(config)

    def waiting(self, seconds: float) -> None:
        for hook in self.hooks:
            hook.waiting(seconds)

    def pass_progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        for hook in self.hooks:
            hook.pass_progress(lookups, done, total)

    def rate_limit_wait(self, seconds: float) -> None:
        for hook in self.hooks:
            hook.rate_limit_wait(seconds)

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        for hook in self.hooks:
            hook.pass_done(summary, error)

    def stopping(self) -> None:
        for hook in self.hooks:
            hook.stopping()


class OnPassDone(Hooks):
    """Calls `callback` with the summary of every pass that ended normally."""

    def __init__(self, callback: Callable[[PassSummary], None]) -> None:
        self.callback = callback

    def pass_done(self, summary: PassSummary | None, error: str = "") -> None:
        if summary is not None:
            self.callback(summary)


class OnReloaded(Hooks):
    """Calls `callback` with the config in force after every reload (`geod run` re-logs)."""

    def __init__(self, callback: Callable[[Config], None]) -> None:
        self.callback = callback

    def reloaded(self, config: Config) -> None:
        self.callback(config)
