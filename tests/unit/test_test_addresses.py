"""Tests send traffic only to loopback: no IPv4 address outside 127.0.0.0/8 may appear in
tests/, not even inside a payload a pod might connect to. 0.0.0.0 is allowed: it is a
listen address (bind to every interface), never a destination."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")


def addresses_outside_loopback(text: str) -> list[str]:
    found = []
    for match in IPV4.findall(text):
        try:
            address = ipaddress.IPv4Address(match)
        except ipaddress.AddressValueError:
            continue  # not an address (a component above 255)
        if not address.is_loopback and not address.is_unspecified:
            found.append(match)
    return found


def test_the_check_sees_private_and_public_addresses() -> None:
    # Built from numbers, so that no such address is written in tests/ (they are only the
    # check's input, never a destination): a private, a link-local and a public one.
    private, link_local, public = (
        str(ipaddress.IPv4Address(n)) for n in (0x0A000007, 0xA9FE0102, 0x08080808)
    )
    text = f'host: "{private}", peer {link_local}:80, dns {public}; '
    text += "ok 127.0.0.3, 0.0.0.0, 1.2.3.4.5"
    assert addresses_outside_loopback(text) == [private, link_local, public]


def test_no_test_holds_an_address_outside_loopback() -> None:
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in sorted(TESTS.rglob("*"))
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json", ".txt"}
        if (found := addresses_outside_loopback(path.read_text(errors="replace")))
        and path != Path(__file__).resolve()
    }
    assert offenders == {}
