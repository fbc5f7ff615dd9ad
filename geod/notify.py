"""The sd_notify(3) protocol: one datagram of `KEY=value` lines to `$NOTIFY_SOCKET`.

Written here rather than imported: the protocol is a few lines, and the PyPI options are either
unmaintained or need libsystemd. Sends never block and never raise: systemd being away must not
stop geod. This module only speaks the protocol; what to say and when is `systemd`'s business.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from geod.netnum import parse_count

log = structlog.get_logger("geod.notify")


def socket_address(value: str) -> str | bytes | None:
    """The address `$NOTIFY_SOCKET` names: a path, or `@name` for the abstract namespace.

    Returns None for anything else (unset, empty, relative, or a kind systemd 252 cannot
    give, such as vsock:): geod then runs as if not under systemd.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between `WATCHDOG=1` pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    advises. None when the watchdog is off, malformed, or meant for another process."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    usec = parse_count(environ.get("WATCHDOG_USEC"), 2**64 - 1, low=1)
    if usec is None:
        return None
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what `MONOTONIC_USEC=` must carry next to RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def one_line(text: str) -> str:
    """A STATUS= value: one line (a newline would start a new field), at most 200 characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 200 else flat[:197] + "..."


class Notifier:
    """Sends sd_notify messages; does nothing at all when there is no socket.

    One socket for the life of the process. A failed send is logged once (`sd_notify_failed`,
    warning); later failures stay quiet so a missing manager cannot flood the log.
    """

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(socket_address(environ.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=value`) as one message; True if the datagram went out."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full receive queue must not stall the loop
            self._sock.sendto(message, self.address)
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify_failed", error=error.strerror or type(error).__name__,
                            socket=_show(self.address))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str = "") -> bool:
        # systemd >= 253 needs MONOTONIC_USEC to match RELOADING=1 to a reload; 252 ignores it.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *_status(status))

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Ping `WATCHDOG=1` every `interval` seconds until cancelled.

    A task on the daemon's own event loop, on purpose: passes and rate-limit waits are awaits,
    so the pings go on through them, while a loop that hangs stops them and gets restarted.
    """
    while True:
        notifier.watchdog()
        await sleep(interval)


def _status(text: str) -> tuple[str, ...]:
    return (f"STATUS={one_line(text)}",) if text else ()


def _show(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address
