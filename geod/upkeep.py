"""Upkeep of rows that already have a country: fill their gaps, re-resolve them when old.

It runs after the NULL rows of a pass, with the capacity they left: offline providers always, a
metered one (ip-api) only while `may_spend()` says its window has quota to spare. It examines at
most `per_pass` rows a pass, resuming where the last pass stopped. Writes are optimistic, with no
lock across a look-up: a row is written only if it still holds every value geod read. A fill
only sets NULL fields; a refresh sets only values that differ, and is counted `confirmed` or
`changed`. What to write is decided by the pure rules in `upkeep_rules`; this does the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import structlog

from geod.addresses import sendable
from geod.config import Config
from geod.negcache import NegativeCache
from geod.provider import Provider, is_metered, source_tag
from geod.records import Change, Geo, Outcome, Stored, UpkeepQuery
from geod.store import Store, StoreBusy, write_through_stop
from geod.upkeep_rules import Kind, classify, decide, local_fill, make_query, utc_datetime

log = structlog.get_logger("geod.upkeep")


class OneWindow:
    """`may_spend` for one pass: spare quota (`RateGovernor.spare`), for one window's time.

    However many rows are stale, ip-api upkeep then never stretches a pass past about a window
    (60 s), so the next pass, and the NULL rows it brings, is never pushed back by it.
    """

    def __init__(self, spare: Callable[[], bool], clock: Callable[[], float],
                 window: float = 60.0) -> None:
        self._spare = spare
        self._clock = clock
        self._window = window
        self._started: float | None = None

    def __call__(self) -> bool:
        now = self._clock()
        if self._started is None:
            self._started = now
        return now - self._started < self._window and self._spare()


def for_pass(
    config: Config, store: Store, chain: Sequence[Provider], negcache: NegativeCache,
    cursor: Cursor, may_spend: Callable[[], bool], now_utc: Callable[[], str],
) -> Upkeep | None:
    """This pass's upkeep, or None when nothing is switched on."""
    query = make_query(config, chain, utc_datetime(now_utc()))
    if not query.active():
        return None
    return Upkeep(store, chain, negcache, query, per_pass=config.refresh.per_pass,
                  cursor=cursor, may_spend=may_spend, now_utc=now_utc,
                  names=config.resolve.country_names)


@dataclass(slots=True)
class Cursor:
    """Where the next pass's upkeep resumes (the store's position); None = the start."""

    after: Any = None


@dataclass(slots=True)
class Counts:
    examined: int = 0
    filled: int = 0
    confirmed: int = 0
    changed: int = 0
    superseded: int = 0
    locked: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Open:
    """One address still being asked about: its rows and why each needs upkeep."""

    rows: list[tuple[Stored, Kind]]
    base: dict[str, dict[str, Any]]  # row key -> what a fill sets without a provider


