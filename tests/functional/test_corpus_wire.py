"""gunicorn's request corpus over a real socket, against a real worker.

Each case's raw bytes are sent whole, the client then shuts down its sending side and reads
until the server closes. A recording WSGI app stores what each call received; the responses are
parsed by h11 in the client role. Expectations come from tests/unit/test_corpus.py:

- invalid: no request reaches the app complete (a refusal inside a chunked body lets the head
  through, but the app's wsgi.input read fails), and the server answers with the status of the
  pinned reason, or closes;
- valid: the app saw exactly the corpus's requests (method, PATH_INFO, QUERY_STRING, RAW_URI,
  header fields, body), each answered 200; or, for a listed deviation, the requests before the
  refused one, then the refusal's status (none for status 0: closed unanswered).

The PROXY protocol cases run on a listener with proxy_protocol on, 127.0.0.1 allowed: there
REMOTE_ADDR and REMOTE_PORT must be the client the header names.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
import pytest

from hardserve.http import reasons
from tests.helpers import TIMEOUT_S, RunningServer, serve
from tests.unit.test_corpus import (
    DEVIATIONS,
    INCOMPLETE_AT_EOF,
    INVALID_REFUSED_WITH,
    PROXY_CLIENTS,
    PROXY_OFF_REFUSED_WITH,
    WITH_HOST_REFUSED_WITH,
    Settings,
    corpus,
    expected_with_host,
    hardserve_settings,
    parse_case,
    with_host,
)

ANSWER = b"recorded\n"


@dataclasses.dataclass
class Call:
    method: str
    path_info: str
    query: str
    raw_uri: str
    fields: dict[str, str]
    body: bytes | None = None  # None until wsgi.input was read to its end
    error: str | None = None  # why reading wsgi.input failed
    # Who the server says the client is; checked on their own, not by ==.
    remote: tuple[str, str] = dataclasses.field(default=("", ""), compare=False)
    url_scheme: str = dataclasses.field(default="", compare=False)

    @property
    def complete(self) -> bool:
        return self.body is not None


class Recorder:
    """A WSGI app that records every call, reads the whole body, then answers 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def take(self) -> list[Call]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        # HTTP_X_REQUEST_ID is the server's request ID, in every environ (docs/logging.md,
        # tests/functional/test_request_id.py); the corpus checks the fields the client sent.
        fields = {
            key: value
            for key, value in environ.items()
            if (key.startswith("HTTP_") and key != "HTTP_X_REQUEST_ID")
            or (key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value)
        }
        call = Call(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ["QUERY_STRING"],
            environ["RAW_URI"],
            fields,
            remote=(environ["REMOTE_ADDR"], environ["REMOTE_PORT"]),
            url_scheme=environ["wsgi.url_scheme"],
        )
        with self._lock:
            self.calls.append(call)
        try:
            body = environ["wsgi.input"].read()
        except OSError as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        call.body = body
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(ANSWER)))]
        )
        return [ANSWER]


ServerFor = Callable[[Settings], tuple[RunningServer, Recorder]]
# The test client's address: it stands for gunicorn's proxy_allow_ips and forwarded_allow_ips '*'.
CLIENT = "127.0.0.1"


@pytest.fixture(scope="module")
def server_for() -> Iterator[ServerFor]:
    """One worker per distinct settings (limits, underscore policy, PROXY protocol, trusted
    forwarding), started on first use."""
    running: dict[Settings, tuple[RunningServer, Recorder]] = {}
    with contextlib.ExitStack() as stack:

        def get(settings: Settings) -> tuple[RunningServer, Recorder]:
            if settings not in running:
                recorder = Recorder()
                extra: dict[str, str] = {}
                if settings.proxy_protocol:
                    extra.update(proxy_protocol="on", proxy_allow_ips=CLIENT)
                if settings.trust_forwarded:
                    extra.update(forwarded_allow_ips=CLIENT)
                server = stack.enter_context(
                    serve(
                        recorder,
                        limits=settings.limits,
                        underscore_headers="refuse" if settings.refuse_underscore else "drop",
                        **extra,
                    )
                )
                running[settings] = (server, recorder)
            return running[settings]

        yield get


@dataclasses.dataclass
class Exchange:
    statuses: list[int]
    bodies: list[bytes]
    reset: bool  # the server reset the connection instead of closing it
    calls: list[Call]


def send_case(server: RunningServer, recorder: Recorder, raw: bytes) -> Exchange:
    """Send `raw` whole, half-close, read to EOF; parse what came back with h11."""
    recorder.take()
    received = bytearray()
    reset = False
    with server.connect() as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            reset = True  # refused and closed before every byte was sent
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            received += data
    statuses, bodies = parse_responses(bytes(received))
    return Exchange(statuses, bodies, reset, recorder.take())


def parse_responses(data: bytes) -> tuple[list[int], list[bytes]]:
    """The complete responses in `data`, followed by EOF, as an h11 client reads them."""
    if not data:
        return [], []  # closed unanswered
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    statuses: list[int] = []
    bodies: list[bytes] = []
    while True:
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
            bodies.append(b"")
        elif isinstance(event, h11.Data):
            bodies[-1] += event.data
        elif isinstance(event, h11.EndOfMessage):
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                if not conn.trailing_data[0]:
                    return statuses, bodies  # kept open, then closed when we half-closed
                conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return statuses, bodies
        else:
            raise AssertionError(f"unexpected {event!r} after {statuses}")


