"""`geod install-files`: put the unit, sysusers file, config and man pages where systemd looks.

The files travel in the wheel (package data), so a `pip install` carries everything an operator
needs and the README has one command to place them. An existing config is never overwritten
(an upgrade keeps the operator's edits); the unit, sysusers file and man pages always are (they
belong to the package; changes go in drop-ins). Nothing here runs systemctl.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

SHIPPED_EXEC = "/opt/geod/bin/geod"  # ExecStart= in the shipped unit


@dataclass(frozen=True, slots=True)
class Placement:
    source: str  # under geod/data
    target: str  # under the root
    keep_existing: bool = False


PLACEMENTS = (
    Placement("geod.service", "etc/systemd/system/geod.service"),
    Placement("geod.sysusers", "usr/lib/sysusers.d/geod.conf"),
    Placement("config.example.toml", "etc/geod/config.toml", keep_existing=True),
    Placement("man/geod.8", "usr/local/share/man/man8/geod.8"),
    Placement("man/geod.toml.5", "usr/local/share/man/man5/geod.toml.5"),
)


def data_text(name: str) -> str:
    """A shipped file's text (geod/data/NAME)."""
    return resources.files("geod").joinpath("data", name).read_text(encoding="utf-8")


def this_geod() -> str:
    """The `geod` script beside this Python (the venv's), or the shipped path if there is none."""
    candidate = Path(sys.executable).parent / "geod"
    return str(candidate) if candidate.is_file() else SHIPPED_EXEC


def install_files(root: Path, out: TextIO, executable: str | None = None) -> None:
    """Copy every shipped file under `root` (mode 0644), one line of output per file.

    The unit's ExecStart=/ExecReload= are pointed at `executable` (default: this venv's geod),
    so a venv elsewhere than /opt/geod needs no edit.
    """
    exe = executable or this_geod()
    for placement in PLACEMENTS:
        target = root / placement.target
        if placement.keep_existing and target.exists():
            print(f"kept      {target} (exists; the example is {_example(root)})", file=out)
            example = _example(root)
            example.parent.mkdir(parents=True, exist_ok=True)
            _write(example, data_text(placement.source))
            continue
        text = data_text(placement.source)
        if placement.source == "geod.service":
            text = text.replace(SHIPPED_EXEC, exe)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, text)
        print(f"installed {target}", file=out)


def _example(root: Path) -> Path:
    return root / "etc/geod/config.example.toml"


def _write(target: Path, text: str) -> None:
    temporary = target.with_name(f".{target.name}.new")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    shutil.move(temporary, target)  # atomic rename: a reader never sees half a file
