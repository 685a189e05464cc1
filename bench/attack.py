"""Holds many connections open against a server: slow attackers, or idle keep-alive clients.

    python -m bench.attack slow --port P [--slowloris 1000] [--slow-readers 200]
    python -m bench.attack idle --port P [--count 2000]

Both open their connections from loopback source addresses other than 127.0.0.1 (127.0.0.2,
127.0.0.3, ..., at most --per-address from each), so a per-client cap of the server (hardserve's
client_connections_max, 256 by default) does not simply refuse them and the legitimate load,
from 127.0.0.1, is counted apart. Once every connection has been opened (or --ramp-timeout has
passed) one line `READY {json}` goes to stdout; the connections are then held until standard
input closes, and one line `DONE {json}` follows with what happened meanwhile.

slow: slowloris connections send `GET / HTTP/1.1`, a Host field and the start of a header
line, then one more byte of it every --interval seconds, never ending the head. Slow readers
set a 4 KiB receive buffer, ask for `/big` (16 MiB from bench.apps:attack) and never read a
byte. A connection the server closes is opened again at once, as a real attacker would; the
counts say how often that happened.

idle: each connection sends one `GET /` with keep-alive, reads the whole answer, then stays
open and silent. The driver reads the server's memory between READY and closing stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

TCP_ESTABLISHED = 1
SLOW_READER_RCVBUF = 4096


class Addresses:
    """127.0.0.FIRST, then the next one each time `per_address` connections have taken one."""

    def __init__(self, first: int, per_address: int) -> None:
        self.first = first
        self.per_address = per_address
        self.index = 0

    def next(self) -> str:
        address = f"127.0.0.{self.first + self.index // self.per_address}"
        self.index += 1
        return address


async def _connect(port: int, source: str, rcvbuf: int | None = None) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if rcvbuf is not None:
            # Before connect, so the window the client advertises stays this small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_state(sock: socket.socket) -> int:
    # struct tcp_info starts with the one-byte tcpi_state.
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(struct.unpack("B", info[:1])[0])


class Slow:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats: Counter[str] = Counter()
        self.open = {"slowloris": 0, "slow_reader": 0}
        self.opened_once = 0
        self.stopping = asyncio.Event()
        self.connect_gate = asyncio.Semaphore(args.connect_concurrency)

    async def _open(self, kind: str, source: str, rcvbuf: int | None) -> socket.socket | None:
        async with self.connect_gate:
            try:
                sock = await _connect(self.args.port, source, rcvbuf)
            except (OSError, TimeoutError):
                self.stats[f"{kind}_connect_failed"] += 1
                await asyncio.sleep(0.5)
                return None
        self.stats[f"{kind}_connects"] += 1
        self.open[kind] += 1
        return sock

    async def slowloris(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self.stopping.is_set():
            sock = await self._open("slowloris", source, None)
            if sock is None:
                continue
            if first:
                self.opened_once += 1
                first = False
            try:
                await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slowloris: ")
                # Spread the trickle so the bytes do not all arrive in the same instant.
                await asyncio.sleep(random.uniform(0, self.args.interval))
                while not self.stopping.is_set():
                    await loop.sock_sendall(sock, b"a")
                    self.stats["slowloris_bytes"] += 1
                    try:
                        await asyncio.wait_for(loop.sock_recv(sock, 4096), self.args.interval)
                    except TimeoutError:
                        continue
                    # The server answered (408 and the like) or closed: open a new one.
                    self.stats["slowloris_closed_by_server"] += 1
                    break
            except OSError:
                self.stats["slowloris_closed_by_server"] += 1
            finally:
                self.open["slowloris"] -= 1
                sock.close()

    async def slow_reader(self, source: str) -> None:
        first = True
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            sock = await self._open("slow_reader", source, SLOW_READER_RCVBUF)
            if sock is None:
                continue
            if first:
                self.opened_once += 1
                first = False
            try:
                request = f"GET /big?mib={self.args.mib} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                await loop.sock_sendall(sock, request.encode())
                # Never read; look at the TCP state now and then to see if the server gave up.
                while not self.stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.args.interval)
                    if _tcp_state(sock) != TCP_ESTABLISHED:
                        self.stats["slow_reader_closed_by_server"] += 1
                        break
            except OSError:
                self.stats["slow_reader_closed_by_server"] += 1
            finally:
                self.open["slow_reader"] -= 1
                sock.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "open_slowloris": self.open["slowloris"],
            "open_slow_readers": self.open["slow_reader"],
            "opened_once": self.opened_once,
            **dict(self.stats),
        }


async def run_slow(args: argparse.Namespace) -> None:
    slow = Slow(args)
    addresses = Addresses(args.first_address, args.per_address)
    tasks = [asyncio.create_task(slow.slowloris(addresses.next())) for _ in range(args.slowloris)]
    # Slow readers start on a fresh address, so the two kinds can be told apart in server logs.
    if addresses.index % args.per_address:
        addresses.index += args.per_address - addresses.index % args.per_address
    tasks += [
        asyncio.create_task(slow.slow_reader(addresses.next())) for _ in range(args.slow_readers)
    ]
    started = time.monotonic()
    target = args.slowloris + args.slow_readers
    while slow.opened_once < target and time.monotonic() - started < args.ramp_timeout:
        await asyncio.sleep(0.05)
    # Let the slow readers' requests reach the server and fill their windows.
    await asyncio.sleep(args.settle)
    _emit("READY", slow.snapshot() | {"ramp_s": round(time.monotonic() - started, 2)})
    await _stdin_closed()
    _emit("DONE", slow.snapshot())
    slow.stopping.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _read_response(sock: socket.socket) -> bool:
    """Reads one answer with a Content-Length body; False if the connection ended first."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return False
        rest += chunk
    return head.startswith(b"HTTP/1.1 200")


