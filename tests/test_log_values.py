"""Defect 6: log values read by people and machines, never Python reprs or empty fields."""

from __future__ import annotations

import io
import json

import aiohttp
import structlog

from geod import logs
from geod.ipapi import _describe

FIELDS = {"providers": ["ip-api", "rir"], "resolved_by": {"mmdb": 980, "ip-api": 20},
          "retry_after": None, "note": "", "empty": [], "attempt": 0}


def _emit(fmt: str) -> str:
    out = io.StringIO()
    logs.configure("info", fmt, out)
    structlog.get_logger("t").info("geo_re_resolve_complete", **FIELDS)
    return out.getvalue().strip()


def test_journal_lines_join_lists_and_pair_mappings() -> None:
    """Journal: lists comma-joined, mappings key:value, empty fields left out, zero kept."""
    assert _emit("journal") == (
        "<6>geo_re_resolve_complete providers=ip-api,rir resolved_by=mmdb:980,ip-api:20 attempt=0"
    )


def test_console_lines_are_flattened_too() -> None:
    """Console: the same flattened values (no brackets, no quotes from a repr)."""
    line = _emit("console")
    assert "providers=ip-api,rir" in line and "resolved_by=mmdb:980,ip-api:20" in line, line
    fields = line.split("geo_re_resolve_complete", 1)[1]
    assert "retry_after" not in fields and "note" not in fields and "[" not in fields, line


def test_json_keeps_native_values_without_empty_fields() -> None:
    """JSON keeps lists and objects (machines parse them) and drops the empty fields."""
    record = json.loads(_emit("json"))
    assert record["providers"] == ["ip-api", "rir"]
    assert record["resolved_by"] == {"mmdb": 980, "ip-api": 20}
    assert {"retry_after", "note", "empty"}.isdisjoint(record) and record["attempt"] == 0


def test_network_reasons_are_words_not_class_names() -> None:
    """`reason=ClientPayloadError` becomes words; the class travels in error_type= instead."""
    for error in (aiohttp.ClientPayloadError("x"), aiohttp.ServerDisconnectedError(),
                  aiohttp.ClientError()):
        reason = _describe(error)
        assert type(error).__name__ not in reason and " " in reason, reason
