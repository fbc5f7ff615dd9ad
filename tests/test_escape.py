"""One escape for every value that reaches a terminal or the journal (`geod.escape`).

Applied once in `logs` (console and journal renderers; JSON escapes by its own rules) and by the
CLI for what it prints: a NUL or CR in a value cannot split a journal record or forge a `<0>`
line, and an ESC from the app's data cannot drive the operator's terminal.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from geod import logs
from geod.escape import escape, is_safe, unescape
from geod.mmdb import WatchedReader
from tests.conftest import MakeDb
from tests.mmdb_files import geolite2_country, write_mmdb
from tests.proc import run_geod, write_geod_config

HOSTILE = "GeoLite2\r<0>forged\0line\n\x1b[2J\x1b]0;title\x07\x9b\u2028\u202e\\x00"


def _unsafe(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) == "Cc" or c in "\u2028\u2029\u202e"]


@settings(max_examples=500)
@given(st.text())
def test_escaped_text_has_no_control_characters_and_round_trips(text: str) -> None:
    """For any string: the escaped form holds no control/line/bidi character and unescapes back."""
    escaped = escape(text)
    assert _unsafe(escaped) == []
    assert is_safe(escaped)
    assert unescape(escaped) == text


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")).filter(
    lambda c: c not in "\\\u2028\u2029\u200e\u200f" and not "\u202a" <= c <= "\u202e"
    and not "\u2066" <= c <= "\u2069")))
def test_printable_text_passes_unchanged(text: str) -> None:
    """Text without anything to escape (non-ASCII letters included) is left as it is."""
    assert escape(text) == text


def test_escape_is_readable() -> None:
    """Escapes are the familiar backslash forms."""
    assert escape("a\0b\r\n\t\x1b\x7f\x9b\u2028\\") == "a\\x00b\\r\\n\\t\\x1b\\x7f\\x9b\\u2028\\\\"


def _render(fmt: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **fields: object) -> str:
    path = tmp_path / f"{fmt}.log"
    with open(path, "w", encoding="utf-8") as out:
        if fmt == "journal":
            stat = os.fstat(out.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        logs.configure("info", "auto" if fmt == "journal" else fmt, out)
        structlog.get_logger().info("mmdb_opened", **fields)
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["journal", "console", "json"])
def test_mmdb_database_type_cannot_forge_a_journal_record(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 20: a real mmdb whose database_type holds CR, NUL and `<0>` logs one line."""
    mmdb = write_mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": geolite2_country("US", "US")},
                      database_type=HOSTILE)
    path = tmp_path / f"{fmt}.log"
    with open(path, "w", encoding="utf-8", newline="") as out:
        if fmt == "journal":
            stat = os.fstat(out.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        logs.configure("info", "auto" if fmt == "journal" else fmt, out)
        WatchedReader(str(mmdb)).close()
    text = path.read_bytes().decode("utf-8")
    assert text.count("\n") == 1 and text.endswith("\n")
    assert _unsafe(text[:-1]) == []
    if fmt == "journal":
        assert text.startswith("<6>mmdb_opened ")
        assert " database_type=GeoLite2\\r<0>forged\\x00line\\n\\x1b[2J" in text
    if fmt == "json":
        assert json.loads(text)["database_type"] == HOSTILE  # JSON keeps the value exactly
    if fmt == "console":
        assert "GeoLite2\\r<0>forged\\x00line" in text


@pytest.mark.parametrize("fmt", ["journal", "console", "json"])
def test_every_value_type_is_escaped(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists, exceptions and objects with a hostile str() are escaped like strings."""

    class Odd:
        def __str__(self) -> str:
            return "odd\r<0>x"

    text = _render(fmt, monkeypatch, tmp_path, items=["a\nb"], error=ValueError("e\rf"),
                   odd=Odd(), n=3, flag=True, none=None, **{"k\nx": "v"})
    assert text.count("\n") == 1
    assert _unsafe(text[:-1]) == []


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["journal", "console", "json"]))
def test_any_value_renders_as_one_line_without_controls(value: str, fmt: str) -> None:
    """Whatever a field holds, each renderer writes exactly one line free of control characters."""
    out = io.StringIO()
    logs.configure("info", "console" if fmt == "console" else "json", out)
    if fmt == "journal":  # the journal renderer, selected without a real journal stream
        structlog.configure(processors=[structlog.processors.add_log_level, logs.escape_fields,
                                        logs.JournalRenderer()],
                            logger_factory=lambda *_: logs.StreamLogger(out))
    structlog.get_logger().info("event", value=value)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert _unsafe(text[:-1]) == []


def test_status_escapes_the_apps_values(tmp_path: Path, make_db: MakeDb) -> None:
    """Finding 21: country codes stored by the app with terminal escapes are printed escaped."""
    db = make_db(rows=[("8.8.8.8", "\x1b]0;owned\x07\x1b[2J"), ("1.1.1.1", "\x9b31m")])
    config = write_geod_config(tmp_path / "geod.toml", db=db, url="http://127.0.0.1:9/batch")
    result = run_geod("--config", str(config), "status")
    assert result.returncode == 0, result.stderr
    assert _unsafe(result.stdout.replace("\n", "")) == []
    assert "top countries \\x1b]0;owned\\x07\\x1b[2J 1, \\x9b31m 1" in result.stdout
    as_json = run_geod("--config", str(config), "status", "--json")
    assert json.loads(as_json.stdout)["top_countries"] == [
        ["\x1b]0;owned\x07\x1b[2J", 1], ["\x9b31m", 1]]
    assert _unsafe(as_json.stdout.replace("\n", "")) == []


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    """A config path or TOML key holding control characters reaches stderr escaped, one line."""
    config = tmp_path / "geod\x1b[31m.toml"
    config.write_text('"bad\\u001bkey" = 1\n', encoding="utf-8")
    result = run_geod("--config", str(config), "check-config")
    assert result.returncode == 78
    assert result.stderr == f"geod: {tmp_path}/geod\\x1b[31m.toml: bad\\x1bkey: unknown key\n"
