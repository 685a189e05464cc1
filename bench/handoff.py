"""Cost of one loop -> thread -> loop round trip: loop.run_in_executor against hardserve's Pool.

Each variant keeps N no-op jobs in flight (64, then 1) until ROUND_TRIPS have come back,
driven by plain callbacks on both sides so that only the hand-off differs:

- executor: loop.run_in_executor(ThreadPoolExecutor(threads), job); the future's done
  callback launches the next job. Every result wakes the loop once.
- pool: Pool.submit(job); the job hands its result back with Pool.call_in_loop, which
  coalesces a burst of results into one loop wake-up.

Run pinned to one core, like a server worker: `taskset -c 0 python -m bench.handoff`.
Wall and CPU (all threads) microseconds per round trip, median of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hardserve.worker.main import new_event_loop
from hardserve.worker.pool import Pool

ROUND_TRIPS = 20_000
IN_FLIGHT = (64, 1)
THREADS = 8
REPEATS = 5
LOOPS = ("uvloop", "asyncio")


@dataclass
class Sample:
    wall_s: float
    cpu_s: float


class _Counter:
    """Jobs launched and results seen; lives on the loop thread only."""

    def __init__(self, total: int, done: asyncio.Future[None]) -> None:
        self.total = total
        self.launched = 0
        self.finished = 0
        self.done = done

    def result_arrived(self, launch: Callable[[], None]) -> None:
        self.finished += 1
        if self.finished == self.total:
            self.done.set_result(None)
        elif self.launched < self.total:
            launch()


def _timed(
    loop: asyncio.AbstractEventLoop,
    done: asyncio.Future[None],
    first: Callable[[], None],
    in_flight: int,
) -> Sample:
    def start() -> None:
        for _ in range(in_flight):
            first()

    wall, cpu = time.perf_counter(), time.process_time()
    loop.call_soon(start)
    loop.run_until_complete(done)
    return Sample(time.perf_counter() - wall, time.process_time() - cpu)


def executor_trips(
    loop: asyncio.AbstractEventLoop, total: int, in_flight: int, threads: int
) -> Sample:
    executor = ThreadPoolExecutor(threads)
    counter = _Counter(total, loop.create_future())

    def job() -> None:
        pass

    def on_done(future: asyncio.Future[None]) -> None:
        future.result()
        counter.result_arrived(launch)

    def launch() -> None:
        counter.launched += 1
        loop.run_in_executor(executor, job).add_done_callback(on_done)

    try:
        return _timed(loop, counter.done, launch, in_flight)
    finally:
        executor.shutdown()


def pool_trips(loop: asyncio.AbstractEventLoop, total: int, in_flight: int, threads: int) -> Sample:
    pool = Pool(threads, in_flight)
    pool.start(loop)
    counter = _Counter(total, loop.create_future())

    def on_result() -> None:  # on the loop, as a connection's _loop_finish is
        pool.job_done()
        counter.result_arrived(launch)

    def job() -> None:  # on a pool thread
        pool.call_in_loop(on_result)

    def launch() -> None:
        counter.launched += 1
        if not pool.submit(job):
            raise RuntimeError("pool refused a job: more in flight than its backlog")

    try:
        return _timed(loop, counter.done, launch, in_flight)
    finally:
        pool.stop(timeout=5)


VARIANTS: dict[str, Callable[[asyncio.AbstractEventLoop, int, int, int], Sample]] = {
    "run_in_executor": executor_trips,
    "hardserve Pool": pool_trips,
}


def measure(
    loop_kind: str, round_trips: int, in_flight: int, threads: int, repeats: int
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
    loop = new_event_loop(loop_kind)
    try:
        # A short unmeasured pass first, then the variants alternate so drift hits both.
        for variant in VARIANTS.values():
            variant(loop, min(2000, round_trips), in_flight, threads)
        for _ in range(repeats):
            for name, variant in VARIANTS.items():
                samples[name].append(variant(loop, round_trips, in_flight, threads))
    finally:
        loop.close()
    return {
        name: {
            "wall_us_per_trip": statistics.median(s.wall_s for s in runs) * 1e6 / round_trips,
            "cpu_us_per_trip": statistics.median(s.cpu_s for s in runs) * 1e6 / round_trips,
        }
        for name, runs in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=ROUND_TRIPS)
    parser.add_argument(
        "--in-flight",
        default=",".join(map(str, IN_FLIGHT)),
        help="comma-separated; 1 shows the cost when there is nothing to batch",
    )
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    for in_flight in (int(n) for n in args.in_flight.split(",")):
        for kind in LOOPS:
            figures = measure(kind, args.round_trips, in_flight, args.threads, args.repeats)
            for name, values in figures.items():
                rows.append({"loop": kind, "in_flight": in_flight, "variant": name, **values})
    if args.json:
        print(
            json.dumps(
                {
                    "round_trips": args.round_trips,
                    "threads": args.threads,
                    "repeats": args.repeats,
                    "rows": rows,
                },
                indent=1,
            )
        )
        return 0
    print(f"{args.round_trips} round trips, {args.threads} threads, median of {args.repeats}")
    for row in rows:
        print(
            f"{row['loop']:8} {row['in_flight']:3} in flight  {row['variant']:16} "
            f"{row['wall_us_per_trip']:7.2f} µs wall {row['cpu_us_per_trip']:7.2f} µs CPU"
            " per round trip"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
