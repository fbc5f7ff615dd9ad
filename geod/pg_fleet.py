"""Open the PostgreSQL store, and with `geod_schema` set, the fleet's claimed walk over it.

`FleetStore` is the `store.Store` several geod instances share one table through: it hands the
pass only rows whose address it has leased (`pg_lease.Fleet.claim`), keeps those leases
renewed while the pass works on them (rate-limit waits included), records the pass's outcomes in
the shared attempt log before it releases them, and takes over rows whose holder died once
their leases have expired (before each claim, and once more at the end of a walk); it never
waits for a lease still running. Leases and the log are keyed on the address sent, not on the
row's key. Upkeep (`[refresh]`) claims the same leases, chunk by chunk, so no two instances ask
about one address at once there either (`upkeep_chunks`). The pass does not know it is in a
fleet: it sees chunks, writes and `settle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import structlog

from geod.addresses import sendable
from geod.config import Config, NegativeCacheConfig
from geod.pg_lease import Fleet
from geod.pg_store import PgStore
from geod.records import (
    Change,
    DueCount,
    Outcome,
    Row,
    Stored,
    StoreReport,
    Update,
    UpkeepQuery,
    WriteDeadline,
    Written,
)

log = structlog.get_logger("geod.fleet")

CLAIM_SIZE = 100  # rows per lease: one ip-api batch, so a killed instance strands at most this


async def open_pg_store(config: Config, *, claim: bool = True) -> PgStore | FleetStore:
    """The PostgreSQL store `[database]` describes; a `FleetStore` when `geod_schema` is set
    and the caller means to work (`claim`), not only to look (then the session is read-only).

    Raises:
        ConfigError: the table or a mapped column is missing.
        StoreError: the server cannot be reached, or geod's schema cannot be prepared.
    """
    store = await PgStore.open(config.database, config.source, readonly=not claim)
    if not (config.database.geod_schema and claim):
        return store
    try:
        fleet = await Fleet.open(config.database, ttl=config.database.lease_ttl)
    except BaseException:
        await store.close()
        raise
    return FleetStore(store, fleet, config.negative_cache)


class FleetStore:
    """A `PgStore` whose due rows are leased to this instance before the pass sees them."""

    def __init__(self, store: PgStore, fleet: Fleet, backoff: NegativeCacheConfig) -> None:
        self.store = store
        self.fleet = fleet
        self._backoff = backoff
        self._held: set[str] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._pruned = False

    async def count_due(self) -> int:
        return await self.store.count_due()

    async def due_counts(self) -> DueCount:
        return await self.store.due_counts()

    async def report(self) -> StoreReport:
        return await self.store.report()

    async def write(
        self, updates: Sequence[Update], resolved_at: str, deadline: WriteDeadline | None = None
    ) -> Written:
        # NULL-guarded as ever: a row whose lease was taken over while we stalled is written
        # once, by whichever instance gets there first.
        return await self.store.write(updates, resolved_at, deadline)

    async def read_row(self, key: str) -> dict[str, Any] | None:
        return await self.store.read_row(key)

    async def write_changes(self, changes: Sequence[Change],
                            deadline: WriteDeadline | None = None) -> dict[str, int]:
        # Guarded by every value read, as ever: leases decide who asks, not what may be written.
        return await self.store.write_changes(changes, deadline)

    async def upkeep_chunks(self, query: UpkeepQuery, after: Any = None, size: int = CLAIM_SIZE
                            ) -> AsyncGenerator[list[Stored], None]:
        """The store's upkeep rows, each chunk's addresses leased to this instance first.

        The same leases as the NULL rows' (`due_chunks`), so no two instances ask about one
        address at once, nor one an instance has just failed on in a pass. Rows whose address
        another instance holds are passed over: they are that one's to keep up. Claimed rows
        that no longer hold what was read (another instance kept them up meanwhile) are dropped
        before upkeep sees them, so they are not asked about again. Unlike `due_chunks` this
        neither takes over nor waits: upkeep is best effort, and a dead instance's upkeep rows
        come round again once its leases have expired. Rows never sendable take no lease
        (upkeep sends nothing for them).
        """
        size = max(1, min(size, CLAIM_SIZE))
        async for chunk in self.store.upkeep_chunks(query, after, size):
            addresses = {row.key: sendable(row.key) for row in chunk}
            claimed = set(await self.fleet.claim(sorted({a for a in addresses.values() if a})))
            self._held = claimed
            rows = await self.store.unchanged(
                [row for row in chunk if addresses[row.key] in claimed])
            kept = {row.key for row in rows}
            # In the walk's order: upkeep resumes after the last row it was handed.
            rows = [row for row in chunk if row.key in kept or addresses[row.key] is None]
            if not kept:
                await self._release()
            if not rows:
                continue
            self._renew()
            try:
                yield rows
            finally:
                await self._release()

    async def due_chunks(self, size: int = CLAIM_SIZE) -> AsyncIterator[list[Row]]:
        """Claim, yield and release chunks: the rows of at most `size` (capped at CLAIM_SIZE)
        addresses each.

        Leases are on the address a row's key normalises to (`addresses.sendable`), and a
        claimed address comes with every due row that spells it, so no two instances ask about
        one address however the app spelled it. Rows never sendable are handed out once, with
        no lease (the pass counts them and sends nothing). A chunk's leases are renewed while
        the pass works on it and released when it asks for the next one.

        Addresses others hold are passed over and never waited for, as a job queue's worker
        never waits on another's job: a live holder renews its leases and writes those rows
        itself, and a dead one's leases are taken over by the first claim after they expire
        (before each claim of this walk, in one more round at its end, or by the next pass).
        So a pass, `geod once` included, ends when its own work is done.
        """
        size = max(1, min(size, CLAIM_SIZE))
        if not self._pruned:
            await self.fleet.prune(self._backoff.max_ttl)
            self._pruned = True
        unsendable, by_address = await self._due_by_address()
        for start in range(0, len(unsendable), size):
            yield unsendable[start:start + size]
        addresses = list(by_address)
        passed_over: list[str] = []
        # One round more than there are batches: at the walk's end only expired leases are
        # claimed (those that ran out after its last claim).
        for start in range(0, len(addresses) + size, size):
            # Rows a dead instance held come first: behind this walk's position, it would
            # otherwise reach them only at its end.
            while rows := await self._claim(await self.fleet.take_expired(size), by_address):
                log.info("fleet_took_over", rows=len(rows))
                self._renew()
                try:
                    yield rows
                finally:
                    await self._release()
            batch = addresses[start:start + size]
            rows = await self._claim(batch, by_address)
            passed_over += [address for address in batch if address not in self._held]
            if rows:
                self._renew()
                try:
                    yield rows
                finally:
                    await self._release()
        left = await self.fleet.foreign_lease_left(passed_over)
        if left is not None:
            log.info("fleet_left_to_others", seconds=round(left, 1))

    async def _due_by_address(self) -> tuple[list[Row], dict[str, list[Row]]]:
        """The due rows now, read in bounded chunks: (those never sendable, address -> rows)."""
        unsendable: list[Row] = []
        by_address: dict[str, list[Row]] = {}
        async for chunk in self.store.due_chunks():
            for row in chunk:
                address = sendable(row.key)
                if address is None:
                    unsendable.append(row)
                else:
                    by_address.setdefault(address, []).append(row)
        return unsendable, by_address

    async def _claim(self, addresses: list[str], by_address: Mapping[str, list[Row]]) -> list[Row]:
        """Lease those of `addresses` nobody else holds; returns their rows still due.

        Held (`self._held`) from here until released; released at once when none of their
        rows is due any more (another instance wrote them meanwhile): never asked again.
        """
        # Addresses whose rows others wrote since this walk read them are not claimed at all:
        # a walk behind the others would otherwise write and drop a lease for each of them (at
        # N = 4, 1.66 lease writes per row). Read-only, and checked again once leased.
        keys = [row.key for address in addresses for row in by_address.get(address, ())]
        due = set(await self.store.still_due(keys)) if keys else set()
        addresses = [address for address in addresses
                     if any(row.key in due for row in by_address.get(address, ()))]
        if not addresses:
            return []
        claimed = await self.fleet.claim(addresses)
        rows = [row for address in claimed for row in by_address.get(address, ())]
        due = set(await self.store.still_due([row.key for row in rows])) if rows else set()
        self._held = set(claimed)
        rows = [row for row in rows if row.key in due]
        if not rows:
            await self._release()
        return rows

    def _renew(self) -> None:
        """Renew the leases held (`self._held`) every third of their ttl until released."""
        self._keeper = asyncio.create_task(self._renew_while_held())

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Share this chunk's outcomes (row key -> outcome, logged by address) before its leases
        are released.

        Failed and missed rows back off for every instance (doubling, as the negative cache
        does); unresolvable ones for max_ttl; answered ones leave the log.
        """
        by_outcome: dict[Outcome, set[str]] = {}
        for key, outcome in outcomes.items():
            address = sendable(key)  # keyed as the leases are; a never-sendable row is not logged
            if address is not None:
                by_outcome.setdefault(outcome, set()).add(address)
        failed = by_outcome.get(Outcome.FAILED, set()) | by_outcome.get(Outcome.MISS, set())
        permanent = by_outcome.get(Outcome.UNRESOLVABLE, set())
        answered = by_outcome.get(Outcome.RESOLVED, set())
        if failed:
            await self.fleet.record_failure(failed, self._backoff.ttl, self._backoff.max_ttl)
        if permanent:
            await self.fleet.record_permanent(permanent, self._backoff.max_ttl)
        if answered:
            await self.fleet.forget(answered)

    async def clear_attempts(self) -> int | None:
        """SIGHUP: end every back-off in the shared log, for all instances."""
        return await self.fleet.clear()

    async def close(self) -> None:
        """Release what is still held (a stopped pass), then close both connections."""
        try:
            await self._release()
        finally:
            await self.fleet.close()
            await self.store.close()

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self.fleet.ttl / 3)
            # A lease found taken over (we stalled past its expiry) is no longer ours to renew;
            # our write of that row stays NULL-guarded.
            self._held.intersection_update(await self.fleet.renew(self._held))

    async def _release(self) -> None:
        """Stop renewing and drop our leases; idempotent (a stopped pass, then close)."""
        keeper, self._keeper = self._keeper, None
        held, self._held = self._held, set()
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)  # a failed renewal: expiry
        if held:
            await self.fleet.release(held)
