"""Which addresses the device may be made to connect to, by a URL someone else chose.

A URL from a client (`POST /url`) or from the twin (a model download) must not reach what
only the device can: itself (loopback), the cloud's metadata service and other link-local
addresses, multicast, reserved ranges and, for downloads, the plant's private networks. The
name is resolved here and each address checked before connecting, and the connection is made
to the checked address (never resolved twice), unless an operator listed it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValueError):
    """The name resolves only to addresses the rules refuse; says which kind, never what is
    there."""


class Unresolvable(OSError):
    """The name does not resolve."""


@dataclasses.dataclass(frozen=True)
class AddressRules:
    """Internal addresses are refused unless listed; `private`: private ranges count as
    internal too (model downloads; `/url` has its own host list, which names plant hosts)."""

    listed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    private: bool = False

    @classmethod
    def parse(cls, entries: tuple[str, ...], private: bool = False) -> AddressRules:
        """Rules from addresses or networks (`10.0.0.5`, `10.1.0.0/16`); ValueError names a
        bad one."""
        return cls(tuple(ipaddress.ip_network(entry, strict=False) for entry in entries), private)

    def internal(self, address: IpAddress) -> bool:
        return (
            address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_unspecified
            or address.is_reserved
            or (self.private and address.is_private)
        )

    def allows(self, address: IpAddress) -> bool:
        return not self.internal(address) or any(address in net for net in self.listed)


def usable_addresses(host: str, port: int, rules: AddressRules) -> list[tuple[int, str]]:
    """(family, address) pairs of `host` the rules allow, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise Unresolvable(f"cannot resolve {host}") from None
    usable: list[tuple[int, str]] = []
    for family, _, _, _, address in infos:
        text = str(address[0])
        if rules.allows(ipaddress.ip_address(text.split("%", 1)[0])):
            usable.append((family, text))
    if not usable:
        kinds = "loopback, link-local, private" if rules.private else "loopback, link-local"
        raise AddressRefused(f"{host} resolves to an internal address ({kinds} or metadata)")
    return usable


def connect(host: str, port: int, rules: AddressRules, timeout: float | None) -> socket.socket:
    """A TCP connection to the first allowed address of `host` that answers."""
    for family, address in usable_addresses(host, port, rules):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except OSError:
            sock.close()
            continue
        return sock
    raise ConnectionError(f"cannot connect to {host}:{port}")
