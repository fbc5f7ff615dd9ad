"""`geod explain ADDRESS` and `geod once --dry-run`: what geod sees and would do, written nowhere.

Both run the real providers and the real pass logic against the real table, in either store, but
every write goes to a `DryRunStore` that records it instead. Neither asks a metered provider
(ip-api) unless told to (`ask_ipapi`): a look at one row must not spend the quota the NULL rows
need. Neither takes a fleet's leases nor touches its attempt log.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geod.addresses import classify as classify_address
from geod.chain import Chain
from geod.config import Config
from geod.negcache import NegativeCache
from geod.provider import Provider, Resources, is_metered, make_session, source_tag
from geod.ratelimit import RateGovernor
from geod.records import (
    Change,
    DueCount,
    Geo,
    Outcome,
    PassSummary,
    Row,
    Stored,
    StoreReport,
    Update,
    UpkeepQuery,
    WriteDeadline,
    Written,
)
from geod.resolve import Pass, utc_now
from geod.sqlite_write import KEPT
from geod.state import CorruptState, recorded, state_path
from geod.store import Store, open_store
from geod.upkeep import Cursor, for_pass
from geod.upkeep_rules import Kind, decide, local_fill, make_query, utc_datetime
from geod.upkeep_rules import classify as classify_row

# Where the unit's `StateDirectory=geod` keeps the state file: `geod explain` from a shell has
# no $STATE_DIRECTORY, but the operator means the running daemon's.
UNIT_STATE = "/var/lib/geod/state.json"


@dataclass(frozen=True, slots=True)
class Planned:
    """One row a pass would write: each field's (stored, new) value, and why."""

    key: str
    kind: str  # "resolved" (a NULL country), "filled", "confirmed", "changed"
    fields: dict[str, tuple[Any, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"ip": self.key, "kind": self.kind,
                "fields": {name: {"from": old, "to": new}
                           for name, (old, new) in self.fields.items()}}


class DryRunStore:
    """A real store, read as it is, whose writes are recorded as `Planned` rows instead.

    The store under it is opened read-only (`open_store(readonly=True)`: SQLite's mode=ro, a
    read-only PostgreSQL session, never a fleet's leases), so nothing could reach the table.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.planned: list[Planned] = []

    async def count_due(self) -> int:
        return await self._store.count_due()

    async def due_counts(self) -> DueCount:
        return await self._store.due_counts()

    def due_chunks(self, size: int | None = None) -> AsyncIterator[list[Row]]:
        return self._store.due_chunks() if size is None else self._store.due_chunks(size)

    def upkeep_chunks(self, query: UpkeepQuery, after: Any = None, size: int | None = None
                      ) -> AsyncGenerator[list[Stored], None]:
        if size is None:
            return self._store.upkeep_chunks(query, after)
        return self._store.upkeep_chunks(query, after, size)

    async def read_row(self, key: str) -> dict[str, Any] | None:
        return await self._store.read_row(key)

    async def report(self) -> StoreReport:
        return await self._store.report()

    async def close(self) -> None:
        await self._store.close()

    async def write(self, updates: Sequence[Update], resolved_at: str,
                    deadline: WriteDeadline | None = None) -> Written:
        for update in updates:
            stored = await self.read_row(update.key) or {}
            new = {"country_code": update.geo.country_code, "updated_at": resolved_at,
                   "source": update.source}
            for name in KEPT:  # the write's COALESCE: only where the row holds NULL
                if stored.get(name) is None:
                    new[name] = getattr(update.geo, name)
            self._plan(update.key, "resolved", stored, new)
        return Written(len(updates))

    async def write_changes(self, changes: Sequence[Change],
                            deadline: WriteDeadline | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for change in changes:
            self._plan(change.key, change.kind, change.expected, change.sets)
            counts[change.kind] = counts.get(change.kind, 0) + 1
        return counts

    async def settle(self, outcomes: Mapping[str, Outcome]) -> None:
        """A preview shares nothing: no instance of a fleet hears of its look-ups."""

    async def clear_attempts(self) -> int | None:
        return None

    def _plan(self, key: str, kind: str, stored: dict[str, Any], new: dict[str, Any]) -> None:
        fields = {name: (stored[name], new[name]) for name in stored  # the table's order
                  if name in new and stored[name] != new[name]}
        self.planned.append(Planned(key, kind, fields))


@dataclass(slots=True)
class Explanation:
    address: str
    stored: dict[str, Any] | None
    sendable: str | None
    verdict: str  # whether and why a pass would look at the row
    answers: list[dict[str, Any]] = field(default_factory=list)  # chain order
    backoff: str = ""
    would_write: Planned | None = None
    ipapi: str = ""  # a ban or refused key the state file records, else ""
    state: dict[str, Any] = field(default_factory=dict)  # what the state file says, for --json

    def as_json(self) -> dict[str, Any]:
        return {"ip": self.address, "stored": self.stored, "sendable": self.sendable,
                "verdict": self.verdict, "answers": self.answers, "backoff": self.backoff,
                "ipapi_pause": self.ipapi or None, "state": self.state,
                "would_write": self.would_write.as_json() if self.would_write else None}


async def _chain(config: Config, ask_ipapi: bool) -> tuple[Chain, Resources]:
    loop = asyncio.get_running_loop()
    governor = RateGovernor(config.ipapi.reserve, loop.time, asyncio.sleep,
                            share=config.ipapi.share == "auto")
    resources = Resources(make_session(), governor, loop.time, asyncio.sleep)
    try:
        chain = Chain.open(config, resources)
    except BaseException:
        await resources.session.close()
        raise
    if not ask_ipapi:
        chain = Chain([p for p in chain.providers if not is_metered(p)])
    return chain, resources


async def dry_run(config: Config, *, ask_ipapi: bool = False) -> tuple[PassSummary, list[Planned]]:
    """One pass exactly as `geod once` runs it, with every write recorded instead of made."""
    chain, resources = await _chain(config, ask_ipapi)
    loop = asyncio.get_running_loop()
    try:
        # Read-only: a preview can never create or change anything, whatever it does.
        store = DryRunStore(await open_store(config, readonly=True))
        try:
            neg = config.negative_cache
            upkeep = for_pass(config, store, chain.providers,
                              NegativeCache(neg.ttl, neg.max_ttl, loop.time), Cursor(),
                              resources.governor.spare, utc_now)
            summary = await Pass(store, chain.providers,
                                 NegativeCache(neg.ttl, neg.max_ttl, loop.time),
                                 clock=loop.time, upkeep=upkeep).run()
        finally:
            await store.close()
    finally:
        chain.close()
        await resources.session.close()
    return summary, store.planned


async def explain(config: Config, address: str, *, ask_ipapi: bool = False,
                  environ: Mapping[str, str] = os.environ, unit_state: str = UNIT_STATE,
                  wall: Callable[[], float] = time.time) -> Explanation:
    """What geod knows and would do about one stored address (nothing is written)."""
    store = await open_store(config, readonly=True)
    try:
        stored = await store.read_row(address)
    finally:
        await store.close()
    target = classify_address(address)
    chain, resources = await _chain(config, ask_ipapi=True)
    try:
        result = Explanation(address, stored, target.address, "")
        query = make_query(config, chain.providers, utc_datetime(utc_now()))
        result.verdict, kind = _verdict(stored, target.address, target.reason, query)
        _read_state(result, config, target.address or address, environ, unit_state, wall)
        geos: list[tuple[Provider, Geo]] = []
        for provider in chain.providers:
            if target.address is None:
                break
            if is_metered(provider) and not ask_ipapi:
                result.answers.append({"provider": provider.name, "outcome": "not asked",
                                       "reason": "spends ip-api quota; add --ask-ipapi"})
                continue
            tag = source_tag(provider)
            [lookup] = await provider.resolve([target.address])
            answer: dict[str, Any] = {"provider": provider.name, "outcome": lookup.outcome.value}
            if lookup.geo is not None:
                answer.update(_geo_fields(lookup.geo))
                geos.append((provider, lookup.geo))
            if lookup.reason:
                answer["reason"] = lookup.reason
            answer["source"] = tag
            result.answers.append(answer)
        result.would_write = _would_write(config, address, stored, kind, geos)
    finally:
        chain.close()
        await resources.session.close()
    return result


def _read_state(result: Explanation, config: Config, address: str,
                environ: Mapping[str, str], unit_state: str, wall: Callable[[], float]) -> None:
    """The address's back-off and any ip-api pause, as the daemon's state file has them.

    Read only: the file is the daemon's, and `explain` must never change what it remembers.
    """
    neg = config.negative_cache
    rule = (f"a failed look-up waits {neg.ttl}s, doubling up to {neg.max_ttl}s; "
            "`systemctl reload geod` clears every back-off")
    path = state_path(config.daemon.state_file, environ)
    if path is None and os.path.exists(unit_state):
        path = Path(unit_state)
    if path is None:
        result.backoff = (f"unknown: no state file ([daemon] state_file, $STATE_DIRECTORY or "
                          f"{unit_state}); {rule}")
        return
    try:
        found = recorded(path, address, neg.max_ttl, wall)
    except (OSError, ValueError, RecursionError) as error:  # CorruptState is a ValueError
        why = str(error) if isinstance(error, CorruptState) else (
            getattr(error, "strerror", None) or type(error).__name__)
        result.backoff = f"unknown: state file {path} not read ({why}); {rule}"
        result.state = {"file": str(path), "error": why}
        return
    now = wall()
    parts = []
    for who, entry in (("pass", found.backoff), ("upkeep", found.upkeep_backoff)):
        if entry is not None and entry[1] > now:
            parts.append(f"{who}: {entry[0]} failure(s), next attempt {_when(entry[1], now)}")
        elif entry is not None:
            parts.append(f"{who}: {entry[0]} failure(s), back-off over (asked on the next pass)")
    result.backoff = (f"{'; '.join(parts) or 'none'} (state file {path}); {rule}")
    paused = found.paused_until if (found.paused_until or 0.0) > now else None
    if paused is not None:
        result.ipapi = f"paused ({found.pause_reason}) until {_when(paused, now)}"
    result.state = {
        "file": str(path),
        "backoff": _entry_json(found.backoff), "upkeep_backoff": _entry_json(found.upkeep_backoff),
        "ipapi_paused_until": _utc(paused) if paused is not None else None,
        "ipapi_pause_reason": found.pause_reason if paused is not None else None,
    }


def _utc(wall_time: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_time))


def _when(wall_time: float, now: float) -> str:
    return f"{_utc(wall_time)} (in {round(wall_time - now)}s)"


def _entry_json(entry: tuple[int, float] | None) -> dict[str, Any] | None:
    return None if entry is None else {"failures": entry[0], "next_attempt": _utc(entry[1])}


def _verdict(stored: dict[str, Any] | None, address: str | None, reason: str,
             query: UpkeepQuery) -> tuple[str, Kind | str | None]:
    if stored is None:
        return "not in the table: a pass never sees it", None
    if address is None:
        return f"never sent: the address is {reason}", None
    if stored.get("country_code") is None:
        return "due: the country is NULL, the next pass asks the chain", "resolve"
    if stored.get("country_code") == "":
        return "not due: the app marked it unknown ('' is the app's own and is kept)", None
    kind = classify_row(Stored(address, None, stored), query)
    if kind is Kind.REFRESH:
        return "stale: re-resolved with capacity the NULL rows leave", kind
    if kind is Kind.REBUILD:
        return "answered by an older mmdb build: re-checked offline on the next pass", kind
    if kind is Kind.FILL:
        return "has gaps: name/asn/org filled from a provider that agrees on the country", kind
    return "not due: it has a country and nothing to refresh or fill", None


def _would_write(config: Config, key: str, stored: dict[str, Any] | None,
                 kind: Kind | str | None, geos: list[tuple[Provider, Geo]]) -> Planned | None:
    if stored is None or kind is None:
        return None
    now = utc_now()
    if kind == "resolve":
        if not geos:
            return None
        provider, geo = geos[0]
        new = {"country_code": geo.country_code, "updated_at": now, "source": source_tag(provider)}
        new.update({name: getattr(geo, name) for name in KEPT if stored.get(name) is None})
        fields = {n: (stored.get(n), v) for n, v in new.items() if n in stored and stored[n] != v}
        return Planned(key, "resolved", fields)
    if not isinstance(kind, Kind):
        return None
    row = Stored(key, None, stored)
    preset = local_fill(row, config.resolve.country_names) if kind is Kind.FILL else {}
    for provider, geo in geos:
        if kind is Kind.REBUILD and is_metered(provider):
            continue
        change = decide(row, kind, geo, source_tag(provider), now, preset)
        if change is not None:
            fields = {n: (stored.get(n), v) for n, v in change.sets.items()}
            return Planned(key, change.kind, fields)
    return Planned(key, "filled", {n: (None, v) for n, v in preset.items()}) if preset else None


def _geo_fields(geo: Geo) -> dict[str, Any]:
    return {"country_code": geo.country_code, "country_name": geo.country_name,
            "asn": geo.asn, "org": geo.org}


def render_planned(planned: Sequence[Planned]) -> list[str]:
    """The diff-style listing: one line per row, one indented line per field."""
    lines: list[str] = []
    for plan in planned:
        lines.append(f"{plan.kind:9} {plan.key}")
        for name, (old, new) in plan.fields.items():
            lines.append(f"  {name}: {_show(old)} -> {_show(new)}")
    return lines


def render_explanation(result: Explanation) -> list[str]:
    lines = [f"address      {result.address}",
             f"stored       {_row(result.stored)}",
             f"sendable     {result.sendable or 'no'}",
             f"verdict      {result.verdict}",
             "answers      (in chain order)"]
    for answer in result.answers:
        rest = {k: v for k, v in answer.items() if k not in ("provider", "outcome")}
        detail = " ".join(f"{k}={_show(v)}" for k, v in rest.items())
        lines.append(f"  {answer['provider']:8} {answer['outcome']:10} {detail}".rstrip())
    lines.append(f"back-off     {result.backoff}")
    if result.ipapi:
        lines.append(f"ip-api       {result.ipapi}")
    if result.would_write is None:
        lines.append("would write  nothing")
    else:
        lines.append(f"would write  ({result.would_write.kind})")
        lines += [f"  {name}: {_show(old)} -> {_show(new)}"
                  for name, (old, new) in result.would_write.fields.items()]
    return lines


def _row(stored: dict[str, Any] | None) -> str:
    if stored is None:
        return "no such row"
    return " ".join(f"{name}={_show(value)}" for name, value in stored.items())


def _show(value: Any) -> str:
    return "NULL" if value is None else repr(value) if isinstance(value, str) else str(value)

