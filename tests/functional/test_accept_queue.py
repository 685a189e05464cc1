"""A long accept queue: the worker's Acceptor opens more servers on the same listening socket
while connections wait, so that more than one is accepted per loop turn, and closes them once
none has waited for a while. On real sockets and a real uvloop loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest
import uvloop

from hardserve.worker.server import (
    SURGE_HANDLES,
    SURGE_QUEUE,
    SURGE_QUIET_S,
    Acceptor,
    accept_queue,
)
from tests.helpers import TIMEOUT_S

WAITING = 24  # connections made before the worker accepts any


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections, each complete (in the listener's accept queue) when this yields."""
    made = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in range(count)]
    try:
        yield made
    finally:
        for sock in made:
            sock.close()


class Counted(asyncio.Protocol):
    def __init__(self, accepted: list[int], turns: list[int]) -> None:
        self._accepted = accepted
        self._turns = turns

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accepted.append(self._turns[0])  # the loop turn it was accepted in


def test_accept_queue_counts_the_connections_waiting() -> None:
    with listener() as sock:
        assert accept_queue(sock) == 0
        with clients(sock.getsockname()[1], 3):
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
        starting = acceptor._surge_starting
        assert starting is not None, "a long queue must open the extra servers"
        await starting
    loop.call_soon(count_turn)
    async with asyncio.timeout(TIMEOUT_S):
        while len(accepted) < WAITING:
            await asyncio.sleep(0)
    return accepted, acceptor


def test_a_long_queue_opens_servers_that_accept_several_connections_a_turn() -> None:
    async def main() -> None:
        with listener() as sock, clients(sock.getsockname()[1], WAITING):
            accepted, acceptor = await _accept_all(sock, watch=True)
            assert len(acceptor.surge) == SURGE_HANDLES - 1
            # One connection per server per turn: the queue empties in a few turns, not one
            # turn per connection.
            turns_taken = accepted[-1] - accepted[0] + 1
            assert turns_taken <= 2 * -(-WAITING // SURGE_HANDLES), accepted
            acceptor.close()

    uvloop.run(main())


def test_the_extra_servers_close_once_no_connection_has_waited_for_a_while() -> None:
    async def main() -> None:
        with listener() as sock, clients(sock.getsockname()[1], WAITING):
            _, acceptor = await _accept_all(sock, watch=True)
            assert acceptor.surge
            waited_at = acceptor._waited_at
            acceptor.watch_queue(waited_at + SURGE_QUIET_S / 2)  # empty queue, not quiet long
            assert acceptor.surge
            acceptor.watch_queue(waited_at + SURGE_QUIET_S)
            assert acceptor.surge == []
            assert len(acceptor.servers) == 1  # the first server goes on accepting
            acceptor.close()

    uvloop.run(main())


@pytest.mark.parametrize("waiting", range(SURGE_QUEUE))
def test_a_short_queue_opens_no_extra_server(waiting: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as sock, clients(sock.getsockname()[1], waiting):
            acceptor = Acceptor(loop, asyncio.Protocol, [sock.dup()], 128)
            acceptor.accepting = True  # as started, without a server taking the connections
            acceptor.watch_queue(loop.time())
            assert acceptor._surge_starting is None
            acceptor.close()

    uvloop.run(main())


def test_a_paused_acceptor_closes_its_extra_servers_and_opens_none() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as sock, clients(sock.getsockname()[1], WAITING):
            _, acceptor = await _accept_all(sock, watch=True)
            assert acceptor.surge
            acceptor.pause()  # connections_max reached
            assert acceptor.surge == [] and acceptor.servers == []
            with clients(sock.getsockname()[1], SURGE_QUEUE):
                acceptor.watch_queue(loop.time())
                assert acceptor.surge == []
                assert acceptor._surge_starting is None or acceptor._surge_starting.done()
            acceptor.close()

    uvloop.run(main())
