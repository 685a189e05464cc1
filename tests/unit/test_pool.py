"""The pool: jobs submitted on the loop run on its threads, every thread is used when the jobs
block, and results come back to the loop. Every wait has a timeout."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from hardserve.worker import pool as pool_module
from hardserve.worker.main import new_event_loop
from hardserve.worker.pool import Pool

TIMEOUT_S = 10.0


@pytest.fixture(params=["uvloop", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    loop = new_event_loop(request.param)
    try:
        yield loop
    finally:
        loop.close()


class Turn:
    """A request waiting for room, as the pool sees a connection: `run` in its turn."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.run = run

    def take_turn(self) -> None:
        self.run()


def run_on_loop(
    loop: asyncio.AbstractEventLoop, start: Callable[[asyncio.Future[None]], None]
) -> None:
    """Run `start(done)` as a loop callback, then the loop until `done` is set (or the timeout)."""
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(start, done)
    loop.run_until_complete(asyncio.wait_for(done, TIMEOUT_S))


def run_then_stop(
    loop: asyncio.AbstractEventLoop,
    pool: Pool,
    start: Callable[[asyncio.Future[None]], None],
    release: threading.Event | None = None,
) -> None:
    """run_on_loop, then, whatever happened, let the jobs go (`release`) and stop the pool."""
    try:
        run_on_loop(loop, start)
    finally:
        if release is not None:
            release.set()
        pool.stop(TIMEOUT_S)


