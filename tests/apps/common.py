"""What the Flask app and the Django project both answer, defined once so that one set of tests
checks both frameworks byte for byte."""

from __future__ import annotations

import functools
import hashlib
import random
import tempfile
import threading
from typing import IO, Any, Final

# Non-ASCII on purpose: the page must reach the client as UTF-8, untouched by the server.
PAGE_TEXT: Final = "Grüße, żółw, 東京"

# In the message of every exception the views raise. It must reach the server's log and never
# the client: an error page that echoes exception text leaks internals.
SECRET: Final = "secret-detail-7f3a91"

STREAM_COUNT_DEFAULT: Final = 5
STREAM_COUNT_MAX: Final = 50

# A gated stream waits at most this long for the test to release it; less than the clients'
# 10 s timeout would hide a server that buffers, so it is the same.
GATE_TIMEOUT_S: Final = 10.0
GATE_TIMED_OUT: Final = b"gate timed out\n"


def page(framework: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>hardserve test</title></head>\n'
        f"<body><h1>Hello from {framework}</h1><p>{PAGE_TEXT}</p></body></html>\n"
    )


def stream_chunk(index: int) -> bytes:
    # About 1 KiB each, and each one different, so a lost, repeated or reordered piece shows.
    return f"chunk {index:02d} ".encode() + b"." * 1000 + b"\n"


def stream_count(raw: str | None) -> int:
    try:
        count = int(raw) if raw else STREAM_COUNT_DEFAULT
    except ValueError:
        count = STREAM_COUNT_DEFAULT
    return max(1, min(count, STREAM_COUNT_MAX))


def describe_upload(name: str | None, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def fail() -> None:
    raise RuntimeError(f"view failed on purpose: {SECRET}")


# Large enough to need many sendfile calls and a full socket buffer, and a size that is a multiple
# of no block size.
DOWNLOAD_SIZE: Final = 2 * 1024 * 1024 + 17

_download_file: IO[bytes] | None = None
_download_lock = threading.Lock()


@functools.cache
def download_data() -> bytes:
    return random.Random(2024).randbytes(DOWNLOAD_SIZE)


def download_path() -> str:
    """A real file holding download_data(), so the frameworks hand it to wsgi.file_wrapper. Made
    once per process; NamedTemporaryFile removes it when the process exits."""
    global _download_file
    with _download_lock:
        if _download_file is None:
            # Kept open on purpose: closing it is what deletes the file.
            handle = tempfile.NamedTemporaryFile(prefix="hardserve-test-download-")  # noqa: SIM115
            handle.write(download_data())
            handle.flush()
            _download_file = handle
        return _download_file.name


# Gates let a test prove that a streamed response leaves the server piece by piece: the app
# yields its first chunk, then waits until the test, having received that chunk, opens the gate.
# A server that buffered the body would never deliver the first chunk on its own. Only
# meaningful when the app runs in the test's process (the in-thread server).
_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def gate(name: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(name, threading.Event())


def discard_gate(name: str) -> None:
    with _gates_lock:
        _gates.pop(name, None)


def wait_for_gate(name: str | None) -> bytes:
    """Nothing once the gate opens (or when there is none); a marker the test rejects if the
    gate stayed shut."""
    if name and not gate(name).wait(GATE_TIMEOUT_S):
        return GATE_TIMED_OUT
    return b""
