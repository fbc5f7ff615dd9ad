"""The one structlog set-up: stable snake_case events with fields, JSON or console.

Only `cli` calls `configure`. Event names are an interface (log searches depend on them), so
they are spelled out where they are logged, never built from strings.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def choose_format(fmt: str, stream: TextIO) -> str:
    """Resolve `auto`: console for a person at a terminal, JSON for everything else."""
    if fmt != "auto":
        return fmt
    return "console" if stream.isatty() else "json"


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every event at `level` or above to `stream` (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    renderer: structlog.typing.Processor
    if choose_format(fmt, out) == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
