"""The pieces of a response that a pool thread hands to the loop together reach the socket in one
write. uvloop writes every write() at once while its own buffer is empty, so a stream's pieces
were one system call each (16 for a 1 MiB stream of 64 KiB pieces); the connection now keeps
them until the hand-off batch ends (HttpConnection._loop_write).

The writes are counted by the kernel: `syscw` of the loop thread in /proc counts its write and
writev system calls, which libuv makes. It does not count send and sendmsg, which the standard
asyncio transports make, so this runs on uvloop only (the default loop)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import exchange, serve

PIECES = 8


def piece(index: int) -> bytes:
    return bytes([65 + index]) * 1024


def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
    for index in range(PIECES):
        yield piece(index)


def loop_thread_writes() -> int:
    """Write system calls made so far by the test server's loop thread."""
    (loop_thread,) = [t for t in threading.enumerate() if t.name == "hardserve-test-worker"]
    io = Path(f"/proc/self/task/{loop_thread.native_id}/io").read_text()
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("syscw:")))


def test_a_stream_handed_over_together_leaves_in_one_write() -> None:
    with serve(app, threads=1, loop="uvloop") as server:
        exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the first request's own costs
        before = loop_thread_writes()
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        writes = loop_thread_writes() - before
    assert responses[0].status == 200
    assert responses[0].body == b"".join(piece(index) for index in range(PIECES))
    # One write per piece before (9 with the end). The thread hands all eight over within one
    # batch unless it is preempted while it holds the GIL (a busy machine can split the batch).
    assert writes <= PIECES // 2, f"{writes} writes for {PIECES} pieces"
