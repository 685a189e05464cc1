"""observe/metrics.py: the Prometheus families rendered from the master's Aggregate and facts,
parsed back with prometheus-client's own parsers (and promtool), with exact values."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from hardserve.master.policy import EXIT_CAUSES
from hardserve.observe.metrics import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    MAX_LABEL_VALUES,
    MasterFacts,
    Metrics,
    WorkerFacts,
    wants_openmetrics,
)
from hardserve.observe.stats import DURATION_BUCKETS_S, Aggregate, Snapshot, WorkerStats

BUILD = {"version": "0.1.0", "python": "3.11.7", "h11": "0.16.0"}
GAUGES = {
    "connections_open": 3.0,
    "requests_in_flight": 2.0,
    "pool_threads": 8.0,
    "pool_busy": 1.0,
    "pool_queued": 1.0,
    "accept_servers": 8.0,
}


def worker_snapshot(requests: int, *, refusals: tuple[str, ...] = ()) -> Snapshot:
    stats = WorkerStats()
    for number in range(requests):
        stats.request_done("GET", 200 if number % 2 else 404, 0.003)
    stats.request_done("BREW", 500, 0.2)
    stats.queue_wait.observe(0.0002)
    stats.connections_accepted = requests
    stats.bytes_sent = 100 * requests
    for code in refusals:
        stats.refused(code)
    return stats.snapshot(GAUGES)


def facts_for(aggregate: Aggregate, **extra: object) -> MasterFacts:
    workers = [
        WorkerFacts(slot=slot, pid=pid, ready=True, heartbeat_age_s=0.25)
        for slot, pid in enumerate(sorted(aggregate.live))
    ]
    values: dict[str, object] = {
        "stats": aggregate,
        "workers": workers,
        "desired_workers": 2,
        "ready": True,
        "worker_starts": 2,
        "worker_exits": {},
        "exit_causes": EXIT_CAUSES,
        "start_time_s": 1_700_000_000.0,
        **extra,
    }
    return MasterFacts(**values)  # type: ignore[arg-type]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + sorted labels -> value, from the Prometheus text format."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def render(facts: MasterFacts, accept: str | None = None) -> tuple[str, str]:
    body, content_type = Metrics(lambda: facts, BUILD).render(accept)
    return body.decode(), content_type


def test_counters_and_histograms_sum_the_workers_exactly() -> None:
    aggregate = Aggregate()
    aggregate.update(11, worker_snapshot(4, refusals=("bare_lf", "pool_saturated")))
    aggregate.update(12, worker_snapshot(6, refusals=("head_timeout",)))
    text, content_type = render(facts_for(aggregate))
    assert content_type == CONTENT_TYPE_TEXT
    got = samples(text)
    assert got[("hardserve_requests_total", ())] == 12  # 4 + 6 GET, and one BREW each
    assert got[("hardserve_connections_accepted_total", ())] == 10
    assert got[("hardserve_sent_bytes_total", ())] == 1000
    assert got[("hardserve_refusals_total", (("reason", "bare_lf"),))] == 1
    assert got[("hardserve_refusals_total", (("reason", "pool_saturated"),))] == 1
    assert got[("hardserve_load_shed_total", (("reason", "pool_saturated"),))] == 1
    assert got[("hardserve_timeouts_total", (("kind", "head"),))] == 1
    get_2xx = (("method", "GET"), ("status_class", "2xx"))
    get_4xx = (("method", "GET"), ("status_class", "4xx"))
    other_5xx = (("method", "other"), ("status_class", "5xx"))
    assert got[("hardserve_request_duration_seconds_count", get_2xx)] == 2 + 3
    assert got[("hardserve_request_duration_seconds_count", get_4xx)] == 2 + 3
    assert got[("hardserve_request_duration_seconds_count", other_5xx)] == 2
    assert got[("hardserve_request_duration_seconds_sum", other_5xx)] == pytest.approx(0.4)
    # Buckets are cumulative: 0.003 s falls in le=0.005 and every bucket above it.
    assert got[("hardserve_request_duration_seconds_bucket", (("le", "0.0025"), *get_2xx))] == 0
    assert got[("hardserve_request_duration_seconds_bucket", (("le", "0.005"), *get_2xx))] == 5
    assert got[("hardserve_request_duration_seconds_bucket", (("le", "+Inf"), *get_2xx))] == 5
    assert got[("hardserve_pool_wait_seconds_count", ())] == 2
    assert got[("hardserve_requests_in_flight", ())] == 4
    assert got[("hardserve_connections_open", ())] == 6
    assert got[("hardserve_pool_threads_busy", (("worker", "0"),))] == 1
    assert got[("hardserve_pool_queued", (("worker", "1"),))] == 1
    assert got[("hardserve_accept_servers", (("worker", "1"),))] == 8
    assert got[("hardserve_worker_pid", (("worker", "1"),))] == 12
    assert got[("hardserve_workers", (("state", "live"),))] == 2
    assert got[("hardserve_ready", ())] == 1
    build = {k: v for k, v in next(n for n in got if n[0] == "hardserve_build_info")[1]}
    assert build == BUILD


def test_a_dead_workers_counters_stay_and_its_gauges_go() -> None:
    aggregate = Aggregate()
    aggregate.update(11, worker_snapshot(4))
    aggregate.update(12, worker_snapshot(6))
    before = samples(render(facts_for(aggregate))[0])
    aggregate.worker_gone(11)
    after = samples(render(facts_for(aggregate, worker_exits={"crash": 1}))[0])
    for key, value in before.items():
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")) and key in after:
            assert after[key] >= value, key
    assert after[("hardserve_requests_total", ())] == before[("hardserve_requests_total", ())]
    assert after[("hardserve_requests_in_flight", ())] == 2  # only the live worker's
    assert [k for k in after if k[0] == "hardserve_worker_pid"] == [
        ("hardserve_worker_pid", (("worker", "0"),))
    ]
    assert after[("hardserve_worker_pid", (("worker", "0"),))] == 12
    assert after[("hardserve_worker_exits_total", (("cause", "crash"),))] == 1
    # Every cause is there from the start, at 0: rate() over a cause needs no first sample.
    for cause in EXIT_CAUSES:
        assert ("hardserve_worker_exits_total", (("cause", cause),)) in after


def test_label_values_stay_bounded() -> None:
    snapshot = Snapshot(
        counters={
            "refusals": {f"code_{n}": 1 for n in range(MAX_LABEL_VALUES + 50)}
            | {"/etc/passwd": 1, "GET / HTTP/1.1": 1}
        },
        histograms={
            "request_duration": {
                "/index.html|2xx": [0.0] * (len(DURATION_BUCKETS_S) + 1) + [0.0],
                "GET|999": [1.0] + [0.0] * len(DURATION_BUCKETS_S) + [0.1],
            }
        },
    )
    aggregate = Aggregate()
    aggregate.update(11, snapshot)
    got = samples(render(facts_for(aggregate))[0])
    reasons = {dict(labels)["reason"] for name, labels in got if name == "hardserve_refusals_total"}
    assert len(reasons) <= MAX_LABEL_VALUES + 1
    assert "other" in reasons and "invalid" in reasons
    assert not any("/" in value or " " in value for value in reasons)
    methods = {
        dict(labels)["method"]
        for name, labels in got
        if name == "hardserve_request_duration_seconds_count"
    }
    classes = {
        dict(labels)["status_class"]
        for name, labels in got
        if name == "hardserve_request_duration_seconds_count"
    }
    assert methods == {"other", "GET"}
    assert classes <= {"2xx", "none"}
    assert sum(got[("hardserve_refusals_total", (("reason", r),))] for r in reasons) == (
        MAX_LABEL_VALUES + 52
    )


def test_openmetrics_when_asked_for() -> None:
    aggregate = Aggregate()
    aggregate.update(11, worker_snapshot(3))
    text, content_type = render(
        facts_for(aggregate), "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert content_type == CONTENT_TYPE_OPENMETRICS
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics_families(text)}
    assert families["hardserve_requests"].type == "counter"
    assert families["hardserve_request_duration_seconds"].type == "histogram"
    assert families["hardserve_build"].type == "info"


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("", False),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("Application/OpenMetrics-Text;version=0.0.1,text/plain;q=0.5", True),
        ("application/openmetrics-text;q=0,text/plain", False),
        ("application/openmetrics-text;q=nonsense", False),
    ],
)
def test_negotiation(accept: str | None, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def test_the_registry_is_private() -> None:
    from prometheus_client import REGISTRY

    aggregate = Aggregate()
    Metrics(lambda: facts_for(aggregate), BUILD)
    assert not any(family.name.startswith("hardserve_") for family in REGISTRY.collect()), (
        "hardserve metrics leaked into prometheus_client's global registry"
    )


def test_promtool_accepts_the_rendering() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/system-deps.sh installs Debian's prometheus"
    aggregate = Aggregate()
    aggregate.update(11, worker_snapshot(5, refusals=("bare_lf",)))
    text, _ = render(facts_for(aggregate))
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == "", done.stdout + done.stderr


def test_fixed_label_sets_are_shown_at_zero_from_the_start() -> None:
    from hardserve.observe.stats import SHED_REASONS, TIMEOUT_KINDS

    got = samples(render(facts_for(Aggregate(), workers=[]))[0])
    for kind in TIMEOUT_KINDS:
        assert got[("hardserve_timeouts_total", (("kind", kind),))] == 0
    for reason in SHED_REASONS:
        assert got[("hardserve_load_shed_total", (("reason", reason),))] == 0
    assert got[("hardserve_requests_total", ())] == 0
    assert got[("hardserve_pool_wait_seconds_count", ())] == 0
    # No worker: no per-worker series at all.
    assert not [name for name, labels in got if dict(labels).get("worker") is not None]


def test_snapshot_age_only_for_workers_that_sent_one() -> None:
    aggregate = Aggregate()
    aggregate.update(11, worker_snapshot(1))
    workers = [
        WorkerFacts(slot=0, pid=11, ready=True, heartbeat_age_s=0.2, snapshot_age_s=0.7),
        WorkerFacts(slot=1, pid=12, ready=False, heartbeat_age_s=0.1),  # just started
    ]
    got = samples(render(facts_for(aggregate, workers=workers))[0])
    ages = {
        dict(labels)["worker"]: age
        for (name, labels), age in got.items()
        if name == "hardserve_worker_snapshot_age_seconds"
    }
    assert ages == {"0": 0.7}
    assert got[("hardserve_workers", (("state", "ready"),))] == 1
    assert got[("hardserve_worker_heartbeat_age_seconds", (("worker", "1"),))] == 0.1
