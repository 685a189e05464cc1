"""The pool: jobs submitted on the loop run on its threads, every thread is used when the jobs
block, and results come back to the loop. Every wait has a timeout."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

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


def run_on_loop(
    loop: asyncio.AbstractEventLoop, start: Callable[[asyncio.Future[None]], None]
) -> None:
    """Run `start(done)` as a loop callback, then the loop until `done` is set (or the timeout)."""
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(start, done)
    loop.run_until_complete(asyncio.wait_for(done, TIMEOUT_S))


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

    try:
        run_on_loop(loop, start)
    finally:
        pool.stop(TIMEOUT_S)
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

    try:
        run_on_loop(loop, start)
    finally:
        pool.stop(TIMEOUT_S)
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

    try:
        run_on_loop(loop, start)
    finally:
        release.set()
        pool.stop(TIMEOUT_S)
    assert admitted == [True, True, False]


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

    try:
        run_on_loop(loop, start)
    finally:
        pool.stop(TIMEOUT_S)
    assert seen == ["result 0", "result 1", "result 2", "batch end"]
    assert "error at the end of a hand-off batch" in caplog.text
