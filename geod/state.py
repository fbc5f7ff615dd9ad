"""geod's own memory across restarts: the negative cache and what the rate governor learned.

One small JSON file in the unit's `StateDirectory=` (never in the app's database), replaced
atomically (temp file, fsync, rename). Times are stored as wall-clock seconds, since the
monotonic clock starts again at boot. A missing, unreadable, corrupt or foreign-version file is
a warning and a fresh start, never a crash; values are bounded on the way in, so a bad file
cannot buy a long wait. Without a path (no `state_file`, no `$STATE_DIRECTORY`) nothing is kept.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from geod.negcache import NegativeCache
from geod.ratelimit import BAN_PAUSE, DEMAND_MEMORY, KEY_PAUSE, MAX_RL, MAX_TTL, RateGovernor

log = structlog.get_logger("geod.state")

VERSION = 1
FILE_NAME = "state.json"
MAX_ENTRIES = 200_000  # negative-cache entries kept on disk (the latest back-offs win): ~10 MB
MAX_BYTES = 32 << 20
MIN_SAVE_GAP = 1.0  # seconds between two saves after a batch (a pass's end always saves)

Entry = tuple[str, int, float]  # address, failures, back-off end (wall clock)


class CorruptState(ValueError):
    """The file is not a state file geod can trust; the message says why."""


def state_path(configured: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """`[daemon] state_file` if set, else `state.json` in `$STATE_DIRECTORY`, else None.

    systemd may list several directories in `$STATE_DIRECTORY` (colon-separated): the first.
    """
    if configured:
        return Path(configured)
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(directory) / FILE_NAME if directory else None


class StateFile:
    """Loads and saves one state file for one governor and the negative caches.

    `negcache` is the pass's (NULL rows), `upkeep_negcache` upkeep's own (rows with a country):
    both are kept, so a restart re-asks neither kind of address before its back-off ends.
    """

    def __init__(
        self,
        path: Path,
        governor: RateGovernor,
        negcache: NegativeCache,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
        upkeep_negcache: NegativeCache | None = None,
    ) -> None:
        self.path = path
        self._governor = governor
        self._negcache = negcache
        self._upkeep_negcache = upkeep_negcache
        self._clock = clock  # monotonic, the one the governor and cache use
        self._wall = wall
        self._last_save: float | None = None
        self._save_failed = False

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> bool:
        """Restore what the file remembers; False (and a warning) when there is nothing usable."""
        try:
            governor, entries, upkeep_entries = self._parse(read_file(self.path))
        except FileNotFoundError:
            log.warning("state_not_found", path=str(self.path), action="starting fresh")
            return False
        except (OSError, ValueError, RecursionError) as error:  # CorruptState is a ValueError
            reason = str(error) if isinstance(error, CorruptState) else type(error).__name__
            log.warning("state_ignored", path=str(self.path), reason=reason[:200],
                        action="starting fresh")
            return False
        self._apply(governor, entries, upkeep_entries)
        log.info("state_loaded", path=str(self.path), backing_off=len(entries),
                 upkeep_backing_off=len(upkeep_entries),
                 remaining=self._governor.remaining, paused=self._governor.pause_reason or None)
        return True

    def _parse(self, data: dict[str, Any]
               ) -> tuple[dict[str, Any], list[Entry], list[Entry]]:
        """Check every value; bound every time so a bad file cannot buy a long wait."""
        now = self._wall()
        gov = data.get("governor")
        if not isinstance(gov, dict):
            raise CorruptState("no governor section")
        parsed: dict[str, Any] = {
            "remaining": _int_or_none(gov, "remaining", MAX_RL),
            "limit": _int(gov, "limit", MAX_RL + 1),
            "window": _number(gov, "window", 0, MAX_TTL),
            "others_now": _int(gov, "others_now", MAX_RL + 1),
            "history": _int_list(gov, "history", MAX_RL + 1, DEMAND_MEMORY),
            "reset_at": _time_or_none(gov, "reset_at", now + MAX_TTL),
            "seen": _time_or_none(gov, "seen", now + MAX_TTL),
            "reset_margin": _number(gov, "reset_margin", 0, 10),
            "paused_until": _time_or_none(gov, "paused_until", now + max(BAN_PAUSE, KEY_PAUSE)),
            "pause_reason": gov.get("pause_reason", ""),
            "pause_key": gov.get("pause_key", ""),
        }
        if parsed["pause_reason"] not in ("", "banned", "key refused"):
            raise CorruptState("unknown pause_reason")
        if not isinstance(parsed["pause_key"], str) or len(parsed["pause_key"]) > 64:
            raise CorruptState("bad pause_key")
        entries = _entries(data.get("backoff"), "backoff", now + self._negcache.max_ttl)
        # (Absent in a file from before upkeep's back-offs were kept: none, not corrupt.)
        upkeep = self._upkeep_negcache
        upkeep_entries = (_entries(data.get("upkeep_backoff", []), "upkeep_backoff",
                                   now + upkeep.max_ttl) if upkeep is not None else [])
        return parsed, entries, upkeep_entries

    def _apply(self, gov: dict[str, Any], entries: list[Entry],
               upkeep_entries: list[Entry]) -> None:
        g, to_mono = self._governor, self._to_monotonic
        g.remaining, g.limit, g.window = gov["remaining"], gov["limit"], gov["window"]
        g.others_now = gov["others_now"]
        g.history.clear()
        g.history.extend(gov["history"])
        g.reset_at = to_mono(gov["reset_at"])
        g.last_seen = to_mono(gov["seen"])
        g.reset_margin = max(g.reset_margin, gov["reset_margin"])
        g.paused_until = to_mono(gov["paused_until"])
        g.pause_reason, g.pause_key = gov["pause_reason"], gov["pause_key"]
        if g.paused_until is None:
            g.pause_reason, g.pause_key = "", ""
        for address, failures, until in entries:
            self._negcache.restore(address, failures, self._clock() + until - self._wall())
        if self._upkeep_negcache is not None:
            for address, failures, until in upkeep_entries:
                self._upkeep_negcache.restore(address, failures,
                                              self._clock() + until - self._wall())

    def _to_monotonic(self, wall_time: float | None) -> float | None:
        return None if wall_time is None else self._clock() + wall_time - self._wall()

    # -- writing ----------------------------------------------------------------------------

    def save_soon(self) -> None:
        """Save after a batch, at most once per MIN_SAVE_GAP (a pass's end always saves)."""
        if self._last_save is None or self._clock() - self._last_save >= MIN_SAVE_GAP:
            self.save()

    def save(self) -> None:
        """Write the file atomically; a failure is a warning (once), never an exception."""
        self._last_save = self._clock()
        try:
            _write_atomically(self.path, json.dumps(self._snapshot(), separators=(",", ":")))
        except OSError as error:
            if not self._save_failed:
                log.warning("state_save_failed", path=str(self.path),
                            reason=error.strerror or type(error).__name__,
                            action="restarts will start fresh")
            self._save_failed = True
        else:
            self._save_failed = False

    def _snapshot(self) -> dict[str, Any]:
        g = self._governor
        delta = self._wall() - self._clock()  # monotonic -> wall clock

        def wall(mono: float | None) -> float | None:
            return None if mono is None else round(mono + delta, 3)

        def backoff(cache: NegativeCache | None) -> list[list[Any]]:
            if cache is None:
                return []
            entries = sorted(cache.entries(), key=lambda e: e[2], reverse=True)
            return [[a, f, wall(u)] for a, f, u in entries[:MAX_ENTRIES]]

        return {
            "version": VERSION,
            "saved_at": round(self._wall(), 3),
            "governor": {
                "remaining": g.remaining, "limit": g.limit, "window": g.window,
                "others_now": g.others_now, "history": list(g.history),
                "reset_at": wall(g.reset_at), "seen": wall(g.last_seen),
                "reset_margin": g.reset_margin, "paused_until": wall(g.paused_until),
                "pause_reason": g.pause_reason, "pause_key": g.pause_key,
            },
            "backoff": backoff(self._negcache),
            "upkeep_backoff": backoff(self._upkeep_negcache),
        }


def read_file(path: Path) -> dict[str, Any]:
    """The file's JSON, size- and version-checked; never writes. CorruptState or OSError."""
    with path.open("rb") as file:
        raw = file.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise CorruptState(f"larger than {MAX_BYTES} bytes")
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise CorruptState(f"version {str(version)[:20]!r}, expected {VERSION}")
    return data


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a state file says about one address and about ip-api (`geod explain`).

    Back-offs are (failures, next attempt), times are wall-clock seconds; None = not recorded.
    """

    backoff: tuple[int, float] | None
    upkeep_backoff: tuple[int, float] | None
    paused_until: float | None
    pause_reason: str


def recorded(path: Path, address: str, max_ttl: float,
             wall: Callable[[], float] = time.time) -> Recorded:
    """Read (only) what the daemon's state file holds about `address`, bounded as `load` bounds
    it. Raises CorruptState or OSError (missing, unreadable) for the caller to say so."""
    data, now = read_file(path), wall()
    gov = data.get("governor")
    if not isinstance(gov, dict):
        raise CorruptState("no governor section")

    def find(key: str) -> tuple[int, float] | None:
        raw = data.get(key, []) if key == "upkeep_backoff" else data.get(key)
        for found, failures, until in _entries(raw, key, now + max_ttl):
            if found == address:
                return failures, until
        return None

    paused = _time_or_none(gov, "paused_until", now + max(BAN_PAUSE, KEY_PAUSE))
    reason = gov.get("pause_reason", "")
    if reason not in ("", "banned", "key refused"):
        raise CorruptState("unknown pause_reason")
    return Recorded(find("backoff"), find("upkeep_backoff"),
                    paused if reason else None, reason if paused is not None else "")


def _write_atomically(path: Path, text: str) -> None:
    """Temp file beside it, fsync, rename, fsync the directory: old or new, never half."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _entries(raw: object, key: str, horizon: float) -> list[Entry]:
    """One back-off list: [address, failures, wall-clock end], the end pulled back to `horizon`."""
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise CorruptState(f"bad {key} list")
    entries = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and len(item[0]) <= 64 and type(item[1]) is int and 1 <= item[1] <= 1000
                and _finite(item[2])):
            raise CorruptState(f"bad {key} entry")
        entries.append((item[0], item[1], min(float(item[2]), horizon)))
    return entries


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key)
    if not _finite(value) or not low <= value <= high:  # type: ignore[operator]
        raise CorruptState(f"bad {key}")
    return float(value)  # type: ignore[arg-type]


def _int(data: dict[str, Any], key: str, high: int) -> int:
    value = data.get(key)
    if type(value) is not int or not 0 <= value <= high:
        raise CorruptState(f"bad {key}")
    return value


def _int_or_none(data: dict[str, Any], key: str, high: int) -> int | None:
    return None if data.get(key) is None else _int(data, key, high)


def _int_list(data: dict[str, Any], key: str, high: int, length: int) -> list[int]:
    value = data.get(key)
    if not isinstance(value, list) or len(value) > length:
        raise CorruptState(f"bad {key}")
    return [_int({"v": v}, "v", high) for v in value]


def _time_or_none(data: dict[str, Any], key: str, latest: float) -> float | None:
    """A wall-clock time, pulled back to `latest` (a clock set wrong must not block for years)."""
    value = data.get(key)
    if value is None:
        return None
    if not _finite(value):
        raise CorruptState(f"bad {key}")
    return min(float(value), latest)
