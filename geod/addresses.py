"""Decide which stored IP strings may be sent to a third party, and in which form.

Pure functions over `ipaddress`. In Python 3.11 `is_global` alone lets some ranges through
(multicast, IPv4-mapped IPv6, NAT64, 6to4, ...), so those are handled explicitly here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from bisect import bisect_right
from dataclasses import dataclass

# IPv6 ranges that Python 3.11's `is_global` accepts (or accepts on some patch releases) but
# that are not one public host: they embed an IPv4 address that may be private (NAT64, 6to4,
# IPv4-compatible, SIIT, Teredo), are deprecated (site-local) or are documentation/SRv6.
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated); :: and ::1 are in it too
        "::ffff:0:0:0/96",  # SIIT IPv4-translated
        "64:ff9b::/96",  # NAT64 well-known prefix
        "64:ff9b:1::/48",  # NAT64 local-use
        "2001::/32",  # Teredo
        "2002::/16",  # 6to4
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fec0::/10",  # site-local (deprecated)
    )
)


def _merged(networks: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """Sorted, merged [start, end] integer ranges of `networks`, as two parallel lists."""
    spans = sorted(
        (int(net.network_address), int(net.broadcast_address))
        for net in map(ipaddress.IPv4Network, networks)
    )
    starts: list[int] = []
    ends: list[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


# Every IPv4 block that is, or on some Python release may be, not global: IANA's special-purpose
# registry, multicast and the reserved 224/3 tail. Deliberately wider than `is_global`: only
# addresses outside all of them take the fast path in `classify`; inside, ipaddress decides.
_V4_SPECIAL_STARTS, _V4_SPECIAL_ENDS = _merged((
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/3",
))


# Dotted-quad text exactly as ipaddress prints it: ASCII digits, no leading zeros, each <= 255.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)


def _plain_public_ipv4(text: str) -> bool:
    """True for canonical dotted-quad text outside every special block.

    A pass reads up to 100,000 rows (a fleet instance all of them before its first claim);
    ipaddress spends ~20 us on each to say what this says in ~0.5 us for the common case.
    Canonical means what ipaddress would print back, so the text itself is the normal form,
    and `inet_aton` (lenient on other forms) reads it exactly.
    """
    if _CANONICAL_QUAD.fullmatch(text) is None:
        return False
    value = int.from_bytes(socket.inet_aton(text), "big")
    index = bisect_right(_V4_SPECIAL_STARTS, value) - 1
    return index < 0 or value > _V4_SPECIAL_ENDS[index]


@dataclass(frozen=True, slots=True)
class Classified:
    """What a stored IP string is: `address` to send, or `reason` it must never be sent."""

    address: str | None
    reason: str = ""


def classify(raw: str) -> Classified:
    """Normalise `raw` and say whether it is a public address worth asking a provider about.

    The normal form is what gets sent (whitespace stripped, IPv4-mapped IPv6 unwrapped,
    IPv6 compressed); rows keep their own key for the write-back.
    """
    text = raw.strip()
    if _plain_public_ipv4(text):
        return Classified(text)
    if not text or "%" in text:  # a scope id ties an address to one host's interface
        return Classified(None, "invalid")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return Classified(None, "invalid")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast:
        return Classified(None, "multicast")
    if not ip.is_global:
        return Classified(None, "private" if ip.is_private else "reserved")
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _NOT_GLOBAL_V6):
        return Classified(None, "not-global")
    return Classified(str(ip))


def sendable(raw: str) -> str | None:
    """The normal form of `raw` if it may be sent, else None."""
    return classify(raw).address
