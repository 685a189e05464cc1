"""The bounded thread pool that runs WSGI calls, and the one road back to the event loop.

Jobs the loop submits during one turn are handed to the threads together, when the turn's
callbacks are done, and only a thread that is needed is woken: one when no thread is awake
and free, and another each time a thread starts a job while more wait and none is free (so
an app that blocks does not hold the rest back). Threads hand work back to the loop by
appending to a deque; the first append after the loop has emptied it schedules a single
wake-up, so a burst of results costs one call_soon_threadsafe instead of one each. Measured
against loop.run_in_executor in bench/RESULTS.md. What a hand-off registers with at_batch_end
runs once the whole burst has: a connection writes the response pieces of one burst together.

Calls are prepared (a request read, made into an environ and a call, and submitted) only while
fewer than `prepared_max` are admitted; a later request waits unread on its connection, in
arrival order (wait_for_room), and is read and prepared when a call ends. With 1,024 keep-alive
connections a loop turn read some 500 requests, and every stage (prepare, run, write) went
through all 500 of them: each stage found the previous stage's objects gone from the CPU's
cache, and a request cost half as much again as with 64 connections. In turns of at most
`prepared_max` they stay warm. The waiting requests count against threads + backlog_max like
queued calls.

A burst is bounded in bytes (write_in_loop, worker_write_queue_bytes). The loop takes a burst
when it next holds the interpreter's lock: after the switch interval (5 ms), or once every
thread waits. In that time the threads ran every streaming connection up to its own queue, so
with 64 clients of a stream built piece by piece the loop took 16 MiB of new pieces at a time.
Past the bound a thread that hands over response bytes waits for the loop to take them, and the
loop lets one waiting thread go per burst: the threads take turns instead of all waking at
once for the next burst (letting them all go cost four times the context switches).

Why not one queue.SimpleQueue put per job: each put woke a thread at once, in the middle of
the loop's turn. The woken thread preempted the loop at its next release of the GIL (uvloop
releases it between callbacks), ran one job and slept again: two to four context switches per
request, a quarter of the worker's CPU with keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

_log = logging.getLogger("hardserve.error")

Job = Callable[[], None]


class Waiter(Protocol):
    """A request waiting for room (Pool.wait_for_room): its connection, which reads and
    prepares it in its turn."""

    def take_turn(self) -> None: ...


# How long a thread waiting for the loop to take a burst waits with no burst taken at all
# before it goes on by itself (Pool._wait_for_bursts). The loop takes one at least every switch
# interval (5 ms) while threads hand over.
_BURST_WAIT_S = 0.01


class Pool:
    def __init__(
        self,
        threads: int,
        backlog_max: int,
        handed_max_bytes: int = 0,
        prepared_max: int = 0,
    ) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self.size = threads
        # Calls admitted but not yet finished, running ones included. Past size + backlog_max
        # (requests waiting for room counted too) a request is answered 503 at once instead of
        # waiting behind the others.
        self._limit = threads + backlog_max
        self.in_flight = 0
        # Loop side: the requests waiting for in_flight to fall below _prepared_max (0: none
        # wait), in arrival order. Fewer than `threads` would leave threads idle while requests
        # wait. A withdrawn one keeps its place in the line, listed in _withdrawn, until its
        # turn comes or withdrawn places outnumber the others (stop_waiting): withdrawing is
        # O(1) on average even for a request deep in the line (requests shed together, or
        # clients that reset), and the line is a plain deque.
        self._prepared_max = max(prepared_max, threads) if prepared_max else 0
        self._waiting: deque[Waiter] = deque()
        self._withdrawn: set[Waiter] = set()
        self._admitting = False  # inside _admit_waiting, or a call of it is scheduled
        # Submitted during the loop's current turn, handed over by _hand_over at its end.
        self._submitted: list[Job] = []
        # Under _lock: the jobs the threads take (None tells a thread to exit), the parked
        # threads (each waits on a lock of its own, the last parked is woken first) and how
        # many threads are awake and not running a job (they take queued jobs unwoken).
        self._lock = threading.Lock()
        self._jobs: deque[Job | None] = deque()
        self._parked: list[threading.Lock] = []
        self._free = 0
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_loop: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        # Under _wake_lock: response bytes handed to the loop since it last took a burst, the
        # threads waiting because they passed handed_max_bytes (0: no bound), each on a lock of
        # its own, let go one per burst in turn; bursts taken (a waiting thread watches it).
        self._handed_max = handed_max_bytes
        self._handed_bytes = 0
        self._handed_waiters: deque[threading.Lock] = deque()
        self._bursts = 0
        self.write_waits = 0  # times a thread waited (read on the loop for the stats)
        # Loop side: run once the current hand-off batch is done (at_batch_end).
        self._batch_end: list[Callable[[], None]] = []
        # One byte per thread, 1 while it runs a job: each thread writes only its own byte (an
        # atomic store, no lock), and the loop counts them when it reports.
        self._busy = bytearray(threads)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for index in range(self.size):
            thread = threading.Thread(
                target=self._work, args=(index,), name=f"hardserve-pool-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    # -- loop side ---------------------------------------------------------------------------

    def must_wait(self) -> bool:
        """Whether a new request waits for room (wait_for_room) before it is read: the pool has
        `prepared_max` calls, or requests wait already (they go first). A saturated pool says
        no: the request is read and refused by submit."""
        waiting = len(self._waiting) - len(self._withdrawn)
        if self.in_flight + waiting >= self._limit:
            return False
        return waiting > 0 or (self._prepared_max > 0 and self.in_flight >= self._prepared_max)

    def wait_for_room(self, waiter: Waiter) -> None:
        """Call `waiter.take_turn()` when the calls admitted before it leave room, in arrival
        order. It submits at most one call."""
        if self._withdrawn and waiter in self._withdrawn:
            # Back in the line before its withdrawn place came up: that place goes.
            self._withdrawn.discard(waiter)
            self._waiting.remove(waiter)
        self._waiting.append(waiter)

    def stop_waiting(self, waiter: Waiter) -> None:
        """Withdraw a waiting request (its connection closed, or it waited too long); it
        must be waiting."""
        withdrawn = self._withdrawn
        withdrawn.add(waiter)
        if len(withdrawn) * 2 > len(self._waiting):
            # More places withdrawn than held: drop them now (in place, as _admit_waiting may
            # be walking the line). Closed connections cannot then pile up behind a request
            # that waits long, say while every thread is stuck in the app and clients send and
            # reset; the line holds at most twice the requests that wait, and each withdrawal
            # costs O(1) on average.
            waiting = self._waiting
            kept = [w for w in waiting if w not in withdrawn]
            waiting.clear()
            waiting.extend(kept)
            withdrawn.clear()

    def _admit_waiting(self) -> None:
        waiting = self._waiting
        withdrawn = self._withdrawn
        self._admitting = True
        try:
            while waiting and self.in_flight < self._prepared_max:
                waiter = waiting.popleft()
                if withdrawn and waiter in withdrawn:
                    withdrawn.discard(waiter)
                    continue
                try:
                    waiter.take_turn()
                except Exception:
                    _log.exception("error preparing a waiting request")
        finally:
            self._admitting = False

    def submit(self, job: Job) -> bool:
        """Queue a call; False when the pool is saturated (the caller answers 503)."""
        if self.in_flight + len(self._waiting) - len(self._withdrawn) >= self._limit:
            return False
        self.in_flight += 1
        submitted = self._submitted
        submitted.append(job)
        if len(submitted) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        return True

    def _hand_over(self) -> None:
        """Give the jobs of the turn to the threads: wake one only if none is awake and free."""
        with self._lock:
            self._jobs.extend(self._submitted)
            self._submitted.clear()
            if not self._free and self._parked:
                self._free += 1
                self._parked.pop().release()

    def resubmit(self, job: Job) -> None:
        """Queue again a call admitted before (a parked response going on), behind what is
        already queued: it is counted, but never refused."""
        self.in_flight += 1
        submitted = self._submitted
        submitted.append(job)
        if len(submitted) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)

    def job_done(self) -> None:
        self.in_flight -= 1
        if self._waiting and not self._admitting:
            # Outside a drain (a withdrawn or shed call): the room goes to the first waiting
            # request on the next turn. A drain admits at its end, once for all its calls.
            self._admitting = True
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is exiting
                self._loop.call_soon(self._admit_waiting)

    @property
    def busy(self) -> int:
        """Threads running a job at this moment."""
        return self._busy.count(1)

    @property
    def queued(self) -> int:
        """Requests no thread has taken yet: queued jobs (a withdrawn call among them until a
        thread drops it, which a free thread does at once) and requests waiting for room."""
        return len(self._jobs) + len(self._submitted) + self.waiting

    @property
    def waiting(self) -> int:
        """Requests waiting for room, unread (wait_for_room)."""
        return len(self._waiting) - len(self._withdrawn)

    def stop(self, timeout: float | None = None) -> None:
        with self._lock:
            self._jobs.extend(self._submitted)
            self._submitted.clear()
            self._jobs.extend([None] * len(self._threads))
            while self._parked:
                self._free += 1
                self._parked.pop().release()
        with self._wake_lock:
            while self._handed_waiters:
                self._handed_waiters.popleft().release()
        for thread in self._threads:
            thread.join(timeout)

    def at_batch_end(self, function: Callable[[], None]) -> None:
        """On the loop, from a hand-off: run `function` once every hand-off that has reached
        the loop so far has run (a connection writes the pieces of one batch together)."""
        self._batch_end.append(function)

    def _drain_to_loop(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
            self._handed_bytes = 0
            self._bursts += 1
            waiter = self._handed_waiters.popleft() if self._handed_waiters else None
        if waiter is not None:
            waiter.release()
        pending = self._to_loop
        batch_end = self._batch_end
        self._admitting = True  # calls that end in this drain admit once, at its end
        while pending:
            function, args = pending.popleft()
            try:
                function(*args)
            except Exception:
                _log.exception("error in a hand-off from a pool thread")
        while batch_end:
            try:
                batch_end.pop()()
            except Exception:
                _log.exception("error at the end of a hand-off batch")
        if self._waiting:
            self._admit_waiting()
        else:
            self._admitting = False

    # -- thread side -------------------------------------------------------------------------

    def call_in_loop(self, function: Callable[..., None], *args: Any) -> None:
        """Run function(*args) on the loop thread, in order with this thread's other calls."""
        self._to_loop.append((function, args))
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake_loop()

    def _wake_loop(self) -> None:
        """Schedule the loop's drain; once per burst (the caller set _wake_pending)."""
        assert self._loop is not None
        # RuntimeError: the loop has closed because the worker is exiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drain_to_loop)

    def write_in_loop(
        self, size: int, may_wait: bool, function: Callable[..., None], *args: Any
    ) -> None:
        """call_in_loop for a hand-off of `size` response bytes. When `may_wait` and the bytes
        handed over since the loop last took a burst pass handed_max_bytes, wait for the loop
        to take them (and to let this thread go, in turn with the other waiting threads)."""
        self._to_loop.append((function, args))
        waiter = None
        with self._wake_lock:
            self._handed_bytes += size
            if may_wait and self._handed_max and self._handed_bytes > self._handed_max:
                waiter = threading.Lock()
                waiter.acquire()
                self._handed_waiters.append(waiter)
                self.write_waits += 1
            if self._wake_pending:
                wake = False
            else:
                self._wake_pending = wake = True
        if wake:
            self._wake_loop()
        if waiter is not None:
            self._wait_for_bursts(waiter)

    def _wait_for_bursts(self, waiter: threading.Lock) -> None:
        """Wait until a burst lets `waiter` go. A thread let go may stop handing over (its app
        waits on something else), and then no burst comes to let the next one go: a waiting
        thread that sees no burst taken for a while goes on by itself."""
        bursts = self._bursts
        while not waiter.acquire(timeout=_BURST_WAIT_S):
            if self._bursts == bursts:
                with self._wake_lock:
                    if waiter in self._handed_waiters:
                        self._handed_waiters.remove(waiter)
                return
            bursts = self._bursts

    def _work(self, index: int) -> None:
        jobs = self._jobs
        busy = self._busy
        lock = self._lock
        parked = self._parked
        wake_me = threading.Lock()
        wake_me.acquire()
        with lock:
            self._free += 1
        while True:
            with lock:
                if not jobs:
                    # Nothing to do: park. Whoever wakes this thread counts it free again.
                    self._free -= 1
                    parked.append(wake_me)
                    job = None
                else:
                    job = jobs.popleft()
                    self._free -= 1
                    if job is None:
                        return  # stop()
                    if jobs and not self._free and parked:
                        # More jobs wait and no other thread is free to take them.
                        self._free += 1
                        parked.pop().release()
            if job is None:
                wake_me.acquire()
                continue
            busy[index] = 1
            try:
                job()
            except BaseException:  # a job must never kill its thread
                _log.exception("unhandled error in a pool thread")
            busy[index] = 0
            # An idle thread must not keep its last call (and that call's connection) alive.
            job = None
            with lock:
                self._free += 1
