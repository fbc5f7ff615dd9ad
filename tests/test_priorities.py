"""Defect 4: under systemd the reason geod stops is filed at err, so `journalctl -p err` shows it.

systemd hands geod a stderr whose device:inode is in $JOURNAL_STREAM; here that stream is a
plain file with the same property, and the line must carry the sd-daemon(3) `<3>` prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from geod.errors import EXIT_CONFIG
from tests.proc import REPO, _base_env, write_geod_config


def _run_with_journal_stderr(tmp_path: Path, *args: str) -> tuple[int, str]:
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        info = os.fstat(stream.fileno())
        env = _base_env({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        code = subprocess.run(
            [sys.executable, "-m", "geod", *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stream, timeout=30, check=False,
        ).returncode  # fmt: skip
    return code, err.read_text()


def test_fatal_start_up_error_is_filed_at_err(tmp_path: Path) -> None:
    """`geod run` that cannot start writes `<3>geod: <reason>` to the journal stream."""
    config = write_geod_config(tmp_path / "geod.toml", db=tmp_path / "nowhere" / "geo.db",
                               url="http://127.0.0.1:9/batch")
    code, err = _run_with_journal_stderr(tmp_path, "--config", str(config), "run")
    assert code == 1
    assert err == f"<3>geod: database directory {tmp_path / 'nowhere'} does not exist\n"


def test_bad_config_is_filed_at_err(tmp_path: Path) -> None:
    """A config error (exit 78) is filed at err too."""
    config = tmp_path / "geod.toml"
    config.write_text("[daemon]\ninterval = -1\n")
    code, err = _run_with_journal_stderr(tmp_path, "--config", str(config), "run")
    assert code == EXIT_CONFIG
    assert err.startswith(f"<3>geod: {config}: [daemon] interval: "), err


def test_terminal_output_has_no_prefix(tmp_path: Path) -> None:
    """Outside the journal the same line has no priority prefix."""
    config = tmp_path / "geod.toml"
    config.write_text("[daemon]\ninterval = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "geod", "--config", str(config), "run"], env=_base_env(None),
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.stderr.startswith("geod: "), result.stderr
