"""The access log over real sockets: gunicorn's format and atoms, the JSON line, and client text
that tries to forge or split a line (docs/logging.md)."""

from __future__ import annotations

import codecs
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.test_connection import echo_path
from tests.helpers import (
    TIMEOUT_S,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    only_handler,
    read_responses,
    serve,
)

pytestmark = pytest.mark.usefixtures("both_loops")


class AccessLines(logging.Handler):
    """The access log as `--access-log` writes it (one formatted record per line); `arrived`
    counts the records."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []
        self.arrived = threading.Semaphore(0)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.arrived.release()

    def wait(self, count: int = 1) -> list[str]:
        for _ in range(count):
            assert self.arrived.acquire(timeout=TIMEOUT_S), self.lines
        return self.lines


@pytest.fixture
def access_log() -> Iterator[AccessLines]:
    with only_handler("hardserve.access", AccessLines(), logging.INFO) as handler:
        yield handler


# Apache's combined format (gunicorn's default), then hardserve's three fields.
COMBINED = re.compile(
    r'(?P<h>\S+) (?P<l>\S+) (?P<u>\S+) \[(?P<t>[^\]]+)\] "(?P<r>(?:[^"\\]|\\.)*)" '
    r'(?P<s>\S+) (?P<b>\S+) "(?P<f>(?:[^"\\]|\\.)*)" "(?P<a>(?:[^"\\]|\\.)*)" '
    r"(?P<L>\d+\.\d{6}) (?P<request_id>\S+) (?P<outcome>\S+)"
)


def _one_clean_line(line: str) -> bool:
    return all(0x20 <= ord(char) <= 0x7E for char in line)


def unescape(field: str) -> bytes:
    """A field as the text format escaped it -> the client's exact bytes."""
    return codecs.decode(field, "unicode_escape").encode("latin-1")


def test_the_default_line_is_gunicorns_followed_by_duration_request_id_and_outcome(
    access_log: AccessLines,
) -> None:
    raw = (
        b"GET /p?q=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r.example/\r\n"
        b"User-Agent: curl/8.0\r\n\r\n"
    )
    with serve(echo_path) as server:
        (response,), _ = exchange(server, raw)
        (line,) = access_log.wait()
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert match["h"] == "127.0.0.1" and match["l"] == "-" and match["u"] == "-"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", match["t"])
    assert match["r"] == "GET /p?q=1 HTTP/1.1"
    assert (match["s"], match["b"]) == ("200", str(len(response.body)))
    assert (match["f"], match["a"]) == ("http://r.example/", "curl/8.0")
    assert match["request_id"] == response.header("X-Request-ID")
    assert match["outcome"] == "ok"


# Header values may carry obs-text (0x80-0xff), quotes and backslashes: the parser lets them
# through, so the log must escape them. Each tries to close its quoted field and forge the rest.
HOSTILE_USER_AGENT = b'x" 200 0 "-" "forged\\" \xff\x80\xe9 \\x41 \tz'
HOSTILE_REFERER = b'http://r/"\\"\xc3\xa9 "-" "ua'


def test_hostile_user_agent_and_referer_stay_inside_their_fields(
    access_log: AccessLines,
) -> None:
    raw = (
        b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: "
        + HOSTILE_USER_AGENT
        + b"\r\nReferer: "
        + HOSTILE_REFERER
        + b"\r\n\r\n"
    )
    with serve(echo_path) as server:
        assert exchange(server, raw)[0][0].status == 200
        (line,) = access_log.wait()
    assert _one_clean_line(line), line
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert unescape(match["a"]) == HOSTILE_USER_AGENT
    assert unescape(match["f"]) == HOSTILE_REFERER
    assert match["s"] == "200" and match["outcome"] == "ok"


def test_the_decoded_path_atom_escapes_what_decoding_made(access_log: AccessLines) -> None:
    # %(U)s is the decoded path: %22 is a real quote there, %e9 a byte past ASCII. A decoded
    # control character (%0a) is refused before the app, so it never reaches the log.
    fmt = '"%(U)s" "%(q)s" %(m)s %(H)s'
    with serve(echo_path, access_log_format=fmt) as server:
        raw = b"GET /a%22forged%e9%20x%5c HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(server, raw.replace(b"%5c", b"\\"))[0][0].status == 400  # backslash
        assert exchange(server, raw.replace(b"%5c", b""))[0][0].status == 200
        assert exchange(server, b"GET /a%0ab HTTP/1.1\r\nHost: x\r\n\r\n")[0][0].status == 400
        raw = b"GET /b?x=%0a%22\\ HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(server, raw)[0][0].status == 200
        first, second = access_log.wait(2)
    assert first == '"/a\\"forged\\xe9 x" "" GET HTTP/1.1', first
    assert second == '"/b" "x=%0a%22\\\\" GET HTTP/1.1', second
    assert len(access_log.lines) == 2


