"""observe/stats.py: a worker's counters, its snapshots, and the master's sums over workers."""

from __future__ import annotations

import ast
import asyncio
import sys
import threading
from pathlib import Path

import pytest

from hardserve.http import reasons
from hardserve.observe.stats import (
    DURATION_BUCKETS_S,
    GAUGES,
    SHED_REASONS,
    TIMEOUT_KIND_OF_REASON,
    TIMEOUT_KINDS,
    Aggregate,
    Histogram,
    Snapshot,
    WorkerStats,
    method_label,
    status_class,
)
from tests.parsing import parse_source


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.total == pytest.approx(8.65)


@pytest.mark.parametrize(
    ("method", "label"), [("GET", "GET"), ("PATCH", "PATCH"), ("BREW", "other"), ("get", "other")]
)
def test_methods_outside_the_known_set_are_other(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("status", "label"), [(101, "1xx"), (200, "2xx"), (404, "4xx"), (599, "5xx"), (0, "none")]
)
def test_status_classes(status: int, label: str) -> None:
    assert status_class(status) == label


def test_refusals_count_as_timeouts_and_shedding_where_they_are() -> None:
    stats = WorkerStats()
    stats.refused("head_timeout")
    stats.refused("queue_timeout")
    stats.refused("pool_saturated")
    stats.refused("bare_lf")
    stats.timed_out("keepalive")
    assert stats.refusals == {
        "head_timeout": 1,
        "queue_timeout": 1,
        "pool_saturated": 1,
        "bare_lf": 1,
    }
    assert stats.timeouts == {"head": 1, "queue": 1, "keepalive": 1}
    assert stats.shed == {"queue_timeout": 1, "pool_saturated": 1}


def test_the_classifying_tables_name_real_reason_codes() -> None:
    codes = {reason.code for reason in reasons.all_reasons()}
    assert set(TIMEOUT_KIND_OF_REASON) <= codes
    assert codes >= SHED_REASONS
    assert set(TIMEOUT_KIND_OF_REASON.values()) <= set(TIMEOUT_KINDS)
    for code in SHED_REASONS:
        assert reasons.by_code(code).status == 503


def test_a_snapshot_survives_its_encoding() -> None:
    stats = WorkerStats()
    stats.request_done("GET", 200, 0.003)
    stats.request_done("GET", 200, 0.02)
    stats.request_done("POST", 500, 2.0)
    stats.queue_wait.observe(0.0002)
    stats.bytes_sent = 1234
    snapshot = stats.snapshot({"pool_busy": 3})
    decoded = Snapshot.decode(snapshot.encode())
    assert decoded == snapshot
    series = decoded.histograms["request_duration"]["GET|2xx"]
    assert len(series) == len(DURATION_BUCKETS_S) + 2  # the buckets, +Inf, then the sum
    assert sum(series[:-1]) == 2
    assert decoded.counters["requests"] == {"": 3}
    assert decoded.gauges == {"pool_busy": 3.0}


@pytest.mark.parametrize("message", [b"H", b"T[1]", b"T{not json", b'T{"c": 5}'])
def test_a_broken_snapshot_is_refused_with_value_error(message: bytes) -> None:
    with pytest.raises(ValueError):
        Snapshot.decode(message)


def _worker(requests: int, gauge: float) -> Snapshot:
    stats = WorkerStats()
    for _ in range(requests):
        stats.request_done("GET", 200, 0.001)
    return stats.snapshot({"connections_open": gauge})


def test_counters_never_go_backwards_when_a_worker_goes() -> None:
    aggregate = Aggregate()
    aggregate.update(101, _worker(4, 2))
    aggregate.update(102, _worker(6, 5))
    assert aggregate.totals().counters["requests"] == {"": 10}
    aggregate.worker_gone(101)
    # Its counters stay in the sum; its gauges are gone.
    assert aggregate.totals().counters["requests"] == {"": 10}
    assert dict(aggregate.gauges()) == {102: {"connections_open": 5}}
    # A replacement starts from zero; the sum still grows.
    aggregate.update(103, _worker(1, 1))
    totals = aggregate.totals()
    assert totals.counters["requests"] == {"": 11}
    assert sum(totals.histograms["request_duration"]["GET|2xx"][:-1]) == 11


def test_a_later_snapshot_replaces_the_earlier_one() -> None:
    aggregate = Aggregate()
    aggregate.update(101, _worker(4, 2))
    aggregate.update(101, _worker(9, 1))
    assert aggregate.totals().counters["requests"] == {"": 9}
    aggregate.worker_gone(101)
    aggregate.worker_gone(101)  # twice: nothing more is added
    assert aggregate.totals().counters["requests"] == {"": 9}


