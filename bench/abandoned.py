"""Reproduces 503s below the pool limit: requests whose clients hung up still hold pool slots.

64 clients each send one request to a slow app and hang up at once; then 64 new clients each
send one. Against `hardserve bench.apps:sleep --threads 8` (limit 8 threads + 64 queued = 72)
the second wave should all get 200, since no more than 64 clients are ever connected.

    hardserve bench.apps:sleep --bind 127.0.0.1:8100 --threads 8 &
    python -m bench.abandoned --port 8100            # the first wave closes with FIN
    python -m bench.abandoned --port 8100 --reset    # ... with RST

Prints the status lines of the second wave, e.g. {'HTTP/1.1 200 OK': 64}.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def wave(port: int, clients: int) -> list[socket.socket]:
    sockets = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(REQUEST)
        sockets.append(sock)
    return sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--reset",
        action="store_true",
        help="hang up with a TCP reset instead of a FIN (a half-close, which HTTP allows)",
    )
    args = parser.parse_args(argv)
    for sock in wave(args.port, args.clients):
        if args.reset:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # gone before the answer: the request stays queued in the server
    statuses: dict[str, int] = {}
    for sock in wave(args.port, args.clients):
        with sock, sock.makefile("rb") as reader:
            line = reader.readline().decode("latin-1").strip()
        statuses[line] = statuses.get(line, 0) + 1
    print(statuses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
