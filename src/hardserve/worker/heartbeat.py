"""The channel between the master and a worker. The worker writes it from its event loop
itself, so a worker whose loop is blocked falls silent and the master sees it; the master
writes the other way only to say TLS_RELOAD.

The channel is a SOCK_SEQPACKET socket pair (master/arbiter.py makes it): every message keeps
its boundaries. A message is one byte below, or a stats snapshot (observe/stats.py, which starts
with its own tag byte). A full channel (a master that does not read) drops the message: a
heartbeat must never block the loop it reports on. Neither side ever blocks on a write: the
master keeps a message to a worker whose channel is full and sends it again on a later turn
(`tell`).
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

# From the master to a worker.
TLS_RELOAD = b"L"  # the TLS files changed and load: load them again for new connections


# The master's messages are one byte; a longer one is cut to this (SOCK_SEQPACKET drops the
# rest of a message that does not fit the read).
_RECEIVE_MAX = 64


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

    def fileno(self) -> int:
        return self._fd

    def receive(self) -> list[bytes] | None:
        """What the master has sent and the worker has not read yet (all of it, without
        blocking); None when the master's end is closed: nothing more will come."""
        messages: list[bytes] = []
        while True:
            try:
                message = os.read(self._fd, _RECEIVE_MAX)
            except BlockingIOError:
                return messages
            except OSError:
                return None
            if not message:
                return None
            messages.append(message)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def channel() -> tuple[int, int]:
    """A new master-worker channel: (the master's end, the worker's end), as file descriptors."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return master_end.detach(), worker_end.detach()


def tell(fd: int, message: bytes) -> bool:
    """The master's write to a worker's channel, never blocking: True when it is sent or the
    worker is gone (nothing left to do), False when the channel is full (try again later)."""
    try:
        os.write(fd, message)
    except BlockingIOError:
        return False
    except OSError:  # the worker's end is closed: it has exited, waitpid tells how
        return True
    return True
