"""journald output: `<N>event key=value` lines when $JOURNAL_STREAM names the log stream."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import structlog

from geod import logs


def _journal_env(stream: io.TextIOWrapper) -> dict[str, str]:
    stat = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def test_priority_prefixes_match_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each level gets its sd-daemon(3) prefix; no timestamp; fields follow as key=value."""
    path = tmp_path / "out.log"
    with open(path, "w", encoding="utf-8") as out:
        for key, value in _journal_env(out).items():
            monkeypatch.setenv(key, value)
        logs.configure("debug", "auto", out)
        log = structlog.get_logger()
        structlog.contextvars.bind_contextvars(pass_id=3)
        log.debug("request_sent", addresses=100)
        log.info("geo_re_resolve_complete", resolved=118, duration_s=1.9)
        log.warning("rate_limited", reason="too many requests")
        log.error("config_reload_failed", reason="geod.toml: [daemon] interval: bad\nvalue")
    assert path.read_text(encoding="utf-8").splitlines() == [
        "<7>request_sent addresses=100 pass_id=3",
        "<6>geo_re_resolve_complete resolved=118 duration_s=1.9 pass_id=3",
        '<4>rate_limited reason="too many requests" pass_id=3',
        '<3>config_reload_failed reason="geod.toml: [daemon] interval: bad\\nvalue" pass_id=3',
    ]


def test_an_exception_stays_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A traceback is escaped into the event's line, so journald keeps it one entry at <3>."""
    path = tmp_path / "out.log"
    with open(path, "w", encoding="utf-8") as out:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_env(out)["JOURNAL_STREAM"])
        logs.configure("info", "auto", out)
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger().exception("unexpected")
    [line] = path.read_text(encoding="utf-8").splitlines()
    assert line.startswith("<3>unexpected exception=") and "ValueError: boom" in line


@pytest.mark.parametrize(("journal_stream", "fmt", "expected"), [
    ("match", "auto", "journal"),
    ("match", "json", "json"),  # an explicit format wins
    ("match", "console", "console"),
    ("other", "auto", "json"),  # inherited from a parent whose stream this is not
    ("", "auto", "json"),
    ("garbage", "auto", "json"),
])  # fmt: skip
def test_auto_picks_journal_only_for_our_own_stream(
        tmp_path: Path, journal_stream: str, fmt: str, expected: str) -> None:
    """`auto` means journal only when $JOURNAL_STREAM is this stream's device:inode."""
    with open(tmp_path / "out.log", "w", encoding="utf-8") as out:
        stat = os.fstat(out.fileno())
        value = {"match": f"{stat.st_dev}:{stat.st_ino}",
                 "other": f"{stat.st_dev}:{stat.st_ino + 1}"}.get(journal_stream, journal_stream)
        assert logs.choose_format(fmt, out, {"JOURNAL_STREAM": value}) == expected


def test_json_keeps_its_timestamp_under_the_journal_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`format = "json"` is unchanged even under systemd: one JSON object with a timestamp."""
    path = tmp_path / "out.log"
    with open(path, "w", encoding="utf-8") as out:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_env(out)["JOURNAL_STREAM"])
        logs.configure("info", "json", out)
        structlog.get_logger().info("shutdown", passes=2)
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["event"] == "shutdown" and record["level"] == "info" and "timestamp" in record


def test_a_stream_without_a_file_is_never_the_journal() -> None:
    """An in-memory stream has no device:inode, so it cannot be the journal."""
    assert not logs.is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # type: ignore[arg-type]
