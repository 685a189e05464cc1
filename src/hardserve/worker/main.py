"""The worker entry: one event loop, its pool, its listeners; runs until told to stop.

`run_worker` is what the CLI calls for a single foreground worker and what a master calls in
each forked child. This is the only module that chooses uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from hardserve.worker.call import WsgiApp
from hardserve.worker.pool import Pool
from hardserve.worker.server import WorkerShared, start_servers

if TYPE_CHECKING:
    from hardserve.settings import Config

_log = logging.getLogger("hardserve.error")


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


class Worker:
    def __init__(self, app: WsgiApp, config: Config, sockets: list[socket.socket]) -> None:
        self.app = app
        self.config = config
        self.sockets = sockets
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shared: WorkerShared | None = None
        self._stop: asyncio.Event | None = None
        self.ready = threading.Event()

    def run(self, *, install_signals: bool = True) -> int:
        loop = new_event_loop(self.config.loop)
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(install_signals))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)

    def stop(self) -> None:
        """Ask for a graceful stop; safe from any thread."""
        loop = self.loop
        if loop is not None and self._stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)

    async def _main(self, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        pool = Pool(self.config.threads, self.config.pool_queue_max)
        pool.start(loop)
        shared = WorkerShared(self.app, self.config, pool, sys.stderr)
        self.shared = shared
        acceptor = await start_servers(loop, shared, self.sockets)
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
        date_timer = self._tick_date(loop, shared)
        overdue_timer = self._watch_overdue(loop, shared)
        for sock in self.sockets:
            _log.info("listening at %s", _describe(sock))
        self.ready.set()
        await self._stop.wait()
        _log.info("stopping: closing listeners, finishing requests in progress")
        acceptor.close()
        drained = await shared.drain(self.config.graceful_timeout_s)
        if not drained:
            _log.warning("graceful timeout: %d connections cut", len(shared.connections))
        date_timer[0].cancel()
        overdue_timer[0].cancel()
        pool.stop(timeout=1.0)
        return 0

    def _watch_overdue(
        self, loop: asyncio.AbstractEventLoop, shared: WorkerShared
    ) -> list[asyncio.TimerHandle]:
        # Checked a few times per timeout (at most once a second): a report or a 503 may come up
        # to a quarter of the timeout late, which is what an operator or a client can tell apart.
        limits = shared.config.limits
        interval = min(1.0, max(min(limits.request_timeout_s, limits.queue_timeout_s) / 4, 0.01))
        handle: list[asyncio.TimerHandle] = []
        pool = shared.pool

        def check() -> None:
            now = time.monotonic()
            shared.report_overdue_requests(now)
            if pool.in_flight > pool.size:  # some calls wait for a thread
                shared.shed_stale_queued_requests(now)
            handle[:] = [loop.call_later(interval, check)]

        handle.append(loop.call_later(interval, check))
        return handle

    def _tick_date(
        self, loop: asyncio.AbstractEventLoop, shared: WorkerShared
    ) -> list[asyncio.TimerHandle]:
        handle: list[asyncio.TimerHandle] = []

        def tick() -> None:
            handle[:] = [loop.call_later(shared.fixed_headers.refresh(), tick)]

        tick()
        return handle


def _describe(sock: socket.socket) -> str:
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    if sock.family == socket.AF_INET6:
        return f"http://[{address[0]}]:{address[1]}"
    return f"http://{address[0]}:{address[1]}"


def run_worker(app: WsgiApp, config: Config, sockets: list[socket.socket]) -> int:
    """Serve on the given listening sockets until SIGTERM or SIGINT; the exit status."""
    return Worker(app, config, sockets).run()
