"""WsgiCall parking without sockets: a sink that refuses writes on cue and runs each
continuation on a new thread the moment it is handed over (the fastest a loop could)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hardserve.http.response import ResponseFramer
from hardserve.worker.call import ClientGone, Output, WsgiCall, output_size
from hardserve.worker.connection import WriteGate
from tests.helpers import wait_until

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var")


class Sink:
    can_sendfile = False

    def __init__(self, refusals: int, *, gone_after: int | None = None) -> None:
        self.refusals = refusals  # try_send says "park" every other call, this many times
        self.gone_after = gone_after  # the connection closes at this park
        self.sent = bytearray()
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self.parks = 0
        self.errors: list[BaseException] = []
        self._refuse_next = True

    def try_send(self, data: Output) -> bool:
        if self.gone_after is not None and self.parks > self.gone_after:
            raise ClientGone("connection closed")
        if self.refusals and self._refuse_next:
            self.refusals -= 1
            self._refuse_next = False
            return False
        self._refuse_next = True
        self.send(data)
        return True

    def send(self, data: Output) -> None:
        self.sent += data if isinstance(data, bytes) else b"".join(data)
        assert output_size(data)

    def park(self, resume: Callable[[], None]) -> None:
        self.parks += 1

        def run() -> None:
            try:
                resume()
            except BaseException as exc:
                self.errors.append(exc)

        # At once, on another thread, while the parking thread is still on its way out.
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    def finish(self, data: Output, keep_alive: bool, outcome: str) -> None:
        if output_size(data):
            self.send(data)
        self.finished.append(outcome)

    def abort(self, outcome: str) -> None:
        self.aborted.append(outcome)

    def sendfile(self, fileno: int, offset: int, count: int) -> int:
        raise AssertionError("not used")

    def fixed_headers(self, app_set: int) -> bytes:
        return b""

    def response_must_close(self) -> bool:
        return False

    def server_error(self, status: int, body: bytes) -> bytes:
        return b"HTTP/1.1 500 x\r\n\r\n"


class Body:
    def __init__(self) -> None:
        self.closes = 0
        self.seen: list[str | None] = []
        self.threads: set[int] = set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Body:
        VAR.set("mine")
        start_response("200 OK", [("Content-Length", "30")])
        return self

    def __iter__(self) -> Iterator[bytes]:
        for index in range(3):
            self.seen.append(VAR.get(None))
            self.threads.add(threading.get_ident())
            yield b"%d" % index * 10

    def close(self) -> None:
        self.closes += 1


def call(app: Body, sink: Sink) -> WsgiCall:
    framer = ResponseFramer(is_head=False, http11=True, client_keep_alive=True)
    return WsgiCall(app, {"REQUEST_METHOD": "GET", "RAW_URI": "/"}, framer, sink)


def test_a_response_parked_at_every_piece_completes_on_other_threads() -> None:
    app = Body()
    sink = Sink(refusals=3)
    call(app, sink).run()
    assert not sink.errors  # a continuation entered the call's context at once, without error
    assert sink.parks == 3
    assert sink.finished == ["ok"]
    assert sink.sent.endswith(b"0" * 10 + b"1" * 10 + b"2" * 10)
    assert app.closes == 1
    assert app.seen == ["mine"] * 3  # the app's context variables followed the response
    assert len(app.threads) > 1


def test_a_connection_gone_while_parked_aborts_and_closes_once() -> None:
    app = Body()
    sink = Sink(refusals=3, gone_after=0)
    call(app, sink).run()
    assert not sink.errors
    assert sink.aborted == ["client_gone"]
    assert sink.finished == []
    assert app.closes == 1


def test_try_acquire_says_park_while_the_transport_is_paused() -> None:
    gate = WriteGate(100)
    assert gate.try_acquire(10)
    gate.pause()
    assert not gate.try_acquire(10)
    assert gate.blocked
    gate.resume()
    assert gate.try_acquire(10)
    gate.close()
    with pytest.raises(ClientGone):
        gate.try_acquire(10)


def test_try_acquire_says_park_at_once_while_the_queue_is_at_its_limit() -> None:
    # The loop has not written what was handed over: the call parks and gives its thread to
    # the next request instead of waiting for the loop.
    gate = WriteGate(100)
    assert gate.try_acquire(60)
    assert gate.try_acquire(60)  # 60 < 100 when asked: the queue may go over by one piece
    started = time.monotonic()
    assert not gate.try_acquire(10)
    assert time.monotonic() - started < 1.0
    assert gate.blocked
    assert gate._waiters is None  # nothing was left waiting
    gate.release(60)
    assert gate.try_acquire(10)  # 70 of 100: room again


def test_a_writer_waiting_in_acquire_waits_on_through_a_pause() -> None:
    gate = WriteGate(100)
    gate.acquire(100, 0.0)  # the queue is at its limit
    done = threading.Event()
    waiting = threading.Thread(target=lambda: (gate.acquire(10, 10.0), done.set()))
    waiting.start()
    assert wait_until(lambda: gate._waiters is not None)
    gate.pause()
    gate.release(100)  # room in the queue, but the transport is paused: still no room
    assert not done.wait(0.2)
    gate.resume()
    assert done.wait(10.0)
    waiting.join(10.0)