async def run_idle(args: argparse.Namespace) -> None:
    addresses = Addresses(args.first_address, args.per_address)
    gate = asyncio.Semaphore(args.connect_concurrency)
    loop = asyncio.get_running_loop()
    stats: Counter[str] = Counter()
    socks: list[socket.socket] = []

    async def one(source: str) -> None:
        async with gate:
            try:
                sock = await _connect(args.port, source)
            except (OSError, TimeoutError):
                stats["connect_failed"] += 1
                return
            try:
                await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                ok = await asyncio.wait_for(_read_response(sock), 10)
            except (OSError, TimeoutError, ValueError):
                ok = False
            stats["answered" if ok else "unanswered"] += 1
            socks.append(sock)

    started = time.monotonic()
    await asyncio.gather(*(one(addresses.next()) for _ in range(args.count)))
    # A moment for the server to finish the bookkeeping of the last answers.
    await asyncio.sleep(args.settle)
    # The connections the server still holds when its memory is read (a server without an
    # idle timeout setting may have closed some already).
    open_now = sum(_tcp_state(sock) == TCP_ESTABLISHED for sock in socks)
    _emit(
        "READY",
        dict(stats) | {"ramp_s": round(time.monotonic() - started, 2), "open": open_now},
    )
    await _stdin_closed()
    still_open = sum(_tcp_state(sock) == TCP_ESTABLISHED for sock in socks)
    _emit("DONE", dict(stats) | {"still_open": still_open})
    for sock in socks:
        sock.close()


def _emit(tag: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


async def _stdin_closed() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    slow = sub.add_parser("slow", help="slowloris and slow-reader connections")
    slow.add_argument("--slowloris", type=int, default=1000)
    slow.add_argument("--slow-readers", type=int, default=200)
    slow.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    slow.add_argument("--settle", type=float, default=1.0)
    slow.add_argument("--mib", type=int, default=16, help="size of the response slow readers ask")
    idle = sub.add_parser("idle", help="idle keep-alive connections, one request each")
    idle.add_argument("--count", type=int, default=2000)
    idle.add_argument("--settle", type=float, default=0.3)
    for p in (slow, idle):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--first-address", type=int, default=2, help="127.0.0.N to start from")
        p.add_argument("--per-address", type=int, default=200)
        p.add_argument("--connect-concurrency", type=int, default=64)
        p.add_argument("--ramp-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    asyncio.run(run_slow(args) if args.command == "slow" else run_idle(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
