"""Every Prometheus metric hardserve exposes; the one module that imports prometheus_client.

The master renders them from what it already holds: the workers' stats snapshots summed in an
`Aggregate` (observe/stats.py: the counters of workers that are gone are kept, so a sum never
goes backwards, and a dead worker's gauges go with it) and its own facts (workers started and
exited by cause, heartbeat ages, readiness). A custom Collector reads them at scrape time, in a
private CollectorRegistry: nothing is registered globally, nothing is counted twice, and no
prometheus-client object is touched on a request's path. docs/metrics.md lists every metric.

Labels stay bounded: methods are the known set or "other", statuses are classes, reasons and
kinds are codes; a label value a worker sends that is not such a code becomes "invalid", and
past MAX_LABEL_VALUES values per metric the rest are counted as "other". Never a path or a
client address. Workers are labelled by slot (0, 1, ...: the lowest number free when a worker
starts), so a replaced worker reuses its predecessor's series instead of adding new ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from hardserve.observe.stats import (
    HISTOGRAM_BUCKETS,
    KNOWN_METHODS,
    SEP,
    SHED_REASONS,
    STATUS_CLASSES,
    TIMEOUT_KINDS,
    Aggregate,
    Snapshot,
)

PREFIX = "hardserve_"
# Distinct values of one label of one metric before the rest are folded into "other".
MAX_LABEL_VALUES = 200
_CODE_RE = re.compile(r"[a-z0-9_]{1,64}")

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class WorkerFacts:
    """One live worker, as the master sees it."""

    slot: int
    pid: int
    ready: bool
    heartbeat_age_s: float
    snapshot_age_s: float | None = None  # None until its first stats snapshot


@dataclass
class MasterFacts:
    """What the master knows at scrape time, besides the workers' snapshots."""

    stats: Aggregate
    workers: list[WorkerFacts] = field(default_factory=list)
    desired_workers: int = 0
    ready: bool = False
    worker_starts: int = 0
    worker_exits: Mapping[str, int] = field(default_factory=dict)
    exit_causes: tuple[str, ...] = ()
    start_time_s: float = 0.0  # the master's start, seconds since the epoch


class HardserveCollector(Collector):
    """Prometheus metric families from the master's facts, read at each scrape."""

    def __init__(self, facts: Callable[[], MasterFacts], build: Mapping[str, str]) -> None:
        self._facts = facts
        self._build = dict(build)

    def collect(self) -> Iterator[Metric]:
        facts = self._facts()
        totals = facts.stats.totals()
        yield from _counters(totals)
        yield from _histograms(totals)
        yield from _worker_gauges(facts)
        yield from _master_metrics(facts)
        info = InfoMetricFamily(
            PREFIX + "build", "Versions of hardserve, Python and the libraries it serves with."
        )
        info.add_metric([], self._build)
        yield info


def _code(value: str) -> str:
    return value if _CODE_RE.fullmatch(value) else "invalid"


def _bounded(values: Mapping[str, float], label: Callable[[str], str]) -> dict[str, float]:
    """Label value -> value, every label value made safe and at most MAX_LABEL_VALUES kept."""
    out: dict[str, float] = {}
    for key, value in sorted(values.items()):
        name = label(key)
        if name not in out and len(out) >= MAX_LABEL_VALUES:
            name = "other"
        out[name] = out.get(name, 0) + value
    return out


# name in the snapshot -> (metric name without _total, help, label name or None)
_COUNTERS: tuple[tuple[str, str, str, str | None], ...] = (
    ("requests", "requests", "Requests answered by the app (every status).", None),
    (
        "connections_accepted",
        "connections_accepted",
        "Client connections accepted by the workers.",
        None,
    ),
    (
        "keepalive_reused",
        "keepalive_reused",
        "Requests on a connection that had served one before (keep-alive reuse).",
        None,
    ),
    ("bytes_received", "received_bytes", "Bytes read from clients.", None),
    ("bytes_sent", "sent_bytes", "Bytes written to clients.", None),
    (
        "write_waits",
        "write_waits",
        "Times an app thread waited for the loop to write what the worker's threads had handed"
        " over (worker_write_queue_bytes).",
        None,
    ),
    (
        "refusals",
        "refusals",
        "Requests and connections refused, by reason code (src/hardserve/http/reasons.py).",
        "reason",
    ),
    (
        "shed",
        "load_shed",
        "503 answers from load shedding (pool saturated, queue timeout, per-client cap), "
        "by reason code.",
        "reason",
    ),
    ("timeouts", "timeouts", "Timeouts, by kind (head, body, write, keepalive, ...).", "kind"),
)


