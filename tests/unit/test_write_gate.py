"""WriteGate: how far the app's thread may run ahead of the loop. Threads wait on events here,
never on sleeps; every wait has a timeout."""

from __future__ import annotations

import threading

import pytest

from hardserve.worker.call import ClientGone
from hardserve.worker.connection import WriteGate

TIMEOUT_S = 10.0


class Writer:
    """A thread that takes `count` bytes from the gate, and says when it got through."""

    def __init__(self, gate: WriteGate, count: int, timeout: float = TIMEOUT_S) -> None:
        self.passed = threading.Event()
        self.error: BaseException | None = None
        self._gate = gate
        self._count = count
        self._timeout = timeout
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._gate.acquire(self._count, self._timeout)
        except BaseException as exc:
            self.error = exc
        self.passed.set()

    def join(self) -> None:
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


def test_below_the_limit_acquire_returns_at_once() -> None:
    gate = WriteGate(100)
    gate.acquire(60, 0.0)
    gate.acquire(60, 0.0)  # 60 < 100 when asked: the queue may go over by one piece


def test_over_the_limit_a_writer_waits_until_the_loop_releases() -> None:
    gate = WriteGate(100)
    gate.acquire(150, 0.0)
    writer = Writer(gate, 10)
    assert not writer.passed.wait(0.05)
    gate.release(100)  # 50 queued: under the limit again
    assert writer.passed.wait(TIMEOUT_S)
    writer.join()
    assert writer.error is None


def test_a_release_that_stays_over_the_limit_keeps_the_writer_waiting() -> None:
    gate = WriteGate(100)
    gate.acquire(300, 0.0)
    writer = Writer(gate, 10)
    gate.release(100)  # 200 queued
    assert not writer.passed.wait(0.05)
    gate.release(150)
    assert writer.passed.wait(TIMEOUT_S)
    writer.join()
    assert writer.error is None


def test_a_paused_transport_holds_writers_until_it_resumes() -> None:
    gate = WriteGate(100)
    gate.pause()
    writer = Writer(gate, 10)
    assert not writer.passed.wait(0.05)
    gate.release(0)  # under the limit, but still paused
    assert not writer.passed.wait(0.05)
    gate.resume()
    assert writer.passed.wait(TIMEOUT_S)
    writer.join()
    assert writer.error is None


def test_close_releases_every_waiting_writer_with_client_gone() -> None:
    gate = WriteGate(100)
    gate.acquire(100, 0.0)
    writers = [Writer(gate, 10) for _ in range(3)]
    assert not writers[0].passed.wait(0.05)
    gate.close()
    for writer in writers:
        assert writer.passed.wait(TIMEOUT_S)
        writer.join()
        assert isinstance(writer.error, ClientGone)
    with pytest.raises(ClientGone):
        gate.acquire(1, 0.0)  # closed: even a write under the limit is refused


def test_a_writer_gives_up_at_its_timeout() -> None:
    gate = WriteGate(100)
    gate.acquire(100, 0.0)
    writer = Writer(gate, 10, timeout=0.05)
    assert writer.passed.wait(TIMEOUT_S)
    writer.join()
    assert isinstance(writer.error, ClientGone)
    assert "did not read" in str(writer.error)
    gate.release(100)
    gate.acquire(10, 0.0)  # the writer that gave up left nothing behind
