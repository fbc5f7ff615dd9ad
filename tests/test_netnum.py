"""netnum.parse_count: the one rule for numbers from the network, config strings and environ."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geod.hostport import split_host_port
from geod.logs import is_journal
from geod.netnum import parse_count
from geod.notify import watchdog_interval


@pytest.mark.parametrize(
    ("text", "high", "expected"),
    [
        ("14", 100, 14),
        ("0", 100, 0),
        (" 7\t", 100, 7),  # HTTP allows blanks around a header value
        ("100", 100, 100),
        ("101", 100, None),  # more than it can mean: ignored, not clamped into a long wait
        ("3000000", 100, None),
        ("999999999", 300, None),
        ("²", 100, None),  # str.isdigit() says yes, int() raises
        ("١٤", 100, None),  # Arabic-Indic digits: int() would read 14
        ("-1", 100, None),
        ("+1", 100, None),
        ("1.5", 100, None),
        ("1_0", 100, None),
        ("", 100, None),
        (None, 100, None),
        ("9" * 5000, 10**9, None),  # no quadratic int() on hostile text
    ],
)
def test_parse_count_table(text: str | None, high: int, expected: int | None) -> None:
    """ASCII digits within 0..high are numbers; everything else is None, never an exception."""
    assert parse_count(text, high) == expected


@given(st.text(max_size=30), st.integers(min_value=0, max_value=10**12))
def test_parse_count_never_raises_and_stays_in_range(text: str, high: int) -> None:
    """Any text: None, or an int in range that is exactly what its ASCII digits say."""
    value = parse_count(text, high)
    if value is not None:
        stripped = text.strip(" \t")
        assert stripped.isascii() and stripped.isdigit()
        assert int(stripped) == value and 0 <= value <= high


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_parse_count_reads_every_plain_number(value: int, high: int) -> None:
    """A plain decimal number is read exactly when it is in range."""
    assert parse_count(str(value), high) == (value if value <= high else None)


@pytest.mark.parametrize("listen", ["127.0.0.1:²", "127.0.0.1:١٢٣", "127.0.0.1: 80", "h:0"])
def test_listen_port_follows_the_same_rule(listen: str) -> None:
    """metrics.listen's port: non-ASCII digits are a clear ValueError, not a crash (#10.10)."""
    with pytest.raises(ValueError, match="port must be 1..65535"):
        split_host_port(listen)


@pytest.mark.parametrize("usec", ["²", "١٠٠٠٠٠٠", "0", "-5", ""])
def test_watchdog_usec_follows_the_same_rule(usec: str) -> None:
    """$WATCHDOG_USEC that is not ASCII digits (or 0) means no watchdog, not a crash (#10.10)."""
    assert watchdog_interval({"WATCHDOG_USEC": usec}, pid=1) is None


def test_journal_stream_follows_the_same_rule() -> None:
    """$JOURNAL_STREAM with non-ASCII digits is not the journal, not a crash (#10.10)."""
    import io
    assert is_journal(io.StringIO(), {"JOURNAL_STREAM": "²:١"}) is False