# Labelled counters whose label values form a small fixed set: each value is shown from the
# start, at 0, so rate() and increase() work from the first sample. A refusal reason appears
# once it has happened.
_KNOWN_VALUES: dict[str, tuple[str, ...]] = {
    "shed": tuple(sorted(SHED_REASONS)),
    "timeouts": TIMEOUT_KINDS,
}


def _counters(totals: Snapshot) -> Iterator[Metric]:
    for source, name, doc, label in _COUNTERS:
        values = dict.fromkeys(_KNOWN_VALUES.get(source, ()), 0.0)
        values.update(totals.counters.get(source, {}))
        if label is None:
            family = CounterMetricFamily(PREFIX + name, doc)
            family.add_metric([], sum(values.values()))
        else:
            family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
            for value, count in _bounded(values, _code).items():
                family.add_metric([value], count)
        yield family


def _duration_labels(key: str) -> str:
    method, _, status = key.partition(SEP)
    method = method if method in KNOWN_METHODS else "other"
    status = status if status in STATUS_CLASSES else "none"
    return method + SEP + status


def _buckets(
    bounds: tuple[float, ...], series: list[float]
) -> tuple[list[tuple[str, float]], float]:
    """Per-bucket counts and a sum (observe/stats.py) -> cumulative buckets and the sum."""
    counts, total = series[:-1], series[-1]
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*map(repr, bounds), "+Inf"], counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets, total


def _histograms(totals: Snapshot) -> Iterator[Metric]:
    bounds = HISTOGRAM_BUCKETS["request_duration"]
    durations = HistogramMetricFamily(
        PREFIX + "request_duration_seconds",
        "Time from a request's head to the end of its response, by method and status class.",
        labels=["method", "status_class"],
    )
    merged: dict[str, list[float]] = {}
    for key, series in totals.histograms.get("request_duration", {}).items():
        if len(series) != len(bounds) + 2:
            continue  # a snapshot from a build with other buckets: not comparable
        label = _duration_labels(key)
        current = merged.get(label)
        merged[label] = (
            series if current is None else [a + b for a, b in zip(current, series, strict=True)]
        )
    for label, series in sorted(merged.items()):
        buckets, total = _buckets(bounds, series)
        durations.add_metric(label.split(SEP), buckets, total)
    yield durations

    bounds = HISTOGRAM_BUCKETS["queue_wait"]
    wait = HistogramMetricFamily(
        PREFIX + "pool_wait_seconds", "Time a request waited for a pool thread."
    )
    series = totals.histograms.get("queue_wait", {}).get("", [])
    if len(series) != len(bounds) + 2:
        series = [0.0] * (len(bounds) + 2)
    buckets, total = _buckets(bounds, series)
    wait.add_metric([], buckets, total)
    yield wait


