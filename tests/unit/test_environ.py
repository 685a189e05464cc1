"""The PEP 3333 environ built from a parsed head."""

from __future__ import annotations

import dataclasses
import io
import sys
from typing import Any
from wsgiref.validate import check_environ

import pytest

from hardserve.http.environ import build_environ, connection_addresses, worker_constants
from hardserve.http.forwarded import (
    FORWARDED_INVALID,
    NOT_FORWARDED,
    Resolution,
    TrustedPeers,
    resolve,
)
from hardserve.http.limits import Limits
from hardserve.http.parser import RequestHead, RequestParser
from hardserve.http.target import parse_target

INPUT = io.BytesIO(b"")
ERRORS = io.StringIO()


class Wrapper:
    """Stands in for the server's wsgi.file_wrapper."""


CONSTANTS = worker_constants(wsgi_errors=ERRORS, file_wrapper=Wrapper)


def head_of(raw: bytes) -> RequestHead:
    parser = RequestParser(Limits(header_count_max=1000))
    parser.feed(raw)
    event = parser.next_event()
    assert isinstance(event, RequestHead), event
    return event


def environ_of(raw: bytes, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "peer": ("192.0.2.7", 51234),
        "server": ("127.0.0.1", 8000),
        "url_scheme": "http",
        "wsgi_input": INPUT,
    }
    script_name = overrides.pop("script_name", None)
    kwargs.update(overrides)
    kwargs["addresses"] = connection_addresses(kwargs.pop("peer"), kwargs.pop("server"))
    constants = CONSTANTS
    if script_name is not None:
        constants = worker_constants(wsgi_errors=ERRORS, file_wrapper=Wrapper, script_name=script_name)
    return build_environ(head_of(raw), constants, **kwargs)


def request(*lines: bytes, first: bytes = b"GET / HTTP/1.1") -> bytes:
    return first + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def test_pep3333_keys() -> None:
    environ = environ_of(request(b"Host: example.com", first=b"GET /a/b?x=1 HTTP/1.1"))
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a/b"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["RAW_URI"] == environ["REQUEST_URI"] == "/a/b?x=1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "51234")
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"] is INPUT
    assert environ["wsgi.errors"] is ERRORS
    assert environ["wsgi.file_wrapper"] is Wrapper
    assert environ["wsgi.input_terminated"] is True
    assert (environ["wsgi.multithread"], environ["wsgi.multiprocess"]) == (True, False)
    assert environ["wsgi.run_once"] is False
    assert environ["CONTENT_LENGTH"] == ""
    assert "CONTENT_TYPE" not in environ


@pytest.mark.parametrize(
    "raw",
    [
        request(b"Host: x"),
        request(b"Host: x", b"Content-Type: text/plain", b"Content-Length: 3", first=b"POST /p HTTP/1.1"),
        request(b"Host: x", b"Transfer-Encoding: chunked", first=b"PUT /p HTTP/1.1"),
        request(first=b"OPTIONS /x HTTP/1.0"),
        request(b"Host: x", b"Cookie: a=1", b"Cookie: b=2", first=b"GET /caf%C3%A9?q HTTP/1.1"),
    ],
)
def test_wsgiref_accepts_the_environ(raw: bytes) -> None:
    environ = environ_of(raw)
    check_environ(environ)
    for key, value in environ.items():
        if not key.startswith("wsgi."):
            assert type(value) is str, key
            value.encode("latin-1")  # PEP 3333: native strings holding latin-1 only


def test_a_usual_environ_fits_the_table_it_is_copied_from() -> None:
    # Each environ starts as a copy of worker_constants(), whose table has room for the keys
    # every request sets and some headers besides: an environ that outgrew it would allocate and
    # fill a new table (twice, from the nine constants alone) on every request.
    environ = environ_of(request(b"Host: x", b"Accept: */*", b"User-Agent: curl/8.5"))
    environ["hardserve.request_id"] = environ["HTTP_X_REQUEST_ID"] = "id"
    assert sys.getsizeof(environ) == sys.getsizeof(CONSTANTS)


def test_server_name_comes_from_the_socket_not_the_host_field() -> None:
    environ = environ_of(request(b"Host: evil.example:1"), server=("10.0.0.1", 443))
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("10.0.0.1", "443")
    assert environ["HTTP_HOST"] == "evil.example:1"


