"""observe/stats.py: a worker's counters, its snapshots, and the master's sums over workers."""

from __future__ import annotations

import pytest

from hardserve.http import reasons
from hardserve.observe.stats import (
    DURATION_BUCKETS_S,
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
