"""Tests for geod.addresses: which stored IP strings may be sent to ip-api, and in which form."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geod.addresses import _V4_SPECIAL_ENDS, _V4_SPECIAL_STARTS, Classified, classify, sendable

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

PUBLIC = [
    ("8.8.8.8", "8.8.8.8"),
    (" 8.8.8.8 ", "8.8.8.8"),
    ("\t1.1.1.1\n", "1.1.1.1"),
    ("223.255.255.255", "223.255.255.255"),  # the last address below multicast
    ("2001:4860:4860::8888", "2001:4860:4860::8888"),
    ("2001:4860:4860:0:0:0:0:8888", "2001:4860:4860::8888"),
    ("2001:4860:4860:0000:0000:0000:0000:8888", "2001:4860:4860::8888"),
    ("2606:4700:4700::1111", "2606:4700:4700::1111"),
    ("2A00:1450:4001:82B::200E", "2a00:1450:4001:82b::200e"),
    ("::ffff:8.8.8.8", "8.8.8.8"),
    ("::FFFF:8.8.8.8", "8.8.8.8"),
    ("::ffff:808:808", "8.8.8.8"),
]

REJECTED = [
    # IPv4 private, loopback, link-local, shared, this-network, broadcast
    ("10.0.0.0", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("127.0.0.1", "private"),
    ("127.255.255.254", "private"),
    ("169.254.169.254", "private"),
    ("100.64.0.1", "reserved"),  # CGNAT: neither private nor global
    ("100.127.255.255", "reserved"),
    ("0.0.0.0", "private"),
    ("255.255.255.255", "private"),
    # documentation, benchmarking, future use
    ("192.0.2.1", "private"),
    ("198.51.100.1", "private"),
    ("203.0.113.255", "private"),
    ("198.18.0.1", "private"),
    ("198.19.255.255", "private"),
    ("240.0.0.1", "private"),
    # multicast edges
    ("224.0.0.0", "multicast"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.255", "multicast"),
    # IPv6
    ("::1", "private"),
    ("::", "private"),
    ("fe80::1", "private"),
    ("fd12::1", "private"),
    ("fc00::1", "private"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),  # global-scope multicast: is_global alone would let it through
    ("ff05::2", "multicast"),
    ("2001:db8::1", "private"),
    ("64:ff9b::8.8.8.8", "not-global"),
    ("64:ff9b::a00:1", "not-global"),
    ("64:ff9b:1::1", "not-global"),
    ("::8.8.8.8", "not-global"),
    ("::ffff:0:8.8.8.8", "not-global"),
    ("fec0::1", "not-global"),
    ("3fff::1", "not-global"),
    ("2002:a00:1::", "not-global"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo: is_global knows it
    ("5f00::1", "not-global"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:127.0.0.1", "private"),
    ("::ffff:224.0.0.1", "multicast"),
    ("::ffff:100.64.0.1", "reserved"),
    # not an address at all
    ("fe80::1%eth0", "invalid"),
    ("2001:4860::1%eth0", "invalid"),
    ("8.8.8.8%1", "invalid"),
    ("", "invalid"),
    ("   ", "invalid"),
    ("not-an-ip", "invalid"),
    ("1.2.3", "invalid"),
    ("01.2.3.4", "invalid"),
    ("1.2.3.4/24", "invalid"),
    ("8.8.8.8:80", "invalid"),
    ("[2001:4860::1]", "invalid"),
    ("256.1.1.1", "invalid"),
    ("1.2.3.4.5", "invalid"),
    ("8.8.8.8 8.8.4.4", "invalid"),
    ("2001:4860::1::2", "invalid"),
    ("0x08.8.8.8", "invalid"),
    ("\x008.8.8.8", "invalid"),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [pytest.param(raw, Classified(normal), id=repr(raw)) for raw, normal in PUBLIC]
    + [pytest.param(raw, Classified(None, reason), id=repr(raw)) for raw, reason in REJECTED],
)
def test_classify(raw: str, expected: Classified) -> None:
    """Each raw string classifies to its normal form, or to the reason it is never sent."""
    result = classify(raw)
    if expected.reason == "not-global" and result.reason in ("private", "reserved"):
        # Newer 3.11/3.12 patch releases teach is_global some of these ranges themselves.
        result = Classified(None, "not-global")
    assert result == expected
    assert sendable(raw) == expected.address


def test_rejected_reasons_say_why() -> None:
    """A rejected address always carries a reason and a sendable one never does."""
    assert all(classify(raw).reason for raw, _ in REJECTED)
    assert not any(classify(raw).reason for raw, _ in PUBLIC)


def _ips() -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return st.ip_addresses()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(ip=_ips())
def test_sendable_is_always_a_public_unicast_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Whatever sendable lets through parses, is global, not multicast, not NAT64, not mapped."""
    result = sendable(str(ip))
    if result is None:
        assert classify(str(ip)).reason
        return
    out = ipaddress.ip_address(result)
    assert out.is_global
    assert not out.is_multicast
    if isinstance(out, ipaddress.IPv6Address):
        assert out.ipv4_mapped is None
        assert not any(out in net for net in _NAT64)
    assert result == str(out)  # already in normal form
    assert sendable(result) == result  # and normalising is idempotent


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(ip=st.ip_addresses(v=4))
def test_mapped_ipv4_is_judged_as_ipv4(ip: ipaddress.IPv4Address) -> None:
    """An IPv4-mapped IPv6 address is classified exactly like the IPv4 address inside."""
    assert classify(f"::ffff:{ip}") == classify(str(ip))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(ip=st.ip_addresses(), pad=st.sampled_from(["", " ", "\t", "\n ", "  \r\n"]))
def test_whitespace_and_case_do_not_matter(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, pad: str
) -> None:
    """Surrounding whitespace, upper case and exploded IPv6 classify like the plain form."""
    plain = classify(str(ip))
    assert classify(f"{pad}{ip}{pad}") == plain
    assert classify(str(ip).upper()) == plain
    assert classify(ip.exploded) == plain


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    raw=st.one_of(
        st.text(),
        st.text(alphabet="0123456789abcdefABCDEF.:%/[] x", max_size=45),
        st.ip_addresses().map(str).flatmap(
            lambda ip: st.sampled_from([ip, f"{ip}%eth0", f"[{ip}]", f"{ip}/8", f"{ip}:80"])
        ),
    )
)
def test_classify_never_raises(raw: str) -> None:
    """classify returns a Classified for any text at all, with exactly one of address/reason."""
    result = classify(raw)
    assert isinstance(result, Classified)
    assert (result.address is None) == bool(result.reason)


# -- classify's IPv4 fast path agrees with ipaddress everywhere, covers every special block --

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
    """Anywhere in IPv4 space, the fast path says what ipaddress says (classify and sendable)."""
    text = str(ipaddress.IPv4Address(value))
    assert classify(text) == slow(text)
    assert sendable(f" {text}\t") == slow(text).address


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
    assert sendable(raw) is None


def test_public_text_is_its_own_normal_form() -> None:
    """The fast path hands back the stripped text, which is what ipaddress prints."""
    assert classify(" 8.8.8.8\n").address == "8.8.8.8"
