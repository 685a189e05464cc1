"""The worker's side of its pipe to the master: one byte per message, written by the event
loop itself, so a worker whose loop is blocked falls silent and the master sees it.

The master reads the other end (master/arbiter.py). A full pipe (a master that does not read)
drops the message: a heartbeat must never block the loop it reports on.
"""

from __future__ import annotations

import contextlib
import os

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
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._fd, message)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
