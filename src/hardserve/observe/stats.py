"""What a worker counts, how it reports it to the master, and how the master adds it up.

A worker keeps plain Python numbers (`WorkerStats`), changed only on its event loop thread: an
increment costs what `x += 1` costs, with no lock, no file and no prometheus-client object on
the hot path. About once a second, with its heartbeat, the worker sends a `Snapshot` of them
to the master (JSON, one message on the heartbeat channel), and once more when it stops.

The master keeps the last snapshot of every live worker and, when a worker exits, folds that
worker's counters into `retired`: a counter summed over all workers therefore never goes
backwards when a worker dies or is replaced, and a dead worker's gauges vanish with it. A
worker killed without warning loses at most what it counted since its last snapshot.

observe/metrics.py turns the master's `Aggregate` into Prometheus text; nothing here imports
prometheus_client.

Where a worker counts (worker/):
- `requests`, `request_duration`, `keepalive_reused`, `queue_wait`: once per access-log line,
  in one call (`request_served`, from `WorkerShared.request_finished`): every request whose
  head was read and that went to the app, or was queued for it, however it ended (answered,
  cut, withdrawn because its client left, shed from the queue). The status label is the status
  sent, as the access log shows it: the app's, the server's 500 or 408 when the app failed
  before its head, 503 when shed from the queue; `none` when none was sent. The refusals the
  server answers before a request reaches the pool (a malformed head's 400, a 408, a 503 at
  admission) are not access-logged and are counted in `refusals`, not here.
- `refusals` (and the `timeouts` and `shed` that follow from a reason code): every refusal, at
  the one place that writes its security-log line (`WorkerShared.refused`).
- `timeouts["keepalive"]`: an idle connection closed by its keep-alive timeout (one that never
  sent a request too); `timeouts["request"]`: a request reported overdue (request_timeout_s).
- `connections_accepted`: every connection the loop accepted (on a TLS listener, when its
  handshake begins), the ones closed at once by a cap or a failed handshake included.
- `keepalive_reused`: requests counted in `requests` whose connection had served a response
  before (a server-answered refusal on such a connection is not counted).
- `bytes_received`: every byte read from clients (heads, bodies, PROXY headers, bytes discarded
  while draining or lingering); `bytes_sent`: every byte handed to a transport or sent with
  sendfile (heads, bodies, 100 Continue, the server's own answers). Under TLS both are the
  plaintext bytes.
- `write_waits`: times an app thread waited for the loop to write what the worker's threads had
  handed over past worker_write_queue_bytes. Counted by the pool under its own lock (the
  threads wait, not the loop) and copied into the stats on the loop before each snapshot.
- `queue_wait`: for each request a pool thread started, the time from its submission to the
  pool to the thread starting it (both read on time.monotonic(); the thread only writes the
  time on its call), observed on the loop when the request ends. A request shed from the queue
  or withdrawn never started: it is in `requests` but not here.
- The gauges are read when a snapshot is taken (`WorkerShared.gauges`): `pool_busy` from a
  flag each pool thread sets around its job, `pool_queued` the pool's job queue (a call
  withdrawn by the loop stays in it until a thread drops it, which a free thread does at once),
  `requests_in_flight` the pool's admission count (a queued request whose client half-closed
  gives its slot back, docs/architecture.md, and is no longer in it).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Request durations, seconds (Prometheus base unit), upper bounds; +Inf is implied.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Time a request waited for a pool thread, seconds.
QUEUE_WAIT_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
)
_FIRST_DURATION_BOUND_S = DURATION_BUCKETS_S[0]
_FIRST_QUEUE_WAIT_BOUND_S = QUEUE_WAIT_BUCKETS_S[0]
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    "request_duration": DURATION_BUCKETS_S,
    "queue_wait": QUEUE_WAIT_BUCKETS_S,
}

# Label values stay bounded: a method outside this set is counted as "other", a status by its
# class. Never a path, a client address or any other client-chosen text.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Label key separator inside a snapshot ("GET|2xx"); never in a label value.
SEP = "|"

# Timeouts by kind (the `kind` label of hardserve_timeouts_total).
TIMEOUT_KINDS = ("handshake", "head", "body", "write", "keepalive", "request", "queue")
# The refusals that are also timeouts, by reason code (http/reasons.py).
TIMEOUT_KIND_OF_REASON: dict[str, str] = {
    "head_timeout": "head",
    "body_timeout": "body",
    "body_too_slow": "body",
    "send_timeout": "write",
    "send_too_slow": "write",
    "queue_timeout": "queue",
    "tls_handshake_timeout": "handshake",
}
# The refusals that are load shedding (503 + Retry-After), by reason code.
SHED_REASONS = frozenset(("pool_saturated", "queue_timeout", "client_in_flight"))

# The gauges a worker reports in each snapshot, read when the snapshot is taken.
GAUGES = (
    "connections_open",  # connections this worker holds, idle ones included
    "requests_in_flight",  # requests admitted to the pool and not finished (queued + running)
    "pool_threads",  # the pool's size (--threads)
    "pool_busy",  # pool threads running a request
    "pool_queued",  # requests waiting for a pool thread
    "accept_servers",  # servers accepting on the listeners, more while connections wait
)

MESSAGE_TAG = b"T"  # heartbeat-channel message: a snapshot follows (worker/heartbeat.py)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_class(status: int) -> str:
    """'2xx' and so on; 'none' when no response status was sent (the connection was cut)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


