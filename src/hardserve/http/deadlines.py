"""Minimum-rate deadlines for slow bodies and slow readers, as pure arithmetic over a clock
the caller reads (the loop's time in the worker, plain numbers in the tests).

The model is Apache mod_reqtimeout's MinRate: a transfer that has been waited on for
`waited` seconds must have moved at least (waited - grace) x rate bytes. Only the time the
server spends waiting on the client is counted; the caller starts and stops the clock.
"""

from __future__ import annotations

import math


class RateWindow:
    """Waiting time and bytes moved while waiting, summed over the periods the caller waited."""

    __slots__ = ("_grace_s", "_min_rate", "_moved", "_progress_at", "_since", "_waited")

    def __init__(self, min_rate: float, grace_s: float) -> None:
        self._min_rate = min_rate
        self._grace_s = grace_s
        self._waited = 0.0  # seconds of the finished waiting periods
        self._moved = 0  # bytes moved during them
        self._since: float | None = None  # when the current period started
        self._progress_at = 0  # the byte count when it started

    @property
    def waiting(self) -> bool:
        return self._since is not None

    def start(self, now: float, progress: int) -> None:
        """Begin a waiting period; `progress` is the transfer's byte count so far."""
        if self._since is None:
            self._since = now
            self._progress_at = progress

    def stop(self, now: float, progress: int) -> None:
        """End the waiting period; its time and bytes count towards the totals."""
        if self._since is not None:
            self._waited += now - self._since
            self._moved += progress - self._progress_at
            self._since = None

    def deadline(self, now: float, progress: int) -> float:
        """The time by which, at the minimum rate, the client must have moved more bytes than
        `progress`; infinity when the rate is off. Meaningful while waiting."""
        if self._min_rate <= 0:
            return math.inf
        waited, moved = self._totals(now, progress)
        allowed = self._grace_s + moved / self._min_rate
        return now + (allowed - waited)

    def too_slow(self, now: float, progress: int) -> bool:
        return now >= self.deadline(now, progress)

    def _totals(self, now: float, progress: int) -> tuple[float, int]:
        if self._since is None:
            return self._waited, self._moved
        return self._waited + (now - self._since), self._moved + (progress - self._progress_at)
