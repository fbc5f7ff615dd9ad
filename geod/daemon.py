"""The daemon's lifecycle: start -> loop of passes -> stop, owned by one class.

Signal handlers only record intent (events); the loop acts on it at safe points. A stop cancels
the running pass, which lands in an HTTP call or a wait; the write of results already received
is shielded in `resolve`. Every wait here is "timeout or woken", never a polling tick.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict

import aiohttp
import structlog

from geod.chain import Chain
from geod.config import Config, load_config
from geod.errors import ConfigError, GeodError
from geod.instance import InstanceLock
from geod.negcache import NegativeCache
from geod.preflight import probe_write, startup_checks
from geod.provider import Resources, make_session
from geod.ratelimit import RateGovernor
from geod.records import Lookup, PassSummary
from geod.resolve import Pass, utc_now
from geod.state import StateFile, state_path
from geod.status import Phase, Status
from geod.store import StoreBusy, open_store
from geod.upkeep import Cursor, OneWindow, for_pass

log = structlog.get_logger("geod.daemon")

Clock = Callable[[], float]
# A reload interrupts a pass waiting for the next window only when that wait has at least this
# long to go, and at most once per this long: short waits end soon anyway, and a burst of HUPs
# must not turn into a burst of reloads.
RELOAD_INTERRUPT_S = 10.0
Sleep = Callable[[float], Awaitable[None]]


class Daemon:
    """Runs passes every `interval`; SIGHUP reloads and passes now; SIGTERM/SIGINT stop."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        handle_signals: bool = True,
        on_change: Callable[[Status], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.config = config
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.passes = 0
        self._clock: Clock = clock or asyncio.get_running_loop().time
        self._sleep = sleep
        self._handle_signals = handle_signals
        self.status = Status(config)
        self._on_change = on_change  # sd_notify in `geod run`; nothing elsewhere
        self._wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._pass_task: asyncio.Task[PassSummary] | None = None
        self._running: Pass | None = None  # the pass under way: scrapes read its backlog
        self._interrupted_for_reload = False
        self._last_interrupt = -math.inf
        self._session: aiohttp.ClientSession | None = None
        self._pass_ids = itertools.count(1)
        neg = config.negative_cache
        self.negcache = NegativeCache(neg.ttl, neg.max_ttl, self._clock)
        # Upkeep's own back-off and position: a row with a country never blocks a NULL row.
        self.upkeep_negcache = NegativeCache(neg.ttl, neg.max_ttl, self._clock)
        self.upkeep_cursor = Cursor()
        # One governor for the life of the process: the rate-limit window outlives a reload.
        self.governor = RateGovernor(config.ipapi.reserve, self._clock, sleep,
                                     share=config.ipapi.share == "auto",
                                     on_wait=self._rate_limit_wait)
        self.chain: Chain | None = None  # opened in startup()
        self._resources: Resources | None = None
        # Fixed for the life of the process (a reload does not move it).
        path = state_path(config.daemon.state_file, environ)
        self._state_loaded = False
        self.state = (StateFile(path, self.governor, self.negcache, self._clock, wall_clock,
                                upkeep_negcache=self.upkeep_negcache)
                      if path is not None else None)
        self._clear_shared_attempts = False
        self._instance: InstanceLock | None = None  # held from startup() to shutdown()

    # -- intent: called from signal handlers or tests; they never act directly ---------------

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()
        if self._pass_task is not None and not self._pass_task.done():
            self._pass_task.cancel()

    def request_reload(self) -> None:
        self.reload_requested.set()
        self._wake.set()
        # A pass waiting for the next window is interrupted like a stop (what it wrote is kept)
        # so the reload happens now; the new pass waits again, for the same remembered window.
        until, now = self.governor.waiting_until, self._clock()
        if (until is not None and until - now >= RELOAD_INTERRUPT_S
                and now - self._last_interrupt >= RELOAD_INTERRUPT_S
                and self._pass_task is not None and not self._pass_task.done()):
            self._interrupted_for_reload = True
            self._last_interrupt = now
            self._pass_task.cancel()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """`geod run`: start, loop until stopped, stop. Returns normally on SIGTERM/SIGINT."""
        await self.startup()
        if self.stop_requested.is_set():  # stopped while start-up waited for the database
            await self.shutdown()
            return
        self._enter(Phase.READY)
        if self.state is None:  # (`geod once` by hand is expected to run without one)
            log.warning("state_not_kept", reason="no [daemon] state_file and no $STATE_DIRECTORY",
                        consequence="a restart forgets back-offs and the rate-limit window")
        try:
            log.info("geo_re_resolve_scheduled", interval_seconds=self.config.daemon.interval,
                     initial_delay_seconds=self.config.daemon.initial_delay)
            await self._wait(self.config.daemon.initial_delay)
            while not self.stop_requested.is_set():
                if self.reload_requested.is_set():
                    self._reload()
                await self.run_pass()
                await self._wait(self.config.daemon.interval)
        finally:
            await self.shutdown()

    async def run_once(self) -> PassSummary | None:
        """`geod once`: the same pass as `run`, exactly once. None if stopped before it ended."""
        await self.startup()
        try:
            return None if self.stop_requested.is_set() else await self.run_pass()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Set up signals, check the database can be opened (fail fast), then set up HTTP.

        The handlers come first: opening can wait up to busy_timeout for the app's lock, and a
        SIGHUP meanwhile must not kill geod (it is remembered: one pass after start), nor a
        SIGTERM exit 143 (start-up ends early and `run` returns, exit 0).

        Raises:
            ConfigError / StoreError: the database or table is not usable.
            PermissionProblem: geod's user may not write the database, its directory or the
                -wal/-shm/-journal files beside it.
        """
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
        try:
            if not self.config.database.url:  # the file-system checks are SQLite's
                await startup_checks(self.config.database)  # PermissionProblem: exit 77, fix
            if not await self._check_database():
                return  # stopped meanwhile
            if not self.config.database.url and not await asyncio.to_thread(
                    probe_write, self.config.database.path):
                # The app is writing: the database is writable, if not yet proven so for geod.
                log.warning("write_check_skipped",
                            reason="the database is locked by another writer")
            if not self.config.database.url:  # PostgreSQL: a fleet shares the rows by leases
                # One geod per SQLite file: a second would ask about every address again.
                self._instance = InstanceLock(self.config.database.path)
                self._instance.acquire()  # AlreadyRunning: exit 75, naming the holder's pid
            if self.state is not None:
                self.state.load()
                self._state_loaded = True
            self._session = make_session(source_address=self.config.ipapi.source_address)
            self._resources = Resources(self._session, self.governor, self._clock, self._sleep,
                                        self.status.api_responses)
            self.chain = Chain.open(self.config, self._resources)  # ConfigError: bad file
        except BaseException:
            if self._session is not None:
                await self._session.close()
                self._session = None
            self._remove_signal_handlers()
            self._release_instance()
            raise

    async def shutdown(self) -> None:
        self._enter(Phase.STOPPING)
        self._save_state()
        if self.chain is not None:
            self.chain.close()
        self._remove_signal_handlers()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._release_instance()
        log.info("shutdown", passes=self.passes)

    async def run_pass(self) -> PassSummary | None:
        """Run one pass as a task a stop can cancel. Errors are logged, never raised."""
        structlog.contextvars.bind_contextvars(pass_id=next(self._pass_ids))
        self.status.enter(Phase.PASSING)  # told once the pass has counted its rows
        self._pass_task = asyncio.create_task(self._pass())
        try:
            summary = await self._pass_task
        except asyncio.CancelledError:
            if self.stop_requested.is_set():
                reason = "stop"
            elif self._interrupted_for_reload:
                reason = "reload"
            else:
                raise  # cancelled from outside, not by our own stop: let it propagate
            log.info("geo_re_resolve_interrupted", reason=reason)
            return None
        except Exception as error:  # noqa: BLE001 - nothing in a pass may stop the daemon
            if isinstance(error, StoreBusy):  # the app held its lock too long while we read
                log.warning("database_locked", action="retry_next_pass")
            else:
                log.error("geo_re_resolve_error", error=str(error) or type(error).__name__,
                          error_type=type(error).__name__)
            self._pass_ended(None, str(error) or type(error).__name__)
            return None
        else:
            self.passes += 1
            if summary.unresolved:  # an empty pass already logged geo_re_resolve_skip
                fields = asdict(summary)
                del fields["unresolved"]
                log.info("geo_re_resolve_complete", **fields)
            self._pass_ended(summary, "")
            return summary
        finally:
            self._pass_task = None
            self._interrupted_for_reload = False
            structlog.contextvars.unbind_contextvars("pass_id")

    async def _pass(self) -> PassSummary:
        if self.chain is None:
            raise RuntimeError("Daemon.startup() must run before a pass")
        store = await open_store(self.config)
        providers = self.chain.providers
        spend = OneWindow(self.governor.spare, self._clock, self.governor.window or 60.0)
        upkeep = for_pass(self.config, store, providers, self.upkeep_negcache,
                          self.upkeep_cursor, spend, utc_now)
        self._running = Pass(store, providers, self.negcache, clock=self._clock,
                             progress=self._progress, upkeep=upkeep)
        try:
            if self._clear_shared_attempts:
                cleared = await store.clear_attempts()
                if cleared is not None:
                    log.info("shared_attempt_log_cleared", entries=cleared)
                self._clear_shared_attempts = False
            return await self._running.run()
        finally:
            if (backlog := self._running.backlog()) is not None:
                self.status.count_backlog(backlog)
            self._running = None
            self.governor.backlog = None
            self._save_state()  # the pass's back-offs and the window, before anyone is told
            await store.close()

    # -- helpers ----------------------------------------------------------------------------

    def _save_state(self) -> None:
        # Never before it was loaded: a stop during start-up must not overwrite the file.
        if self.state is not None and self._state_loaded:
            self.state.save()

    def _move_instance(self, path: str) -> None:
        """Hold the lock of database `path` instead (a reload changed it). Raises: GeodError."""
        if self._instance is None or self._instance.path == InstanceLock(path).path:
            return
        fresh = InstanceLock(path)
        fresh.acquire()
        self._instance.release()
        self._instance = fresh

    def _release_instance(self) -> None:
        if self._instance is not None:
            self._instance.release()
            self._instance = None

    def _remove_signal_handlers(self) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _check_database(self) -> bool:
        """Open and close the store once; False if a stop came first.

        The store waits for the app's lock in short slices, so cancelling the open ends it
        within one slice: a stop during start-up does not wait out busy_timeout.
        """
        opening = asyncio.ensure_future(open_store(self.config))
        stopping = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not opening.done():
                opening.cancel()
                await asyncio.wait([opening])
        if opening.cancelled():
            return False
        store = opening.result()  # StoreError / ConfigError raise from here
        await store.close()
        return not self.stop_requested.is_set()

    def _reload(self) -> None:
        """Re-read the config (keep the old one if the new is bad); always clear the cache."""
        self.reload_requested.clear()
        self._enter(Phase.RELOADING)
        try:
            new = load_config(self.config.source)
        except ConfigError as error:
            log.error("config_reload_failed", reason=str(error), action="kept_old_config")
            new = self.config
        else:
            try:
                if not new.database.url:
                    self._move_instance(new.database.path)
            except GeodError as error:  # another geod resolves the new database: keep ours
                log.error("config_reload_failed", reason=str(error), action="kept_old_config")
                new = self.config
        if new is not self.config:
            if new.metrics.listen != self.config.metrics.listen:
                log.warning("restart_required", key="metrics.listen", reason="bound at start")
            if new.ipapi.source_address != self.config.ipapi.source_address:
                log.warning("restart_required", key="ipapi.source_address",
                            reason="bound at start")
            self.config = self.status.config = new
            self.governor.reserve = new.ipapi.reserve
            self.governor.share = new.ipapi.share == "auto"
            self.negcache.ttl = new.negative_cache.ttl
            self.negcache.max_ttl = new.negative_cache.max_ttl
            self.upkeep_negcache.ttl = new.negative_cache.ttl
            self.upkeep_negcache.max_ttl = new.negative_cache.max_ttl
            log.info("config_reloaded", path=new.source)
        if self.chain is not None and self._resources is not None:
            # Even with an unchanged or invalid config: SIGHUP is how mmdb files get re-opened.
            self.chain = self.chain.reload(self.config, self._resources)
        log.info("negative_cache_cleared", entries=self.negcache.clear(),
                 upkeep_entries=self.upkeep_negcache.clear())
        self._save_state()  # a restart after the reload must not bring the back-offs back
        self._clear_shared_attempts = True  # a fleet's shared log, at the pass that follows
        self._enter(Phase.READY)

    def snapshot(self) -> Status:
        """The status with the values read from their owners now (a Prometheus scrape)."""
        self.status.negative_cache_entries = len(self.negcache)
        self.status.rate_limit_waited_s = self.governor.waited_s
        if self._running is not None and (backlog := self._running.backlog()) is not None:
            self.status.count_backlog(backlog)
        return self.status

    def _enter(self, phase: Phase) -> None:
        self.status.enter(phase)
        if self._on_change is not None:
            self._on_change(self.status)

    def _progress(self, lookups: Sequence[Lookup], done: int, total: int) -> None:
        """After each batch: tell the governor what is left (it bursts what fits), save state."""
        # (None once the NULL rows are done: upkeep's requests after them are paced as usual.)
        left = math.ceil(max(total - done, 0) / self.config.ipapi.batch_size)
        self.governor.backlog = left or None
        self.status.progress(lookups, done, total)
        self._enter(Phase.PASSING)
        if lookups and self.state is not None:
            self.state.save_soon()

    def _rate_limit_wait(self, seconds: float) -> None:
        self.status.wait_s = seconds
        self._enter(Phase.RATE_LIMITED)

    def _pass_ended(self, summary: PassSummary | None, error: str) -> None:
        self.status.pass_ended(summary, error, self._wall_clock())
        self._enter(Phase.PASSED)

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a stop or reload arrives. Clears the wake-up."""
        if seconds > 0 and not self._wake.is_set():
            self.status.wait_s = seconds
            self._enter(Phase.IDLE)
            sleeper = asyncio.ensure_future(self._sleep(seconds))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                woken.cancel()
        self._wake.clear()
