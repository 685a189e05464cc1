"""The plain WSGI apps every server is measured with; each exercises one path of a server.

Served as `bench.apps:NAME` from the project root. No framework, so the figures are the
servers' own cost plus as little app work as possible.
"""

from __future__ import annotations

import json as _json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_HELLO = b"Hello, world!"
_BIG = b"x" * (1024 * 1024)
_PIECE = b"s" * (64 * 1024)
_PIECES = 16
_SLEPT = b"slept 10 ms\n"
# Enough to stop a stray client from making echo buffer without bound.
_ECHO_MAX = 64 * 1024

_DOCUMENT: dict[str, Any] = {
    "id": 12345,
    "name": "hardserve",
    "tags": ["wsgi", "http/1.1", "bench"],
    "active": True,
    "ratio": 0.75,
    "owner": {"login": "bench", "since": "2024-01-01"},
}


def _plain(start_response: StartResponse, body: bytes, content_type: str = "text/plain") -> None:
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    _plain(start_response, _HELLO)
    return [_HELLO]


def json(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # Serialised on each request, as a real JSON endpoint would.
    body = _json.dumps(_DOCUMENT).encode()
    _plain(start_response, body, "application/json")
    return [body]


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(min(max(length, 0), _ECHO_MAX))
    _plain(start_response, body, "application/octet-stream")
    return [body]


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    _plain(start_response, _BIG, "application/octet-stream")
    return [_BIG]


def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # No Content-Length: HTTP/1.1 servers answer with chunked transfer coding.
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _pieces()


def _pieces() -> Iterator[bytes]:
    for _ in range(_PIECES):
        yield _PIECE


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # Stands for an app that waits on a database: holds a pool thread, costs no CPU.
    time.sleep(0.01)
    _plain(start_response, _SLEPT)
    return [_SLEPT]
