"""Decide which stored IP strings may be sent to a third party, and in which form.

Pure functions over `ipaddress`. In Python 3.11 `is_global` alone lets some ranges through
(multicast, IPv4-mapped IPv6, NAT64, 6to4, ...), so those are handled explicitly here.
"""

from __future__ import annotations

import ipaddress
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
