"""What the master decides, and nothing it does: events in, actions out.

`decide(state, event, now)` updates the master's bookkeeping (`MasterState`) and returns the
actions to carry out: start a worker, send a signal, tell systemd, log, exit. It never forks,
signals, reads a clock or writes a log itself, so every decision is tested with tables of
events (tests/unit/test_policy.py); `arbiter.py` carries the actions out.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Literal

# How long a silent worker is given to write its threads' stacks after the dump signal
# before it is killed.
DUMP_GRACE_S = 1.0
# A fast stop (INT, QUIT) gives workers this long to close before they are killed.
FAST_STOP_S = 2.0
# A worker that dies within this many seconds of its start counts as crashing at start;
# restarts after such crashes back off, doubling from the first delay up to the last.
CRASH_WINDOW_S = 10.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
# The exit status of a worker that could not load the app.
EXIT_APP_LOAD = 4

Phase = Literal["running", "reloading", "stopping"]
StopReason = Literal["shutdown", "reload", "scale", "timeout", "stuck", "max-requests"]
# Why a worker exited, as hardserve_worker_exits_total{cause} counts it: the reason the master
# asked it to stop, or "crash" when nobody asked (a signal, an exception, an exit status).
ExitCause = Literal["crash", "shutdown", "reload", "scale", "timeout", "stuck", "max-requests"]
EXIT_CAUSES: tuple[ExitCause, ...] = (
    "crash",
    "timeout",
    "stuck",
    "max-requests",
    "reload",
    "scale",
    "shutdown",
)


@dataclass
class Worker:
    pid: int
    generation: int
    started_at: float
    last_seen: float
    ready: bool = False
    stopping: StopReason | None = None
    dump_sent_at: float | None = None


@dataclass
class MasterState:
    desired: int
    timeout_s: float
    graceful_timeout_s: float
    watchdog_interval_s: float | None = None
    # TERM: this long with /readyz at 503 and the workers still serving before they are told
    # to stop (load balancers that poll /readyz take the server out first).
    shutdown_delay_s: float = 0.0
    generation: int = 0
    phase: Phase = "running"
    workers: dict[int, Worker] = field(default_factory=dict)
    stop_deadline: float | None = None
    exit_code: int = 0
    next_spawn_at: float = 0.0
    crashes_in_a_row: int = 0
    announced_ready: bool = False
    announced_listening: bool = False
    next_watchdog_at: float = 0.0
    spawns_pending: int = 0  # spawn actions given out whose Spawned event has not come back
    # When a delayed stop (shutdown_delay_s) tells the workers to stop; None otherwise.
    stop_at: float | None = None
    # What the metrics count: workers started, and workers exited by cause.
    worker_starts: int = 0
    worker_exits: dict[str, int] = field(default_factory=dict)

    def serving(self) -> list[Worker]:
        """Workers that count towards the desired number: alive and not on their way out."""
        return [w for w in self.workers.values() if w.stopping is None]

    def ready(self) -> bool:
        """What /readyz says: at least one worker serves and is not on its way out, and no
        stop has begun (false from the moment TERM, INT or QUIT arrives)."""
        return self.phase != "stopping" and any(w.ready for w in self.serving())


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed (the arbiter's loop turned)."""


@dataclass(frozen=True)
class Spawned:
    pid: int
    generation: int


@dataclass(frozen=True)
class SpawnFailed:
    error: str


@dataclass(frozen=True)
class Heartbeat:
    pid: int


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Retiring:
    """The worker served its max_requests and is stopping by itself."""

    pid: int


@dataclass(frozen=True)
class Stuck:
    """A request has been in the worker's app longer than timeout_s (its loop still turns)."""

    pid: int


@dataclass(frozen=True)
class Exited:
    pid: int
    status: int | None  # the exit status, or None when killed by a signal
    signal: int | None = None


@dataclass(frozen=True)
class SignalReceived:
    signum: int


Event = (
    Tick | Spawned | SpawnFailed | Heartbeat | Ready | Retiring | Stuck | Exited | SignalReceived
)


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    generation: int


