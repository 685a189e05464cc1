"""Request IDs: taken from X-Request-ID only when a trusted proxy sends a short, plain one,
otherwise made by the worker; in the environ, the access log, the security log and the
response (docs/logging.md)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest

from hardserve.observe.logs import RequestIds, incoming_request_id
from tests.functional.test_access_log import (
    COMBINED,
    AccessLines,
    access_log,  # noqa: F401 - a fixture
)
from tests.helpers import TIMEOUT_S, both_loops, exchange, read_responses, serve  # noqa: F401

pytestmark = pytest.mark.usefixtures("both_loops")

GENERATED = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")


def show_ids(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    seen = f"{environ['hardserve.request_id']}|{environ['HTTP_X_REQUEST_ID']}"
    return [seen.encode("ascii")]


def ask(server: Any, *headers: bytes) -> tuple[str, str, str]:
    """(the ID the app saw as hardserve.request_id, as HTTP_X_REQUEST_ID, the echoed one)."""
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    (response,), _ = exchange(server, raw)
    assert response.status == 200, response
    environ_id, header_id = response.body.decode("ascii").split("|")
    echoed = response.header("X-Request-ID")
    assert echoed is not None
    assert sum(name.lower() == b"x-request-id" for name, _ in response.headers) == 1
    return environ_id, header_id, echoed


def test_without_a_proxy_every_request_gets_a_new_id_the_app_and_client_see() -> None:
    with serve(show_ids) as server:
        first = ask(server)
        second = ask(server, b"X-Request-ID: chosen-by-the-client")
    for environ_id, header_id, echoed in (first, second):
        assert GENERATED.fullmatch(environ_id), environ_id
        assert environ_id == header_id == echoed
    assert first[0] != second[0]
    assert first[0].split("-")[0] == second[0].split("-")[0]  # one worker, one prefix


LONGEST = b"a" * 128


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"abc-123", True),
        (b"A.b_c:d-9", True),
        (LONGEST, True),
        (LONGEST + b"a", False),  # too long
        (b"a b", False),
        (b'a"b', False),
        (b"a\\b", False),
        (b"a,b", False),
        (b"caf\xe9", False),  # obs-text is allowed in a field, not in an ID
        (b"%0a", False),
    ],
)
def test_a_trusted_proxy_s_id_is_kept_only_when_short_and_plain(sent: bytes, kept: bool) -> None:
    with serve(show_ids, forwarded_allow_ips="127.0.0.1") as server:
        environ_id, header_id, echoed = ask(server, b"X-Request-ID: " + sent)
    assert environ_id == header_id == echoed
    if kept:
        assert environ_id == sent.decode("ascii")
    else:
        assert GENERATED.fullmatch(environ_id), environ_id


def test_a_repeated_id_from_a_trusted_proxy_is_replaced() -> None:
    with serve(show_ids, forwarded_allow_ips="127.0.0.1") as server:
        environ_id, _, _ = ask(server, b"X-Request-ID: one", b"X-Request-ID: two")
    assert GENERATED.fullmatch(environ_id), environ_id


def test_an_id_the_app_sets_is_sent_once_and_the_log_keeps_the_servers(
    access_log: AccessLines,  # noqa: F811 - the fixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("x-request-id", "from-the-app")])
        return [environ["hardserve.request_id"].encode("ascii")]

    with serve(app) as server:
        (response,), _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (line,) = access_log.wait()
    ids = [value for name, value in response.headers if name.lower() == b"x-request-id"]
    assert ids == [b"from-the-app"]
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert match["request_id"] == response.body.decode("ascii")


def test_the_access_line_carries_the_trusted_proxy_s_id(
    access_log: AccessLines,  # noqa: F811 - the fixture
) -> None:
    with serve(show_ids, forwarded_allow_ips="127.0.0.1") as server:
        ask(server, b"X-Request-ID: edge-42", b"X-Forwarded-For: 203.0.113.9")
        (line,) = access_log.wait()
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert (match["h"], match["request_id"]) == ("203.0.113.9", "edge-42")


def test_a_refused_request_echoes_its_id_and_the_security_line_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    # Both forwarding families from a trusted proxy: refused (forwarded_invalid) after the head.
    raw = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: edge-7\r\n"
        b"Forwarded: for=192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n\r\n"
    )
    with serve(show_ids, forwarded_allow_ips="127.0.0.1") as server:
        (response,), _ = exchange(server, raw)
    assert response.status == 400
    assert response.header("X-Request-ID") == "edge-7"
    (record,) = [r for r in caplog.records if r.name == "hardserve.security"]
    assert record.__dict__["request_id"] == "edge-7"
    assert "request_id=edge-7 " in record.getMessage()


def test_a_refusal_before_any_request_has_no_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    with serve(show_ids) as server:
        (response,), _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n")
    assert response.status == 400
    assert response.header("X-Request-ID") is None
    (record,) = [r for r in caplog.records if r.name == "hardserve.security"]
    assert record.__dict__["request_id"] is None
    assert "request_id=- " in record.getMessage()


def test_a_500_from_the_server_echoes_the_id() -> None:
    seen: list[str] = []

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["hardserve.request_id"])
        raise RuntimeError("broken app")

    with serve(broken) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (response,), _ = read_responses(sock, 1)
    assert response.status == 500
    assert response.header("X-Request-ID") == seen[0]


def test_ids_of_two_workers_differ_and_count_up() -> None:
    one, two = RequestIds(), RequestIds()
    first, second = one.new(), one.new()
    other = two.new()
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(other)
    assert first.split("-")[0] == second.split("-")[0] != other.split("-")[0]
    assert (first.split("-")[1], second.split("-")[1]) == ("1", "2")
    ids = {one.new() for _ in range(10_000)}
    assert len(ids) == 10_000


def test_ids_made_in_concurrent_threads_are_unique() -> None:
    ids = RequestIds()
    made: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        mine = [ids.new() for _ in range(2000)]
        with lock:
            made.extend(mine)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert len(set(made)) == len(made) == 8000


def test_incoming_request_id_reads_one_plain_value() -> None:
    assert incoming_request_id([(b"x-request-id", b"abc")]) == "abc"
    assert incoming_request_id([]) is None
    assert incoming_request_id([(b"x-request-id", b"")]) is None
    assert incoming_request_id([(b"x-request-id", b"a"), (b"x-request-id", b"a")]) is None
    assert incoming_request_id([(b"x-request-id", b"a\xffb")]) is None
