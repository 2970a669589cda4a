"""The optional network allowlist, checked against a call's peer address."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs such as `fdaa::/16`; raise ValueError naming a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR such as fdaa::/16") from None
    return tuple(networks)


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP in a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`; gRPC
    sends the brackets percent-encoded, `ipv6:%5B::1%5D:5`)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%", 1)[0]
    else:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def allowed(peer: str, networks: Sequence[Network]) -> bool:
    address = peer_address(peer)
    if address is None:
        # A Unix socket is local; anything else unknown is refused.
        return peer.startswith("unix:")
    return any(address in network for network in networks)
