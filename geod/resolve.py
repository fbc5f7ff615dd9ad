"""One resolution pass: read NULL-country rows, ask the providers in order, write what came back.

No scheduling, no signals: `Daemon` decides when a pass runs and cancels it on stop. Counts are
per row (two rows that normalise to one address are sent once and both counted and written).
Each chunk of rows goes through the chain: a provider gets only what the ones before it could not
answer, and only what every provider missed or failed on backs off in the negative cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from geod.addresses import sendable
from geod.negcache import NegativeCache
from geod.provider import Lookup, Outcome, Provider
from geod.store import Row, Store, Update, is_locked

log = structlog.get_logger("geod.resolve")

# Told at the start of a pass and after each batch: (that batch's look-ups, rows done, rows to do).
Progress = Callable[[Sequence[Lookup], int, int], None]


@dataclass(frozen=True, slots=True)
class PassSummary:
    unresolved: int = 0  # NULL-country rows when the pass began
    retried: int = 0  # rows whose address was asked this pass
    resolved: int = 0  # rows written with a country
    failed: int = 0  # rows whose look-up failed (backing off now)
    unresolvable: int = 0  # rows that can never be resolved (private, invalid, ...)
    backed_off: int = 0  # rows skipped because their address is still backing off
    locked: int = 0  # rows resolved but not written: database locked; retried next pass
    missed: int = 0  # rows no provider had data for, none failing (backing off now)
    resolved_by: dict[str, int] = field(default_factory=dict)  # provider name -> rows written
    duration_s: float = 0.0

    def line(self) -> str:
        """The one-line summary `geod once` prints."""
        return (
            f"unresolved={self.unresolved} retried={self.retried} resolved={self.resolved} "
            f"failed={self.failed} unresolvable={self.unresolvable} "
            f"backed_off={self.backed_off} locked={self.locked} missed={self.missed} "
            f"duration_s={self.duration_s}"
            + (f" resolved_by={by}" if (by := _pairs(self.resolved_by)) else "")
        )


def _pairs(counts: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in counts.items())


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
        address = sendable(row.key)
        if address is None:
            plan.unresolvable += 1
        elif negcache.blocked(address):
            plan.backed_off += 1
        else:
            plan.to_send.setdefault(address, []).append(row.key)
    return plan


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Tally:
    retried: int = 0
    resolved: int = 0
    failed: int = 0
    unresolvable: int = 0
    backed_off: int = 0
    locked: int = 0
    missed: int = 0
    resolved_by: dict[str, int] = field(default_factory=dict)
    done: int = 0  # rows no provider will be asked about again this pass, for `progress`

    def count_written(self, source: str, rows: int) -> None:
        self.resolved += rows
        self.resolved_by[source] = self.resolved_by.get(source, 0) + rows


async def run_pass(
    store: Store,
    providers: Provider | Sequence[Provider],
    negcache: NegativeCache,
    *,
    clock: Callable[[], float],
    now_utc: Callable[[], str] = utc_now,
    progress: Progress | None = None,
) -> PassSummary:
    """Run one pass over the store. Cancellation (a stop) keeps every batch already written.

    `providers` is the chain in order (or a single provider).
    """
    chain = tuple(providers) if isinstance(providers, Sequence) else (providers,)
    started = clock()
    negcache.prune()
    unresolved = await store.count_unresolved()
    if unresolved == 0:
        log.info("geo_re_resolve_skip", reason="no_unresolved_ips")
        return PassSummary(duration_s=round(clock() - started, 3))
    log.info("geo_re_resolve_start", unresolved=unresolved,
             providers=[provider.name for provider in chain])
    tally = _Tally(resolved_by={provider.name: 0 for provider in chain})

    def report(lookups: Sequence[Lookup]) -> None:
        if progress is not None:
            progress(lookups, tally.done, unresolved)

    report(())
    async for rows in store.unresolved_chunks():
        plan = plan_chunk(rows, negcache)
        tally.unresolvable += plan.unresolvable
        tally.backed_off += plan.backed_off
        tally.done += plan.unresolvable + plan.backed_off
        tally.retried += sum(len(keys) for keys in plan.to_send.values())
        await _run_chain(chain, plan.to_send, store, negcache, tally, now_utc, report)
    summary = PassSummary(
        unresolved=unresolved,
        retried=tally.retried,
        resolved=tally.resolved,
        failed=tally.failed,
        unresolvable=tally.unresolvable,
        backed_off=tally.backed_off,
        locked=tally.locked,
        missed=tally.missed,
        resolved_by=tally.resolved_by,
        duration_s=round(clock() - started, 3),
    )
    return summary


async def _run_chain(
    chain: Sequence[Provider],
    keys_by_address: dict[str, list[str]],
    store: Store,
    negcache: NegativeCache,
    tally: _Tally,
    now_utc: Callable[[], str],
    report: Callable[[Sequence[Lookup]], None],
) -> None:
    """Ask each provider in turn about what is still open in one chunk, writing as answers come.

    Local providers take the chunk in one call (one write transaction); ip-api gets batches of
    its own size, each written as soon as it is answered, so a crash loses at most one batch.
    """
    pending = list(keys_by_address)
    failed: set[str] = set()  # addresses some provider failed on, as opposed to only missed
    for index, provider in enumerate(chain):
        last = index == len(chain) - 1
        passed_on: list[str] = []
        for batch in _batches(pending, provider.batch_size):
            lookups = await provider.resolve(batch)
            rest = await _apply(lookups, provider.name, keys_by_address, store, negcache, tally,
                                now_utc())
            for lookup in rest:
                passed_on.append(lookup.address)
                if lookup.outcome is Outcome.FAILED:
                    failed.add(lookup.address)
            still_open = set() if last else {lookup.address for lookup in rest}
            tally.done += sum(len(keys_by_address[a]) for a in batch if a not in still_open)
            report(lookups)
        pending = passed_on
        if not pending:
            return
    # Only here, after every provider, does an address back off: a miss in one database is no
    # reason to keep the next provider from answering it.
    for address in pending:
        negcache.record_failure(address)
        if address in failed:
            tally.failed += len(keys_by_address[address])
        else:
            tally.missed += len(keys_by_address[address])


async def _apply(
    lookups: Sequence[Lookup],
    source: str,
    keys_by_address: dict[str, list[str]],
    store: Store,
    negcache: NegativeCache,
    tally: _Tally,
    resolved_at: str,
) -> list[Lookup]:
    """Write the answers of one provider call; return the lookups to pass on (MISS, FAILED)."""
    updates: list[Update] = []
    passed_on: list[Lookup] = []
    for lookup in lookups:
        keys = keys_by_address.get(lookup.address)
        if keys is None:
            continue  # not asked: a provider bug, never written
        if lookup.outcome is Outcome.RESOLVED and lookup.geo is not None:
            negcache.forget(lookup.address)
            updates.extend(Update(key, lookup.geo, source) for key in keys)
        elif lookup.outcome is Outcome.UNRESOLVABLE:  # ends the chain: asking others is moot
            negcache.record_permanent(lookup.address)
            tally.unresolvable += len(keys)
        else:
            passed_on.append(lookup)
    if updates:
        await _write(updates, source, store, tally, resolved_at)
    return passed_on


async def _write(
    updates: list[Update], source: str, store: Store, tally: _Tally, resolved_at: str
) -> None:
    # The write of results already received must survive a stop: shield it, and if the pass is
    # cancelled meanwhile, let the write finish before the cancellation goes on.
    write = asyncio.ensure_future(store.write(updates, resolved_at))
    try:
        written = await asyncio.shield(write)
    except asyncio.CancelledError:
        store.hurry()  # keep the batch if the app's lock goes soon, but don't hold up the stop
        await asyncio.wait([write])
        if not write.cancelled() and write.exception() is None:
            tally.count_written(source, write.result())
        elif (error := write.exception()) is not None and is_locked(error):
            log.warning("database_locked", rows=len(updates), action="dropped_on_stop")
        raise
    except Exception as error:
        if not is_locked(error):
            raise
        tally.locked += len(updates)
        log.warning("database_locked", rows=len(updates), action="retry_next_pass")
    else:
        tally.count_written(source, written)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
