"""What this geod is made of: its version and the versions it runs on, for logs and --version.

An operator reading a bug report or a journal needs these without asking: the SQLite library
decides locking behaviour, aiohttp the HTTP client, and the `iptocc` release dates the `rir`
provider's registry data (iptocc publishes no separate data date; its version is the handle).
"""

from __future__ import annotations

import platform
import sqlite3
from importlib import metadata

from geod import __version__


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # pragma: no cover - a broken install
        return "missing"


def versions() -> dict[str, str]:
    """geod, Python, SQLite, aiohttp and the rir data, as log fields."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": _version("aiohttp"),
        "rir_data": f"iptocc {_version('iptocc')}",
    }


def version_text() -> str:
    """`geod --version`: the version line, then what it runs on."""
    v = versions()
    return (f"geod {v['version']}\n"
            f"Python {v['python']}, SQLite {v['sqlite']}, aiohttp {v['aiohttp']}, "
            f"rir data {v['rir_data']}")