def test_jobs_run_on_the_threads_and_hand_results_back_to_the_loop(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool = Pool(4, 100)
    pool.start(loop)
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    back_on: list[int] = []
    count = 50

    def start(done: asyncio.Future[None]) -> None:
        def arrived(index: int) -> None:
            back_on.append(threading.get_ident())
            pool.job_done()
            if len(back_on) == count:
                done.set_result(None)

        def job(index: int) -> Callable[[], None]:
            def run() -> None:
                ran_on.append(threading.get_ident())
                pool.call_in_loop(arrived, index)

            return run

        for index in range(count):
            assert pool.submit(job(index))

    run_then_stop(loop, pool, start)
    assert len(ran_on) == count
    assert loop_thread not in ran_on
    assert set(back_on) == {loop_thread}
    assert pool.in_flight == 0


def test_jobs_that_block_get_every_thread(loop: asyncio.AbstractEventLoop) -> None:
    """Four jobs submitted in one turn that can only finish together: the pool must wake all
    four threads, not leave the queued ones behind a blocked thread."""
    threads = 4
    pool = Pool(threads, 0)
    pool.start(loop)
    barrier = threading.Barrier(threads, timeout=TIMEOUT_S)
    passed: list[bool] = []

    def start(done: asyncio.Future[None]) -> None:
        def arrived() -> None:
            pool.job_done()
            if len(passed) == threads and not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                barrier.wait()
                passed.append(True)
            except threading.BrokenBarrierError:
                passed.append(False)
            pool.call_in_loop(arrived)

        for _ in range(threads):
            assert pool.submit(run)

    run_then_stop(loop, pool, start)
    assert passed == [True] * threads


def test_the_pool_admits_threads_plus_backlog_calls(loop: asyncio.AbstractEventLoop) -> None:
    pool = Pool(1, 1)
    pool.start(loop)
    release = threading.Event()
    admitted: list[bool] = []

    def start(done: asyncio.Future[None]) -> None:
        for _ in range(3):
            admitted.append(pool.submit(lambda: release.wait(TIMEOUT_S)))
        done.set_result(None)

    run_then_stop(loop, pool, start, release)
    assert admitted == [True, True, False]


def test_requests_past_prepared_max_wait_and_are_let_in_by_arrival_as_calls_end(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Two calls may be prepared at once: the first two are (the second at the limit), the next
    three wait, and each call that ends (its job_done in a drain, as a connection's finish)
    lets the first waiting one in; never more than two are admitted."""
    pool = Pool(1, 10, prepared_max=2)
    pool.start(loop)
    release = threading.Event()
    order: list[str] = []
    admitted_most = 0
    waits_at: dict[str, bool] = {}
    counts: list[tuple[int, int, int]] = []

    def start(done: asyncio.Future[None]) -> None:
        def ended() -> None:
            pool.job_done()
            if pool.in_flight == 0 and not pool.waiting:
                done.set_result(None)

        def job() -> None:
            release.wait(TIMEOUT_S)
            pool.call_in_loop(ended)

        def prepare(name: str) -> Callable[[], None]:
            def run() -> None:
                nonlocal admitted_most
                order.append(name)
                if not pool.submit(job):
                    order.append("refused")
                admitted_most = max(admitted_most, pool.in_flight)

            return run

        for name in ("first", "second"):
            waits_at[name] = pool.must_wait()
            prepare(name)()
        for name in ("a", "b", "c"):
            waits_at[name] = pool.must_wait()
            pool.wait_for_room(Turn(prepare(name)))
        counts.append((pool.in_flight, pool.waiting, pool.queued))
        release.set()

    run_then_stop(loop, pool, start, release)
    assert waits_at == {"first": False, "second": False, "a": True, "b": True, "c": True}
    assert counts == [(2, 3, 5)]
    assert order == ["first", "second", "a", "b", "c"]
    assert admitted_most == 2


def test_a_waiting_request_counts_against_threads_plus_backlog(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """One thread, one backlog slot, one call prepared at once: a running call and a waiting
    request fill the pool, so the next request is read and refused (must_wait says no, submit
    refuses); withdrawn, the waiting request leaves its room."""
    pool = Pool(1, 1, prepared_max=1)
    pool.start(loop)
    release = threading.Event()
    seen: list[object] = []

    def start(done: asyncio.Future[None]) -> None:
        assert pool.submit(lambda: release.wait(TIMEOUT_S))
        seen.append(pool.must_wait())
        waiting = Turn(lambda: seen.append("withdrawn, yet its turn came"))
        pool.wait_for_room(waiting)
        seen.extend([pool.must_wait(), pool.submit(lambda: None)])
        pool.stop_waiting(waiting)
        seen.extend([pool.waiting, pool.submit(lambda: None)])
        done.set_result(None)

    run_then_stop(loop, pool, start, release)
    assert seen == [True, False, False, 0, True]


def test_a_withdrawn_request_loses_its_place_wherever_it_stood(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Withdrawn from the middle of the line, a request is skipped when its turn comes and the
    one behind it goes in its place; one that waits again goes to the end of the line."""
    pool = Pool(1, 10, prepared_max=1)
    pool.start(loop)
    release = threading.Event()
    let_in: list[str] = []
    seen: list[object] = []

    def start(done: asyncio.Future[None]) -> None:
        def turn(name: str) -> Turn:
            def run() -> None:
                let_in.append(name)
                if name == "a":
                    done.set_result(None)

            return Turn(run)

        seen.append(pool.submit(lambda: release.wait(TIMEOUT_S)))
        a, b, c, d = turn("a"), turn("b"), turn("c"), turn("d")
        for waiter in (a, b, c, d):
            pool.wait_for_room(waiter)
        pool.stop_waiting(b)
        pool.stop_waiting(a)
        seen.append(pool.waiting)
        pool.wait_for_room(a)  # back in the line before its old place came up
        seen.append(pool.waiting)
        pool.job_done()  # the running call ends; none of the waiting ones submits

    run_then_stop(loop, pool, start, release)
    assert seen == [True, 2, 3]
    assert let_in == ["c", "d", "a"]
    assert pool.waiting == 0
    assert pool.queued == 0


def test_a_call_ended_outside_a_drain_lets_the_next_request_in_on_the_next_turn(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A call withdrawn or shed by the loop ends without a hand-off: its room still goes to
    the first waiting request, once, on the loop's next turn."""
    pool = Pool(1, 10, prepared_max=1)
    pool.start(loop)
    release = threading.Event()
    let_in: list[str] = []
    seen: list[object] = []

    def start(done: asyncio.Future[None]) -> None:
        def prepare(name: str) -> Callable[[], None]:
            def run() -> None:
                let_in.append(name)
                if name == "b":
                    done.set_result(None)

            return run

        seen.append(pool.submit(lambda: release.wait(TIMEOUT_S)))
        pool.wait_for_room(Turn(prepare("a")))
        pool.wait_for_room(Turn(prepare("b")))
        pool.job_done()  # as _withdraw_queued_call does
        seen.append(list(let_in))  # not inside the caller's turn
        # There is room now, but a new request still goes behind the waiting ones.
        seen.append(pool.must_wait())

    run_then_stop(loop, pool, start, release)
    assert seen == [True, [], True]
    # "a" prepared nothing, so there was room for "b" too.
    assert let_in == ["a", "b"]
    assert pool.waiting == 0


def test_a_line_of_withdrawn_requests_keeps_none_of_them_alive() -> None:
    """Once every request in the line has been withdrawn (their connections closed), the pool
    holds no reference to any of them, though no turn has come to drop their places."""
    pool = Pool(1, 10, prepared_max=1)
    waiters = [Turn(lambda: None) for _ in range(3)]
    refs = [weakref.ref(waiter) for waiter in waiters]
    for waiter in waiters:
        pool.wait_for_room(waiter)
    for waiter in waiters:
        pool.stop_waiting(waiter)
    del waiters, waiter
    assert [ref() for ref in refs] == [None, None, None]
    assert pool.waiting == 0


def test_closed_connections_do_not_pile_up_behind_a_request_that_waits_long() -> None:
    """While the first request in the line waits (every thread stuck, no turn comes), clients
    that send a whole head and reset, again and again, leave at most one withdrawn place behind
    it: the line holds at most twice the requests that wait."""
    pool = Pool(1, 10, prepared_max=1)
    first = Turn(lambda: None)
    pool.wait_for_room(first)
    refs = []
    for _ in range(100):
        waiter = Turn(lambda: None)
        refs.append(weakref.ref(waiter))
        pool.wait_for_room(waiter)
        pool.stop_waiting(waiter)
    del waiter
    assert sum(ref() is not None for ref in refs) <= 1
    assert pool.waiting == 1


@pytest.mark.parametrize(("prepared_max", "waits_after"), [(2, 4), (0, None)])
def test_prepared_max_is_at_least_the_threads_and_0_never_waits(
    loop: asyncio.AbstractEventLoop, prepared_max: int, waits_after: int | None
) -> None:
    pool = Pool(4, 100, prepared_max=prepared_max)
    pool.start(loop)
    release = threading.Event()
    must_wait: list[bool] = []

    def start(done: asyncio.Future[None]) -> None:
        for _ in range(8):
            must_wait.append(pool.must_wait())
            pool.submit(lambda: release.wait(TIMEOUT_S))
        done.set_result(None)

    run_then_stop(loop, pool, start, release)
    first_wait = must_wait.index(True) if True in must_wait else None
    assert first_wait == waits_after


def test_stop_runs_the_jobs_submitted_before_it(loop: asyncio.AbstractEventLoop) -> None:
    pool = Pool(2, 100)
    pool.start(loop)
    ran: list[int] = []
    lock = threading.Lock()

    def start(done: asyncio.Future[None]) -> None:
        def job(index: int) -> Callable[[], None]:
            def run() -> None:
                with lock:
                    ran.append(index)

            return run

        for index in range(10):
            assert pool.submit(job(index))
        # Still in the turn that submitted them: none has been handed to a thread yet.
        pool.stop(TIMEOUT_S)
        done.set_result(None)

    run_on_loop(loop, start)
    assert sorted(ran) == list(range(10))
    assert not any(thread.is_alive() for thread in pool._threads)


def test_batch_end_runs_after_every_hand_off_of_its_batch(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """One job hands three results back in one batch; the first registers a batch-end function
    that raises and another that records: both run once, after all three results, and the
    raise is logged without stopping the others."""
    pool = Pool(1, 10)
    pool.start(loop)
    seen: list[str] = []
    all_handed = threading.Event()

    def start(done: asyncio.Future[None]) -> None:
        def arrived(index: int) -> None:
            seen.append(f"result {index}")
            if index == 0:
                pool.at_batch_end(fails)
                pool.at_batch_end(lambda: seen.append("batch end"))

        def fails() -> None:
            raise RuntimeError("batch end failed")

        def finished() -> None:
            pool.job_done()
            loop.call_soon(done.set_result, None)

        def job() -> None:
            for index in range(3):
                pool.call_in_loop(arrived, index)
            pool.call_in_loop(finished)
            all_handed.set()

        assert pool.submit(job)
        # The loop waits (after the hand-over that wakes the thread) until the job has handed
        # everything back, so the four hand-offs surely reach it as one batch.
        loop.call_soon(all_handed.wait, TIMEOUT_S)

    run_then_stop(loop, pool, start)
    assert seen == ["result 0", "result 1", "result 2", "batch end"]
    assert "error at the end of a hand-off batch" in caplog.text


# -- the bound on bytes handed over in one burst (worker_write_queue_bytes) --------------------


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a state another thread sets without a signal of its own (a pool thread beginning to
    wait); on the loop's thread, to hold the loop meanwhile."""
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting thread that sees no burst goes on by itself after a while: make the while
    longer than any test, so only a burst can let it go."""
    monkeypatch.setattr(pool_module, "_BURST_WAIT_S", TIMEOUT_S)


def run_holding_the_loop(
    loop: asyncio.AbstractEventLoop,
    pool: Pool,
    job: Callable[[], None],
    hold: Callable[[asyncio.Future[None]], None],
) -> None:
    """Start `pool`, submit `job`, and run `hold(done)` as the loop's next callback (the loop
    takes no burst while it runs); then the loop until `done` is set, and stop the pool."""
    pool.start(loop)

    def start(done: asyncio.Future[None]) -> None:
        assert pool.submit(job)
        loop.call_soon(hold, done)

    run_then_stop(loop, pool, start)


def run_until_one_wait(
    loop: asyncio.AbstractEventLoop, pool: Pool, steps: Callable[[], None], events: list[str]
) -> None:
    """Run `steps` as a job with the loop held until the thread begins one wait; then the loop
    records "the loop goes on" in `events`, goes on (taking the burst) and waits for the job."""
    finished = threading.Event()

    def job() -> None:
        steps()
        finished.set()

    def hold(done: asyncio.Future[None]) -> None:
        wait_until(lambda: pool.write_waits == 1, "the thread waits")
        events.append("the loop goes on")
        loop.call_soon(wait_for_the_job, done)

    def wait_for_the_job(done: asyncio.Future[None]) -> None:
        assert finished.wait(TIMEOUT_S), "the job never ended"
        done.set_result(None)

    run_holding_the_loop(loop, pool, job, hold)


@pytest.mark.usefixtures("patient")
def test_a_thread_past_the_bound_waits_for_the_loop_to_take_the_burst(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """100 bytes with a bound of 100: no wait. One byte more: the thread waits, and only the
    loop taking the burst lets it go."""
    pool = Pool(1, 10, handed_max_bytes=100)
    events: list[str] = []

    def steps() -> None:
        pool.write_in_loop(100, True, events.append, "loop took the bytes at the bound")
        events.append("thread went on at the bound")
        pool.write_in_loop(1, True, events.append, "loop took the byte past the bound")
        events.append("thread went on past the bound")

    run_until_one_wait(loop, pool, steps, events)
    assert events[:2] == ["thread went on at the bound", "the loop goes on"]
    assert set(events[2:]) == {
        "loop took the bytes at the bound",
        "loop took the byte past the bound",
        "thread went on past the bound",
    }
    assert pool.write_waits == 1


@pytest.mark.usefixtures("patient")
def test_the_loop_lets_one_waiting_thread_go_per_burst(loop: asyncio.AbstractEventLoop) -> None:
    """Two threads past the bound: the next burst lets the first to wait go, the one after it
    the second."""
    pool = Pool(2, 10, handed_max_bytes=10)
    pool.start(loop)
    went_on: list[str] = []
    first_went_on = threading.Event()

    def start(done: asyncio.Future[None]) -> None:
        def job(name: str, waiting_before: int) -> Callable[[], None]:
            def run() -> None:
                wait_until(lambda: pool.write_waits == waiting_before, f"{name}'s turn to wait")
                pool.write_in_loop(11, True, lambda: None)
                went_on.append(name)
                if len(went_on) == 1:
                    first_went_on.set()

            return run

        def hold_the_loop() -> None:
            wait_until(lambda: pool.write_waits == 2, "both threads wait")
            loop.call_soon(after_one_burst)

        def after_one_burst() -> None:
            # The burst both hand-offs woke the loop for has been taken.
            assert len(pool._handed_waiters) == 1
            assert first_went_on.wait(TIMEOUT_S)
            assert went_on == ["a"]
            pool.call_in_loop(lambda: None)  # another burst
            loop.call_soon(wait_for_the_second, done)

        def wait_for_the_second(done: asyncio.Future[None]) -> None:
            wait_until(lambda: len(went_on) == 2, "the second thread goes on")
            done.set_result(None)

        assert pool.submit(job("a", 0))
        assert pool.submit(job("b", 1))
        loop.call_soon(hold_the_loop)

    run_then_stop(loop, pool, start)
    assert went_on == ["a", "b"]


def test_a_waiting_thread_goes_on_by_itself_when_no_burst_comes(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread let go before it stops handing over, and nothing else wakes the loop: the
    next waiting thread must not wait for ever (here the loop is held instead)."""
    monkeypatch.setattr(pool_module, "_BURST_WAIT_S", 0.05)
    pool = Pool(1, 10, handed_max_bytes=10)
    went_on = threading.Event()

    def job() -> None:
        pool.write_in_loop(11, True, lambda: None)
        went_on.set()

    def hold(done: asyncio.Future[None]) -> None:
        assert went_on.wait(TIMEOUT_S), "the thread still waits"
        done.set_result(None)

    run_holding_the_loop(loop, pool, job, hold)
    assert pool.write_waits == 1
    assert not pool._handed_waiters


@pytest.mark.usefixtures("patient")
def test_finish_counts_in_the_burst_but_never_waits(loop: asyncio.AbstractEventLoop) -> None:
    """A thread that hands over a response's last bytes (may_wait False) goes on past the
    bound; its next hand-off of the same burst waits."""
    pool = Pool(1, 10, handed_max_bytes=10)
    events: list[str] = []

    def steps() -> None:
        pool.write_in_loop(50, False, lambda: None)
        events.append("went on after the last bytes")
        pool.write_in_loop(1, True, lambda: None)
        events.append("went on after a piece")

    run_until_one_wait(loop, pool, steps, events)
    assert events == ["went on after the last bytes", "the loop goes on", "went on after a piece"]


@pytest.mark.usefixtures("patient")
def test_stop_lets_a_waiting_thread_go(loop: asyncio.AbstractEventLoop) -> None:
    pool = Pool(1, 10, handed_max_bytes=10)
    went_on = threading.Event()

    def job() -> None:
        pool.write_in_loop(11, True, lambda: None)
        went_on.set()

    def stop_while_it_waits(done: asyncio.Future[None]) -> None:
        wait_until(lambda: pool.write_waits == 1, "the thread waits")
        pool.stop(TIMEOUT_S)
        done.set_result(None)

    run_holding_the_loop(loop, pool, job, stop_while_it_waits)
    assert went_on.is_set()
    assert not any(thread.is_alive() for thread in pool._threads)


@pytest.mark.usefixtures("patient")
def test_no_bound_no_wait(loop: asyncio.AbstractEventLoop) -> None:
    pool = Pool(1, 10, handed_max_bytes=0)
    went_on = threading.Event()

    def job() -> None:
        pool.write_in_loop(1 << 30, True, lambda: None)
        went_on.set()

    def hold(done: asyncio.Future[None]) -> None:
        assert went_on.wait(TIMEOUT_S), "the thread waits with no bound"
        done.set_result(None)

    run_holding_the_loop(loop, pool, job, hold)
    assert pool.write_waits == 0