def test_a_method_as_bytes_counts_under_the_same_label_as_text() -> None:
    stats = WorkerStats()
    stats.request_done(b"GET", 200, 0.001)
    stats.request_done("GET", 204, 0.001)
    stats.request_done(b"GET", 0, 0.001)
    stats.request_done(b"BREW", 418, 0.001)
    series = stats.request_duration
    assert {key: sum(h.counts) for key, h in series.items()} == {
        "GET|2xx": 2,
        "GET|none": 1,
        "other|4xx": 1,
    }
    assert stats.requests == 4


def test_methods_a_client_makes_up_do_not_grow_the_workers_memory() -> None:
    stats = WorkerStats()
    for index in range(10_000):
        stats.request_done(b"M%d" % index, 200, 0.001)
    assert list(stats.request_duration) == ["other|2xx"]
    assert sum(stats.request_duration["other|2xx"].counts) == 10_000
    assert stats.snapshot({}).counters["requests"] == {"": 10_000}


# -- the worker's side: where the numbers are counted ----------------------------------------------

WORKER = Path(__file__).resolve().parents[2] / "src" / "hardserve" / "worker"


def _calls_of(name: str) -> tuple[int, list[tuple[str, str]]]:
    """How many calls of `name` there are in worker/, and (module, function) of each call
    made directly inside a function definition."""
    total = 0
    sites: list[tuple[str, str]] = []

    def called(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        callee = node.func
        return (isinstance(callee, ast.Name) and callee.id == name) or (
            isinstance(callee, ast.Attribute) and callee.attr == name
        )

    for path in sorted(WORKER.glob("*.py")):
        tree = parse_source(path.read_text(), str(path))
        total += sum(called(node) for node in ast.walk(tree))
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [n for n in function.body for n in ast.walk(n)]
                sites += [(path.name, function.name) for node in inner if called(node)]
    return total, sites


def test_every_refusal_the_worker_logs_is_counted() -> None:
    # The one security-log line of a refusal is written by WorkerShared.refused, which counts
    # it; every refusal site of the worker goes through it.
    total, sites = _calls_of("log_refusal")
    assert total == 1
    assert sites == [("server.py", "refused")]
    assert len(_calls_of("refused")[1]) >= 3  # the connection's sites and admit_client


def test_a_snapshot_carries_exactly_the_gauges_the_master_expects() -> None:
    from hardserve.settings import Config
    from hardserve.worker.pool import Pool
    from hardserve.worker.server import WorkerShared

    pool = Pool(3, 5)
    shared = WorkerShared(lambda environ, start_response: [], Config(), pool, sys.stderr)
    gauges = shared.gauges()
    assert tuple(gauges) == GAUGES
    assert gauges == {
        "connections_open": 0,
        "requests_in_flight": 0,
        "pool_threads": 3,
        "pool_busy": 0,
        "pool_queued": 0,
        "accept_servers": 0,  # no acceptor yet
    }


def test_the_pool_counts_its_busy_threads_and_its_queue() -> None:
    from hardserve.worker.pool import Pool

    pool = Pool(2, 10)
    loop = asyncio.new_event_loop()
    entered = threading.Semaphore(0)
    release = threading.Event()

    def block() -> None:
        entered.release()
        release.wait(10)

    try:
        pool.start(loop)
        for _ in range(5):
            assert pool.submit(block)
        # The jobs of a turn reach the threads when the turn's callbacks are done.
        loop.run_until_complete(asyncio.sleep(0))
        for _ in range(2):
            assert entered.acquire(timeout=10)
        assert (pool.busy, pool.queued, pool.in_flight) == (2, 3, 5)
        release.set()
        for _ in range(3):
            assert entered.acquire(timeout=10)
    finally:
        release.set()
        pool.stop(timeout=10)
        loop.close()
    assert (pool.busy, pool.queued) == (0, 0)


@pytest.mark.parametrize("value", [0.0, 0.00005, 0.0001, 0.0001001, 0.001, 0.0010001, 0.7, 99.0])
def test_the_one_call_per_request_counts_as_the_separate_calls_do(value: float) -> None:
    separate, combined = WorkerStats(), WorkerStats()
    separate.request_done("GET", 200, value)
    separate.queue_wait.observe(value)
    separate.keepalive_reused += 1
    separate.request_done("POST", 0, value)
    combined.request_served(b"GET", 200, value, value, True)
    combined.request_served(b"POST", 0, value, None, False)
    assert combined.snapshot({}) == separate.snapshot({})
