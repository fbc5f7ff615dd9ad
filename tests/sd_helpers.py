"""A notify socket standing in for systemd, for the tests of `geod run` as a service.

The processes themselves (geod, the fake ip-api) come from `tests/proc.py`. Every wait here is
bounded.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One sd_notify datagram: when it arrived (monotonic) and its KEY=value fields."""

    at: float
    fields: dict[str, str]

    def has(self, key: str, value: str | None = None) -> bool:
        return key in self.fields and (value is None or self.fields[key] == value)


class NotifyListener:
    """An AF_UNIX datagram socket like systemd's notify socket; a thread collects what arrives.

    `abstract=True` binds in the abstract namespace and gives `@name` as `$NOTIFY_SOCKET`.
    """

    def __init__(self, *, abstract: bool = False) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._dir = tempfile.mkdtemp(prefix="geod-sd-")  # short: sun_path has 108 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"geod-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = "@" + name
        else:
            self.env_value = os.path.join(self._dir, "notify")
            self.sock.bind(self.env_value)
        self.sock.settimeout(0.05)
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cond:
                self.messages.append(Message(time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(
        self, match: Callable[[Message], bool], timeout: float = 10, after: int = 0,
        describe: Callable[[], str] = lambda: "",
    ) -> tuple[int, Message]:  # fmt: skip
        """The first message at index >= `after` that `match`es, with its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(after, len(self.messages)):
                    if match(self.messages[index]):
                        return index, self.messages[index]
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "\n  ".join(str(m.fields) for m in self.messages[-30:])
                    raise AssertionError(f"no matching sd_notify message; got:\n  {got}\n"
                                         + describe())
                self._cond.wait(min(left, 0.1))

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        if os.path.exists(os.path.join(self._dir, "notify")):
            os.unlink(os.path.join(self._dir, "notify"))
        os.rmdir(self._dir)


@contextmanager
def notify_listener(*, abstract: bool = False) -> Iterator[NotifyListener]:
    listener = NotifyListener(abstract=abstract)
    try:
        yield listener
    finally:
        listener.close()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
