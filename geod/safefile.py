"""The one way geod reads a small file named in its config: never a device, a FIFO or a flood.

A path in a config may point anywhere: `/dev/zero` (endless), a FIFO (an `open()` that never
returns), a 10 GB log. `read_small_file` opens without blocking and without becoming the
terminal's owner, checks with `fstat` on the open descriptor (no window between check and read)
that it is a regular file, and reads at most `cap + 1` bytes, so an oversized file is refused
without being read. Symlinks are followed (`/etc` files and systemd credentials are often links):
the check applies to what they point at. `require_regular` is the same check for files that other
libraries open themselves (the mmdb files).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnreadableFile(ValueError):
    """`str()` names the file and the reason, never its content."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "Is a directory"  # the words of EISDIR, as other tools print them
    if stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        return "not a regular file"
    return f"{kind}, not a regular file"


def _open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """A descriptor on `path` after checking it is a regular file. Raises: UnreadableFile."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise UnreadableFile(path, f"{error.strerror or error}") from None
    except ValueError:  # an embedded NUL: no such file can exist
        raise UnreadableFile(repr(str(path)), "the path holds a NUL character") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(path, _not_regular(info.st_mode))
    except OSError as error:
        os.close(fd)
        raise UnreadableFile(path, f"{error.strerror or error}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_small_file(path: str | Path, cap: int) -> bytes:
    """The whole content of the regular file at `path`, which must be at most `cap` bytes.

    Raises:
        UnreadableFile: missing, unreadable, not a regular file, or larger than `cap`.
    """
    fd, _ = _open_regular(path)
    try:
        chunks: list[bytes] = []
        left = cap + 1  # one byte more than allowed tells "too big" without reading it all
        while left > 0:
            chunk = os.read(fd, min(left, 65_536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as error:
        raise UnreadableFile(path, f"{error.strerror or error}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        raise UnreadableFile(path, f"larger than {cap:,} bytes")
    return data


def require_regular(path: str | Path) -> None:
    """Check that `path` can be opened for reading and is a regular file. Raises: UnreadableFile."""
    fd, _ = _open_regular(path)
    os.close(fd)
