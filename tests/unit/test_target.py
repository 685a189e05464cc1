"""The request-target: its form (RFC 9112 section 3.2), path and query."""

from __future__ import annotations

import pytest

from hardserve.http.target import Target, TargetError, parse_target


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a/b", b"/a/b", b""),
        (b"/a?", b"/a", b""),
        (b"/a?x=1&y=2", b"/a", b"x=1&y=2"),
        (b"/a?x=?y", b"/a", b"x=?y"),
        (b"/a?q=1#frag", b"/a", b"q=1"),
        (b"/a#frag?not-a-query", b"/a", b""),
        (b"///keeping_slashes", b"///keeping_slashes", b""),
        (b'/with_"quotes"?foo="bar"', b'/with_"quotes"', b'foo="bar"'),
        (b"/%2e%2e/x", b"/%2e%2e/x", b""),
    ],
)
def test_origin_form(target: bytes, raw_path: bytes, query: bytes) -> None:
    assert parse_target(b"GET", target) == Target(raw_path, query)


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        (b"/plain", b"/plain"),
        (b"/a%20b", b"/a b"),
        (b"/a%2Fb", b"/a/b"),
        (b"/caf%C3%A9", b"/caf\xc3\xa9"),
        (b"/%e2%82%ac", b"/\xe2\x82\xac"),
        (b"/100%", b"/100%"),
        (b"/%zz%4", b"/%zz%4"),
        (b"/%2e%2e/x", b"/../x"),
        (b"/a+b", b"/a+b"),
        (b"/\xc3\xa0%20k", b"/\xc3\xa0 k"),
    ],
)
def test_path_is_percent_decoded_to_bytes(raw_path: bytes, path: bytes) -> None:
    target = Target(raw_path, b"")
    assert target.path == path
    assert target.raw_path == raw_path


def test_query_is_not_decoded() -> None:
    assert parse_target(b"GET", b"/?a=%20+b").query == b"a=%20+b"


def test_asterisk_form_is_for_options_only() -> None:
    assert parse_target(b"OPTIONS", b"*") == Target(b"*", b"")
    for method in (b"GET", b"POST", b"options"):
        with pytest.raises(TargetError, match="OPTIONS"):
            parse_target(method, b"*")


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        (b"http://example.com/foo?q=1", b"/foo", b"q=1"),
        (b"https://example.com/foo", b"/foo", b""),
        (b"http://example.com", b"/", b""),
        (b"http://example.com?q", b"/", b"q"),
        (b"http://example.com#f", b"/", b""),
        (b"HTTP://EXAMPLE.COM/A", b"/A", b""),
        (b"http://[::1]:8080/foo", b"/foo", b""),
        (b"http://user:pass@example.com:8080/foo?q=1", b"/foo", b"q=1"),
        (b"http://example.com//a", b"//a", b""),
    ],
)
def test_absolute_form(target: bytes, raw_path: bytes, query: bytes) -> None:
    assert parse_target(b"GET", target) == Target(raw_path, query)
    assert parse_target(b"OPTIONS", target) == Target(raw_path, query)


@pytest.mark.parametrize(
    "target", [b"example.com:443", b"[::1]:443", b"127.0.0.1:80", b"a:1"]
)
def test_authority_form_is_refused_outside_connect(target: bytes) -> None:
    with pytest.raises(TargetError, match="CONNECT"):
        parse_target(b"GET", target)


@pytest.mark.parametrize(
    "target", [b"", b"foo/bar", b"foo", b"?q=1", b"#f", b"**", b"example.com", b"1http://x/"]
)
def test_other_targets_are_refused(target: bytes) -> None:
    with pytest.raises(TargetError):
        parse_target(b"GET", target)


def test_target_error_is_a_value_error() -> None:
    assert issubclass(TargetError, ValueError)
