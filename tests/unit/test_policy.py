"""master/policy.py: what the master decides, event by event, with plain numbers for time.

Each table is a list of rows `(time, event, actions)`: at that time the event goes in and
exactly those actions come out (log lines left aside; they are checked on their own where they
matter). A Spawn action is carried out as the arbiter does: the next pid (101, 102, ...) is
taken and a Spawned event goes straight back in, its actions listed after the Spawn.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from hardserve.master.policy import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    CRASH_WINDOW_S,
    DUMP_GRACE_S,
    EXIT_APP_LOAD,
    FAST_STOP_S,
    Action,
    AnnounceListening,
    Event,
    Exit,
    Exited,
    Heartbeat,
    Kill,
    Log,
    MasterState,
    Notify,
    Ready,
    ReloadConfig,
    ReopenLogs,
    Retiring,
    SignalReceived,
    Spawn,
    Spawned,
    SpawnFailed,
    Stuck,
    Tick,
    decide,
)

TERM, INT, QUIT, HUP = signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP
TTIN, TTOU, USR1, USR2, KILL = (
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGKILL,
)
FIRST_PID = 101


def ready_line(workers: int) -> Notify:
    return Notify(("READY=1", f"STATUS=serving with {workers} workers"))


STOPPING = Notify(("STOPPING=1",))
RELOADING = Notify(("RELOADING=1",))
WATCHDOG = Notify(("WATCHDOG=1",))


class Master:
    """The policy driven the way the arbiter drives it."""

    def __init__(
        self,
        desired: int = 2,
        *,
        timeout_s: float = 30.0,
        graceful_timeout_s: float = 5.0,
        watchdog_interval_s: float | None = None,
    ) -> None:
        self.state = MasterState(
            desired=desired,
            timeout_s=timeout_s,
            graceful_timeout_s=graceful_timeout_s,
            watchdog_interval_s=watchdog_interval_s,
        )
        self.next_pid = FIRST_PID
        self.logs: list[Log] = []
        self.checks: list[Callable[[MasterState], None]] = []
        self.failing_forks = 0  # this many Spawn actions come back as SpawnFailed

    def send(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        for action in decide(self.state, event, now):
            if isinstance(action, Log):
                self.logs.append(action)
                continue
            out.append(action)
            if isinstance(action, Spawn) and self.failing_forks:
                self.failing_forks -= 1
                out.extend(self.send(SpawnFailed("fork: out of memory"), now))
            elif isinstance(action, Spawn):
                pid, self.next_pid = self.next_pid, self.next_pid + 1
                out.extend(self.send(Spawned(pid, action.generation), now))
        for check in self.checks:
            check(self.state)
        return out

    def play(self, rows: list[tuple[float, Event, list[Action]]]) -> None:
        for number, (now, event, expected) in enumerate(rows):
            got = self.send(event, now)
            assert got == expected, f"row {number}: at {now} {event} gave {got}"

    def start(self) -> list[int]:
        """Every worker started and serving, from t=0 to t<1; their pids."""
        pids: list[int] = []
        self.send(Tick(), 0.0)
        step = 0
        while len(pids) < self.state.desired:
            pid = FIRST_PID + len(pids)
            step += 1
            self.send(Ready(pid), step / 100)
            pids.append(pid)
        assert self.state.announced_ready
        return pids


def ready_serving(state: MasterState) -> int:
    return sum(1 for w in state.serving() if w.ready)


# -- tables ------------------------------------------------------------------------------------

TABLES: dict[str, tuple[int, dict[str, float | None], list[tuple[float, Event, list[Action]]]]] = {
    # One worker loads the app alone; the others start when it serves (an app that cannot load
    # then fails once). READY=1 once all of them serve, once; the listening line once.
    "start-up spawns N, READY=1 when all serve": (
        3,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Tick(), []),
            (0.5, Heartbeat(101), []),
            (1.0, Ready(101), [AnnounceListening(), Spawn(0), Spawn(0)]),
            (1.1, Ready(102), []),
            (1.2, Tick(), []),
            (1.3, Ready(103), [ready_line(3)]),
            (1.4, Ready(103), []),
            (2.0, Tick(), []),
        ],
    ),
    "one worker: READY=1 with the listening line": (
        1,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.2, Ready(101), [AnnounceListening(), ready_line(1)]),
            (0.3, Tick(), []),
        ],
    ),
    # A crash soon after start backs off: 0.1 s, 0.2 s, 0.4 s, ... reset once a worker serves.
    "crash loop backs off, doubling, reset by a ready worker": (
        1,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1)]),
            (1.0, Exited(101, 1), []),
            (1.0 + BACKOFF_FIRST_S - 0.01, Tick(), []),
            (1.0 + BACKOFF_FIRST_S, Tick(), [Spawn(0)]),
            (1.2, Exited(102, 1), []),
            (1.2 + 2 * BACKOFF_FIRST_S - 0.01, Tick(), []),
            (1.2 + 2 * BACKOFF_FIRST_S, Tick(), [Spawn(0)]),
            (1.5, Exited(103, None, signal.SIGSEGV), []),
            (1.5 + 4 * BACKOFF_FIRST_S - 0.01, Tick(), []),
            (1.5 + 4 * BACKOFF_FIRST_S, Tick(), [Spawn(0)]),
            (2.0, Ready(104), []),
            (3.0, Exited(104, 1), []),
            (3.0 + BACKOFF_FIRST_S - 0.01, Tick(), []),
            (3.0 + BACKOFF_FIRST_S, Tick(), [Spawn(0)]),
        ],
    ),
    "a crash long after start is replaced at once": (
        1,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1)]),
            (CRASH_WINDOW_S + 1, Exited(101, None, KILL), [Spawn(0)]),
            (CRASH_WINDOW_S + 2, Ready(102), []),
        ],
    ),
    "a worker that cannot load the app before any served: exit 4": (
        3,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.3, Exited(101, EXIT_APP_LOAD), [STOPPING, Exit(EXIT_APP_LOAD)]),
        ],
    ),
    "a worker whose app raises at import before any served: exit 1": (
        3,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.3, Exited(101, 1), [STOPPING, Exit(1)]),
        ],
    ),
    "a first worker killed by a signal before it served: exit 1": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.3, Exited(101, None, KILL), [STOPPING, Exit(1)]),
        ],
    ),
    "once a worker served, one that cannot load the app is replaced": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Exited(102, EXIT_APP_LOAD), []),
            (0.2 + BACKOFF_FIRST_S, Tick(), [Spawn(0)]),
        ],
    ),
    # Silent past the timeout: the stack dump signal, then DUMP_GRACE_S later SIGKILL, and the
    # replacement starts at once (the killed worker no longer counts).
    "heartbeat timeout: USR2, then KILL and a replacement": (
        1,
        {"timeout_s": 5.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.5, Ready(101), [AnnounceListening(), ready_line(1)]),
            (3.0, Heartbeat(101), []),
            (7.99, Tick(), []),
            (8.0, Tick(), [Kill(101, USR2)]),
            (8.5, Tick(), []),
            (8.0 + DUMP_GRACE_S - 0.01, Tick(), []),
            (8.0 + DUMP_GRACE_S, Tick(), [Kill(101, KILL), Spawn(0)]),
            (9.5, Tick(), []),
            (9.6, Exited(101, None, KILL), []),
            (9.7, Ready(102), []),
        ],
    ),
    "a heartbeat after the dump signal spares the worker": (
        1,
        {"timeout_s": 5.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.5, Ready(101), [AnnounceListening(), ready_line(1)]),
            (5.5, Tick(), [Kill(101, USR2)]),
            (6.0, Heartbeat(101), []),
            (5.5 + DUMP_GRACE_S, Tick(), []),
            (10.99, Tick(), []),
            (11.0, Tick(), [Kill(101, USR2)]),
        ],
    ),
    "no heartbeat watch with timeout 0": (
        1,
        {"timeout_s": 0.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.5, Ready(101), [AnnounceListening(), ready_line(1)]),
            (1000.0, Tick(), []),
        ],
    ),
    # A request stuck in the app: stacks, graceful stop, and a replacement while it drains.
    "stuck: USR2 + TERM, replaced while it drains": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (20.0, Stuck(101), [Kill(101, USR2), Kill(101, TERM), Spawn(0)]),
            (20.1, Stuck(101), []),
            (20.2, Ready(103), []),
            (25.0, Exited(101, 0), []),
            (26.0, Tick(), []),
        ],
    ),
    "stuck during a stop is left to the stop": (
        1,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1)]),
            (1.0, SignalReceived(TERM), [STOPPING, Kill(101, TERM)]),
            (1.5, Stuck(101), []),
        ],
    ),
    "TERM: STOPPING=1, TERM to all, exit 0 when all are gone": (
        2,
        {"graceful_timeout_s": 5.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (10.0, SignalReceived(TERM), [STOPPING, Kill(101, TERM), Kill(102, TERM)]),
            (10.1, SignalReceived(TERM), []),
            (10.2, SignalReceived(HUP), []),
            (10.3, SignalReceived(TTIN), []),
            (11.0, Exited(101, 0), []),
            (12.0, Tick(), []),
            (12.5, Exited(102, 0), [Exit(0)]),
        ],
    ),
    "TERM: KILL at the graceful deadline": (
        2,
        {"graceful_timeout_s": 5.0, "timeout_s": 2.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (1.0, Heartbeat(101), []),
            (1.0, Heartbeat(102), []),
            (2.0, SignalReceived(TERM), [STOPPING, Kill(101, TERM), Kill(102, TERM)]),
            # Silent while stopping: no dump, no replacement; the deadline decides.
            (6.0, Tick(), []),
            (6.5, Exited(101, 0), []),
            (2.0 + 5.0 + DUMP_GRACE_S - 0.01, Tick(), []),
            (2.0 + 5.0 + DUMP_GRACE_S, Tick(), [Kill(102, KILL)]),
            (8.05, Exited(102, None, KILL), [Exit(0)]),
        ],
    ),
    "INT: QUIT to all, KILL after FAST_STOP_S": (
        2,
        {"graceful_timeout_s": 30.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (1.0, SignalReceived(INT), [STOPPING, Kill(101, QUIT), Kill(102, QUIT)]),
            (1.0 + FAST_STOP_S - 0.01, Tick(), []),
            (1.0 + FAST_STOP_S, Tick(), [Kill(101, KILL), Kill(102, KILL)]),
            (3.1, Exited(101, None, KILL), []),
            (3.1, Exited(102, None, KILL), [Exit(0)]),
        ],
    ),
    "QUIT during a graceful stop makes it fast": (
        1,
        {"graceful_timeout_s": 30.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1)]),
            (1.0, SignalReceived(TERM), [STOPPING, Kill(101, TERM)]),
            (2.0, SignalReceived(QUIT), [Kill(101, QUIT)]),
            (2.0 + FAST_STOP_S, Tick(), [Kill(101, KILL)]),
            (4.5, Exited(101, None, KILL), [Exit(0)]),
        ],
    ),
    # HUP: one new worker at a time; each that serves lets the oldest old one go.
    "HUP: replaced one by one, READY=1 at the end": (
        3,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0), Spawn(0)]),
            (0.2, Ready(102), []),
            (0.3, Ready(103), [ready_line(3)]),
            (10.0, SignalReceived(HUP), [RELOADING, ReloadConfig(), Spawn(1)]),
            (10.2, Tick(), []),
            (11.0, Ready(104), [Kill(101, TERM), Spawn(1)]),
            (11.5, Exited(101, 0), []),
            (12.0, Ready(105), [Kill(102, TERM), Spawn(1)]),
            (13.0, Ready(106), [Kill(103, TERM)]),
            (13.1, Exited(102, 0), []),
            (13.2, Tick(), []),
            (13.5, Exited(103, 0), [ready_line(3)]),
            (14.0, Tick(), []),
        ],
    ),
    "HUP: an old worker crashing during the reload is replaced by a new one": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (20.0, SignalReceived(HUP), [RELOADING, ReloadConfig(), Spawn(1)]),
            (20.1, Exited(102, None, signal.SIGSEGV), []),
            # 103 makes up for the crashed one: 101 stays until another new one serves.
            (20.5, Ready(103), [Spawn(1)]),
            (20.6, Ready(104), [Kill(101, TERM)]),
            (21.0, Exited(101, 0), [ready_line(2)]),
        ],
    ),
    "TTIN one more, TTOU one fewer (the newest), never below 1": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (1.0, SignalReceived(TTIN), [Spawn(0)]),
            (1.1, Ready(103), []),
            (2.0, SignalReceived(TTOU), [Kill(103, TERM)]),
            (2.1, SignalReceived(TTOU), [Kill(102, TERM)]),
            (2.2, SignalReceived(TTOU), []),
            (2.3, SignalReceived(TTOU), []),
            (2.5, Exited(103, 0), []),
            (2.6, Exited(102, 0), []),
            (3.0, Tick(), []),
            (3.1, SignalReceived(TTIN), [Spawn(0)]),
        ],
    ),
    "USR1: reopen the master's logs and tell every worker": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (1.0, SignalReceived(USR1), [ReopenLogs(), Kill(101, USR1), Kill(102, USR1)]),
        ],
    ),
    "Retiring: the replacement starts before the old worker exits": (
        2,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), Spawn(0)]),
            (0.2, Ready(102), [ready_line(2)]),
            (5.0, Retiring(101), [Spawn(0)]),
            (5.0, Retiring(101), []),
            (5.2, Ready(103), []),
            (6.0, Exited(101, 0), []),
            (7.0, Tick(), []),
        ],
    ),
    # WATCHDOG=1 at the interval, only while a worker serves and none is silent.
    "watchdog: at the interval, only while healthy": (
        1,
        {"timeout_s": 5.0, "watchdog_interval_s": 1.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.2, Tick(), []),
            (0.5, Ready(101), [AnnounceListening(), ready_line(1), WATCHDOG]),
            (1.0, Tick(), []),
            (1.5, Heartbeat(101), [WATCHDOG]),
            (2.0, Tick(), []),
            (2.5, Tick(), [WATCHDOG]),
            (3.5, Tick(), [WATCHDOG]),
            # Silent since 1.5: at 6.5 it is past the timeout, no ping.
            (6.5, Tick(), [Kill(101, USR2)]),
            (7.0, Tick(), []),
            (7.2, Heartbeat(101), [WATCHDOG]),
            (7.3, Tick(), []),
        ],
    ),
    "watchdog: no ping while no worker serves": (
        1,
        {"timeout_s": 0.0, "watchdog_interval_s": 1.0},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1), WATCHDOG]),
            (CRASH_WINDOW_S + 1, Exited(101, 1), [Spawn(0)]),
            (CRASH_WINDOW_S + 2, Tick(), []),
            (CRASH_WINDOW_S + 3, Tick(), []),
            (CRASH_WINDOW_S + 3.5, Ready(102), [WATCHDOG]),
        ],
    ),
    "an exit of a process that is not a worker is ignored": (
        1,
        {},
        [
            (0.0, Tick(), [Spawn(0)]),
            (0.05, Exited(4242, 0), []),
            (0.1, Ready(101), [AnnounceListening(), ready_line(1)]),
            (1.0, Exited(999, None, KILL), []),
            (1.1, Heartbeat(999), []),
            (1.2, Ready(999), []),
            (1.3, Stuck(999), []),
            (1.4, Retiring(999), []),
        ],
    ),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_table(name: str) -> None:
    desired, options, rows = TABLES[name]
    master = Master(desired, **options)  # type: ignore[arg-type]
    master.play(rows)


# -- properties over whole sequences -------------------------------------------------------------


def test_reload_never_has_fewer_than_n_ready_workers() -> None:
    master = Master(4)
    master.start()
    lowest: list[int] = []

    def check(state: MasterState) -> None:
        if state.phase == "reloading":
            lowest.append(ready_serving(state))

    master.checks.append(check)
    actions = master.send(SignalReceived(HUP), 10.0)
    assert actions == [RELOADING, ReloadConfig(), Spawn(1)]
    now = 10.0
    terminated: list[int] = []
    notified: list[Action] = []
    # Carry on as the processes would: each new worker serves, each old one told to go exits.
    for _ in range(20):
        if master.state.phase != "reloading":
            break
        new = [w.pid for w in master.state.workers.values() if w.generation == 1 and not w.ready]
        assert len(new) <= 1, "more than one new worker starting at a time"
        for pid in new:
            now += 0.5
            for action in master.send(Ready(pid), now):
                if isinstance(action, Kill):
                    assert action.signum == TERM
                    terminated.append(action.pid)
                else:
                    notified.append(action)
        for pid in list(terminated):
            if pid in master.state.workers:
                now += 0.1
                notified.extend(master.send(Exited(pid, 0), now))
    assert master.state.phase == "running"
    assert sorted(terminated) == [101, 102, 103, 104]
    assert {w.generation for w in master.state.workers.values()} == {1}
    assert len(master.state.workers) == 4
    assert notified.count(ready_line(4)) == 1
    assert lowest and min(lowest) >= 4, lowest


def test_reload_with_slow_old_workers_keeps_n_serving_and_waits_for_them() -> None:
    # Old workers take long to drain: READY=1 only once the last one is gone.
    master = Master(2)
    master.start()
    master.checks.append(lambda state: None if state.phase != "reloading" else _at_least(state, 2))
    master.send(SignalReceived(HUP), 5.0)
    assert master.send(Ready(103), 6.0) == [Kill(101, TERM), Spawn(1)]
    assert master.send(Ready(104), 7.0) == [Kill(102, TERM)]
    assert master.send(Tick(), 8.0) == []
    assert master.send(Exited(102, 0), 9.0) == []
    assert master.send(Exited(101, 0), 30.0) == [ready_line(2)]


def _at_least(state: MasterState, count: int) -> None:
    assert ready_serving(state) >= count, state


def test_backoff_is_capped() -> None:
    master = Master(1)
    master.start()
    now = 1.0
    delays = []
    for _ in range(12):
        pid = max(master.state.workers)
        master.send(Exited(pid, 1), now)
        delay = master.state.next_spawn_at - now
        delays.append(round(delay, 6))
        now = master.state.next_spawn_at
        assert master.send(Tick(), now) == [Spawn(0)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == BACKOFF_MAX_S
    assert delays == sorted(delays)


def test_logs_say_what_happened() -> None:
    master = Master(1, timeout_s=5.0)
    master.start()
    master.send(Exited(101, None, KILL), CRASH_WINDOW_S + 1)
    assert master.logs[-1].level == "error"
    assert "101 died unexpectedly (killed by signal SIGKILL)" in master.logs[-1].message
    master.send(Ready(102), CRASH_WINDOW_S + 2)
    master.send(Tick(), CRASH_WINDOW_S + 8)
    assert master.logs[-1].level == "error"
    assert "102 silent" in master.logs[-1].message and "stacks" in master.logs[-1].message
    master.send(Stuck(102), CRASH_WINDOW_S + 8.5)
    assert "more than 5 s" in master.logs[-1].message


def test_first_failure_with_other_workers_alive_stops_them_all() -> None:
    # Two workers starting (a TTIN before the first served): the first failure stops both.
    master = Master(1)
    assert master.send(Tick(), 0.0) == [Spawn(0)]
    assert master.send(SignalReceived(TTIN), 0.1) == []  # still one at a time
    assert master.send(Exited(101, EXIT_APP_LOAD), 0.2) == [STOPPING, Exit(EXIT_APP_LOAD)]


def test_an_exit_4_stops_with_4_even_if_later_workers_exit_otherwise() -> None:
    master = Master(2)
    master.send(Tick(), 0.0)
    master.state.workers[555] = master.state.workers[101].__class__(555, 0, 0.0, 0.0)
    assert master.send(Exited(101, EXIT_APP_LOAD), 0.2) == [STOPPING, Kill(555, TERM)]
    assert master.send(Exited(555, None, TERM), 0.3) == [Exit(EXIT_APP_LOAD)]


def test_a_failed_fork_backs_off_like_a_crash() -> None:
    master = Master(1)
    master.start()
    master.failing_forks = 2
    now = CRASH_WINDOW_S + 1
    assert master.send(Exited(101, 1), now) == [Spawn(0)]  # comes back as SpawnFailed
    assert master.logs[-1] == Log("error", "cannot start a worker: fork: out of memory")
    assert master.state.spawns_pending == 0
    assert master.send(Tick(), now + BACKOFF_FIRST_S - 0.01) == []
    assert master.send(Tick(), now + BACKOFF_FIRST_S) == [Spawn(0)]  # fails again
    assert master.send(Tick(), now + 3 * BACKOFF_FIRST_S - 0.01) == []
    assert master.send(Tick(), now + 3 * BACKOFF_FIRST_S) == [Spawn(0)]
    assert list(master.state.workers) == [102]


def test_reload_to_fewer_workers_lets_every_old_one_go() -> None:
    # The configuration read at HUP asks for fewer workers (the arbiter sets `desired`).
    master = Master(3)
    master.start()
    assert master.send(SignalReceived(HUP), 5.0) == [RELOADING, ReloadConfig(), Spawn(1)]
    master.state.desired = 2
    assert master.send(Ready(104), 6.0) == [Kill(101, TERM), Kill(102, TERM), Spawn(1)]
    assert master.send(Ready(105), 7.0) == [Kill(103, TERM)]
    for pid in (101, 102):
        assert master.send(Exited(pid, 0), 8.0) == []
    assert master.send(Exited(103, 0), 8.5) == [ready_line(2)]
    assert master.state.phase == "running"


def test_a_hup_during_a_reload_starts_it_over_with_the_new_configuration() -> None:
    master = Master(3)
    master.start()
    lowest: list[int] = []
    master.checks.append(lambda state: lowest.append(ready_serving(state)))
    assert master.send(SignalReceived(HUP), 10.0) == [RELOADING, ReloadConfig(), Spawn(1)]
    (first_new,) = [w.pid for w in master.state.workers.values() if w.generation == 1]
    master.send(Ready(first_new), 10.5)  # one old worker goes
    # The second HUP: no second RELOADING=1, the configuration is read again, generation 2.
    actions = master.send(SignalReceived(HUP), 11.0)
    assert ReloadConfig() in actions and RELOADING not in actions
    assert master.state.generation == 2
    now = 11.0
    for _ in range(30):
        if master.state.phase != "reloading":
            break
        for worker in list(master.state.workers.values()):
            now += 0.1
            if worker.stopping is not None:
                master.send(Exited(worker.pid, 0), now)
            elif not worker.ready:
                master.send(Ready(worker.pid), now)
        now += 0.1
        master.send(Tick(), now)
    assert master.state.phase == "running"
    assert {w.generation for w in master.state.workers.values()} == {2}
    assert len(master.state.workers) == 3
    assert min(lowest) >= 3, lowest


# -- what /readyz and the metrics read: readiness, starts, exits by cause ------------------------


def test_ready_needs_a_serving_worker_and_no_stop() -> None:
    master = Master(2)
    assert not master.state.ready()
    master.send(Tick(), 0.0)
    assert not master.state.ready()  # forked, not serving yet
    master.send(Ready(101), 0.1)
    assert master.state.ready()
    master.send(SignalReceived(TERM), 1.0)
    assert not master.state.ready()  # from the moment TERM arrives


@pytest.mark.parametrize("signum", [TERM, INT, QUIT])
def test_every_stop_signal_makes_it_unready_at_once(signum: int) -> None:
    master = Master(1)
    master.start()
    assert master.state.ready()
    master.send(SignalReceived(signum), 1.0)
    assert not master.state.ready()


def test_a_worker_on_its_way_out_does_not_make_it_ready() -> None:
    master = Master(1)
    (pid,) = master.start()
    master.send(Stuck(pid), 1.0)  # replaced: the stuck one no longer counts
    assert not master.state.ready()
    master.send(Ready(pid + 1), 1.5)
    assert master.state.ready()


def test_exits_are_counted_by_cause() -> None:
    master = Master(2, timeout_s=0.0)
    first, second = master.start()
    assert master.state.worker_starts == 2
    now = CRASH_WINDOW_S + 1

    def step(event: Event) -> list[Action]:
        nonlocal now
        now += 0.1
        return master.send(event, now)

    def newest() -> int:
        return max(master.state.workers)

    step(Exited(first, None, KILL))  # nobody asked: a crash
    step(Ready(newest()))
    step(Retiring(second))
    step(Exited(second, 0))
    step(Ready(newest()))
    step(SignalReceived(HUP))  # both old ones leave as new ones serve
    while any(w.generation == 0 for w in master.state.workers.values()):
        for pid, worker in list(master.state.workers.items()):
            if worker.stopping == "reload":
                step(Exited(pid, 0))
            elif worker.generation == 1 and not worker.ready:
                step(Ready(pid))
        step(Tick())
    step(SignalReceived(TTOU))
    (scaled,) = [p for p, w in master.state.workers.items() if w.stopping == "scale"]
    step(Exited(scaled, 0))
    step(SignalReceived(TERM))
    (last,) = master.state.workers
    step(Exited(last, 0))
    assert master.state.worker_exits == {
        "crash": 1,
        "max-requests": 1,
        "reload": 2,
        "scale": 1,
        "shutdown": 1,
    }
    assert master.state.worker_starts == 2 + 2 + 2


def test_a_silent_worker_killed_by_the_master_exits_by_timeout() -> None:
    master = Master(1, timeout_s=2.0)
    (pid,) = master.start()
    master.play(
        [
            (2.5, Tick(), [Kill(pid, USR2)]),
            (2.5 + DUMP_GRACE_S, Tick(), [Kill(pid, KILL), Spawn(0)]),
            (2.5 + DUMP_GRACE_S + 0.1, Exited(pid, None, KILL), []),
        ]
    )
    master.send(Stuck(pid + 1), 4.0)
    master.send(Exited(pid + 1, 0), 4.5)
    assert master.state.worker_exits == {"timeout": 1, "stuck": 1}


def test_shutdown_delay_keeps_serving_unready_then_stops() -> None:
    master = Master(2)
    master.state.shutdown_delay_s = 3.0
    pids = master.start()
    master.play(
        [
            # Not ready at once; systemd hears STOPPING; the workers are not told yet.
            (1.0, SignalReceived(TERM), [STOPPING]),
            (2.0, Tick(), []),
            (3.9, SignalReceived(TERM), []),  # a second TERM does not cut the delay short
            (4.0, Tick(), [Kill(pids[0], TERM), Kill(pids[1], TERM)]),
            (4.1, Exited(pids[0], 0), []),
            (4.2, Exited(pids[1], 0), [Exit(0)]),
        ]
    )
    assert not master.state.ready()


def test_int_during_the_shutdown_delay_stops_now() -> None:
    master = Master(1)
    master.state.shutdown_delay_s = 30.0
    (pid,) = master.start()
    master.play(
        [
            (1.0, SignalReceived(TERM), [STOPPING]),
            (2.0, SignalReceived(INT), [Kill(pid, QUIT)]),
            (2.0 + FAST_STOP_S, Tick(), [Kill(pid, KILL)]),
            (2.0 + FAST_STOP_S + 0.1, Exited(pid, None, KILL), [Exit(0)]),
        ]
    )
    assert master.state.stop_at is None


def test_a_worker_dying_during_the_delay_is_not_replaced() -> None:
    master = Master(2)
    master.state.shutdown_delay_s = 5.0
    first, second = master.start()
    master.play(
        [
            (1.0, SignalReceived(TERM), [STOPPING]),
            (2.0, Exited(first, None, KILL), []),
            (6.0, Tick(), [Kill(second, TERM)]),
            (6.5, Exited(second, 0), [Exit(0)]),
        ]
    )
