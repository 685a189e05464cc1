"""The minimum-rate arithmetic, on a clock the test holds (no real time passes)."""

from __future__ import annotations

import math

import pytest

from hardserve.http.deadlines import RateWindow


def test_grace_then_the_rate_at_the_limit_and_past_it() -> None:
    window = RateWindow(min_rate=100, grace_s=2.0)
    window.start(now=1000.0, progress=0)
    # Nothing is owed during the grace.
    assert not window.too_slow(1001.9, 0)
    assert window.too_slow(1002.0, 0)
    # 100 bytes buy one more second: exactly at the rate is enough, one byte less is not.
    assert not window.too_slow(1003.0 - 1e-9, 100)
    assert window.deadline(1002.5, 100) == pytest.approx(1003.0)
    assert window.too_slow(1003.0, 99)


def test_time_outside_waiting_periods_is_not_counted() -> None:
    window = RateWindow(min_rate=100, grace_s=1.0)
    window.start(0.0, 0)
    window.stop(0.9, 50)  # 0.9 s waited, 50 bytes moved
    # An hour passes while the server is not waiting on the client (the app is busy).
    assert not window.waiting
    window.start(3600.0, 50)
    # 0.9 s were used of the 1.5 s allowed (1 s grace + 50 bytes at 100 B/s).
    assert window.deadline(3600.0, 50) == pytest.approx(3600.6)
    assert not window.too_slow(3600.59, 50)
    assert window.too_slow(3600.6, 50)


def test_bytes_moved_outside_waiting_periods_are_not_credited() -> None:
    window = RateWindow(min_rate=10, grace_s=0.0)
    window.start(0.0, 0)
    window.stop(1.0, 10)
    # 1,000 bytes moved while the server was not waiting (the client kept up) earn nothing.
    window.start(5.0, 1010)
    assert window.deadline(5.0, 1010) == pytest.approx(5.0)


def test_start_is_idempotent_while_waiting() -> None:
    window = RateWindow(min_rate=100, grace_s=1.0)
    window.start(0.0, 0)
    window.start(0.5, 40)  # already waiting: the period still began at 0.0 with 0 bytes
    assert window.deadline(0.5, 40) == pytest.approx(1.4)


def test_rate_zero_never_expires() -> None:
    window = RateWindow(min_rate=0, grace_s=0.0)
    window.start(0.0, 0)
    assert window.deadline(1e9, 0) == math.inf
    assert not window.too_slow(1e9, 0)
