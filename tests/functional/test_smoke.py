from __future__ import annotations

from wsgiref.validate import validator

from tests.helpers import exchange, serve


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_keep_alive_two_requests_on_one_connection() -> None:
    with serve(validator(hello)) as server:
        raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
        responses, closed = exchange(server, raw, 2)
    assert [r.status for r in responses] == [200, 200]
    assert [r.body for r in responses] == [b"hello", b"hello"]
    assert not closed


def test_list_body_gets_content_length_instead_of_chunked() -> None:
    with serve(hello) as server:
        responses, closed = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].header("Content-Length") == "5"
    assert responses[0].header("Transfer-Encoding") is None
    assert not closed