@dataclass(frozen=True)
class Kill:
    pid: int
    signum: int


@dataclass(frozen=True)
class Notify:
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Log:
    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True)
class ReloadConfig:
    """Read the configuration again before new workers start (HUP)."""


@dataclass(frozen=True)
class ReopenLogs:
    pass


@dataclass(frozen=True)
class AnnounceListening:
    """The first worker serves: say where (once)."""


@dataclass(frozen=True)
class Exit:
    code: int


Action = Spawn | Kill | Notify | Log | ReloadConfig | ReopenLogs | AnnounceListening | Exit


# -- decisions ---------------------------------------------------------------------------------


def decide(state: MasterState, event: Event, now: float) -> list[Action]:
    actions: list[Action] = []
    if isinstance(event, Spawned):
        state.spawns_pending = max(state.spawns_pending - 1, 0)
        state.worker_starts += 1
        state.workers[event.pid] = Worker(event.pid, event.generation, now, now)
    elif isinstance(event, SpawnFailed):
        state.spawns_pending = max(state.spawns_pending - 1, 0)
        actions.append(Log("error", f"cannot start a worker: {event.error}"))
        _back_off(state, now)
    elif isinstance(event, Heartbeat):
        _seen(state, event.pid, now)
    elif isinstance(event, Ready):
        _on_ready(state, event.pid, now, actions)
    elif isinstance(event, Retiring):
        worker = state.workers.get(event.pid)
        if worker is not None and worker.stopping is None:
            worker.stopping = "max-requests"
            actions.append(Log("info", f"worker {event.pid} retires after its max_requests"))
    elif isinstance(event, Stuck):
        worker = state.workers.get(event.pid)
        if worker is not None and worker.stopping is None and state.phase != "stopping":
            # Its stacks go to the log, a replacement starts (the worker no longer counts),
            # and it stops gracefully: its other requests finish, the stuck one is cut at the
            # graceful timeout.
            worker.stopping = "stuck"
            actions.append(
                Log(
                    "error",
                    f"worker {event.pid} has a request in the app for more than "
                    f"{state.timeout_s:g} s: its threads' stacks follow; it is replaced",
                )
            )
            actions.append(Kill(event.pid, signal.SIGUSR2))
            actions.append(Kill(event.pid, signal.SIGTERM))
    elif isinstance(event, Exited):
        _on_exit(state, event, now, actions)
    elif isinstance(event, SignalReceived):
        _on_signal(state, event.signum, now, actions)
    _on_time(state, now, actions)
    return actions


def _seen(state: MasterState, pid: int, now: float) -> None:
    worker = state.workers.get(pid)
    if worker is not None:
        worker.last_seen = now
        worker.dump_sent_at = None


def _on_ready(state: MasterState, pid: int, now: float, actions: list[Action]) -> None:
    worker = state.workers.get(pid)
    if worker is None:
        return
    _seen(state, pid, now)
    worker.ready = True
    if worker.generation == state.generation:
        state.crashes_in_a_row = 0
    if not state.announced_listening:
        state.announced_listening = True
        actions.append(AnnounceListening())
    if state.phase == "reloading" and worker.generation == state.generation:
        # One new worker serves: old ones may go, oldest first, as long as `desired` workers
        # still serve. No moment without enough workers (an old one that crashed meanwhile is
        # made up for first), and none left behind when fewer workers are now wanted.
        serving = state.serving()
        ready = sum(1 for w in serving if w.ready)
        old = sorted(
            (w for w in serving if w.generation < state.generation), key=lambda w: w.started_at
        )
        for w in old:
            if w.ready and ready - 1 < state.desired:
                continue
            ready -= w.ready
            w.stopping = "reload"
            actions.append(Kill(w.pid, signal.SIGTERM))


