"""A long accept queue: the worker's Acceptor opens more servers on the same listening socket
while connections wait, so that more than one is accepted per loop turn, and closes them once
none has waited for a while. On real sockets and a real uvloop loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import tempfile
from collections.abc import Iterator

import pytest
import uvloop

from hardserve.worker.accept_queue import accept_queue
from hardserve.worker.server import (
    RESUME_RETRY_S,
    SURGE_HANDLES,
    SURGE_QUEUE,
    SURGE_QUIET_S,
    Acceptor,
)
from tests.helpers import TIMEOUT_S

WAITING = 24  # connections made before the worker accepts any


@pytest.fixture(params=["tcp", "unix"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def listener(family: str) -> Iterator[socket.socket]:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as directory:
        if family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(f"{directory}/listener")
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        try:
            yield sock
        finally:
            sock.close()


@contextlib.contextmanager
def clients(server: socket.socket, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections, each complete (in the listener's accept queue) when this yields."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(server.family, socket.SOCK_STREAM)
            made.append(sock)
            sock.settimeout(TIMEOUT_S)
            sock.connect(server.getsockname())
        yield made
    finally:
        for sock in made:
            sock.close()


def unserved_acceptor(loop: asyncio.AbstractEventLoop, *socks: socket.socket) -> Acceptor:
    """An Acceptor as started, but with no server taking the connections: they stay queued."""
    acceptor = Acceptor(loop, asyncio.Protocol, [sock.dup() for sock in socks], 128)
    acceptor.accepting = True
    return acceptor


class Counted(asyncio.Protocol):
    def __init__(self, accepted: list[int], turns: list[int]) -> None:
        self._accepted = accepted
        self._turns = turns

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accepted.append(self._turns[0])  # the loop turn it was accepted in


def test_accept_queue_counts_the_connections_waiting(family: str) -> None:
    with listener(family) as sock:
        assert accept_queue(sock) == 0
        with clients(sock, 3):
            assert accept_queue(sock) == 3


async def _accept_all(sock: socket.socket, *, watch: bool) -> tuple[list[int], Acceptor]:
    """Accept the connections waiting in `sock`'s queue; the loop turn of each accept."""
    loop = asyncio.get_running_loop()
    turns = [0]
    accepted: list[int] = []

    def count_turn() -> None:
        turns[0] += 1  # a callback scheduled by a callback runs in the next turn
        loop.call_soon(count_turn)

    acceptor = Acceptor(loop, lambda: Counted(accepted, turns), [sock.dup()], 128)
    await acceptor.start()
    if watch:
        acceptor.watch_queue(loop.time())
        starting = acceptor._surges[0].task
        assert starting is not None, "a long queue must open the extra servers"
        await starting
    loop.call_soon(count_turn)
    async with asyncio.timeout(TIMEOUT_S):
        while len(accepted) < WAITING:
            await asyncio.sleep(0)
    return accepted, acceptor


