"""geod(8) and geod.toml(5), generated from the argument parser and the config schema.

One source of truth each: the commands and options come from `cli.build_parser()`, the keys,
defaults and ranges from the `Config` dataclasses, each key's one-line "why" from the shipped
`config.example.toml`. `python -m geod.manpage` rewrites geod/data/man/; a test fails when the
committed pages differ from what this generates, so they cannot drift.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from geod import __version__
from geod.cli import build_parser
from geod.config import Config
from geod.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_NOPERM, EXIT_OK
from geod.install import data_text

MAN_DIR = Path(__file__).resolve().parent / "data" / "man"
DATE = "2026-11-29"  # bump with the content; never the build date (reproducible builds)
_KEY_LINE = re.compile(r"^#?\s*(\w+)\s*=\s*.*?\s+#\s*(.*)$")
_TABLE_LINE = re.compile(r"^\[([\w.]+)\]")
_MORE_LINE = re.compile(r"^\s{8,}#\s*(.*)$")


def roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote that would be a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def geod_8() -> str:
    parser = build_parser()
    lines = [f'.TH GEOD 8 "{DATE}" "geod {__version__}" "System Administration"',
             ".SH NAME", "geod \\- fill NULL\\-country rows of an IP geolocation cache",
             ".SH SYNOPSIS", "\\fBgeod\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR "
             "[\\fIOPTIONS\\fR]", ".br", "\\fBgeod \\-\\-version\\fR",
             ".SH DESCRIPTION", roff(parser.description or ""),
             "geod runs under systemd (geod.service) beside the app that owns the table. "
             "The configuration is described in \\fBgeod.toml\\fR(5).",
             ".SH COMMANDS"]
    # argparse keeps sub-commands in a private structure; this is its documented shape since 3.2.
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            lines += [".TP", f"\\fB{roff(name)}\\fR", roff(helps.get(name, ""))]
            for option in sub._actions:
                if option.option_strings and option.dest not in ("help", "config"):
                    metavar = f" \\fI{roff(option.metavar)}\\fR" if option.metavar else ""
                    flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in option.option_strings)
                    lines += [".RS", ".TP", f"{flags}{metavar}", roff(option.help or ""), ".RE"]
    lines += [".SH OPTIONS", ".TP", "\\fB\\-\\-config\\fR \\fIPATH\\fR",
              "the config file (default: $GEOD_CONFIG, else /etc/geod/config.toml); accepted "
              "before or after the command", ".TP", "\\fB\\-\\-version\\fR",
              "the version, and the Python, SQLite, aiohttp and rir data it runs on",
              ".SH EXIT STATUS",
              ".TP", str(EXIT_OK), "success (SIGTERM and SIGINT too)",
              ".TP", str(EXIT_FAILURE), "a fatal error, named in one line on stderr",
              ".TP", str(EXIT_NOPERM), "EX_NOPERM: geod may not write its database, the "
              "\\-wal/\\-shm/\\-journal files or the folder; the message names the file, its "
              "owner and mode, the user and the fix (systemd does not restart it)",
              ".TP", str(EXIT_CONFIG), "EX_CONFIG: the config, the table or a mapped column is "
              "wrong; the message names the file, key and problem (systemd does not restart it)",
              ".SH SIGNALS", ".TP", "SIGHUP", "re\\-read the config (an invalid one is refused "
              "and the old one kept), clear the negative cache, run a pass now",
              ".TP", "SIGTERM, SIGINT", "stop within 10 s, keeping every answered batch",
              ".SH FILES", ".TP", "/etc/geod/config.toml", "the config (\\fBgeod.toml\\fR(5))",
              ".TP", "/var/lib/geod/geo.db", "geod's own database (StateDirectory=)",
              ".TP", "/etc/systemd/system/geod.service", "the unit (\\fBgeod install\\-files\\fR)",
              ".SH SEE ALSO", "\\fBgeod.toml\\fR(5), \\fBsystemd.service\\fR(5), "
              "\\fBjournalctl\\fR(1), \\fBsystemd\\-sysusers\\fR(8)"]
    return "\n".join(lines) + "\n"


def _descriptions() -> dict[str, str]:
    """dotted key -> its comment in the shipped config.example.toml (continuations joined)."""
    found: dict[str, str] = {}
    table, last = "", ""
    for line in data_text("config.example.toml").splitlines():
        if match := _TABLE_LINE.match(line):
            table, last = match.group(1), ""
        elif match := _KEY_LINE.match(line):
            last = f"{table}.{match.group(1)}"
            found[last] = match.group(2).strip()
        elif last and (match := _MORE_LINE.match(line)):
            found[last] += " " + match.group(1).strip()
        else:
            last = ""
    return found


def schema_keys(cls: type[Any] = Config, prefix: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted key, default, rules) for every setting, in declaration order."""
    hints = get_type_hints(cls)
    keys: list[tuple[str, Any, dict[str, Any]]] = []
    for spec in fields(cls):
        if spec.metadata.get("derived"):
            continue
        key = f"{prefix}{spec.name}"
        if is_dataclass(hints[spec.name]):
            keys += schema_keys(hints[spec.name], f"{key}.")
        else:
            default = spec.default if spec.default is not MISSING else None
            keys.append((key, default, dict(spec.metadata)))
    return keys


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def geod_toml_5() -> str:
    why = _descriptions()
    lines = [f'.TH GEOD.TOML 5 "{DATE}" "geod {__version__}" "File Formats"',
             ".SH NAME", "geod.toml \\- configuration of \\fBgeod\\fR(8)",
             ".SH DESCRIPTION", "A TOML file, by default /etc/geod/config.toml. Unknown keys are "
             "errors; every value is range\\-checked; relative paths are relative to the file's "
             "folder. \\fBgeod check\\-config\\fR validates a file and the database access. "
             "Each key below shows its built\\-in default. The shipped config "
             "(\\fBgeod install\\-files\\fR) sets \\fIpath\\fR to /var/lib/geod/geo.db, "
             "the unit's StateDirectory=.", ".SH KEYS"]
    table = ""
    for key, default, rules in schema_keys():
        section = key.rpartition(".")[0]
        if section != table:
            table = section
            lines += [f'.SS "[{table}]"']
        limits = []
        if math.isfinite(rules["low"]) or math.isfinite(rules["high"]):
            limits.append(f"{_show(rules['low'])} .. {_show(rules['high'])}")
        if rules["choices"]:
            limits.append("one of " + ", ".join(rules["choices"]))
        extra = f" ({'; '.join(limits)})" if limits else ""
        lines += [".TP", f"\\fB{roff(key.rpartition('.')[2])}\\fR = {roff(_show(default))}",
                  roff(why.get(key, "") + extra)]
    lines += [".SH SEE ALSO", "\\fBgeod\\fR(8)"]
    return "\n".join(lines) + "\n"


PAGES = {"geod.8": geod_8, "geod.toml.5": geod_toml_5}


def main(out_dir: Path = MAN_DIR) -> None:
    """Write every page (`python -m geod.manpage`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (out_dir / name).write_text(render(), encoding="utf-8")
        print(f"wrote {out_dir / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
