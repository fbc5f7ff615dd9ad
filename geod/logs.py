"""The one structlog set-up: stable snake_case events with fields, JSON, console or journal.

Only `cli` calls `configure`. Event names are an interface (log searches depend on them), so
they are spelled out where they are logged, never built from strings. Under systemd (`auto` and
`$JOURNAL_STREAM` naming our stream) each event is one `<N>event key=value` line: journald reads
the sd-daemon(3) priority prefix and adds its own timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sized
from typing import Any, TextIO

import structlog

from geod.netnum import parse_count

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


# sd-daemon(3) priorities: what `journalctl -p` filters on.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def choose_format(fmt: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> str:
    """Resolve `auto`: journal under systemd, console at a terminal, JSON for everything else."""
    if fmt != "auto":
        return fmt
    if is_journal(stream, environ):
        return "journal"
    return "console" if stream.isatty() else "json"


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is connected to the journal.

    systemd sets `$JOURNAL_STREAM` to the device:inode of the service's stdout/stderr; the
    variable is inherited, so systemd.exec(5) says to compare it with the stream itself.
    """
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    dev, ino = parse_count(device, 2**64 - 1), parse_count(inode, 2**64 - 1)
    if not sep or dev is None or ino is None:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file behind it (io.StringIO)
        return False
    return (stat.st_dev, stat.st_ino) == (dev, ino)


class JournalRenderer:
    """`<6>event key=value ...`: one line an event, priority prefix, no timestamp of our own."""

    def __init__(self) -> None:
        self._fields = structlog.processors.LogfmtRenderer(bool_as_flag=False)

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event_dict.pop("level", name)), 6)
        event = str(event_dict.pop("event", "")).replace("\n", " ")
        fields = self._fields(logger, name, event_dict) if event_dict else ""
        return f"<{priority}>{event} {fields}" if fields else f"<{priority}>{event}"


def readable_values(flatten: bool) -> structlog.typing.Processor:
    """Drop empty fields; with `flatten`, lists become `a,b` and mappings `k:v,k2:v2`.

    The journal and console lines are read by people and split by `journalctl -g` and awk: a
    Python repr (`['ip-api']`, `{'ip-api': 362}`) serves neither. JSON keeps its native lists
    and objects (machines parse them), but drops empty fields the same way.
    """

    def processor(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in list(event_dict.items()):
            if value is None or value == "" or (isinstance(value, Sized) and not len(value)
                                                 and not isinstance(value, str)):
                del event_dict[key]
            elif flatten and isinstance(value, Mapping):
                event_dict[key] = ",".join(f"{k}:{v}" for k, v in value.items())
            elif flatten and isinstance(value, list | tuple | set | frozenset):
                event_dict[key] = ",".join(str(item) for item in value)
        return event_dict

    return processor


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every event at `level` or above to `stream` (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    renderer: structlog.typing.Processor
    chosen = choose_format(fmt, out)
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
    elif chosen == "journal":
        renderer = JournalRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    # The journal stamps every line itself; a second timestamp would only be noise.
    stamp: list[structlog.typing.Processor] = (
        [] if chosen == "journal" else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            readable_values(flatten=chosen != "json"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        # Not cached, against structlog's production advice: the module-level loggers must pick
        # up the chain `configure` installs again after a SIGHUP (`geod run` re-logs).
        cache_logger_on_first_use=False,
    )
