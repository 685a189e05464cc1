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


def fresh(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # stream, but each piece is built when it is sent, as an app that renders or reads its
    # output does: 64 KiB is above Python's small-object limit, so every piece is a malloc.
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _fresh_pieces()


def _fresh_pieces() -> Iterator[bytes]:
    for _ in range(_PIECES):
        yield b"s" * len(_PIECE)


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # Stands for an app that waits on a database: holds a pool thread, costs no CPU.
    time.sleep(0.01)
    _plain(start_response, _SLEPT)
    return [_SLEPT]


# The under-attack case: hello on every path but /big, which slow readers ask for: `?mib=N`
# MiB (1 to 64, 16 by default), sent as 64 KiB pieces of one shared object so the app holds no
# copy per request. 16 MiB is more than the kernel's socket buffers hold (tcp_wmem's default
# maximum is 4 MiB), so the server itself must wait on the reader.


def attack(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/big":
        query = environ.get("QUERY_STRING", "")
        mib = int(query[4:]) if query.startswith("mib=") and query[4:].isdigit() else 16
        pieces = min(max(mib, 1), 64) * 16
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(_PIECE) * pieces)),
            ],
        )
        return (_PIECE for _ in range(pieces))
    _plain(start_response, _HELLO)
    return [_HELLO]


# Hello beside streams (bench/NOTES.md, "Hello beside 56 streams"): hello on every path but
# /fresh, which is the fresh app. Not in the matrix; run by hand.


def mixed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/fresh":
        return fresh(environ, start_response)
    _plain(start_response, _HELLO)
    return [_HELLO]
