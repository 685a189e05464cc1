"""wsgi.input: the request body, streamed from the loop to the app's thread through a bounded
buffer.

The loop pushes body bytes as they are parsed; once `limit` bytes wait unread it stops reading
the socket (TCP then pushes back on the client) and resumes when the app has read half of them.
The body is never held whole in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final


class BodyReadError(OSError):
    """wsgi.input could not deliver the body: the client went away, sent a body we refused, or
    stopped sending. Apps may let it propagate; the server then answers or closes."""

    def __init__(
        self, message: str, *, status: int = 400, code: str = "client_disconnected"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BodyChannel:
    """Shared by the loop (producer) and one app thread (consumer).

    A plain lock guards the state, and the consumer sleeps on a lock of its own, made only when
    it must wait. A threading.Condition cost about 4 µs to build for every request with a body,
    and each notify about 1 µs more (it tests ownership by trying its lock), for a wait that
    most requests never make: the body usually arrives with the head, before the app runs."""

    def __init__(
        self,
        limit: int,
        idle_timeout_s: float,
        resume_reading: Callable[[], None],
        first_read: Callable[[], None] | None,
        on_idle_timeout: Callable[[str], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._waiter: threading.Lock | None = None  # held by the consumer while it waits
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._limit = limit
        self._idle_timeout_s = idle_timeout_s
        self._ended = False
        self._error: BodyReadError | None = None
        self._paused = False
        # Both run on the app's thread and must only hand work to the loop.
        self._resume_reading = resume_reading
        self._first_read = first_read
        # Runs on the app's thread: only hands the refusal to the loop, which counts and logs it.
        self._on_idle_timeout = on_idle_timeout

    # -- loop side ---------------------------------------------------------------------------

    def push(self, data: bytes) -> bool:
        """Add body bytes; True when the buffer is full and the loop must stop reading."""
        with self._lock:
            self._chunks.append(data)
            self._buffered += len(data)
            full = self._buffered >= self._limit
            if full:
                self._paused = True
            self._wake()
        return full

    def finish(self) -> None:
        with self._lock:
            self._ended = True
            self._wake()

    def fail(self, error: BodyReadError) -> None:
        with self._lock:
            if not self._ended:
                self._error = error
            self._wake()

    def _wake(self) -> None:
        """With the lock held: the consumer, if it waits, looks again."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.release()

    @property
    def ended(self) -> bool:
        return self._ended

    # -- thread side -------------------------------------------------------------------------

    def take(self) -> bytes:
        """The next piece of body; b"" at the end. Blocks while none has arrived yet."""
        first_read, self._first_read = self._first_read, None
        if first_read is not None:
            first_read()
        lock = self._lock
        timed_out = False
        while True:
            with lock:
                if self._chunks:
                    data = self._chunks.popleft()
                    self._buffered -= len(data)
                    resume = self._paused and self._buffered <= self._limit // 2
                    if resume:
                        self._paused = False
                    break
                if self._error is not None:
                    raise self._error
                if self._ended:
                    return b""
                if timed_out:
                    # Nothing came while we waited, and nothing since: a silent client.
                    message = f"no request body received for {self._idle_timeout_s:g} s"
                    if self._on_idle_timeout is not None:
                        self._on_idle_timeout(message)
                    raise BodyReadError(message, status=408, code="body_timeout")
                waiter = threading.Lock()
                waiter.acquire()
                self._waiter = waiter
            # Released by _wake (push, finish, fail), or the idle time runs out. A wake that
            # comes just after the timeout is seen by the look under the lock above.
            if not waiter.acquire(timeout=self._idle_timeout_s):
                with lock:
                    if self._waiter is waiter:
                        self._waiter = None
                timed_out = True
        if resume:
            self._resume_reading()
        return data


_DEFAULT_CHUNK: Final = 65536


class InputStream:
    """The file-like wsgi.input (PEP 3333: read, readline, readlines, __iter__)."""

    def __init__(self, channel: BodyChannel) -> None:
        self._channel = channel
        self._buffer = bytearray()
        self._at_end = False
        self.started = False  # the app has asked for body bytes
        self.consumed = 0  # body bytes taken from the channel

    @property
    def at_end(self) -> bool:
        """The whole body has been taken from the channel."""
        return self._at_end

    def _fill(self) -> bool:
        if self._at_end:
            return False
        self.started = True
        data = self._channel.take()
        if not data:
            self._at_end = True
            return False
        self.consumed += len(data)
        self._buffer += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, limit: int | None = -1) -> bytes:
        if limit is None:
            limit = -1
        scanned = 0
        while True:
            newline = self._buffer.find(b"\n", scanned)
            if newline >= 0:
                end = newline + 1
                break
            if 0 <= limit <= len(self._buffer):
                end = limit
                break
            scanned = len(self._buffer)
            if not self._fill():
                end = len(self._buffer)
                break
        if 0 <= limit < end:
            end = limit
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Apps may close wsgi.input; the server owns the stream, so this does nothing."""


class EmptyInput:
    """wsgi.input of a request without a body: shared, stateless, at its end from the start."""

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, limit: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        """Nothing to release."""


EMPTY_INPUT: Final = EmptyInput()
