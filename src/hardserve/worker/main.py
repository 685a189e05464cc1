"""The worker entry: one event loop, its pool, its listeners; runs until told to stop.

`run_worker` is what the CLI calls for a single foreground worker and what a master calls in
each forked child. This is the only module that chooses uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hardserve import tls
from hardserve.observe.logs import reopen_files, reopen_if_asked
from hardserve.observe.stats import WorkerStats
from hardserve.worker.call import WsgiApp
from hardserve.worker.heartbeat import BEAT, READY, RETIRING, STUCK, TLS_RELOAD, Heartbeat
from hardserve.worker.pool import Pool
from hardserve.worker.server import Acceptor, WorkerShared, start_servers

if TYPE_CHECKING:
    from hardserve.settings import Config

_log = logging.getLogger("hardserve.error")

# How often a worker sends its stats to the master (with a heartbeat).
_SNAPSHOT_INTERVAL_S = 1.0
# How often a worker looks at its listeners' accept queues (Acceptor.watch_queue): a system
# call or two per listener, and a load that starts waits at most this long for the extra servers.
_ACCEPT_QUEUE_CHECK_S = 0.1


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (and asked for), the standard loop otherwise."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def preload(kind: str = "auto") -> None:
    """Import what a worker needs (the loop included) in the master, before it gives up root:
    the user it becomes may not be able to read the Python installation."""
    from hardserve.worker import allocator  # noqa: F401  (ctypes, for the arena setting)

    if kind in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            if kind == "uvloop":
                raise


class Worker:
    def __init__(
        self,
        app: WsgiApp,
        config: Config,
        sockets: list[socket.socket],
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.sockets = sockets
        self.heartbeat = heartbeat
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shared: WorkerShared | None = None
        self._stop: asyncio.Event | None = None
        self._fast_stop = False
        self.ready = threading.Event()
        # The TLS files are being loaded again off the loop; and once more after that, because
        # the master said so again meanwhile.
        self._tls_loading = False
        self._tls_load_again = False
        # The worker's numbers, sent to the master with the heartbeat (observe/stats.py).
        self.stats = WorkerStats()
        # Each worker retires after its own number of requests, so they do not all go at once.
        self.max_requests = (
            config.max_requests + random.randint(0, config.max_requests_jitter)
            if config.max_requests
            else 0
        )

    def run(self, *, install_signals: bool = True) -> int:
        loop = new_event_loop(self.config.loop)
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(install_signals))
        finally:
            # Hand-offs the pool threads made while stopping run here, before the last count.
            loop.run_until_complete(loop.shutdown_asyncgens())
            self._send_snapshot()
            loop.close()
            asyncio.set_event_loop(None)

    def _send_snapshot(self) -> None:
        """Send the stats to the master; on the loop's thread (the only one that changes them).
        Sent about once a second, and once more as the worker's last act, so the master's
        counters are exact after a graceful exit."""
        heartbeat = self.heartbeat
        if heartbeat is None:
            return
        shared = self.shared
        if shared is not None:
            self.stats.write_waits = shared.pool.write_waits  # counted by the pool's threads
        heartbeat.send_snapshot(self.stats.snapshot(shared.gauges() if shared else {}))

    def stop(self) -> None:
        """Ask for a graceful stop; safe from any thread."""
        loop = self.loop
        if loop is not None and self._stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)

    def _stop_fast(self) -> None:
        self._fast_stop = True
        if self._stop is not None:
            self._stop.set()

    async def _main(self, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        pool = Pool(
            self.config.threads,
            self.config.pool_queue_max,
            self.config.limits.worker_write_queue_bytes,
            # A request that waits is not yet counted against its client (that needs its
            # head), so with a per-client cap every request is read and counted on arrival.
            0 if self.config.limits.client_in_flight_max else self.config.pool_prepared_max,
        )
        pool.start(loop)
        shared = WorkerShared(self.app, self.config, pool, sys.stderr, self.stats)
        self.shared = shared
        acceptor = await start_servers(loop, shared, self.sockets)
        listening = self._listen_to_master(loop, acceptor)
        if install_signals and threading.current_thread() is threading.main_thread():
            # TERM: graceful stop. INT and QUIT: fast stop. USR1: reopen log files. HUP is the
            # master's; a worker ignores it (the master replaces workers to reload, and says
            # TLS_RELOAD on the channel when only the TLS files changed).
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            for signum in (signal.SIGINT, signal.SIGQUIT):
                loop.add_signal_handler(signum, self._stop_fast)
            loop.add_signal_handler(signal.SIGUSR1, reopen_files)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            reopen_if_asked()  # a USR1 that came while the app loaded
        date_timer = self._tick_date(loop, shared)
        overdue_timer = self._watch_overdue(loop, shared)
        queue_timer = _every(
            loop, _ACCEPT_QUEUE_CHECK_S, lambda: acceptor.watch_queue(time.monotonic())
        )
        beat_timer = self._beat(loop, shared)
        self.ready.set()
        if self.heartbeat is not None:
            self.heartbeat.send(READY)
        await self._stop.wait()
        if listening:
            loop.remove_reader(listening)
        acceptor.close()
        if self._fast_stop:
            _log.info("stopping now: requests in progress are cut")
            await shared.drain(0.0)
        else:
            _log.info("stopping: closing listeners, finishing requests in progress")
            drained = await shared.drain(self.config.graceful_timeout_s)
            if not drained:
                _log.warning("graceful timeout: %d connections cut", len(shared.connections))
        date_timer[0].cancel()
        overdue_timer[0].cancel()
        queue_timer[0].cancel()
        beat_timer[0].cancel()
        pool.stop(timeout=0.0 if self._fast_stop else 1.0)
        shared.access_log.flush()  # the last turn's lines: the loop may not turn again
        return 0

    def _listen_to_master(self, loop: asyncio.AbstractEventLoop, acceptor: Acceptor) -> int:
        """Read the master's messages on the loop, as they come; the descriptor watched (0:
        none, a worker without a master)."""
        heartbeat = self.heartbeat
        if heartbeat is None:
            return 0
        fd = heartbeat.fileno()

        def readable() -> None:
            messages = heartbeat.receive()
            if messages is None:  # the master's end is closed: nothing more will come
                loop.remove_reader(fd)
                return
            if TLS_RELOAD in messages and acceptor.tls_context is not None:
                self._reload_tls(loop, acceptor)

        loop.add_reader(fd, readable)
        return fd

    def _reload_tls(self, loop: asyncio.AbstractEventLoop, acceptor: Acceptor) -> None:
        """Load the TLS files again, on a short-lived thread (loading a key takes milliseconds
        the loop must not wait), and swap the new context in on the loop: every later handshake
        uses it, connections already made keep theirs. Files that do not load (changed again
        since the master loaded them, unreadable) are logged and the running context stays.
        The worker runs as the user the master loaded them as (docs/tls.md)."""
        if self._tls_loading:
            self._tls_load_again = True
            return
        self._tls_loading = True
        config = self.config

        def loaded(result: tls.Context | Exception | None) -> None:
            self._tls_loading = False
            if isinstance(result, tls.TlsError):
                _log.error("TLS files not loaded again, the running ones stay: %s", result)
            elif isinstance(result, Exception):
                _log.error("TLS files not loaded again, the running ones stay", exc_info=result)
            elif result is not None and not acceptor.closed:
                acceptor.tls_context = result
                _log.info("TLS files loaded again: new connections use them")
            if self._tls_load_again:
                self._tls_load_again = False
                self._reload_tls(loop, acceptor)

        def load() -> None:
            result: tls.Context | Exception | None
            try:
                result = tls.build_context(config)
            except Exception as exc:
                result = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker stopped
                loop.call_soon_threadsafe(loaded, result)

        threading.Thread(target=load, name="hardserve-tls-load", daemon=True).start()

    def _beat(
        self, loop: asyncio.AbstractEventLoop, shared: WorkerShared
    ) -> list[asyncio.TimerHandle]:
        """Tell the master the loop turns, send it the stats about once a second, and retire
        after max_requests. Runs on the loop: a blocked loop stops beating, which is the point."""
        timeout = self.config.timeout_s
        interval = min(1.0, timeout / 4) if timeout > 0 else 1.0
        heartbeat = self.heartbeat
        reported_stuck = False
        # With beats closer than a second, a snapshot goes with the first beat a second after
        # the last one (half a beat early rather than a whole beat late).
        snapshot_every = _SNAPSHOT_INTERVAL_S - interval / 2
        next_snapshot = 0.0

        def beat() -> None:
            nonlocal reported_stuck, next_snapshot
            if heartbeat is not None:
                heartbeat.send(BEAT)
                now = loop.time()
                if now >= next_snapshot:
                    next_snapshot = now + snapshot_every
                    self._send_snapshot()
                # A request stuck in the app holds a thread the loop cannot free; the master
                # replaces the worker (gracefully: its other requests finish).
                if (
                    timeout > 0
                    and not reported_stuck
                    and shared.has_request_running_since(time.monotonic() - timeout)
                ):
                    reported_stuck = True
                    heartbeat.send(STUCK)
            if self.max_requests and shared.requests_total >= self.max_requests:
                if heartbeat is not None:
                    heartbeat.send(RETIRING)
                _log.info("served %d requests: retiring", shared.requests_total)
                self.max_requests = 0
                assert self._stop is not None
                self._stop.set()

        return _every(loop, interval, beat)

    def _watch_overdue(
        self, loop: asyncio.AbstractEventLoop, shared: WorkerShared
    ) -> list[asyncio.TimerHandle]:
        # Checked a few times per timeout (at most once a second): a report or a 503 may come up
        # to a quarter of the timeout late, which is what an operator or a client can tell apart.
        limits = shared.config.limits
        interval = min(1.0, max(min(limits.request_timeout_s, limits.queue_timeout_s) / 4, 0.01))
        pool = shared.pool

        def check() -> None:
            now = time.monotonic()
            shared.report_overdue_requests(now)
            if pool.in_flight > pool.size or pool.waiting:  # some requests wait for a thread
                shared.shed_stale_queued_requests(now)

        return _every(loop, interval, check)

    def _tick_date(
        self, loop: asyncio.AbstractEventLoop, shared: WorkerShared
    ) -> list[asyncio.TimerHandle]:
        handle: list[asyncio.TimerHandle] = []

        def tick() -> None:
            handle[:] = [loop.call_later(shared.fixed_headers.refresh(), tick)]

        tick()
        return handle


def _every(
    loop: asyncio.AbstractEventLoop, interval_s: float, step: Callable[[], None]
) -> list[asyncio.TimerHandle]:
    """Run `step` on the loop every `interval_s`, each time after the last run ended. The list
    holds the pending handle, so the caller can cancel it (`[0].cancel()`)."""
    handle: list[asyncio.TimerHandle] = []

    def run() -> None:
        step()
        handle[:] = [loop.call_later(interval_s, run)]

    handle.append(loop.call_later(interval_s, run))
    return handle


def run_worker(
    app: WsgiApp, config: Config, sockets: list[socket.socket], heartbeat_fd: int | None = None
) -> int:
    """Serve on the given listening sockets until SIGTERM (graceful) or SIGINT/SIGQUIT (fast);
    the exit status. SIGUSR2 writes every thread's stack to stderr (the master sends it to a
    worker that has fallen silent, before killing it)."""
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    # What the process holds now (the app, its modules, hardserve's own) lives as long as the
    # worker: moved out of the collector's reach, it is no longer walked by every full
    # collection (about 25 ms each with a small app, several a second with 1,024 connections).
    gc.collect()
    gc.freeze()
    heartbeat = Heartbeat(heartbeat_fd) if heartbeat_fd is not None else None
    try:
        return Worker(app, config, sockets, heartbeat).run()
    finally:
        if heartbeat is not None:
            heartbeat.close()