def test_unknown_peer_and_other_options() -> None:
    environ = environ_of(request(b"Host: x"), peer=None, url_scheme="https", script_name="/app")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("", "")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SCRIPT_NAME"] == "/app"


def test_each_environ_is_a_copy_the_app_may_change() -> None:
    before = dict(CONSTANTS)
    first = environ_of(request(b"Host: x", b"X-One: 1"))
    first["SCRIPT_NAME"] = "/changed"
    first["wsgi.extra"] = "set by the app"
    second = environ_of(request(b"Host: x"))
    assert dict(CONSTANTS) == before  # unchanged by the requests above
    assert second["SCRIPT_NAME"] == "" and "wsgi.extra" not in second
    assert "HTTP_X_ONE" not in second and "HTTP_X_ONE" not in CONSTANTS


def test_http10() -> None:
    environ = environ_of(request(first=b"GET / HTTP/1.0"))
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in environ


def test_repeated_fields_are_joined_with_comma() -> None:
    environ = environ_of(request(b"Host: x", b"Accept: a/b", b"X-Other: 1", b"accept: c/d", b"ACCEPT: e"))
    assert environ["HTTP_ACCEPT"] == "a/b, c/d, e"
    assert environ["HTTP_X_OTHER"] == "1"


def test_cookies_are_joined_with_semicolon() -> None:
    environ = environ_of(request(b"Host: x", b"Cookie: a=1", b"Cookie: b=2; c=3"))
    assert environ["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_content_length_and_type() -> None:
    raw = request(b"Host: x", b"Content-Type: application/json", b"Content-Length: 14", first=b"PUT / HTTP/1.1")
    environ = environ_of(raw)
    assert environ["CONTENT_LENGTH"] == "14"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert "HTTP_CONTENT_TYPE" not in environ


def test_zero_content_length_is_kept() -> None:
    environ = environ_of(request(b"Host: x", b"Content-Length: 0", first=b"POST / HTTP/1.1"))
    assert environ["CONTENT_LENGTH"] == "0"


def test_chunked_request_has_no_content_length() -> None:
    environ = environ_of(request(b"Host: x", b"Transfer-Encoding: chunked", first=b"POST / HTTP/1.1"))
    assert "CONTENT_LENGTH" not in environ
    assert environ["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert environ["wsgi.input_terminated"] is True


@pytest.mark.parametrize(
    ("target", "path_info", "query"),
    [
        (b"/caf%C3%A9", "/caf\xc3\xa9", ""),
        (b"/a%20b?c%20d=e+f", "/a b", "c%20d=e+f"),
        (b"/a%7Eb", "/a~b", ""),
        (b"/%FFx", "/\xffx", ""),
        (b"http://example.com/p%21?q=1", "/p!", "q=1"),
        (b"*", "*", ""),
    ],
)
def test_path_info_is_percent_decoded_as_latin1(target: bytes, path_info: str, query: str) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    environ = environ_of(method + b" " + target + b" HTTP/1.0\r\n\r\n")
    assert environ["PATH_INFO"] == path_info
    assert environ["QUERY_STRING"] == query
    assert environ["RAW_URI"] == target.decode("latin-1")


def test_absolute_form_authority_becomes_http_host() -> None:
    # RFC 9112 section 3.2.2: the target's authority wins over the Host field.
    environ = environ_of(b"GET http://real.example:8080/p HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert environ["HTTP_HOST"] == "real.example:8080"
    assert environ["PATH_INFO"] == "/p"


def test_raw_bytes_in_a_target_decode_as_latin1() -> None:
    # The parser refuses such a target; build_environ still must not lose or re-encode bytes.
    raw_target = b"/\xc3\xa0%20k?\xff"
    head = dataclasses.replace(head_of(request(b"Host: x")), raw_target=raw_target, target=parse_target(b"GET", raw_target))
    environ = build_environ(head, CONSTANTS, addresses=connection_addresses(None, ("h", 1)), url_scheme="http", wsgi_input=INPUT)
    assert environ["PATH_INFO"] == "/\xc3\xa0 k"
    assert environ["QUERY_STRING"] == "\xff"
    assert environ["RAW_URI"] == "/\xc3\xa0%20k?\xff"


def test_header_values_are_latin1_strings() -> None:
    environ = environ_of(request(b"Host: x", b"X-Value: caf\xc3\xa9 \xff"))
    assert environ["HTTP_X_VALUE"] == "caf\xc3\xa9 \xff"
    assert environ["HTTP_X_VALUE"].encode("latin-1") == b"caf\xc3\xa9 \xff"


def test_header_names_become_http_keys() -> None:
    environ = environ_of(request(b"Host: x", b"x-custom-NAME: 1", b"X.Custom|Pipe: 2", b"Accept-Encoding: gzip"))
    assert environ["HTTP_X_CUSTOM_NAME"] == "1"
    assert environ["HTTP_X.CUSTOM|PIPE"] == "2"
    assert environ["HTTP_ACCEPT_ENCODING"] == "gzip"


def test_underscore_fields_never_reach_the_environ() -> None:
    # X_Forwarded_For would otherwise become HTTP_X_FORWARDED_FOR, the same key as a real
    # X-Forwarded-For set by a proxy.
    environ = environ_of(request(b"Host: x", b"X_Forwarded_For: 6.6.6.6", b"X-Forwarded-For: 1.2.3.4"))
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    environ = environ_of(request(b"Host: x", b"X_Forwarded_For: 6.6.6.6"))
    assert "HTTP_X_FORWARDED_FOR" not in environ


def test_a_field_cannot_overwrite_a_cgi_key() -> None:
    environ = environ_of(request(b"Host: x", b"Request-Method: DELETE", b"Path-Info: /admin"))
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["PATH_INFO"] == "/"
    assert environ["HTTP_REQUEST_METHOD"] == "DELETE"
    assert environ["HTTP_PATH_INFO"] == "/admin"


def test_many_distinct_field_names_all_get_their_keys() -> None:
    # More names than the key cache holds: every one must still map correctly.
    for batch in range(3):
        names = [b"X-N%d-%d" % (batch, i) for i in range(300)]
        environ = environ_of(request(b"Host: x", *(n + b": " + n for n in names)))
        for name in names:
            key = "HTTP_" + name.decode().upper().replace("-", "_")
            assert environ[key] == name.decode()


def test_each_call_builds_a_new_environ() -> None:
    raw = request(b"Host: x")
    first, second = environ_of(raw), environ_of(raw)
    assert first == second and first is not second


# -- behind proxies (http/forwarded.py) ---------------------------------------------------------

TRUSTED = TrustedPeers.parse("10.0.0.0/8")


def forwarded_environ(raw: bytes, peer: tuple[str, int], trusted: TrustedPeers = TRUSTED, **overrides: Any) -> dict[str, Any]:
    head = head_of(raw)
    resolution = resolve(peer[0], head.headers, trusted)
    return environ_of(raw, peer=peer, resolution=resolution, **overrides)


def test_nothing_forwarded_gives_the_same_environ() -> None:
    raw = request(b"Host: x", b"Accept: a/b")
    plain = environ_of(raw)
    assert environ_of(raw, resolution=NOT_FORWARDED) == plain
    assert forwarded_environ(raw, ("192.0.2.7", 51234)) == plain
    assert forwarded_environ(raw, ("10.0.0.1", 51234)) == {**plain, "REMOTE_ADDR": "10.0.0.1"}


def test_untrusted_peer_forwarding_fields_never_reach_the_environ() -> None:
    raw = request(b"Host: x", b"X-Forwarded-For: 1.2.3.4", b"X-Forwarded-Proto: https", b"Forwarded: for=1.2.3.4", b"X-Real-IP: 1.2.3.4", b"X-Forwarded-Host: evil", b"X-Other: 1")
    environ = forwarded_environ(raw, ("192.0.2.7", 51234))
    assert not [key for key in environ if "FORWARDED" in key or "REAL_IP" in key]
    assert environ["HTTP_X_OTHER"] == "1"
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "51234")
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "x"
    assert environ["SERVER_PORT"] == "8000"


def test_trusted_proxy_names_the_client_scheme_and_port() -> None:
    raw = request(b"Host: internal:8000", b"X-Forwarded-For: 6.6.6.6, 203.0.113.9", b"X-Forwarded-Proto: https")
    environ = forwarded_environ(raw, ("10.0.0.1", 40000))
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.9", "")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PORT"] == "443"
    assert environ["SERVER_NAME"] == "127.0.0.1"  # still the socket's
    assert environ["HTTP_HOST"] == "internal:8000"  # no forwarded host: as sent
    # Trusted: the fields themselves are passed on as sent.
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.9"


def test_forwarded_client_port() -> None:
    raw = request(b"Host: x", b'Forwarded: for="[2001:db8::9]:4711"')
    environ = forwarded_environ(raw, ("10.0.0.1", 40000))
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::9", "4711")


@pytest.mark.parametrize(
    ("fields", "http_host", "server_port", "scheme"),
    [
        ([b"X-Forwarded-Host: shop.example"], "shop.example", "8000", "http"),
        ([b"X-Forwarded-Host: shop.example:8443"], "shop.example:8443", "8443", "http"),
        ([b"X-Forwarded-Host: shop.example", b"X-Forwarded-Proto: https"], "shop.example", "443", "https"),
        ([b"X-Forwarded-Host: shop.example", b"X-Forwarded-Proto: https", b"X-Forwarded-Port: 8443"], "shop.example:8443", "8443", "https"),
        ([b"X-Forwarded-Host: shop.example", b"X-Forwarded-Port: 80"], "shop.example", "80", "http"),
        ([b"X-Forwarded-Host: shop.example", b"X-Forwarded-Proto: https", b"X-Forwarded-Port: 80"], "shop.example:80", "80", "https"),
        ([b"X-Forwarded-Host: [2001:db8::1]", b"X-Forwarded-Port: 8080"], "[2001:db8::1]:8080", "8080", "http"),
        ([b"Forwarded: host=shop.example;proto=https"], "shop.example", "443", "https"),
    ],
)
def test_forwarded_host_becomes_http_host(fields: list[bytes], http_host: str, server_port: str, scheme: str) -> None:
    environ = forwarded_environ(request(b"Host: internal", *fields), ("10.0.0.1", 40000))
    assert (environ["HTTP_HOST"], environ["SERVER_PORT"], environ["wsgi.url_scheme"]) == (http_host, server_port, scheme)
    assert environ["REMOTE_ADDR"] == "10.0.0.1" and environ["REMOTE_PORT"] == "40000"


def test_forwarded_host_wins_over_an_absolute_form_target() -> None:
    raw = b"GET http://real.example/p HTTP/1.1\r\nHost: other\r\nX-Forwarded-Host: shop.example\r\n\r\n"
    assert forwarded_environ(raw, ("10.0.0.1", 1))["HTTP_HOST"] == "shop.example"


def test_the_environ_of_a_forwarded_request_passes_wsgiref() -> None:
    raw = request(b"Host: x", b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https", b"X-Forwarded-Host: shop.example")
    environ = forwarded_environ(raw, ("10.0.0.1", 1))
    check_environ(environ)
    assert all(type(v) is str for k, v in environ.items() if not k.startswith("wsgi."))


def test_a_refused_resolution_has_no_environ() -> None:
    raw = request(b"Host: x", b"X-Forwarded-For: 999.1.1.1")
    head = head_of(raw)
    resolution = resolve("10.0.0.1", head.headers, TRUSTED)
    assert resolution.error == FORWARDED_INVALID
    with pytest.raises(ValueError, match="forwarded_invalid"):
        environ_of(raw, resolution=resolution)


def test_stripped_headers_are_the_ones_the_resolution_gives() -> None:
    # build_environ reads the resolution's headers, not the head's, whenever they are given.
    raw = request(b"Host: x", b"X-Keep: 1")
    head = head_of(raw)
    resolution = Resolution(headers=((b"host", b"x"),))
    environ = build_environ(head, CONSTANTS, addresses=connection_addresses(None, ("h", 1)), url_scheme="http", wsgi_input=INPUT, resolution=resolution)
    assert "HTTP_X_KEEP" not in environ and environ["HTTP_HOST"] == "x"
