"""Open the PostgreSQL store, and with `geod_schema` set, the fleet's claimed walk over it.

`FleetStore` is the `store.Store` several geod instances share one table through: it hands the
pass only rows it has leased (`pg_lease.Fleet.claim_due`), keeps those leases renewed while the
pass works on them (rate-limit waits included), records the pass's outcomes in the shared attempt
log before it releases them, and takes over rows whose holder died: before each claim when their
leases have expired, and at the end of a walk by waiting once for the leases still running.
The pass does not know it is in a fleet: it sees chunks, writes and `settle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import structlog

from geod.config import Config, NegativeCacheConfig
from geod.pg_lease import Fleet
from geod.pg_store import PgStore
from geod.records import DueCount, Outcome, Row, StoreReport, Update, WriteDeadline, Written

log = structlog.get_logger("geod.fleet")

CLAIM_SIZE = 100  # rows per lease: one ip-api batch, so a killed instance strands at most this
TAKEOVER_SLACK_S = 0.5  # after the last foreign lease should have expired, by the server's clock


async def open_pg_store(config: Config, *, claim: bool = True) -> PgStore | FleetStore:
    """The PostgreSQL store `[database]` describes; a `FleetStore` when `geod_schema` is set
    and the caller means to work (`claim`), not only to look.

    Raises:
        ConfigError: the table or a mapped column is missing.
        StoreError: the server cannot be reached, or geod's schema cannot be prepared.
    """
    store = await PgStore.open(config.database, config.source)
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

    async def due_chunks(self, size: int = CLAIM_SIZE) -> AsyncIterator[list[Row]]:
        """Claim, yield and release chunks of at most `size` (capped at CLAIM_SIZE) rows.

        A chunk's leases are renewed while the pass works on it and released when it asks for
        the next one. Rows other instances hold are passed over; when the walk ends while some
        are still held, it waits once for those leases to end and walks again, so a killed
        instance's rows are taken over in this pass, not the next.
        """
        size = max(1, min(size, CLAIM_SIZE))
        if not self._pruned:
            await self.fleet.prune(self._backoff.max_ttl)
            self._pruned = True
        waited = False
        while True:
            claimed = 0
            after: str | None = None
            while True:
                # Rows a dead instance held come first: behind this walk's position, it would
                # otherwise reach them only at its end.
                keys = await self._take_over(size)
                if not keys:
                    keys, after = await self.fleet.claim_due(self.store.due_sql(), size, after)
                if keys:
                    claimed += len(keys)
                    self._hold(keys)
                    try:
                        yield [Row(key, key) for key in keys]
                    finally:
                        await self._release()
                if after is None:
                    break
            left = await self.fleet.foreign_lease_left(self.store.due_sql())
            if left is None or (waited and not claimed):
                return
            log.info("fleet_waiting_for_leases", seconds=round(left, 1))
            await asyncio.sleep(left + TAKEOVER_SLACK_S)
            waited = True

    async def _take_over(self, size: int) -> list[str]:
        """Claim due rows whose lease another instance let expire; [] when there are none."""
        expired = await self.fleet.take_expired(size)
        if not expired:
            return []
        keys = await self.fleet.claim(await self.store.still_due(expired))
        if keys:
            log.info("fleet_took_over", rows=len(keys))
        return keys

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """Share this chunk's outcomes (row key -> outcome) before its leases are released.

        Failed and missed rows back off for every instance (doubling, as the negative cache
        does); unresolvable ones for max_ttl; answered ones leave the log.
        """
        failed = [key for key, outcome in outcomes.items()
                  if outcome in (Outcome.FAILED, Outcome.MISS)]
        permanent = [key for key, outcome in outcomes.items()
                     if outcome is Outcome.UNRESOLVABLE]
        answered = [key for key, outcome in outcomes.items() if outcome is Outcome.RESOLVED]
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

    def _hold(self, keys: list[str]) -> None:
        """Start renewing our leases on `keys` every third of their ttl until released."""
        self._held = set(keys)
        self._keeper = asyncio.create_task(self._renew_while_held())

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
