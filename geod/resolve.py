"""One resolution pass: read NULL-country rows, ask the provider, write what came back.

No scheduling, no signals: `Daemon` decides when a pass runs and cancels it on stop. Counts are
per row (two rows that normalise to one address are sent once and both counted and written).
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
from geod.store import Row, Store, Update

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
    duration_s: float = 0.0

    def line(self) -> str:
        """The one-line summary `geod once` prints."""
        return (
            f"unresolved={self.unresolved} retried={self.retried} resolved={self.resolved} "
            f"failed={self.failed} unresolvable={self.unresolvable} "
            f"backed_off={self.backed_off} locked={self.locked} duration_s={self.duration_s}"
        )


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


async def run_pass(
    store: Store,
    provider: Provider,
    negcache: NegativeCache,
    *,
    clock: Callable[[], float],
    now_utc: Callable[[], str] = utc_now,
    progress: Progress | None = None,
) -> PassSummary:
    """Run one pass over the store. Cancellation (a stop) keeps every batch already written."""
    started = clock()
    negcache.prune()
    unresolved = await store.count_unresolved()
    if unresolved == 0:
        log.info("geo_re_resolve_skip", reason="no_unresolved_ips")
        return PassSummary(duration_s=round(clock() - started, 3))
    log.info("geo_re_resolve_start", unresolved=unresolved)
    tally = _Tally()
    done = 0  # rows dealt with so far, for `progress`
    if progress is not None:
        progress((), done, unresolved)
    async for rows in store.unresolved_chunks():
        plan = plan_chunk(rows, negcache)
        tally.unresolvable += plan.unresolvable
        tally.backed_off += plan.backed_off
        done += plan.unresolvable + plan.backed_off
        for batch in _batches(list(plan.to_send), provider.batch_size):
            lookups = await provider.resolve(batch)
            await _apply(lookups, plan.to_send, store, negcache, tally, now_utc())
            done += sum(len(plan.to_send[address]) for address in batch)
            if progress is not None:
                progress(lookups, done, unresolved)
    summary = PassSummary(
        unresolved=unresolved,
        retried=tally.retried,
        resolved=tally.resolved,
        failed=tally.failed,
        unresolvable=tally.unresolvable,
        backed_off=tally.backed_off,
        locked=tally.locked,
        duration_s=round(clock() - started, 3),
    )
    return summary


async def _apply(
    lookups: Sequence[Lookup],
    keys_by_address: dict[str, list[str]],
    store: Store,
    negcache: NegativeCache,
    tally: _Tally,
    resolved_at: str,
) -> None:
    updates: list[Update] = []
    for lookup in lookups:
        keys = keys_by_address.get(lookup.address, [])
        tally.retried += len(keys)
        if lookup.outcome is Outcome.RESOLVED and lookup.geo is not None:
            negcache.forget(lookup.address)
            updates.extend(Update(key, lookup.geo) for key in keys)
        elif lookup.outcome is Outcome.UNRESOLVABLE:
            negcache.record_permanent(lookup.address)
            tally.unresolvable += len(keys)
        else:
            negcache.record_failure(lookup.address)
            tally.failed += len(keys)
    if not updates:
        return
    # The write of results already received must survive a stop: shield it, and if the pass is
    # cancelled meanwhile, let the write finish before the cancellation goes on.
    write = asyncio.ensure_future(store.write(updates, resolved_at))
    try:
        tally.resolved += await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])
        if not write.cancelled() and write.exception() is None:
            tally.resolved += write.result()
        raise
    except Exception as error:
        if not _is_locked(error):
            raise
        tally.locked += len(updates)
        log.warning("database_locked", rows=len(updates), action="retry_next_pass")


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
