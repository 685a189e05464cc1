"""The worker's side of its channel to the master, written by the event loop itself, so a
worker whose loop is blocked falls silent and the master sees it.

The channel is a SOCK_SEQPACKET socket pair (master/arbiter.py makes it): every message keeps
its boundaries. A message is one byte below, or a stats snapshot (observe/stats.py, which starts
with its own tag byte). A full channel (a master that does not read) drops the message: a
heartbeat must never block the loop it reports on.
"""

from __future__ import annotations

import contextlib
import os
import socket

from hardserve.observe.stats import Snapshot

READY = b"R"  # the listeners serve
BEAT = b"H"  # the loop turned
RETIRING = b"M"  # max_requests reached: stopping by itself, replace me
STUCK = b"S"  # a request has been in the app longer than timeout_s: replace me


class Heartbeat:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    def send(self, message: bytes) -> None:
        # A busy or gone master: the next beat says the same.
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            os.write(self._fd, message)

    def send_snapshot(self, snapshot: Snapshot) -> None:
        self.send(snapshot.encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def channel() -> tuple[int, int]:
    """A new master-worker channel: (the master's end, the worker's end), as file descriptors."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return master_end.detach(), worker_end.detach()