class Histogram:
    """Per-bucket counts (not cumulative; the last one is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def as_list(self) -> list[float]:
        return [*self.counts, self.total]


class WorkerStats:
    """A worker's numbers. Changed only on the worker's event loop thread."""

    __slots__ = (
        "_duration_of",
        "bytes_received",
        "bytes_sent",
        "connections_accepted",
        "keepalive_reused",
        "queue_wait",
        "refusals",
        "request_duration",
        "requests",
        "shed",
        "timeouts",
        "write_waits",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.keepalive_reused = 0  # requests on a connection that had served one before
        self.requests = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.write_waits = 0  # copied from the pool's count before each snapshot
        self.refusals: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self.shed: dict[str, int] = {}
        self.request_duration: dict[str, Histogram] = {}  # "METHOD|2xx" -> histogram
        self.queue_wait = Histogram(QUEUE_WAIT_BUCKETS_S)
        # (method as given, status) -> its histogram in request_duration: the label key is built
        # once per pair, not per request. Only known methods are kept, so the client cannot grow
        # it (statuses are three digits).
        self._duration_of: dict[tuple[str | bytes, int], Histogram] = {}

    def refused(self, code: str) -> None:
        """One refusal (an http/reasons.py code): counted, and as a timeout or load shedding
        where it is one."""
        self.refusals[code] = self.refusals.get(code, 0) + 1
        kind = TIMEOUT_KIND_OF_REASON.get(code)
        if kind is not None:
            self.timeouts[kind] = self.timeouts.get(kind, 0) + 1
        if code in SHED_REASONS:
            self.shed[code] = self.shed.get(code, 0) + 1

    def timed_out(self, kind: str) -> None:
        """A timeout that is not a refusal (an idle keep-alive connection closed, a request
        reported overdue)."""
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def request_done(self, method: str | bytes, status: int, duration_s: float) -> None:
        """One finished request; `method` as text or as the bytes of the request line."""
        self.requests += 1
        histogram = self._duration_of.get((method, status))
        if histogram is None:
            histogram = self._duration_histogram(method, status)
        histogram.observe(duration_s)

    def request_served(
        self,
        method: str | bytes,
        status: int,
        duration_s: float,
        queue_wait_s: float | None,
        reused: bool,
    ) -> None:
        """The worker's one call per finished request: request_done, its wait for a pool
        thread (None when no thread started it) and keep-alive reuse. The histograms are updated
        here without further calls: this runs once per request on the loop."""
        self.requests += 1
        if reused:
            self.keepalive_reused += 1
        histogram = self._duration_of.get((method, status))
        if histogram is None:
            histogram = self._duration_histogram(method, status)
        # Most values fall in the first bucket: one comparison instead of a bisection (the same
        # bucket: bisect_left gives 0 exactly when the value is <= the first bound).
        if duration_s <= _FIRST_DURATION_BOUND_S:
            histogram.counts[0] += 1
        else:
            histogram.counts[bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        histogram.total += duration_s
        if queue_wait_s is not None:
            waits = self.queue_wait
            if queue_wait_s <= _FIRST_QUEUE_WAIT_BOUND_S:
                waits.counts[0] += 1
            else:
                waits.counts[bisect_left(QUEUE_WAIT_BUCKETS_S, queue_wait_s)] += 1
            waits.total += queue_wait_s

    def _duration_histogram(self, method: str | bytes, status: int) -> Histogram:
        text = method.decode("latin-1") if isinstance(method, bytes) else method
        label = method_label(text)
        key = label + SEP + status_class(status)
        histogram = self.request_duration.get(key)
        if histogram is None:
            histogram = self.request_duration[key] = Histogram(DURATION_BUCKETS_S)
        if label != "other" and len(self._duration_of) < 4096:
            self._duration_of[(method, status)] = histogram
        return histogram

    def snapshot(self, gauges: Mapping[str, float]) -> Snapshot:
        return Snapshot(
            counters={
                "connections_accepted": {"": self.connections_accepted},
                "keepalive_reused": {"": self.keepalive_reused},
                "requests": {"": self.requests},
                "bytes_received": {"": self.bytes_received},
                "bytes_sent": {"": self.bytes_sent},
                "write_waits": {"": self.write_waits},
                "refusals": dict(self.refusals),
                "timeouts": dict(self.timeouts),
                "shed": dict(self.shed),
            },
            histograms={
                "request_duration": {k: h.as_list() for k, h in self.request_duration.items()},
                "queue_wait": {"": self.queue_wait.as_list()},
            },
            gauges=dict(gauges),
        )


@dataclass
class Snapshot:
    """counters and histograms: metric -> label key -> value; a histogram's value is its
    per-bucket counts followed by its sum. gauges: metric -> value (this worker's own)."""

    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    histograms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        document = {"c": self.counters, "h": self.histograms, "g": self.gauges}
        return MESSAGE_TAG + json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, message: bytes) -> Snapshot:
        """The snapshot in a heartbeat-channel message; ValueError if it is not one."""
        if not message.startswith(MESSAGE_TAG):
            raise ValueError("not a snapshot message")
        document = json.loads(message[len(MESSAGE_TAG) :])
        if not isinstance(document, dict):
            raise ValueError("snapshot is not an object")
        return cls(
            counters=_number_table(document.get("c", {})),
            histograms=_histogram_table(document.get("h", {})),
            gauges={str(k): float(v) for k, v in dict(document.get("g", {})).items()},
        )

    def add(self, other: Snapshot) -> None:
        """Add other's counters and histograms into this one (gauges are not added)."""
        for name, values in other.counters.items():
            mine = self.counters.setdefault(name, {})
            for key, value in values.items():
                mine[key] = mine.get(key, 0) + value
        for name, series in other.histograms.items():
            mine_h = self.histograms.setdefault(name, {})
            for key, buckets in series.items():
                current = mine_h.get(key)
                if current is None or len(current) != len(buckets):
                    mine_h[key] = list(buckets)
                else:
                    mine_h[key] = [a + b for a, b in zip(current, buckets, strict=True)]


