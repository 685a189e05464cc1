"""The request-target: its form (RFC 9112 section 3.2), path and query."""

from __future__ import annotations

import pytest

from hardserve.http.target import TargetError, decode_path, parse_target


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
        (b"/a/../b", b"/a/../b", b""),
    ],
)
def test_origin_form(target: bytes, raw_path: bytes, query: bytes) -> None:
    parsed = parse_target(b"GET", target)
    assert (parsed.raw_path, parsed.query, parsed.authority) == (raw_path, query, None)


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        (b"/plain", b"/plain"),
        (b"/a%20b", b"/a b"),
        (b"/caf%C3%A9", b"/caf\xc3\xa9"),
        (b"/%e2%82%ac", b"/\xe2\x82\xac"),
        (b"/%41%42", b"/AB"),
        (b"/a+b", b"/a+b"),
        (b"/%2541", b"/%41"),  # decoded exactly once
    ],
)
def test_path_is_percent_decoded_once_to_bytes(raw_path: bytes, path: bytes) -> None:
    assert decode_path(raw_path) == path
    parsed = parse_target(b"GET", raw_path)
    assert (parsed.raw_path, parsed.path) == (raw_path, path)


def test_query_is_not_decoded() -> None:
    assert parse_target(b"GET", b"/?a=%20+b").query == b"a=%20+b"


def test_asterisk_form_is_for_options_only() -> None:
    parsed = parse_target(b"OPTIONS", b"*")
    assert (parsed.raw_path, parsed.path, parsed.query) == (b"*", b"*", b"")
    for method in (b"GET", b"POST", b"options"):
        with pytest.raises(TargetError, match="OPTIONS"):
            parse_target(method, b"*")


@pytest.mark.parametrize(
    ("target", "raw_path", "query", "authority"),
    [
        (b"http://example.com/foo?q=1", b"/foo", b"q=1", b"example.com"),
        (b"https://example.com/foo", b"/foo", b"", b"example.com"),
        (b"http://example.com", b"/", b"", b"example.com"),
        (b"http://example.com?q", b"/", b"q", b"example.com"),
        (b"http://example.com#f", b"/", b"", b"example.com"),
        (b"HTTP://EXAMPLE.COM/A", b"/A", b"", b"EXAMPLE.COM"),
        (b"http://[::1]:8080/foo", b"/foo", b"", b"[::1]:8080"),
        (b"http://example.com//a", b"//a", b"", b"example.com"),
    ],
)
def test_absolute_form(target: bytes, raw_path: bytes, query: bytes, authority: bytes) -> None:
    for method in (b"GET", b"OPTIONS"):
        parsed = parse_target(method, target)
        assert (parsed.raw_path, parsed.query, parsed.authority) == (raw_path, query, authority)


@pytest.mark.parametrize(
    "target",
    [b"http://user:pass@example.com:8080/foo", b"http://@example.com/", b"ftp://example.com/x"],
)
def test_absolute_form_with_userinfo_or_another_scheme_is_refused(target: bytes) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(b"GET", target)
    assert caught.value.code == "invalid_target"


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
