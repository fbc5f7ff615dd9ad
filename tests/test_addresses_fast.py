"""classify's IPv4 fast path agrees with ipaddress everywhere, and covers every special block."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geod.addresses import _V4_SPECIAL_ENDS, _V4_SPECIAL_STARTS, classify


def slow(text: str) -> Any:
    """ipaddress's verdict: the IPv4-mapped form skips the fast path and is judged as IPv4."""
    return classify(f"::ffff:{text}")


def _edges() -> list[int]:
    points = {0, 2**32 - 1}
    for start, end in zip(_V4_SPECIAL_STARTS, _V4_SPECIAL_ENDS, strict=True):
        points |= {start - 1, start, start + 1, end - 1, end, end + 1}
    return sorted(p for p in points if 0 <= p < 2**32)


@pytest.mark.parametrize("value", _edges())
def test_block_edges_agree_with_ipaddress(value: int) -> None:
    """Just inside and just outside every special block, both paths give the same answer."""
    text = str(ipaddress.IPv4Address(value))
    assert classify(text) == slow(text)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(value=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_ipv4_agrees_with_ipaddress(value: int) -> None:
    """Anywhere in IPv4 space, the fast path says what ipaddress says."""
    text = str(ipaddress.IPv4Address(value))
    assert classify(text) == slow(text)


def test_every_non_global_block_of_this_python_is_covered() -> None:
    """Each block ipaddress treats as special here lies inside the fast path's list."""
    constants = ipaddress.IPv4Address._constants  # type: ignore[attr-defined]
    networks = [*constants._private_networks, constants._public_network,
                constants._multicast_network, constants._reserved_network,
                constants._loopback_network, constants._linklocal_network]
    for net in networks:
        first, last = int(net.network_address), int(net.broadcast_address)
        assert any(start <= first and last <= end
                   for start, end in zip(_V4_SPECIAL_STARTS, _V4_SPECIAL_ENDS, strict=True)), net


@pytest.mark.parametrize(
    "raw", ["08.8.8.8", "8.8.8.08", "\uff18.8.8.8", "8.8.8", "8.8.8.8.8", "256.8.8.8",
            "8.8.8.8 8", "+8.8.8.8", "8.8.8.", "0x8.8.8.8", "8.8.8.8%eth0", "8.8.8.1234"],
)
def test_non_canonical_text_is_left_to_ipaddress(raw: str) -> None:
    """Anything but plain dotted-quad text gets ipaddress's (here: invalid) verdict."""
    assert classify(raw).address is None


def test_public_text_is_its_own_normal_form() -> None:
    """The fast path hands back the stripped text, which is what ipaddress prints."""
    assert classify(" 8.8.8.8\n").address == "8.8.8.8"
