"""In-memory back-off for addresses whose look-up failed.

Each consecutive failure doubles the wait (ttl, 2*ttl, ... capped at max_ttl); an answer that
can never change (private range, invalid query) gets max_ttl at once. `geod.state` carries the
table across restarts (`entries` / `restore`), so a restart is no fresh chance to ask at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    failures: int
    until: float


class NegativeCache:
    def __init__(self, ttl: float, max_ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_ttl = max_ttl
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def blocked(self, address: str) -> bool:
        """True while `address` is backing off."""
        entry = self._entries.get(address)
        return entry is not None and self._clock() < entry.until

    def record_failure(self, address: str) -> float:
        """Start or extend the back-off of `address`; returns its length in seconds."""
        entry = self._entries.get(address)
        failures = entry.failures + 1 if entry else 1
        # Cap the exponent: the wait is capped anyway, and 2**n of a long-failing address
        # would otherwise overflow a float.
        wait = float(min(self.ttl * 2 ** min(failures - 1, 40), self.max_ttl))
        self._entries[address] = _Entry(failures, self._clock() + wait)
        return wait

    def record_permanent(self, address: str) -> None:
        """Back `address` off for max_ttl at once: the answer will not change soon."""
        entry = self._entries.get(address)
        failures = entry.failures + 1 if entry else 1
        self._entries[address] = _Entry(failures, self._clock() + self.max_ttl)

    def forget(self, address: str) -> None:
        self._entries.pop(address, None)

    def prune(self) -> int:
        """Drop entries whose back-off ended more than max_ttl ago; returns how many.

        Keeping recently expired entries is what lets consecutive failures keep doubling.
        """
        horizon = self._clock() - self.max_ttl
        stale = [address for address, entry in self._entries.items() if entry.until < horizon]
        for address in stale:
            del self._entries[address]
        return len(stale)

    def entries(self) -> Iterator[tuple[str, int, float]]:
        """(address, failures, back-off end on this cache's clock) for every entry."""
        for address, entry in self._entries.items():
            yield address, entry.failures, entry.until

    def restore(self, address: str, failures: int, until: float) -> None:
        """Take back an entry saved before a restart (`until` already on this cache's clock)."""
        self._entries[address] = _Entry(failures, until)

    def clear(self) -> int:
        """Forget everything (SIGHUP); returns how many entries there were."""
        count = len(self._entries)
        self._entries.clear()
        return count
