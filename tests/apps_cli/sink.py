"""Reads the whole request body in 64 KiB pieces, keeps none of them, and answers how many bytes
it read: a server that holds a body whole shows in its memory, not in this app's. A
BodyReadError (a body over the limit, a client that went away) is left to propagate, so the
server answers it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

PIECE_BYTES = 65536


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    total = 0
    while piece := stream.read(PIECE_BYTES):
        total += len(piece)
    body = b"%d" % total
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
