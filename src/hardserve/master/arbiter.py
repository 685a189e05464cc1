"""The master process: starts the workers, watches them, and carries out what policy.py
decides. It never touches a client socket.

One loop, in the main thread: select() over a wake-up pipe for signals and one pipe per
worker (its heartbeat), then every event goes through `policy.decide` and the returned actions
are carried out here. Signal handlers only enqueue the signal number; nothing runs or logs
inside one. Child exits are collected with waitpid(-1), which also reaps orphans when
hardserve is PID 1 of a container.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hardserve import tls
from hardserve.master import policy
from hardserve.master.listeners import describe
from hardserve.observe.admin import AdminServer, Endpoints
from hardserve.observe.logs import remember_reopen, reopen_files
from hardserve.observe.stats import MESSAGE_TAG, Aggregate, Snapshot
from hardserve.worker.heartbeat import BEAT, READY, RETIRING, STUCK, TLS_RELOAD, channel, tell

if TYPE_CHECKING:
    from hardserve.master.systemd import Notifier
    from hardserve.observe.metrics import MasterFacts
    from hardserve.settings import Config

_log = logging.getLogger("hardserve.error")

# The signals the master acts on; CHLD only wakes the loop (exits are found with waitpid).
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
# The loop turns at least this often, for deadlines (heartbeat timeouts, stop deadline).
_TICK_S = 0.1
# One message on a worker's channel is at most this large (a stats snapshot is a few KiB), and
# at most this many are read from one worker per turn, so one chatty worker cannot hold the loop.
_MESSAGE_MAX = 1 << 20
_MESSAGES_PER_TURN = 64

# What a worker process runs: given its heartbeat pipe's write end and the configuration in
# force (re-read on HUP), returns its exit status.
WorkerMain = Callable[[int, "Config"], int]


class Arbiter:
    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        worker_main: WorkerMain,
        *,
        notifier: Notifier | None = None,
        reload_config: Callable[[], Config] | None = None,
        startup_lines: Callable[[], list[str]] | None = None,
        admin_socket: socket.socket | None = None,
        admin_token: str | None = None,
        build_info: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.worker_main = worker_main
        self.notifier = notifier
        self.reload_config = reload_config
        # What the operator is told once, as the first worker serves, before "listening at":
        # a server whose app cannot load says only why (one line).
        self.startup_lines = startup_lines
        self.state = policy.MasterState(
            desired=config.workers,
            timeout_s=config.timeout_s,
            graceful_timeout_s=config.graceful_timeout_s,
            watchdog_interval_s=notifier.watchdog_interval_s if notifier is not None else None,
            shutdown_delay_s=config.shutdown_delay_s,
        )
        self._signals: collections.deque[int] = collections.deque()
        self._pipes: dict[int, int] = {}  # master's end of a worker's channel -> worker pid
        # Every worker's last stats snapshot, and the counters of those that are gone.
        self.stats = Aggregate()
        self._wake_r = -1
        self._wake_w = -1
        # Each live worker's slot (0, 1, ...: the lowest free when it started), the `worker`
        # label of its metrics: a replacement takes its predecessor's series.
        self._slots: dict[int, int] = {}
        self._snapshot_at: dict[int, float] = {}  # pid -> when its last snapshot arrived
        self.started_at = time.time()
        # The admin listener (/metrics, /livez, /readyz), served by this loop.
        self.admin: AdminServer | None = None
        if admin_socket is not None:
            self.admin = AdminServer(
                admin_socket,
                Endpoints(
                    metrics=self._render_metrics,
                    live=lambda: True,  # it answers, so the loop turns
                    ready=self.state.ready,
                    token=admin_token,
                ),
            )
        self._build_info = build_info or {}
        self._metrics: Callable[[str | None], tuple[bytes, str]] | None = None
        self._tls_files = tls.FileWatch(config, time.monotonic())
        # The channels of the workers still to be told TLS_RELOAD (theirs was full).
        self._tls_reload_due: set[int] = set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            self._apply(policy.decide(self.state, policy.Tick(), time.monotonic()))
            while True:
                code = self._turn()
                if code is not None:
                    return code
        finally:
            self._restore_signals()
            for fd in list(self._pipes):
                self._close_pipe(fd)
            if self.admin is not None:
                self.admin.close()

    def _turn(self) -> int | None:
        admin_read, admin_write = self.admin.fds() if self.admin is not None else ([], [])
        readable, writable, _ = select.select(
            [self._wake_r, *self._pipes, *admin_read], admin_write, [], _TICK_S
        )
        events: list[policy.Event] = []
        admin_ready: list[int] = []
        for fd in readable:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif fd in self._pipes:
                events.extend(self._read_pipe(fd))
            else:
                admin_ready.append(fd)
        while self._signals:
            signum = self._signals.popleft()
            if signum != signal.SIGCHLD:
                events.append(policy.SignalReceived(signum))
        self._watch_tls_files()
        events.extend(self._reap())
        events.append(policy.Tick())
        for event in events:
            code = self._apply(policy.decide(self.state, event, time.monotonic()))
            if code is not None:
                return code
        # After the events: a /readyz read in the same turn as a TERM already answers 503.
        if self.admin is not None:
            self.admin.handle(admin_ready, writable, time.monotonic())
        return None

    def _read_pipe(self, fd: int) -> list[policy.Event]:
        pid = self._pipes[fd]
        data = bytearray()
        for _ in range(_MESSAGES_PER_TURN):
            try:
                message = os.read(fd, _MESSAGE_MAX)
            except BlockingIOError:
                break
            except OSError:
                message = b""
            if not message:
                self._close_pipe(fd)  # the worker is gone; waitpid tells how
                break
            if message.startswith(MESSAGE_TAG):
                self._take_snapshot(pid, message)
            else:
                data += message
        events: list[policy.Event] = []
        if READY in data:
            events.append(policy.Ready(pid))
        if BEAT in data:
            events.append(policy.Heartbeat(pid))
        if RETIRING in data:
            events.append(policy.Retiring(pid))
        if STUCK in data:
            events.append(policy.Stuck(pid))
        return events

    def _take_snapshot(self, pid: int, message: bytes) -> None:
        try:
            snapshot = Snapshot.decode(message)
        except (ValueError, TypeError) as exc:  # a worker's bug must not stop the master
            _log.warning("worker %d sent a stats snapshot that cannot be read: %s", pid, exc)
            return
        self.stats.update(pid, snapshot)
        self._snapshot_at[pid] = time.monotonic()

    def _reap(self) -> list[policy.Event]:
        events: list[policy.Event] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for fd, owner in list(self._pipes.items()):
                if owner == pid:
                    # Its last messages (the final stats snapshot) may still be unread.
                    events.extend(self._read_pipe(fd))
                    self._close_pipe(fd)
            self.stats.worker_gone(pid)
            self._slots.pop(pid, None)
            self._snapshot_at.pop(pid, None)
            if os.WIFSIGNALED(status):
                events.append(policy.Exited(pid, None, os.WTERMSIG(status)))
            else:
                events.append(policy.Exited(pid, os.waitstatus_to_exitcode(status)))
        return events

    def _watch_tls_files(self) -> None:
        """The certificate files changed and load: every live worker is told to load them
        again and swap them in for its new connections (TLS_RELOAD), without a restart; a worker
        started later gets them from the master's context (tls.check). Files that do not load
        are logged once and change nothing."""
        try:
            changed = self._tls_files.poll(self.config, time.monotonic())
        except tls.TlsError as exc:
            _log.error("TLS files changed but do not load, the running ones stay: %s", exc)
            changed = False
        if changed:
            _log.info("TLS files changed: the workers load them for new connections")
            self._tls_reload_due.update(self._pipes)
        if self._tls_reload_due:
            # Never a blocking write: a full channel is tried again on the next turn.
            self._tls_reload_due = {
                fd for fd in self._tls_reload_due if fd in self._pipes and not tell(fd, TLS_RELOAD)
            }

    # -- actions -----------------------------------------------------------------------------

    def _apply(self, actions: list[policy.Action]) -> int | None:
        for action in actions:
            if isinstance(action, policy.Spawn):
                self._spawn(action.generation)
            elif isinstance(action, policy.Kill):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(action.pid, action.signum)
            elif isinstance(action, policy.Notify):
                if self.notifier is not None:
                    self.notifier.send(*action.lines)
            elif isinstance(action, policy.Log):
                getattr(_log, action.level)("%s", action.message)
            elif isinstance(action, policy.AnnounceListening):
                if self.startup_lines is not None:
                    for line in self.startup_lines():
                        _log.info("%s", line)
                tls_on = tls.enabled(self.config)
                for sock in self.sockets:
                    address = describe(sock)
                    if tls_on and tls.serves_tls(sock):
                        address = "https://" + address.removeprefix("http://")
                    _log.info("listening at %s", address)
            elif isinstance(action, policy.ReloadConfig):
                self._reload()
            elif isinstance(action, policy.ReopenLogs):
                reopen_files()
            elif isinstance(action, policy.Exit):
                return action.code
        return None

    def _spawn(self, generation: int) -> None:
        read_end, write_end = channel()
        # Signals wait until the child has dropped the master's handlers: one sent to it
        # earlier would run the master's handler in the child and be lost there (a TERM
        # right after the fork left a worker serving until the stop deadline's KILL).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_end)
            os.close(write_end)
            self._apply(policy.decide(self.state, policy.SpawnFailed(str(exc)), time.monotonic()))
            return
        if pid == 0:  # the worker
            os.close(read_end)
            self._become_worker(write_end, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self._pipes[read_end] = pid
        taken = set(self._slots.values())
        self._slots[pid] = next(slot for slot in range(len(taken) + 1) if slot not in taken)
        self._apply(policy.decide(self.state, policy.Spawned(pid, generation), time.monotonic()))

    def _become_worker(self, heartbeat_fd: int, mask: set[int | signal.Signals]) -> None:
        """In the child: drop the master's state and run the worker; never returns."""
        code = 1
        try:
            self._restore_signals()
            # Until the worker's loop takes them over (after the app has loaded, which can take
            # long): a USR1 is remembered and done then, and a HUP (the master's) ignored. By
            # default either would kill the worker.
            signal.signal(signal.SIGUSR1, remember_reopen)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in self._pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipes.clear()
            if self.admin is not None:
                self.admin.close()  # descriptors only: the master's connections go on
                self.admin = None
            code = self.worker_main(heartbeat_fd, self.config)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            _log.exception("worker failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reload(self) -> None:
        if self.reload_config is None:
            return
        # The TLS files as this reload finds them are its own: the watch starts again from them
        # (a HUP sent after replacing them is not followed by a second reload).
        self._tls_files = tls.FileWatch(self.config, time.monotonic())
        try:
            config = self.reload_config()
        except Exception as exc:  # a broken file must not stop a running server
            _log.error("reload: configuration not changed: %s", exc)
            return
        if config.admin_bind != self.config.admin_bind:
            _log.warning(
                "reload: admin_bind changed; the admin listener stays at %s until a restart",
                self.config.admin_bind or "off",
            )
            config = dataclasses.replace(config, admin_bind=self.config.admin_bind)
        self.config = config
        self._tls_files = tls.FileWatch(config, time.monotonic())
        self.state.desired = config.workers
        self.state.timeout_s = config.timeout_s
        self.state.graceful_timeout_s = config.graceful_timeout_s
        self.state.shutdown_delay_s = config.shutdown_delay_s
        if self.admin is not None:
            self._reload_admin_token(config)

    def _reload_admin_token(self, config: Config) -> None:
        """The admin token as the configuration read on HUP gives it (a token file is read
        again, so a token can be rotated); one that cannot be read keeps the running token.
        The admin address itself is bound once: a new one needs a restart."""
        from hardserve.settings import SettingError, read_admin_token

        assert self.admin is not None
        try:
            if config.admin_token_file is not None:
                token: str | None = read_admin_token(config.admin_token_file)
            else:
                token = config.admin_token
        except SettingError as exc:
            _log.error("reload: admin token not changed: %s", exc)
            return
        self.admin.endpoints.token = token

    # -- metrics -----------------------------------------------------------------------------

    def facts(self) -> MasterFacts:
        """What the metrics show at this moment."""
        from hardserve.observe.metrics import MasterFacts, WorkerFacts

        now = time.monotonic()
        workers = [
            WorkerFacts(
                slot=self._slots[pid],
                pid=pid,
                ready=worker.ready and worker.stopping is None,
                heartbeat_age_s=now - worker.last_seen,
                snapshot_age_s=(now - self._snapshot_at[pid] if pid in self._snapshot_at else None),
            )
            for pid, worker in sorted(self.state.workers.items())
            if pid in self._slots
        ]
        return MasterFacts(
            stats=self.stats,
            workers=workers,
            desired_workers=self.state.desired,
            ready=self.state.ready(),
            worker_starts=self.state.worker_starts,
            worker_exits=dict(self.state.worker_exits),
            exit_causes=policy.EXIT_CAUSES,
            start_time_s=self.started_at,
        )

    def _render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        if self._metrics is None:
            # prometheus_client is imported the first time it is needed.
            from hardserve.observe.metrics import Metrics

            self._metrics = Metrics(self.facts, self._build_info).render
        return self._metrics(accept)

    # -- signals and pipes -------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # only this: the loop does the rest

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def _close_pipe(self, fd: int) -> None:
        self._pipes.pop(fd, None)
        self._tls_reload_due.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
