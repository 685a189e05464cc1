"""Trusted-proxy resolution (http/forwarded.py): who is trusted, the walk from the right, what the
app is told, and what is refused. docs/proxies.md states the same rules in prose."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from hardserve.http import forwarded
from hardserve.http.forwarded import (
    FORWARDED_INVALID,
    FORWARDING_HEADERS,
    NOBODY,
    NOT_FORWARDED,
    Resolution,
    TrustedPeers,
    resolve,
)

# Two proxy tiers: a load balancer in 10.0.0.0/8 and a local proxy on loopback or a unix socket.
TRUST = TrustedPeers.parse("10.0.0.0/8, 127.0.0.1, ::1, fd00::/8, unix")
BASE = ((b"host", b"app.example"), (b"accept", b"*/*"))


def hdrs(*pairs: tuple[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return BASE + tuple((name.encode(), value.encode()) for name, value in pairs)


# -- TrustedPeers ------------------------------------------------------------------------------


def test_empty_spec_trusts_nobody() -> None:
    for spec in ("", "  "):
        peers = TrustedPeers.parse(spec)
        assert peers == NOBODY and not peers
        assert not peers.contains("127.0.0.1")
        assert not peers.contains(None) and not peers.contains("")


@pytest.mark.parametrize(
    ("addr", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("fd00::1", True),
        ("fe80::1", False),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("::ffff:127.0.0.1", True),
        ("::ffff:11.0.0.1", False),
        ("2001:db8::1", False),
        (None, True),  # a unix-socket peer
        ("", True),
        ("not an address", False),
        ("10.0.0.1:80", False),
        ("010.0.0.1", False),
    ],
)
def test_contains(addr: str | None, trusted: bool) -> None:
    assert TRUST.contains(addr) is trusted


def test_unix_is_trusted_only_when_listed() -> None:
    peers = TrustedPeers.parse("127.0.0.1")
    assert not peers.contains(None) and not peers.contains("")
    assert TrustedPeers.parse("unix").contains(None)
    assert TrustedPeers.parse("UNIX").unix


def test_mapped_network_in_the_spec_matches_ipv4_peers() -> None:
    peers = TrustedPeers.parse("::ffff:10.0.0.0/104")
    assert peers.networks == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert peers.contains("10.1.2.3") and peers.contains("::ffff:10.1.2.3")


def test_everything_must_be_written_out() -> None:
    peers = TrustedPeers.parse("0.0.0.0/0, ::/0")
    assert peers.contains("203.0.113.1") and peers.contains("2001:db8::1")
    assert not peers.contains(None)


def test_parse_normalises_and_prints() -> None:
    peers = TrustedPeers.parse(" 127.0.0.1 ,10.0.0.0/8,10.0.0.0/8, unix ")
    assert str(peers) == "127.0.0.1/32, 10.0.0.0/8, unix"
    assert TrustedPeers.parse(str(peers)) == peers


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("*", "'*' is not accepted"),
        ("localhost", "'localhost'"),
        ("10.0.0.1/8", "host bits set"),
        ("127.0.0.1,", "empty entry"),
        ("127.0.0.1,,::1", "empty entry"),
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("1.2.3", "'1.2.3'"),
        ("127.0.0.1 10.0.0.1", "'127.0.0.1 10.0.0.1'"),
    ],
)
def test_bad_specs_are_refused_with_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        TrustedPeers.parse(spec)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("trusted proxies:")


def test_verdict_cache_is_bounded_and_stays_right() -> None:
    peers = TrustedPeers.parse("10.0.0.0/8")
    for i in range(3000):
        addr = f"10.{i // 256}.{i % 256}.1" if i % 2 else f"11.{i // 256}.{i % 256}.1"
        assert peers.contains(addr) is bool(i % 2)
    assert len(peers._verdicts) <= forwarded._CACHE_MAX


# -- untrusted peers ---------------------------------------------------------------------------


def test_hot_path_returns_the_shared_verdict() -> None:
    assert resolve("203.0.113.5", BASE, NOBODY) is NOT_FORWARDED
    assert resolve("203.0.113.5", BASE, TRUST) is NOT_FORWARDED
    assert resolve("10.0.0.1", BASE, TRUST) is NOT_FORWARDED  # trusted, nothing forwarded
    assert Resolution() == NOT_FORWARDED


@pytest.mark.parametrize("trusted", [NOBODY, TRUST])
def test_untrusted_peer_loses_every_forwarding_header(trusted: TrustedPeers) -> None:
    sent = (
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"host", b"app.example"),
        *((name, b"spoofed") for name in sorted(FORWARDING_HEADERS)),
        (b"x-other", b"kept"),
    )
    result = resolve("203.0.113.5", sent, trusted)
    assert result.headers == ((b"host", b"app.example"), (b"x-other", b"kept"))
    assert (result.client_addr, result.url_scheme, result.host, result.server_port) == (None,) * 4
    assert result.error is None


def test_the_stripped_set() -> None:
    assert {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-by",
        b"x-real-ip",
    } <= FORWARDING_HEADERS
    assert b"host" not in FORWARDING_HEADERS and b"via" not in FORWARDING_HEADERS


def test_unix_peer_untrusted_by_default() -> None:
    result = resolve(None, hdrs(("x-forwarded-for", "1.2.3.4")), TrustedPeers.parse("127.0.0.1"))
    assert result.client_addr is None and result.headers == BASE


# -- X-Forwarded-For: the walk -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "client", "port"),
    [
        # One proxy: the element it appended is the client.
        ("10.0.0.1", "203.0.113.9", "203.0.113.9", None),
        # The client sent its own X-Forwarded-For: the walk stops at the first untrusted hop.
        ("10.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9", None),
        ("10.0.0.1", "6.6.6.6,203.0.113.9", "203.0.113.9", None),
        # Two trusted tiers: the first tier's address is skipped.
        ("127.0.0.1", "203.0.113.9, 10.0.0.7", "203.0.113.9", None),
        ("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.0.0.7", "203.0.113.9", None),
        # Every hop trusted: the leftmost.
        ("127.0.0.1", "10.0.0.3, 10.0.0.7", "10.0.0.3", None),
        # Ports and IPv6 forms.
        ("10.0.0.1", "203.0.113.9:4711", "203.0.113.9", 4711),
        ("10.0.0.1", "2001:db8::9", "2001:db8::9", None),
        ("10.0.0.1", "[2001:db8::9]", "2001:db8::9", None),
        ("10.0.0.1", "[2001:DB8:0::9]:443", "2001:db8::9", 443),
        ("10.0.0.1", "::ffff:203.0.113.9", "::ffff:cb00:7109", None),
        ("::1", "203.0.113.9, fd00::2", "203.0.113.9", None),
        ("::ffff:10.0.0.1", "203.0.113.9", "203.0.113.9", None),
        (None, "203.0.113.9", "203.0.113.9", None),  # behind a proxy on a unix socket
        # Empty list elements are ignored (RFC 9110 section 5.6.1).
        ("10.0.0.1", ", 203.0.113.9", "203.0.113.9", None),
        # Junk left of the client was never written by a trusted proxy: never read.
        ("10.0.0.1", "not-an-address, 203.0.113.9", "203.0.113.9", None),
        # "unknown": the client is as the last trusted hop saw it.
        ("127.0.0.1", "unknown, 10.0.0.7", "10.0.0.7", None),
        ("127.0.0.1", "203.0.113.9, UNKNOWN, 10.0.0.7", "10.0.0.7", None),
    ],
)
def test_x_forwarded_for_walk(peer: str | None, xff: str, client: str, port: int | None) -> None:
    result = resolve(peer, hdrs(("x-forwarded-for", xff)), TRUST)
    assert result.error is None, result.detail
    assert (result.client_addr, result.client_port) == (client, port)
    assert result.headers is None  # trusted: the app sees the headers as sent


def test_unknown_right_at_the_peer_keeps_the_peer() -> None:
    result = resolve("10.0.0.1", hdrs(("x-forwarded-for", "unknown")), TRUST)
    assert result.error is None and result.client_addr is None


def test_repeated_x_forwarded_for_fields_are_one_list() -> None:
    sent = hdrs(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9, 10.0.0.7"))
    assert resolve("127.0.0.1", sent, TRUST).client_addr == "203.0.113.9"
    sent = hdrs(("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "10.0.0.7"))
    assert resolve("127.0.0.1", sent, TRUST).client_addr == "203.0.113.9"


# -- X-Forwarded-Proto / Host / Port -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "scheme", "host", "server_port"),
    [
        ([("x-forwarded-proto", "https")], "https", None, 443),
        ([("x-forwarded-proto", "HTTP")], "http", None, 80),
        ([("x-forwarded-proto", "https"), ("x-forwarded-port", "8443")], "https", None, 8443),
        ([("x-forwarded-host", "shop.example")], None, b"shop.example", None),
        ([("x-forwarded-host", "shop.example:8080")], None, b"shop.example:8080", 8080),
        ([("x-forwarded-host", "[2001:db8::1]:8080")], None, b"[2001:db8::1]:8080", 8080),
        (
            [("x-forwarded-host", "shop.example:8443"), ("x-forwarded-port", "8443")],
            None,
            b"shop.example:8443",
            8443,
        ),
        ([("x-forwarded-port", "8080")], None, None, 8080),
        # Same length as X-Forwarded-For ("6.6.6.6, 203.0.113.9"): the client's index.
        ([("x-forwarded-proto", "http, https")], "https", None, 443),
        # Not the same length: the rightmost, which the trusted peer wrote.
        ([("x-forwarded-proto", "https")], "https", None, 443),
        ([("x-forwarded-proto", "gopher, http, https")], "https", None, 443),
        # Junk at indexes never read does not matter.
        ([("x-forwarded-proto", "gopher, https")], "https", None, 443),
    ],
)
def test_scheme_host_and_port(
    pairs: list[tuple[str, str]], scheme: str | None, host: bytes | None, server_port: int | None
) -> None:
    sent = hdrs(("x-forwarded-for", "6.6.6.6, 203.0.113.9"), *pairs)
    result = resolve("10.0.0.1", sent, TRUST)
    assert result.error is None, result.detail
    assert (result.url_scheme, result.host, result.server_port) == (scheme, host, server_port)
    assert result.client_addr == "203.0.113.9"


def test_per_hop_lists_follow_the_client_hop() -> None:
    # Two tiers, each appending: the first tier saw https from the client, the second http.
    sent = hdrs(
        ("x-forwarded-for", "203.0.113.9, 10.0.0.7"),
        ("x-forwarded-proto", "https, http"),
        ("x-forwarded-host", "shop.example, internal.lb"),
    )
    result = resolve("127.0.0.1", sent, TRUST)
    assert (result.client_addr, result.url_scheme, result.host) == (
        "203.0.113.9",
        "https",
        b"shop.example",
    )


def test_proto_without_x_forwarded_for() -> None:
    result = resolve("10.0.0.1", hdrs(("x-forwarded-proto", "https")), TRUST)
    assert (result.client_addr, result.url_scheme, result.server_port) == (None, "https", 443)


# -- RFC 7239 Forwarded ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "value", "client", "port", "scheme", "host"),
    [
        ("10.0.0.1", "for=203.0.113.9", "203.0.113.9", None, None, None),
        ("10.0.0.1", "For=203.0.113.9;PROTO=https", "203.0.113.9", None, "https", None),
        (
            "10.0.0.1",
            'for="203.0.113.9:4711";proto=https;host="shop.example:8443";by=10.0.0.1',
            "203.0.113.9",
            4711,
            "https",
            b"shop.example:8443",
        ),
        ("10.0.0.1", 'for="[2001:db8::9]"', "2001:db8::9", None, None, None),
        ("10.0.0.1", 'for="[2001:db8::9]:443"', "2001:db8::9", 443, None, None),
        ("10.0.0.1", 'for="203.0.113.9:_p1"', "203.0.113.9", None, None, None),
        ("10.0.0.1", r'for="203.0.\113.9"', "203.0.113.9", None, None, None),  # quoted-pair
        # The client's own element is skipped; proto/host come from the element that names it.
        (
            "127.0.0.1",
            "for=6.6.6.6;proto=http;host=evil, for=203.0.113.9;proto=https;host=shop.example, "
            "for=10.0.0.7;proto=http;host=lb.internal",
            "203.0.113.9",
            None,
            "https",
            b"shop.example",
        ),
        # Every hop trusted: the leftmost element.
        ("127.0.0.1", "for=10.0.0.3;proto=https, for=10.0.0.7", "10.0.0.3", None, "https", None),
        # unknown, obfuscated and missing for=: the last trusted hop's view; its element's data.
        ("127.0.0.1", "for=unknown;proto=https, for=10.0.0.7", "10.0.0.7", None, "https", None),
        ("127.0.0.1", "for=_hidden;proto=https, for=10.0.0.7", "10.0.0.7", None, "https", None),
        ("127.0.0.1", "proto=https, for=10.0.0.7", "10.0.0.7", None, "https", None),
        ("10.0.0.1", "for=unknown;proto=https", None, None, "https", None),
        # Extension parameters are allowed and ignored; empty elements and pairs are skipped.
        ("10.0.0.1", "for=203.0.113.9;ext=1", "203.0.113.9", None, None, None),
        ("10.0.0.1", "for=203.0.113.9;;proto=https", "203.0.113.9", None, "https", None),
        ("10.0.0.1", ", for=203.0.113.9 ,", "203.0.113.9", None, None, None),
    ],
)
def test_forwarded_walk(
    peer: str,
    value: str,
    client: str | None,
    port: int | None,
    scheme: str | None,
    host: bytes | None,
) -> None:
    result = resolve(peer, hdrs(("forwarded", value)), TRUST)
    assert result.error is None, result.detail
    assert (result.client_addr, result.client_port) == (client, port)
    assert (result.url_scheme, result.host) == (scheme, host)


def test_repeated_forwarded_fields_are_one_list() -> None:
    sent = hdrs(("forwarded", "for=6.6.6.6"), ("forwarded", "for=203.0.113.9, for=10.0.0.7"))
    assert resolve("127.0.0.1", sent, TRUST).client_addr == "203.0.113.9"


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs",
    [
        [("x-forwarded-for", "203.0.113.256")],
        [("x-forwarded-for", "203.0.113.09")],  # leading zero: octal to some parsers
        [("x-forwarded-for", "example.com")],
        [("x-forwarded-for", "203.0.113.9:0")],
        [("x-forwarded-for", "203.0.113.9:65536")],
        [("x-forwarded-for", "203.0.113.9:080")],
        [("x-forwarded-for", "[2001:db8::9")],
        [("x-forwarded-for", "2001:db8::9%eth0")],
        [("x-forwarded-for", "_hidden")],
        [("x-forwarded-for", "203.0.113.9, 10.0.0.7 10.0.0.8")],
        [("x-forwarded-proto", "ftp")],
        [("x-forwarded-proto", "https://")],
        [("x-forwarded-host", "shop.example/path")],
        [("x-forwarded-host", "user@shop.example")],
        [("x-forwarded-host", "shop%2eexample")],
        [("x-forwarded-host", "[::g]")],
        [("x-forwarded-host", "shop.example:99999")],
        [("x-forwarded-port", "+80")],
        [("x-forwarded-port", "0")],
        [("x-forwarded-port", "80a")],
        [("x-forwarded-host", "shop.example:8080"), ("x-forwarded-port", "8443")],
        [("forwarded", "for=203.0.113.9 ;proto=https")],
        [("forwarded", "for = 203.0.113.9")],
        [("forwarded", "for=[2001:db8::9]")],  # must be quoted
        [("forwarded", 'for="[2001:db8::9]:0"')],
        [("forwarded", 'for="unterminated')],
        [("forwarded", "for=203.0.113.9;for=1.2.3.4")],
        [("forwarded", "for")],
        [("forwarded", "for=203.0.113.9;proto=gopher")],
        [("forwarded", 'for=203.0.113.9;host="a b"')],
        [("forwarded", "for=2001.db8")],
        # Both families from a trusted peer: ambiguous.
        [("forwarded", "for=203.0.113.9"), ("x-forwarded-for", "203.0.113.9")],
        [("forwarded", "for=203.0.113.9"), ("x-forwarded-proto", "https")],
    ],
)
def test_malformed_from_a_trusted_proxy_is_refused(pairs: list[tuple[str, str]]) -> None:
    result = resolve("10.0.0.1", hdrs(*pairs), TRUST)
    assert result.error == FORWARDED_INVALID
    assert result.detail and "\n" not in result.detail
    assert result.client_addr is None and result.url_scheme is None and result.host is None


@pytest.mark.parametrize(
    "pairs",
    [
        [("x-forwarded-for", "203.0.113.256")],
        [("forwarded", 'for="unterminated')],
        [("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "1.2.3.4")],
    ],
)
def test_malformed_from_an_untrusted_peer_is_just_removed(pairs: list[tuple[str, str]]) -> None:
    result = resolve("203.0.113.5", hdrs(*pairs), TRUST)
    assert result.error is None and result.headers == BASE


def test_the_reason_code() -> None:
    assert FORWARDED_INVALID == "forwarded_invalid"


# -- choosing one family -----------------------------------------------------------------------


def test_family_forwarded_ignores_and_removes_x_forwarded() -> None:
    sent = hdrs(("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=203.0.113.9;proto=https"))
    result = resolve("10.0.0.1", sent, TRUST, family="forwarded")
    assert (result.client_addr, result.url_scheme, result.error) == ("203.0.113.9", "https", None)
    assert result.headers == hdrs(("forwarded", "for=203.0.113.9;proto=https"))


def test_family_x_forwarded_ignores_and_removes_forwarded() -> None:
    sent = hdrs(("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.9"))
    result = resolve("10.0.0.1", sent, TRUST, family="x-forwarded")
    assert (result.client_addr, result.error) == ("203.0.113.9", None)
    assert result.headers == hdrs(("x-forwarded-for", "203.0.113.9"))


def test_family_choice_with_only_the_other_family_present() -> None:
    result = resolve("10.0.0.1", hdrs(("x-forwarded-for", "6.6.6.6")), TRUST, family="forwarded")
    assert result.client_addr is None and result.headers == BASE
    result = resolve("10.0.0.1", BASE, TRUST, family="x-forwarded")
    assert result is NOT_FORWARDED


def test_other_forwarding_fields_from_a_trusted_peer_are_kept_as_sent() -> None:
    sent = hdrs(("x-real-ip", "203.0.113.9"), ("x-forwarded-for", "203.0.113.9"))
    result = resolve("10.0.0.1", sent, TRUST)
    assert result.headers is None and result.client_addr == "203.0.113.9"


def test_docs_list_exactly_the_removed_fields() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "proxies.md").read_text()
    paragraph = text.split("Removed fields (`FORWARDING_HEADERS`):", 1)[1].split(". These are", 1)[0]
    listed = {name.lower().encode() for name in re.findall(r"`([A-Za-z-]+)`", paragraph)}
    assert listed == FORWARDING_HEADERS
