"""The one structlog set-up: stable snake_case events with fields, JSON, console or journal.

Only `cli` calls `configure`. Event names are an interface (log searches depend on them), so
they are spelled out where they are logged, never built from strings. Under systemd (`auto` and
`$JOURNAL_STREAM` naming our stream) each event is one `<N>event key=value` line: journald reads
the sd-daemon(3) priority prefix and adds its own timestamp.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sized
from typing import Any, TextIO

import structlog

from geod.escape import escape
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
    return "console" if _isatty(stream) else "json"


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
    """`<6>event key=value ...`: one line an event, priority prefix, no timestamp of our own.

    Values arrive escaped (`escape_fields`), so they hold no line break; a value with a space, `=`
    or `"` is quoted logfmt-style, with `"` as the only character escaped inside the quotes.
    """

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event_dict.pop("level", name)), 6)
        event = str(event_dict.pop("event", ""))
        fields = " ".join(f"{key}={_logfmt(value)}" for key, value in event_dict.items())
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


def _logfmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and not any(char in text for char in ' ="'):
        return text
    return '"' + text.replace('"', '\\"') + '"'


_PLAIN = (bool, int, float, type(None))


def escape_fields(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Escape every key and value for a line-oriented renderer (console, journal).

    Whatever a value is, it reaches the stream as text without control characters: one event is
    one line, and nothing in it can forge a journal record or drive a terminal. Values that are
    not plain numbers become their `str()` first, so a list or an exception is covered too.
    """
    return {
        escape(str(key)): value if isinstance(value, _PLAIN) else escape(str(value))
        for key, value in event_dict.items()
    }


def json_text(data: Any, **kwargs: Any) -> str:
    """JSON with every non-ASCII and control character escaped, DEL included (json leaves it)."""
    return json.dumps(data, **kwargs).replace("\x7f", "\\u007f")


class StreamLogger:
    """Writes rendered lines to a stream; a write error turns logging off instead of raising.

    When stdout's reader goes away (a closed pipe, a stopped journald) the next write fails with
    EPIPE. Logging is how geod reports, not what it does: the pass goes on and its results are
    written. The stream's descriptor is pointed at /dev/null, so the interpreter's last flush at
    exit does not fail either.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def msg(self, message: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(message + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # EPIPE, EIO, ENOSPC, or a stream already closed
            self.broken = True
            silence(self.stream)

    log = debug = info = warning = warn = error = err = critical = fatal = exception = msg


def silence(stream: TextIO) -> None:
    """Point `stream`'s descriptor at /dev/null and drop what is buffered; never raises."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor behind it (io.StringIO)
        pass


def write_line(stream: TextIO, text: str) -> None:
    """Print a command's output (escaped by the caller); a reader that went away is no error."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        silence(stream)


def _never_raise(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        event = event_dict.get("event", "")
        try:
            return renderer(logger, name, event_dict)
        except Exception as error:  # noqa: BLE001 - a log line must never break a pass
            return escape(f"log_render_failed event={event} error={type(error).__name__}")

    return render


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every event at `level` or above to `stream` (stdout by default).

    Console and journal lines are escaped (`escape_fields`); JSON escapes by its own rules.
    """
    out = stream if stream is not None else sys.stdout
    renderer: structlog.typing.Processor
    chosen = choose_format(fmt, out)
    escaping: list[structlog.typing.Processor] = [escape_fields]
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer(serializer=json_text)
        escaping = []
    elif chosen == "journal":
        renderer = JournalRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))
    # The journal stamps every line itself; a second timestamp would only be noise.
    stamp: list[structlog.typing.Processor] = (
        [] if chosen == "journal" else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    )
    sink = StreamLogger(out)  # one for all loggers: once broken, every logger stays quiet
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            readable_values(flatten=chosen != "json"),
            *escaping,
            _never_raise(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: sink,
        # Not cached, against structlog's production advice: the module-level loggers must pick
        # up the chain `configure` installs again after a SIGHUP (`geod run` re-logs).
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):  # closed
        return False