def test_every_atom(access_log: AccessLines) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["REMOTE_USER"] = 'al"ice\n'
        environ["app.tag"] = "t\u2028"
        start_response("201 Created", [("Content-Length", "5")])
        return [b"hello"]

    atoms = "h l u s B b m U q H T M D L p request_id outcome {x-custom}i {X-MISSING}i {app.tag}e"
    fmt = "|".join(f"%({atom})s" for atom in atoms.split()) + " 100%% %%(h)s"
    raw = b"GET /p/q?k=v HTTP/1.0\r\nX-Custom: c1\r\nx-custom: c2\r\n\r\n"
    with serve(app, access_log_format=fmt) as server:
        (response,), _ = exchange(server, raw)
        (line,) = access_log.wait()
    fields, tail = line.rsplit(" 100% ", 1)
    named = dict(zip(atoms.split(), fields.split("|"), strict=True))
    assert tail == "%(h)s"
    assert named["h"] == "127.0.0.1" and named["l"] == "-"
    assert named["u"] == 'al\\"ice\\n'
    assert (named["s"], named["B"], named["b"]) == ("201", "5", "5")
    assert (named["m"], named["U"], named["q"], named["H"]) == ("GET", "/p/q", "k=v", "HTTP/1.0")
    assert named["T"] == "0" and int(named["M"]) < 1000 and 0 < int(named["D"]) < 10**6
    assert re.fullmatch(r"\d+\.\d{6}", named["L"])
    assert re.fullmatch(r"<\d+>", named["p"])
    assert named["request_id"] == response.header("X-Request-ID")
    assert named["outcome"] == "ok"
    assert named["{x-custom}i"] == "c1, c2" and named["{X-MISSING}i"] == "-"
    assert named["{app.tag}e"] == "t\\u2028"


def test_json_lines_are_typed_and_hold_the_exact_client_text(access_log: AccessLines) -> None:
    target = b'/a%22%e9/b?x=%0a"\\%00'
    raw = (
        b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: " + HOSTILE_USER_AGENT + b"\r\n"
        b"Referer: " + HOSTILE_REFERER + b"\r\n\r\n"
    )
    with serve(echo_path, log_format="json") as server:
        (response,), _ = exchange(server, raw)
        assert response.status == 200
        assert exchange(server, b"GET /plain HTTP/1.0\r\n\r\n")[0][0].status == 200
        first, second = access_log.wait(2)
    assert _one_clean_line(first), first
    entry = json.loads(first)
    assert entry["remote_addr"] == "127.0.0.1"
    assert entry["method"] == "GET" and entry["protocol"] == "HTTP/1.1"
    assert entry["target"].encode("latin-1") == target
    assert entry["path"] == '/a"\u00e9/b'
    assert entry["query"] == 'x=%0a"\\%00'
    assert entry["status"] == 200 and entry["bytes"] == len(response.body)
    assert isinstance(entry["duration_s"], float) and 0 <= entry["duration_s"] < TIMEOUT_S
    assert entry["user_agent"].encode("latin-1") == HOSTILE_USER_AGENT
    assert entry["referer"].encode("latin-1") == HOSTILE_REFERER
    assert entry["request_id"] == response.header("X-Request-ID")
    assert entry["outcome"] == "ok" and isinstance(entry["pid"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    plain = json.loads(second)
    assert plain["referer"] is None and plain["user_agent"] is None
    assert plain["protocol"] == "HTTP/1.0"


def test_an_app_error_is_logged_with_its_outcome(access_log: AccessLines) -> None:
    gate = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        gate.wait(TIMEOUT_S)
        raise ConnectionError("the app gives up")
        yield b""  # a generator: nothing is sent before the error

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        gate.set()
        responses, _ = read_responses(sock, 1)
        (line,) = access_log.wait()
    assert responses[0].status == 500
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert match["outcome"] == "app_error"
