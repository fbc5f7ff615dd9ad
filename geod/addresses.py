"""Decide which stored IP strings may be sent to a third party, and in which form.

Pure functions over `ipaddress`. In Python 3.11 `is_global` alone lets some ranges through
(multicast, IPv4-mapped IPv6, the NAT64 prefixes), so those are handled explicitly here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# NAT64 prefixes embed an IPv4 address that may be private; 3.11's is_global says yes to them.
_NAT64 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


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
    if not text or "%" in text:  # a scope id ties an address to one host's interface
        return Classified(None, "invalid")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return Classified(None, "invalid")
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in _NAT64):
            return Classified(None, "nat64")
    if ip.is_multicast:
        return Classified(None, "multicast")
    if not ip.is_global:
        return Classified(None, "private" if ip.is_private else "reserved")
    return Classified(str(ip))


def sendable(raw: str) -> str | None:
    """The normal form of `raw` if it may be sent, else None."""
    return classify(raw).address
