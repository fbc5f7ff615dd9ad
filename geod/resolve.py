"""One resolution pass: read the due rows, ask the providers in order, write what came back.

No scheduling, no signals: `Daemon` decides when a pass runs and cancels it on stop. Counts are
per row (two rows that normalise to one address are sent once and both counted and written, even
when they come in different chunks: the pass remembers what it resolved).
Each chunk of rows goes through the chain: a provider gets only what the ones before it could not
answer, and only what every provider missed or failed on backs off in the negative cache. The
pass knows the `Store` and `Provider` seams only, never a concrete database or service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import structlog

from geod.addresses import sendable
from geod.backlog import Backlog, parse_stamp
from geod.negcache import NegativeCache
from geod.provider import Provider, source_tag
from geod.records import Geo, Lookup, Outcome, PassSummary, Row, Update, Written
from geod.store import Store, StoreBusy, write_through_stop
from geod.upkeep import Upkeep

log = structlog.get_logger("geod.resolve")

# Told at the start of a pass and after each batch: (that batch's look-ups, rows done, rows to do).
Progress = Callable[[Sequence[Lookup], int, int], None]


@dataclass(slots=True)
class ChunkPlan:
    """What to do with one chunk of rows, decided without I/O."""

    to_send: dict[str, list[str]] = field(default_factory=dict)  # address -> row keys
    unresolvable: int = 0
    backed_off: int = 0


def plan_chunk(rows: Sequence[Row], negcache: NegativeCache) -> ChunkPlan:
    """Group rows by normal address; drop the unsendable and the backing-off."""
    plan = ChunkPlan()
    for row in rows:
        address = None if row.key is None else sendable(row.key)
        if address is None or row.key is None:  # a NULL address is as unsendable as a bad one
            plan.unresolvable += 1
        elif negcache.blocked(address):
            plan.backed_off += 1
        else:
            plan.to_send.setdefault(address, []).append(row.key)
    return plan


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Tally:
    """The running counts of one pass: its progress while it runs, its summary when it ends."""

    unresolved: int = 0
    retried: int = 0
    resolved: int = 0
    failed: int = 0
    unresolvable: int = 0
    backed_off: int = 0
    locked: int = 0
    missed: int = 0
    refused: int = 0
    resolved_by: dict[str, int] = field(default_factory=dict)
    filled: int = 0
    confirmed: int = 0
    changed: int = 0
    superseded: int = 0
    done: int = 0  # rows no provider will be asked about again this pass
    asked: int = 0  # of those, rows a provider answered (or failed on): the pass's throughput

    def freeze(self, duration_s: float) -> PassSummary:
        counts = {f.name: getattr(self, f.name) for f in fields(PassSummary)
                  if f.name != "duration_s"}
        return PassSummary(**counts, duration_s=duration_s)


class Pass:
    """One pass over `store` through `chain`: run -> chunk -> ask -> write."""

    def __init__(
        self,
        store: Store,
        chain: Sequence[Provider],
        negcache: NegativeCache,
        *,
        clock: Callable[[], float],
        now_utc: Callable[[], str] = utc_now,
        progress: Progress | None = None,
        upkeep: Upkeep | None = None,
    ) -> None:
        """`upkeep` runs after the NULL rows, with what they left (None: no upkeep)."""
        self.store = store
        self.chain = tuple(chain)
        self.negcache = negcache
        self.tally = Tally()
        self._keys_by_address: dict[str, list[str]] = {}  # of the chunk being asked about
        self._settled: dict[str, Outcome] = {}  # row key -> outcome, told to the store
        self._clock = clock
        self._now_utc = now_utc
        self._progress = progress
        self._started: float | None = None  # when the pass had counted its rows
        self._stamps: dict[str, float] = {}  # key -> timestamp of the chunk's unsettled rows
        self._oldest_left: float | None = None  # oldest row the pass settled but could not write
        self.upkeep = upkeep
        # Address -> answer for every address resolved this pass: the same address
        # spelled another way in a later chunk is written from here, not asked again.
        self._answers: dict[str, tuple[Geo, str, str]] = {}  # ... (answer, provider, tag)

    async def run(self) -> PassSummary:
        """Run the pass. Cancellation (a stop) keeps every batch already written."""
        started = self._clock()
        self.negcache.prune()
        counts = await self.store.due_counts()
        due, self._started = counts.rows, started
        if due == 0:
            log.info("geo_re_resolve_skip", reason="no_unresolved_ips")
            await self._keep_up()
            return self.tally.freeze(duration_s=round(self._clock() - started, 3))
        log.info("geo_re_resolve_start", unresolved=due,
                 providers=[provider.name for provider in self.chain])
        # NULL-key rows are never handed out: unresolvable from the start, so the summary's
        # categories add up to `unresolved`, as in `geod status` and the metrics.
        self.tally = Tally(unresolved=due, unresolvable=counts.keyless, done=counts.keyless,
                           resolved_by={p.name: 0 for p in self.chain})
        self._report(())
        async for rows in self.store.due_chunks():
            await self._chunk(rows)
        # Only now, with every NULL row asked about, do rows that have a country get a turn.
        await self._keep_up()
        return self.tally.freeze(duration_s=round(self._clock() - started, 3))

    def backlog(self) -> Backlog | None:
        """The due rows as this pass sees them now; None before it has counted them.

        Rows it has not reached yet count as pending (some may turn out never sendable or
        backing off); the rate is rows settled by providers per second since the pass began.
        """
        if self._started is None:
            return None
        tally = self.tally
        elapsed = self._clock() - self._started
        oldest = min(self._stamps.values(), default=None)
        if self._oldest_left is not None:
            oldest = self._oldest_left if oldest is None else min(oldest, self._oldest_left)
        return Backlog(
            pending=max(tally.unresolved - tally.done, 0) + tally.locked,
            backing_off=tally.backed_off + tally.failed + tally.missed,
            never=tally.unresolvable,  # NULL keys included
            oldest_pending=oldest,
            rate=tally.asked / elapsed if tally.asked and elapsed > 0 else None,
        )

    async def _keep_up(self) -> None:
        if self.upkeep is None:
            return
        try:
            counts = await self.upkeep.run()
        except StoreBusy:  # the app held its lock through a read: the NULL rows are done
            log.warning("database_locked", action="retry_next_pass", during="upkeep")
            counts = self.upkeep.counts
        finally:
            counts = self.upkeep.counts  # a stop keeps the counts of what was written
            tally = self.tally
            tally.filled, tally.confirmed = counts.filled, counts.confirmed
            tally.changed, tally.superseded = counts.changed, counts.superseded
        if counts.examined:
            log.info("upkeep_complete", examined=counts.examined, filled=counts.filled,
                     confirmed=counts.confirmed, changed=counts.changed,
                     superseded=counts.superseded, due=counts.by_kind)

    async def _chunk(self, rows: Sequence[Row]) -> None:
        """Ask each provider in turn about what is still open in one chunk.

        Local providers take the chunk in one call (one write transaction); ip-api gets batches
        of its own size, each written as soon as it is answered, so a crash loses one batch.
        """
        plan = plan_chunk(rows, self.negcache)
        sent = {key for keys in plan.to_send.values() for key in keys}
        self._stamps = {row.key: when for row in rows
                        if row.key in sent and (when := parse_stamp(row.stamp)) is not None}
        self._settled = {}
        await self._ask_chain(plan)
        # Before the store moves on (a fleet releases the chunk's leases then), so another
        # instance never claims an address this one has just failed on.
        if self._settled:
            await self.store.settle(self._settled)

    async def _ask_chain(self, plan: ChunkPlan) -> None:
        tally = self.tally
        tally.unresolvable += plan.unresolvable
        tally.backed_off += plan.backed_off
        tally.done += plan.unresolvable + plan.backed_off
        tally.retried += sum(len(keys) for keys in plan.to_send.values())
        keys_by_address = self._keys_by_address = plan.to_send
        await self._write_known(keys_by_address)
        pending = list(keys_by_address)
        failed: set[str] = set()  # addresses some provider failed on, as opposed to only missed
        for index, provider in enumerate(self.chain):
            last = index == len(self.chain) - 1
            passed_on: list[str] = []
            for batch in _batches(pending, provider.batch_size):
                rest = await self._ask(provider, batch, keys_by_address, last=last)
                passed_on += [lookup.address for lookup in rest]
                failed |= {lookup.address for lookup in rest if lookup.outcome is Outcome.FAILED}
            pending = passed_on
            if not pending:
                return
        # Only here, after every provider, does an address back off: a miss in one database is
        # no reason to keep the next provider from answering it.
        for address in pending:
            outcome = Outcome.FAILED if address in failed else Outcome.MISS
            self._settle(address, outcome, len(keys_by_address[address]))

    async def _ask(
        self, provider: Provider, batch: list[str], keys_by_address: dict[str, list[str]],
        *, last: bool,
    ) -> list[Lookup]:
        """One provider call: write its answers, return the look-ups to pass on (MISS, FAILED).

        A provider that breaks its never-raise promise is confined: its batch comes back
        FAILED, the next provider is asked and the pass goes on.
        """
        # Before the call: if the file is replaced in between, the rows say the older build
        # and are re-checked once more, rather than claiming a build that did not answer.
        tag = source_tag(provider)
        try:
            lookups = await provider.resolve(batch)
        except Exception as error:  # noqa: BLE001 - cancellation (BaseException) still propagates
            reason = f"{provider.name} raised {type(error).__name__}: {error}"[:300]
            log.error("provider_error", provider=provider.name, reason=reason, addresses=len(batch))
            lookups = [Lookup(a, Outcome.FAILED, reason=reason, source=provider.name)
                       for a in batch]
        updates: list[Update] = []
        passed_on: list[Lookup] = []
        for lookup in lookups:
            keys = keys_by_address.get(lookup.address)
            if keys is None:
                continue  # not asked: a provider bug, never written
            if lookup.outcome is Outcome.RESOLVED and lookup.geo is not None:
                self._settle(lookup.address, Outcome.RESOLVED, len(keys))
                self._answers[lookup.address] = (lookup.geo, provider.name, tag)
                updates.extend(Update(key, lookup.geo, tag) for key in keys)
            elif lookup.outcome is Outcome.UNRESOLVABLE:  # ends the chain: asking others is moot
                self._settle(lookup.address, Outcome.UNRESOLVABLE, len(keys))
            else:
                passed_on.append(lookup)
        if updates:
            await self._write(updates, provider.name)
        still_open = set() if last else {lookup.address for lookup in passed_on}
        settled = [key for a in batch if a not in still_open for key in keys_by_address[a]]
        self.tally.done += len(settled)
        self.tally.asked += len(settled)
        for key in settled:
            self._stamps.pop(key, None)
        self._report(lookups)
        return passed_on

    async def _write_known(self, keys_by_address: dict[str, list[str]]) -> None:
        """Write the rows whose address this pass already resolved; they are asked no more."""
        known = [address for address in keys_by_address if address in self._answers]
        by_provider: dict[str, list[Update]] = {}
        for address in known:
            geo, name, tag = self._answers[address]
            keys = keys_by_address.pop(address)
            by_provider.setdefault(name, []).extend(Update(key, geo, tag) for key in keys)
            self.tally.done += len(keys)
        for name, updates in by_provider.items():
            await self._write(updates, name)
            for update in updates:
                self._stamps.pop(update.key, None)

    def _settle(self, address: str, outcome: Outcome, rows: int) -> None:
        """The negative-cache rule, in one place, for an address whose chain has ended.

        Resolved rows are counted when written (`_write`), the others here.
        """
        for key in self._keys_by_address.get(address, ()):
            self._settled[key] = outcome
        if outcome is Outcome.RESOLVED:
            self.negcache.forget(address)
        elif outcome is Outcome.UNRESOLVABLE:
            self.negcache.record_permanent(address)
            self.tally.unresolvable += rows
        else:
            self.negcache.record_failure(address)
            if outcome is Outcome.FAILED:
                self.tally.failed += rows
            else:
                self.tally.missed += rows

    async def _write(self, updates: list[Update], source: str) -> None:
        def on_stop(write: asyncio.Future[Written]) -> None:
            if write.exception() is None:
                self._count_written(source, write.result())
            elif isinstance(write.exception(), StoreBusy):
                log.warning("database_locked", rows=len(updates), action="dropped_on_stop")

        now = self._now_utc()
        try:
            written = await write_through_stop(
                lambda deadline: self.store.write(updates, now, deadline), on_stop)
        except StoreBusy:
            self.tally.locked += len(updates)
            left = [self._stamps[u.key] for u in updates if u.key in self._stamps]
            if left:  # still pending after this pass: its age must show
                self._oldest_left = min(left + [self._oldest_left or math.inf])
            log.warning("database_locked", rows=len(updates), action="retry_next_pass")
        else:
            self._count_written(source, written)

    def _count_written(self, source: str, written: Written) -> None:
        self.tally.resolved += written.changed
        self.tally.resolved_by[source] = self.tally.resolved_by.get(source, 0) + written.changed
        if not written.refused:
            return
        # A row the app's schema will not take stays due: back its address off (the schema will
        # not change its mind soon), so later passes do not ask about it again and again.
        self.tally.refused += len(written.refused)
        for refusal in written.refused:
            address = sendable(refusal.key) or refusal.key
            self.negcache.record_permanent(address)
            self._answers.pop(address, None)
            log.warning("row_refused", address=refusal.key, source=source,
                        reason=refusal.reason[:300], action="backed_off")

    def _report(self, lookups: Sequence[Lookup]) -> None:
        if self._progress is not None:
            self._progress(lookups, self.tally.done, self.tally.unresolved)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