class Upkeep:
    """One pass's upkeep over `store` through `chain` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        chain: Sequence[Provider],
        negcache: NegativeCache,
        query: UpkeepQuery,
        *,
        per_pass: int,
        cursor: Cursor,
        may_spend: Callable[[], bool],
        now_utc: Callable[[], str],
        names: str,
    ) -> None:
        self.store = store
        # Offline providers first: they cost nothing and never wait.
        self.chain = [p for p in chain if not is_metered(p)] + [p for p in chain if is_metered(p)]
        self.negcache = negcache
        self.query = query
        self.per_pass = per_pass
        self.cursor = cursor
        self.counts = Counts()
        self._may_spend = may_spend
        self._now_utc = now_utc
        self._names = names
        self._spending = True  # until a metered provider's window has nothing to spare

    async def run(self) -> Counts:
        """Examine up to `per_pass` rows from the cursor on; cancellation keeps what is written."""
        if not self.query.active():
            return self.counts
        left = self.per_pass
        chunk_size = min(1000, left)
        # Closed on the way out, early or not: a fleet's store releases the chunk's leases then.
        async with aclosing(self.store.upkeep_chunks(self.query, self.cursor.after,
                                                     chunk_size)) as chunks:
            async for rows in chunks:
                rows = rows[:left]
                left -= len(rows)
                self.counts.examined += len(rows)
                await self._chunk(rows)
                self.cursor.after = rows[-1].cursor if rows else None
                if left <= 0:
                    return self.counts
        self.cursor.after = None  # reached the end: the next pass starts over
        return self.counts

    async def _chunk(self, rows: Sequence[Stored]) -> None:
        now = self._now_utc()
        open_: dict[str, _Open] = {}
        changes: list[Change] = []
        for row in rows:
            kind = classify(row, self.query)
            address = sendable(row.key)
            if kind is None or address is None or self.negcache.blocked(address):
                continue
            self.counts.by_kind[kind.value] = self.counts.by_kind.get(kind.value, 0) + 1
            preset = local_fill(row, self._names) if kind is Kind.FILL else {}
            if kind is Kind.FILL and not any(
                    row.values.get(name, "") is None and name not in preset
                    for name in self.query.fill):
                if preset:  # only the name was missing: no provider needed
                    changes.append(Change(row.key, dict(row.values), preset, "filled"))
                continue
            entry = open_.setdefault(address, _Open([], {}))
            entry.rows.append((row, kind))
            entry.base[row.key] = preset
        for provider in self.chain:
            metered = is_metered(provider)
            asked = [a for a, entry in open_.items()
                     if not (metered and all(k is Kind.REBUILD for _, k in entry.rows))]
            for batch in _batches(asked, provider.batch_size):
                if metered and not (self._spending and self._may_spend()):
                    self._spending = False  # the rest waits for a later pass, not backed off
                    for address in batch:
                        changes += _presets(open_.pop(address))
                    continue
                tag = source_tag(provider)  # before the call, as in `resolve`
                for lookup in await provider.resolve(batch):
                    found = open_.get(lookup.address)
                    if found is None or lookup.outcome is not Outcome.RESOLVED or not lookup.geo:
                        continue
                    found.rows = _answer(found, lookup.geo, tag, now, changes)
                    if not found.rows:
                        del open_[lookup.address]
        for address, entry in open_.items():  # no provider had anything new for these
            self.negcache.record_failure(address)
            changes += _presets(entry)
        await self._write(changes)

    async def _write(self, changes: list[Change]) -> None:
        if not changes:
            return
        def on_stop(write: asyncio.Future[dict[str, int]]) -> None:
            if write.exception() is None:
                self._count(changes, write.result())

        try:
            counts = await write_through_stop(
                lambda deadline: self.store.write_changes(changes, deadline), on_stop)
        except StoreBusy:
            self.counts.locked += len(changes)
            log.warning("database_locked", rows=len(changes), action="retry_next_pass")
        else:
            self._count(changes, counts)

    def _count(self, changes: list[Change], written: dict[str, int]) -> None:
        c = self.counts
        c.filled += written.get("filled", 0)
        c.confirmed += written.get("confirmed", 0)
        c.changed += written.get("changed", 0)
        c.superseded += max(len(changes) - sum(written.values()), 0)
        if written.get("refused"):  # the app's schema would not take them: left as they are
            log.warning("row_refused", rows=written["refused"], during="upkeep",
                        action="left_alone")


def _answer(entry: _Open, geo: Geo, tag: str, now: str,
            changes: list[Change]) -> list[tuple[Stored, Kind]]:
    """Turn one answer into changes; returns the rows it said nothing new about."""
    still: list[tuple[Stored, Kind]] = []
    for row, kind in entry.rows:
        change = decide(row, kind, geo, tag, now, entry.base.get(row.key))
        if change is None:
            still.append((row, kind))
        else:
            changes.append(change)
    return still


def _presets(entry: _Open) -> list[Change]:
    """The fills of `entry` that need no provider (its rows' names), when none answered."""
    return [Change(row.key, dict(row.values), entry.base[row.key], "filled")
            for row, _ in entry.rows if entry.base.get(row.key)]


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
