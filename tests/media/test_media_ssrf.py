"""The SSRF guard decides on resolved addresses; no traffic leaves this machine."""

from __future__ import annotations

import ipaddress

import pytest

from chatplex.errors import InvalidRequestError
from chatplex.media import ssrf


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.5", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
     "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::"],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not ssrf.is_public(ip)
    with pytest.raises(InvalidRequestError, match="non-public address") as info:
        ssrf.check_addresses([ip], "example.test", "messages[0].content[1]", allow_private=False)
    assert info.value.param == "messages[0].content[1]"


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert ssrf.is_public(ip)
    ssrf.check_addresses([ip], "example.test", "p", allow_private=False)


def test_one_private_address_among_public_ones_is_refused() -> None:
    ips = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(InvalidRequestError, match="10.0.0.1"):
        ssrf.check_addresses(ips, "mixed.test", "p", allow_private=False)


def test_flag_allows_private_addresses() -> None:
    ssrf.check_addresses([ipaddress.ip_address("127.0.0.1")], "localhost", "p", allow_private=True)


def test_resolve_ip_literals_and_localhost() -> None:
    assert ssrf.resolve("[::1]", 80, "p") == [ipaddress.ip_address("::1")]
    assert ssrf.resolve("127.0.0.1", 80, "p") == [ipaddress.ip_address("127.0.0.1")]
    assert all(ip.is_loopback for ip in ssrf.resolve("localhost", 80, "p"))


def test_unresolvable_host_names_the_part() -> None:
    with pytest.raises(InvalidRequestError, match="cannot resolve") as info:
        ssrf.resolve("no-such-host.invalid", 80, "messages[2].content[0]")
    assert info.value.param == "messages[2].content[0]"