def test_a_long_queue_opens_servers_that_accept_several_connections_a_turn(family: str) -> None:
    async def main() -> None:
        with listener(family) as sock, clients(sock, WAITING):
            accepted, acceptor = await _accept_all(sock, watch=True)
            assert len(acceptor.surge) == SURGE_HANDLES - 1
            assert acceptor.serving == SURGE_HANDLES  # the accept_servers gauge
            # One connection per server per turn: the queue empties in a few turns, not one
            # turn per connection.
            turns_taken = accepted[-1] - accepted[0] + 1
            assert turns_taken <= 2 * -(-WAITING // SURGE_HANDLES), accepted
            acceptor.close()

    uvloop.run(main())


def test_the_extra_servers_close_once_no_connection_has_waited_for_a_while(family: str) -> None:
    async def main() -> None:
        with listener(family) as sock, clients(sock, WAITING):
            _, acceptor = await _accept_all(sock, watch=True)
            assert acceptor.surge
            waited_at = acceptor._surges[0].waited_at
            acceptor.watch_queue(waited_at + SURGE_QUIET_S / 2)  # empty queue, not quiet long
            assert acceptor.surge
            acceptor.watch_queue(waited_at + SURGE_QUIET_S)
            assert acceptor.surge == []
            assert len(acceptor.servers) == 1  # the first server goes on accepting
            assert acceptor.serving == 1
            acceptor.close()

    uvloop.run(main())


@pytest.mark.parametrize("waiting", range(SURGE_QUEUE))
def test_a_short_queue_opens_no_extra_server(family: str, waiting: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener(family) as sock, clients(sock, waiting):
            acceptor = unserved_acceptor(loop, sock)
            acceptor.watch_queue(loop.time())
            assert acceptor._surges[0].task is None
            acceptor.close()

    uvloop.run(main())


def test_a_paused_acceptor_closes_its_extra_servers_and_opens_none(family: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener(family) as sock, clients(sock, WAITING):
            _, acceptor = await _accept_all(sock, watch=True)
            assert acceptor.surge
            acceptor.pause()  # connections_max reached
            assert acceptor.surge == [] and acceptor.servers == []
            with clients(sock, SURGE_QUEUE):
                acceptor.watch_queue(loop.time())
                assert acceptor.surge == []
                assert not acceptor._surges[0].starting
            acceptor.close()

    uvloop.run(main())


def test_only_the_listener_with_connections_waiting_gets_extra_servers() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener("tcp") as busy, listener("unix") as quiet, clients(busy, SURGE_QUEUE):
            acceptor = unserved_acceptor(loop, busy, quiet)
            acceptor.watch_queue(loop.time())
            busy_surge, quiet_surge = acceptor._surges
            assert busy_surge.task is not None and quiet_surge.task is None
            await busy_surge.task
            assert len(acceptor.surge) == SURGE_HANDLES - 1
            assert all(server.sockets[0].family == socket.AF_INET for server in acceptor.surge)
            acceptor.close()

    uvloop.run(main())


def test_a_stop_while_the_extra_servers_are_being_made_leaves_none(family: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener(family) as sock, clients(sock, SURGE_QUEUE):
            acceptor = unserved_acceptor(loop, sock)
            acceptor.watch_queue(loop.time())
            task = acceptor._surges[0].task
            assert task is not None
            acceptor.close()  # the graceful stop comes before the task has run
            await task  # neither raises nor leaves a server open
            assert acceptor.surge == []

    uvloop.run(main())


def test_out_of_descriptors_the_listener_goes_on_and_the_surge_waits_to_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener("tcp") as sock, clients(sock, SURGE_QUEUE):
            acceptor = unserved_acceptor(loop, sock)
            surge = acceptor._surges[0]
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            # Room for two more descriptors: the third duplicate of the listener fails (EMFILE).
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 1, hard))
            try:
                acceptor.watch_queue(100.0)
                first = surge.task
                assert first is not None
                await first
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert 0 < len(acceptor.surge) < SURGE_HANDLES - 1  # what could be opened serves
            assert "could not open another server on a listener" in caplog.text
            surge.end()  # as if the queue had gone quiet
            with clients(sock, SURGE_QUEUE):  # and connections waited again
                acceptor.watch_queue(100.0 + SURGE_QUIET_S / 2)
                assert surge.task is first  # no new attempt yet
                acceptor.watch_queue(100.0 + SURGE_QUIET_S)
                assert surge.task is not first  # tries again
                await surge.task
                assert len(acceptor.surge) == SURGE_HANDLES - 1
            acceptor.close()

    uvloop.run(main())


class Arrived(asyncio.Protocol):
    """Sets `event` when a connection is accepted."""

    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._event.set()
        transport.close()


def test_an_acceptor_that_cannot_resume_says_so_and_accepts_once_it_can(
    family: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Paused at connections_max, then resumed when no descriptor is free (the duplicate of the
    listener fails with EMFILE): a warning, no server left half made, and the worker is not
    deaf for good: it tries again and accepts the connection that waited."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        with listener(family) as sock:
            acceptor = Acceptor(loop, lambda: Arrived(arrived), [sock.dup()], 128)
            await acceptor.start()
            acceptor.pause()
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            lowest_free = os.dup(sock.fileno())
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # none free
            try:
                acceptor.resume()
                assert acceptor._starting is not None
                await acceptor._starting
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert not acceptor.accepting and acceptor.servers == []
            assert "could not accept again" in caplog.text
            with clients(sock, 1):
                await asyncio.wait_for(arrived.wait(), RESUME_RETRY_S + TIMEOUT_S)
            assert acceptor.accepting and len(acceptor.servers) == 1
            acceptor.close()

    uvloop.run(main())
