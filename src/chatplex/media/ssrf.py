"""Keep remote media fetches off internal networks (SSRF): every address a host resolves to must be public."""

from __future__ import annotations

import ipaddress
import socket

from chatplex.errors import InvalidRequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local (cloud metadata lives there), multicast, reserved, unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)  # ::ffff:127.0.0.1 is loopback in disguise
    return address.is_global and not address.is_multicast


def check_addresses(addresses: list[IPAddress], host: str, param: str, allow_private: bool) -> None:
    if not addresses:
        raise InvalidRequestError(f"{param}: the host {host!r} resolves to no address.", param=param)
    if allow_private:
        return
    for address in addresses:
        if not is_public(address):
            raise InvalidRequestError(
                f"{param}: the host {host!r} resolves to the non-public address {address}; fetching it is not allowed.",
                param=param,
            )


def resolve(host: str, port: int, param: str) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidRequestError(f"{param}: cannot resolve the host {host!r} ({e}).", param=param) from None
    # Strip an IPv6 scope id ("fe80::1%eth0") before parsing.
    # getaddrinfo gives IP families only here, whose sockaddr starts with the address as a str.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
