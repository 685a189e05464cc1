"""BodyChannel, the body's road from the loop to the app's thread: a reader that must wait is
woken by each kind of news, and a silent client ends the wait at the idle timeout."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from hardserve.worker import body
from hardserve.worker.body import BodyChannel, BodyReadError, InputStream
from tests.helpers import TIMEOUT_S, wait_for


def _channel(idle_timeout_s: float = TIMEOUT_S, **kwargs: object) -> BodyChannel:
    return BodyChannel(65536, idle_timeout_s, lambda: None, None, **kwargs)  # type: ignore[arg-type]


def _read_in_thread(channel: BodyChannel) -> tuple[threading.Thread, list[object]]:
    """Start a reader that takes one piece (or the error) and stores it."""
    got: list[object] = []

    def read() -> None:
        try:
            got.append(channel.take())
        except BodyReadError as error:
            got.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    return reader, got


def _wait_until_waiting(channel: BodyChannel) -> None:
    wait_for("the reader to wait", lambda: channel._waiter is not None)


def test_a_body_that_arrived_first_is_read_without_waiting() -> None:
    channel = _channel()
    channel.push(b"abc")
    channel.finish()
    stream = InputStream(channel)
    assert stream.read() == b"abc"
    assert channel._waiter is None


@pytest.mark.parametrize("news", ["push", "finish", "fail"])
def test_a_waiting_reader_is_woken_by_each_kind_of_news(news: str) -> None:
    channel = _channel()
    reader, got = _read_in_thread(channel)
    _wait_until_waiting(channel)
    if news == "push":
        channel.push(b"late")
    elif news == "finish":
        channel.finish()
    else:
        channel.fail(BodyReadError("client closed the connection"))
    reader.join(TIMEOUT_S)
    assert not reader.is_alive()
    expected = {"push": b"late", "finish": b""}
    if news in expected:
        assert got == [expected[news]]
    else:
        assert isinstance(got[0], BodyReadError) and got[0].code == "client_disconnected"


def test_a_silent_client_ends_the_wait_at_the_idle_timeout() -> None:
    reported: list[str] = []
    channel = _channel(0.05, on_idle_timeout=reported.append)
    reader, got = _read_in_thread(channel)
    reader.join(TIMEOUT_S)
    assert not reader.is_alive()
    (error,) = got
    assert isinstance(error, BodyReadError)
    assert (error.status, error.code) == (408, "body_timeout")
    assert reported == ["no request body received for 0.05 s"]
    assert channel._waiter is None, "the timed-out wait left nothing behind"


def test_bytes_that_come_after_a_timed_out_wait_but_before_the_look_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push between the wait's timeout and the reader's next look under the lock is not lost:
    the reader takes it instead of reporting a timeout."""
    channel = _channel(0.05)
    real_lock = threading.Lock

    class PushOnTimeout:
        """The reader's waiter lock; its timed-out acquire lets a push in before returning."""

        def __init__(self) -> None:
            self._lock = real_lock()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if timeout < 0:
                return self._lock.acquire(blocking)
            if self._lock.acquire(True, timeout):
                return True
            channel.push(b"just in time")  # releases the waiter: too late for this acquire
            return False

        def release(self) -> None:
            self._lock.release()

    # Only body.py's name for the module: the channel's own lock is made already.
    monkeypatch.setattr(body, "threading", SimpleNamespace(Lock=PushOnTimeout))
    assert channel.take() == b"just in time"