def _number_table(raw: object) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise ValueError("counters are not an object")
    return {str(n): {str(k): float(v) for k, v in dict(vs).items()} for n, vs in raw.items()}


def _histogram_table(raw: object) -> dict[str, dict[str, list[float]]]:
    if not isinstance(raw, dict):
        raise ValueError("histograms are not an object")
    return {
        str(n): {str(k): [float(x) for x in v] for k, v in dict(vs).items()}
        for n, vs in raw.items()
    }


@dataclass
class Aggregate:
    """The master's view: the last snapshot of each live worker (by pid) and the counters of
    the workers that are gone."""

    live: dict[int, Snapshot] = field(default_factory=dict)
    retired: Snapshot = field(default_factory=Snapshot)

    def update(self, pid: int, snapshot: Snapshot) -> None:
        self.live[pid] = snapshot

    def worker_gone(self, pid: int) -> None:
        """Fold the worker's last counters into `retired`; its gauges go with it."""
        last = self.live.pop(pid, None)
        if last is not None:
            self.retired.add(last)

    def totals(self) -> Snapshot:
        """Counters and histograms over every worker that ever reported, live or gone."""
        total = Snapshot()
        total.add(self.retired)
        for snapshot in self.live.values():
            total.add(snapshot)
        return total

    def gauges(self) -> Iterable[tuple[int, dict[str, float]]]:
        """(pid, gauges) of each live worker."""
        return ((pid, snapshot.gauges) for pid, snapshot in sorted(self.live.items()))