def _worker_gauges(facts: MasterFacts) -> Iterator[Metric]:
    gauges = {pid: snapshot.gauges for pid, snapshot in facts.stats.live.items()}
    in_flight = GaugeMetricFamily(
        PREFIX + "requests_in_flight",
        "Requests admitted to the workers' pools and not finished (queued or running).",
    )
    in_flight.add_metric([], sum(g.get("requests_in_flight", 0.0) for g in gauges.values()))
    yield in_flight
    open_ = GaugeMetricFamily(
        PREFIX + "connections_open", "Client connections the workers hold, idle ones included."
    )
    open_.add_metric([], sum(g.get("connections_open", 0.0) for g in gauges.values()))
    yield open_
    per_worker = (
        ("pool_threads", "pool_threads", "Threads in the worker's pool (--threads)."),
        ("pool_busy", "pool_threads_busy", "Pool threads running a request."),
        ("pool_queued", "pool_queued", "Requests waiting for a pool thread."),
        (
            "accept_servers",
            "accept_servers",
            "Servers accepting connections on the listeners: one per listener, 8 while "
            "connections wait in its accept queue.",
        ),
    )
    for source, name, doc in per_worker:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["worker"])
        for worker in facts.workers:
            own = gauges.get(worker.pid)
            if own is not None and source in own:
                family.add_metric([str(worker.slot)], own[source])
        yield family
    age = GaugeMetricFamily(
        PREFIX + "worker_heartbeat_age_seconds",
        "Seconds since the master last heard from the worker's event loop.",
        labels=["worker"],
    )
    pid = GaugeMetricFamily(
        PREFIX + "worker_pid", "The process id of the worker in each slot.", labels=["worker"]
    )
    snapshot = GaugeMetricFamily(
        PREFIX + "worker_snapshot_age_seconds",
        "Seconds since the worker's last stats snapshot: how old its part of the other "
        "metrics is (about 1 s at most when healthy).",
        labels=["worker"],
    )
    for worker in facts.workers:
        age.add_metric([str(worker.slot)], max(worker.heartbeat_age_s, 0.0))
        pid.add_metric([str(worker.slot)], worker.pid)
        if worker.snapshot_age_s is not None:
            snapshot.add_metric([str(worker.slot)], max(worker.snapshot_age_s, 0.0))
    yield age
    yield snapshot
    yield pid


def _master_metrics(facts: MasterFacts) -> Iterator[Metric]:
    workers = GaugeMetricFamily(
        PREFIX + "workers",
        "Worker processes: live (alive, any state), ready (serving and not on their way out), "
        "desired (the number the master keeps).",
        labels=["state"],
    )
    workers.add_metric(["live"], len(facts.workers))
    workers.add_metric(["ready"], sum(w.ready for w in facts.workers))
    workers.add_metric(["desired"], facts.desired_workers)
    yield workers
    ready = GaugeMetricFamily(
        PREFIX + "ready", "1 while /readyz answers 200: a worker serves and no stop has begun."
    )
    ready.add_metric([], 1.0 if facts.ready else 0.0)
    yield ready
    starts = CounterMetricFamily(PREFIX + "worker_starts", "Worker processes started.")
    starts.add_metric([], facts.worker_starts)
    yield starts
    exits = CounterMetricFamily(
        PREFIX + "worker_exits",
        "Worker processes that exited, by cause: crash (nobody asked), timeout (silent, "
        "killed), stuck (a request past timeout_s), max-requests, reload (HUP), scale (TTOU), "
        "shutdown.",
        labels=["cause"],
    )
    for cause in (*facts.exit_causes, *sorted(set(facts.worker_exits) - set(facts.exit_causes))):
        exits.add_metric([cause], facts.worker_exits.get(cause, 0))
    yield exits
    start = GaugeMetricFamily(
        PREFIX + "start_time_seconds", "When the master started, in seconds since the epoch."
    )
    start.add_metric([], facts.start_time_s)
    yield start


class Metrics:
    """The private registry the admin listener renders."""

    def __init__(self, facts: Callable[[], MasterFacts], build: Mapping[str, str]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HardserveCollector(facts, build))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its Content-Type: OpenMetrics 1.0 when the Accept header
        asks for application/openmetrics-text, else the Prometheus text format 0.0.4."""
        if wants_openmetrics(accept):
            body: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return body, CONTENT_TYPE_OPENMETRICS
        return exposition.generate_latest(self.registry), CONTENT_TYPE_TEXT


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an Accept header names application/openmetrics-text with a q above 0 (any
    version: 1.0.0 is the one served)."""
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


def build_info(versions: Mapping[str, str]) -> dict[str, str]:
    """Label values for hardserve_build_info: each version as text, bounded in length."""
    return {key: str(value)[:64] for key, value in versions.items()}
