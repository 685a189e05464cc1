"""The bounded thread pool that runs WSGI calls, and the one road back to the event loop.

Jobs go to the threads through one SimpleQueue (no executor futures, no per-job loop wake-up).
Threads hand work back to the loop by appending to a deque; the first append after the loop
has emptied it schedules a single wake-up, so a burst of results costs one
call_soon_threadsafe instead of one each. Measured against loop.run_in_executor in
bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("hardserve.error")

Job = Callable[[], None]


class Pool:
    def __init__(self, threads: int, backlog_max: int) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self.size = threads
        # Calls admitted but not yet finished, running ones included. Past size + backlog_max
        # a request is answered 503 at once instead of waiting behind the others.
        self._limit = threads + backlog_max
        self.in_flight = 0
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_loop: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for index in range(self.size):
            thread = threading.Thread(
                target=self._work, name=f"hardserve-pool-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    # -- loop side ---------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Queue a call; False when the pool is saturated (the caller answers 503)."""
        if self.in_flight >= self._limit:
            return False
        self.in_flight += 1
        self._jobs.put(job)
        return True

    def job_done(self) -> None:
        self.in_flight -= 1

    def stop(self, timeout: float | None = None) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _drain_to_loop(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        pending = self._to_loop
        while pending:
            function, args = pending.popleft()
            try:
                function(*args)
            except Exception:
                _log.exception("error in a hand-off from a pool thread")

    # -- thread side -------------------------------------------------------------------------

    def call_in_loop(self, function: Callable[..., None], *args: Any) -> None:
        """Run function(*args) on the loop thread, in order with this thread's other calls."""
        self._to_loop.append((function, args))
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None
        # RuntimeError: the loop has closed because the worker is exiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drain_to_loop)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job must never kill its thread
                _log.exception("unhandled error in a pool thread")
            # An idle thread must not keep its last call (and that call's connection) alive.
            job = None