def _on_exit(state: MasterState, event: Exited, now: float, actions: list[Action]) -> None:
    worker = state.workers.pop(event.pid, None)
    if worker is None:
        return  # not ours: an orphan reaped by PID 1
    cause: ExitCause = worker.stopping or "crash"
    state.worker_exits[cause] = state.worker_exits.get(cause, 0) + 1
    how = (
        f"killed by signal {signal.Signals(event.signal).name}"
        if event.signal is not None
        else f"exit status {event.status}"
    )
    if not worker.ready and not state.announced_listening and state.phase != "stopping":
        # The first workers cannot start (the app does not import, or raises at import):
        # more would fail the same way. The server stops with the worker's status; the worker
        # has already said why, in one line or with the app's traceback.
        code = EXIT_APP_LOAD if event.status == EXIT_APP_LOAD else 1
        _begin_stop(state, now, signal.SIGTERM, actions, exit_code=code)
        return
    if state.phase == "stopping":
        return
    if worker.stopping is not None:
        actions.append(Log("info", f"worker {event.pid} stopped ({worker.stopping}, {how})"))
        return
    actions.append(Log("error", f"worker {event.pid} died unexpectedly ({how}); replacing it"))
    if now - worker.started_at < CRASH_WINDOW_S:
        _back_off(state, now)


def _back_off(state: MasterState, now: float) -> None:
    delay = min(BACKOFF_FIRST_S * 2**state.crashes_in_a_row, BACKOFF_MAX_S)
    state.crashes_in_a_row += 1
    state.next_spawn_at = max(state.next_spawn_at, now + delay)


def _on_signal(state: MasterState, signum: int, now: float, actions: list[Action]) -> None:
    if signum == signal.SIGTERM:
        if state.phase != "stopping" and state.shutdown_delay_s > 0:
            # /readyz turns 503 now; the workers keep serving until stop_at (_on_time).
            actions.append(
                Log(
                    "info",
                    f"stopping in {state.shutdown_delay_s:g} s (shutdown_delay_s): not ready, "
                    "still serving",
                )
            )
            actions.append(Notify(("STOPPING=1",)))
            state.phase = "stopping"
            state.stop_at = now + state.shutdown_delay_s
        elif state.phase != "stopping":
            actions.append(Log("info", "stopping: finishing requests in progress"))
            _begin_stop(state, now, signal.SIGTERM, actions)
    elif signum in (signal.SIGINT, signal.SIGQUIT):
        # A second INT or QUIT during a graceful stop turns it into a fast one.
        actions.append(Log("info", "stopping now: requests in progress are cut"))
        _begin_stop(state, now, signal.SIGQUIT, actions, fast=True)
    elif state.phase == "stopping":
        return
    elif signum == signal.SIGHUP:
        # A HUP during a reload starts it over with the configuration read now: workers of
        # every earlier generation are old, and are replaced one by one like the rest.
        actions.append(Log("info", "reloading: replacing the workers one by one"))
        if state.phase != "reloading":
            actions.append(Notify(("RELOADING=1",)))
        actions.append(ReloadConfig())
        state.phase = "reloading"
        state.generation += 1
    elif signum == signal.SIGTTIN:
        state.desired += 1
        actions.append(Log("info", f"one more worker: {state.desired}"))
    elif signum == signal.SIGTTOU:
        if state.desired > 1:
            state.desired -= 1
            actions.append(Log("info", f"one worker fewer: {state.desired}"))
            serving = state.serving()
            if len(serving) > state.desired:
                newest = max(serving, key=lambda w: w.started_at)
                newest.stopping = "scale"
                actions.append(Kill(newest.pid, signal.SIGTERM))
    elif signum == signal.SIGUSR1:
        actions.append(ReopenLogs())
        actions.extend(Kill(pid, signal.SIGUSR1) for pid in state.workers)


def _begin_stop(
    state: MasterState,
    now: float,
    signum: int,
    actions: list[Action],
    *,
    fast: bool = False,
    exit_code: int | None = None,
) -> None:
    if state.phase != "stopping":
        actions.append(Notify(("STOPPING=1",)))
    state.phase = "stopping"
    state.stop_at = None
    if exit_code is not None:
        state.exit_code = exit_code
    grace = FAST_STOP_S if fast else state.graceful_timeout_s + DUMP_GRACE_S
    deadline = now + grace
    state.stop_deadline = (
        deadline if state.stop_deadline is None else min(state.stop_deadline, deadline)
    )
    for worker in state.workers.values():
        worker.stopping = "shutdown"
        actions.append(Kill(worker.pid, signum))