def expected_call(want: dict[str, Any]) -> Call:
    """What the app should see for one of the corpus's requests."""
    fields: dict[str, str] = {}
    for name, value in want["headers"]:
        if "_" in name:
            continue  # dropped by hardserve
        upper = name.upper()
        if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = upper.replace("-", "_")
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if key in fields:
            fields[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            fields[key] = value
    path_info = unquote_to_bytes(want["path"].encode("latin-1")).decode("latin-1")
    return Call(
        want["method"],
        path_info,
        want["query"],
        want["target"],
        fields,
        base64.b64decode(want["body_b64"]),
    )


def assert_calls(calls: list[Call], expected: list[dict[str, Any]], name: str) -> None:
    assert [c.complete for c in calls] == [True] * len(expected), calls
    for call, want in zip(calls, expected, strict=True):
        assert call == expected_call(want)
        assert_client(call, name)


def assert_client(call: Call, name: str) -> None:
    """REMOTE_ADDR and REMOTE_PORT: the client a PROXY header names, else the test client."""
    if name in PROXY_CLIENTS:
        address, port = PROXY_CLIENTS[name]
        assert call.remote == (address, str(port))
    else:
        assert call.remote[0] == CLIENT


def statuses_for(code: str, before: int = 0) -> list[int]:
    """200 for each request served before the refusal, then the refusal's status (none when it
    closes unanswered)."""
    status = reasons.by_code(code).status
    return [200] * before + ([status] if status else [])


def _names(valid: bool) -> list[str]:
    return [name for name, case in corpus().items() if case.valid is valid]


@pytest.mark.parametrize("name", _names(False))
def test_invalid_case_never_reaches_the_app(name: str, server_for: ServerFor) -> None:
    case = corpus()[name]
    code = INVALID_REFUSED_WITH[name]
    exchange = send_case(*server_for(hardserve_settings(case)), case.raw)
    # Not even a head whose body is refused after it (BODY_REFUSALS): a call waits on the loop
    # until its body is complete or fills the body buffer, and these bodies are refused first.
    assert exchange.calls == []
    if exchange.reset and not exchange.statuses:
        return  # closed without an answer: allowed for a refused request
    assert exchange.statuses == statuses_for(code)


@pytest.mark.parametrize("name", _names(True))
def test_valid_case_reaches_the_app(name: str, server_for: ServerFor) -> None:
    case = corpus()[name]
    exchange = send_case(*server_for(hardserve_settings(case)), case.raw)
    if name in DEVIATIONS:
        code, _ = DEVIATIONS[name]
        before = len(parse_case(case).requests)
        assert before < len(case.expected)
        assert_calls(exchange.calls, case.expected[:before], name)
        assert exchange.statuses == statuses_for(code, before)
    elif name in INCOMPLETE_AT_EOF:
        code, _ = INCOMPLETE_AT_EOF[name]
        # The body ends early, before filling the body buffer: the app never sees the request.
        assert exchange.calls == []
        assert exchange.statuses == statuses_for(code)
    else:
        assert_calls(exchange.calls, case.expected, name)
        assert exchange.statuses == [200] * len(case.expected)
        assert exchange.bodies == [ANSWER] * len(case.expected)
        assert not exchange.reset


@pytest.mark.parametrize(
    "name", sorted(c for c, (code, _) in DEVIATIONS.items() if code == "missing_host")
)
def test_valid_case_with_host_added_reaches_the_app(name: str, server_for: ServerFor) -> None:
    case = corpus()[name]
    exchange = send_case(*server_for(hardserve_settings(case)), with_host(case.raw))
    expected = expected_with_host(case)
    if name in WITH_HOST_REFUSED_WITH:
        assert exchange.calls == []  # its body is refused before the call leaves the loop
        assert exchange.statuses == statuses_for(WITH_HOST_REFUSED_WITH[name])
    else:
        assert_calls(exchange.calls, expected, name)
        assert exchange.statuses == [200] * len(expected)


def test_proxy_cases_run_on_a_proxy_protocol_listener() -> None:
    # Otherwise the tests above would pass the PROXY cases on a plain listener.
    for name in (*PROXY_CLIENTS, "valid/pp_03", "invalid/pp_01"):
        assert hardserve_settings(corpus()[name]).proxy_protocol, name


@pytest.mark.parametrize("name", sorted(PROXY_OFF_REFUSED_WITH))
def test_proxy_case_on_a_listener_without_the_protocol_is_refused_as_http(
    name: str, server_for: ServerFor
) -> None:
    case = corpus()[name]
    plain = hardserve_settings(case)._replace(proxy_protocol=False)
    exchange = send_case(*server_for(plain), case.raw)
    assert exchange.calls == []
    assert exchange.statuses == statuses_for(PROXY_OFF_REFUSED_WITH[name])


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_invalid_019_with_host_added_is_served(server_for: ServerFor, trusted: bool) -> None:
    # X-Forwarded-Proto: https beside X-Forwarded-Ssl: off (docs/deviations.md). Untrusted: both
    # removed, the listener's scheme. Trusted: X-Forwarded-Proto gives the scheme; hardserve
    # does not read X-Forwarded-Ssl, which reaches the app as sent.
    case = corpus()["invalid/019"]
    assert hardserve_settings(case).trust_forwarded
    settings = hardserve_settings(case)._replace(trust_forwarded=trusted)
    exchange = send_case(*server_for(settings), with_host(case.raw))
    assert exchange.statuses == [200]
    (call,) = exchange.calls
    assert call.complete
    forwarded = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_SSL": "off"}
    assert call.fields == {"HTTP_HOST": "corpus.test", **(forwarded if trusted else {})}
    assert call.url_scheme == ("https" if trusted else "http")
    assert call.remote[0] == CLIENT
