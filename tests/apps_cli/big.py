"""/big answers 50 MB (50,000,000 bytes) streamed in 64 KiB pieces, the same bytes object
each time, so the app itself holds 64 KiB at most; any other path answers a short "ok". For
measuring a slow reader of a large response while other clients are served."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

BIG_BYTES = 50_000_000
PIECE_BYTES = 65536
_PIECE = b"b" * PIECE_BYTES
SMALL = b"ok\n"


def _pieces() -> Iterator[bytes]:
    left = BIG_BYTES
    while left > 0:
        size = min(left, PIECE_BYTES)
        yield _PIECE if size == PIECE_BYTES else _PIECE[:size]
        left -= size


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/big":
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(BIG_BYTES))],
        )
        return _pieces()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(SMALL)))])
    return [SMALL]
