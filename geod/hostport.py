"""Parse a `host:port` listen address (`[metrics] listen`), strictly and without a lookup.

Only the shape is checked here; whether the host can be bound is found out, and reported in
one line, when the metrics server starts.
"""

from __future__ import annotations

import ipaddress
import re

from geod.netnum import parse_count

# An IPv4 address or a DNS name; IPv6 goes in brackets and is checked as an address.
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?")


def split_host_port(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:9108"` / `"[::1]:9108"` / `"localhost:9108"` -> (host, port).

    Raises:
        ValueError: with the reason, when `listen` is not host:port with a port of 1..65535.
    """
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = ":" in host and _is_ip(host)
    else:
        valid_host = bool(_HOSTNAME.fullmatch(host))
    if not sep or not valid_host:
        raise ValueError(f"must be host:port (IPv6 as [address]:port), got {listen!r}")
    number = parse_count(port, 65535, low=1) if port.strip() == port else None
    if number is None:
        raise ValueError(f"port must be 1..65535, got {listen!r}")
    return host, number


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
