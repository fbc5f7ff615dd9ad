"""One geod per database: an advisory lock held while a geod runs (`run` or `once`).

Two geods on one table would each read the same NULL rows and each ask ip-api about every
address: the shared quota spent twice, for nothing. The lock is `flock` on a small file next to
the database (`<database>.geod-lock`, holding the owner's pid): the kernel drops it when the
process ends, however it ends, so a stale file never blocks anyone. `geod status` reads without
it. Whoever comes second is told who holds it and exits 75 (EX_TEMPFAIL: try again later).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import structlog

from geod.errors import AlreadyRunning, GeodError

log = structlog.get_logger("geod.instance")
_CANNOT_WRITE_HERE = {errno.EROFS, errno.EACCES, errno.EPERM}


def lock_path(database: str) -> Path:
    """The lock file of a database, next to it (symlinks resolved: one file, one lock)."""
    real = Path(os.path.realpath(database))
    return real.with_name(real.name + ".geod-lock")


class InstanceLock:
    """Held from `acquire` to `release`; acquiring never waits."""

    def __init__(self, database: str) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or fail at once.

        Raises:
            AlreadyRunning: another geod holds it (its pid is in the message).
            GeodError: the lock file cannot be created (the directory is not writable).
        """
        try:
            # 0600: it holds only a pid, but nobody else needs to open it. O_NOFOLLOW: a link
            # planted where the lock goes is not followed.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno in _CANNOT_WRITE_HERE:
                # geod cannot write next to the database, so it cannot write the database
                # either (SQLite's journal goes there): each pass will say so. No lock to hold.
                log.warning("instance_lock_unavailable", path=str(self.path),
                            reason=error.strerror or str(error))
                return
            raise GeodError(f"cannot create lock file {self.path}: "
                            f"{error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another geod (pid {holder})" if holder else "another geod"
            raise AlreadyRunning(
                f"{who} is resolving this database ({self.path.with_suffix('')}); "
                "run `systemctl reload geod` to make it pass now") from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same; the pid is only a courtesy
            pass

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it would race a third geod that just opened it.
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None