def _on_time(state: MasterState, now: float, actions: list[Action]) -> None:
    if state.phase == "stopping":
        if state.stop_at is not None and now >= state.stop_at:
            actions.append(Log("info", "stopping: finishing requests in progress"))
            _begin_stop(state, now, signal.SIGTERM, actions)
        if not state.workers and not state.spawns_pending:
            actions.append(Exit(state.exit_code))
        elif state.stop_deadline is not None and now >= state.stop_deadline:
            for worker in state.workers.values():
                actions.append(Kill(worker.pid, signal.SIGKILL))
            state.stop_deadline = now + DUMP_GRACE_S  # and again, should one survive that
        return
    _watch_heartbeats(state, now, actions)
    _spawn_missing(state, now, actions)
    _finish_reload(state, actions)
    _announce(state, now, actions)


def _watch_heartbeats(state: MasterState, now: float, actions: list[Action]) -> None:
    if state.timeout_s <= 0:
        return
    for worker in list(state.workers.values()):
        if worker.stopping == "timeout" or now - worker.last_seen < state.timeout_s:
            continue
        if worker.dump_sent_at is None:
            worker.dump_sent_at = now
            actions.append(
                Log(
                    "error",
                    f"worker {worker.pid} silent for {now - worker.last_seen:.1f} s "
                    f"(timeout {state.timeout_s:g} s): its threads' stacks follow, then it is "
                    "replaced",
                )
            )
            actions.append(Kill(worker.pid, signal.SIGUSR2))
        elif now - worker.dump_sent_at >= DUMP_GRACE_S:
            worker.stopping = "timeout"
            actions.append(Kill(worker.pid, signal.SIGKILL))


def _spawn_missing(state: MasterState, now: float, actions: list[Action]) -> None:
    if now < state.next_spawn_at:
        return
    serving = state.serving()
    missing = state.desired - len(serving) - state.spawns_pending
    if not state.announced_listening:
        # Until one worker serves, one loads the app alone: an app that cannot load fails
        # once, with one message, instead of once per worker.
        missing = min(missing, 1 - len(serving) - state.spawns_pending)
    if state.phase == "reloading":
        # One new worker at a time; an old one leaves when it serves (_on_ready).
        starting = [w for w in serving if w.generation == state.generation and not w.ready]
        current = [w for w in serving if w.generation == state.generation]
        if not starting and not state.spawns_pending and len(current) < state.desired:
            missing = 1
        else:
            missing = max(missing, 0)
    for _ in range(max(missing, 0)):
        state.spawns_pending += 1
        actions.append(Spawn(state.generation))


def _finish_reload(state: MasterState, actions: list[Action]) -> None:
    if state.phase != "reloading":
        return
    serving = state.serving()
    old_alive = [w for w in state.workers.values() if w.generation < state.generation]
    current_ready = [w for w in serving if w.generation == state.generation and w.ready]
    if not old_alive and len(current_ready) >= state.desired:
        state.phase = "running"
        actions.append(Log("info", "reloaded: every worker replaced"))
        actions.append(Notify(("READY=1", f"STATUS=serving with {state.desired} workers")))


def _announce(state: MasterState, now: float, actions: list[Action]) -> None:
    serving = state.serving()
    ready = [w for w in serving if w.ready]
    if not state.announced_ready and len(ready) >= state.desired:
        state.announced_ready = True
        actions.append(Notify(("READY=1", f"STATUS=serving with {state.desired} workers")))
    interval = state.watchdog_interval_s
    if interval is None or now < state.next_watchdog_at:
        return
    # WATCHDOG=1 only while every worker is healthy: a worker that cannot be replaced keeps
    # the service from pinging, and systemd restarts it.
    healthy = (
        state.timeout_s <= 0 or all(now - w.last_seen < state.timeout_s for w in serving)
    ) and len(ready) >= min(state.desired, 1)
    if healthy:
        state.next_watchdog_at = now + interval
        actions.append(Notify(("WATCHDOG=1",)))
