"""`geod demo`: geod's main job on a demo table, offline, in one command from a fresh checkout.

Writes a config and a fresh SQLite table of realistic holes (public IPv4 and IPv6, private,
invalid, rows the app already resolved), shows it, runs one ordinary pass (`Daemon.run_once`,
the code path of `geod once`) with the offline `rir` provider, and shows it again. Touches
nothing outside its own folder and needs no network.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from geod.config import Config, load_config
from geod.daemon import Daemon
from geod.records import PassSummary

DEFAULT_DIR = "geod-demo"

CONFIG = """\
# Written by `geod demo`. Resolve the demo table again with: geod once --config {path}
# The offline chain: RIR allocation data, no network and no quota. See examples/ for others.
[database]
path = "demo.db"

[database.columns]
source = "source"       # which provider answered each row

[resolve]
providers = ["rir"]

[log]
level = "warning"
"""

SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT, source TEXT)"
)

# (ip as the app stored it, country_code, country_name): None is a hole geod fills.
ROWS: tuple[tuple[str, str | None, str | None], ...] = (
    ("8.8.8.8", None, None),  # public IPv4 in each RIR's region
    ("1.0.16.1", None, None),
    ("77.88.8.8", None, None),
    ("41.0.0.1", None, None),
    ("200.0.0.1", None, None),
    ("1.1.1.1", None, None),  # anycast: RIR data says where it is registered (AU)
    (" 80.0.0.1 ", None, None),  # stored with stray spaces: normalised before the look-up
    ("::ffff:9.9.9.9", None, None),  # IPv4-mapped IPv6: looked up as 9.9.9.9
    ("2001:4860:4860::8888", None, None),  # public IPv6
    ("2a00:1450:4001::1", None, None),
    ("2c0f:f000::1", None, None),
    ("2001:200::1", None, None),
    ("2d00::1", None, None),  # global unicast, but no registry holds it: missed, backs off
    ("10.0.0.5", None, None),  # private and reserved: never looked up
    ("192.168.1.20", None, None),
    ("fd12:3456::1", None, None),
    ("127.0.0.1", None, None),
    ("not-an-ip", None, None),  # invalid strings: never looked up
    ("999.1.1.1", None, None),
    ("46.4.0.1", "DE", "Germany"),  # already resolved by the app: left alone
    ("2003::1", "DE", "Germany"),
    ("100.64.1.1", "", ""),  # the app's own "unknown" (''), not a hole: left alone
)


def run_demo(folder: str, out: TextIO) -> Config:
    """Write the demo, show the table, run one pass, show it again; returns the config used.

    Raises:
        GeodError: as `geod once` would (it should not, on a fresh folder).
    """
    config = _write(Path(folder))
    out.write(f"demo table {config.database.path} before the pass:\n")
    _show(config.database.path, out)
    summary = asyncio.run(_once(config))
    out.write(f"\ngeod once --config {config.source}\n")
    out.write((summary.line() if summary is not None else "interrupted") + "\n\n")
    out.write("after the pass:\n")
    _show(config.database.path, out)
    out.write(
        "\nNULL rows that stay NULL are private, reserved or invalid (never looked up) or in no\n"
        f"registry's data. To try it on your own table, copy {config.source} and set\n"
        "[database] path; examples/ has configs for mmdb files and ip-api.\n"
    )
    return config


async def _once(config: Config) -> PassSummary | None:
    return await Daemon(config).run_once()


def _write(folder: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "demo.toml"
    config_path.write_text(CONFIG.format(path=config_path), encoding="utf-8")
    db = folder / "demo.db"
    db.unlink(missing_ok=True)  # a fresh table every run: the demo is about the holes
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(SCHEMA)
            conn.executemany(
                "INSERT INTO geo_cache (ip, country_code, country_name) VALUES (?, ?, ?)", ROWS
            )
    finally:
        conn.close()
    return load_config(config_path)


def _show(path: str, out: TextIO) -> None:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT ip, country_code, country_name, source FROM geo_cache ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    table: list[tuple[str, ...]] = [("ip", "country_code", "country_name", "source")]
    table += [tuple(_cell(value) for value in row) for row in rows]
    _print_table(table, out)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    return repr(value) if value == "" or str(value).strip() != value else str(value)


def _print_table(table: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write(f"  {line.rstrip()}\n")
