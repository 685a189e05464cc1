"""A small load generator, run as its own process: `python -m tests.apps_cli.loadgen PORT
THREADS PATH`. Each thread sends GET PATH?id=... one after another on a keep-alive connection
(a new one every REQUESTS_PER_CONNECTION requests), until a line arrives on stdin; then it
prints one JSON object per attempt on stdout.

It behaves as a careful HTTP client does with a connection the server may close between
requests: before reusing a connection it checks that the server has not closed it (then it
opens a new one; nothing was sent, nothing is recorded). A request answered by nothing at all
(the connection closed or reset before any byte of a response) is recorded as "unanswered" and
sent again, with a new id, on a new connection; the test then checks in the access log that
the server never read it (an unanswered request the server did read is a failure). Anything
else (part of a response, a timeout, a status other than 200) is "failed".

Fields: id, outcome ("ok", "unanswered", "failed"), start and end (time.monotonic(), the same
clock as the test's on Linux), pid (the worker that answered, or of the connection's earlier
answers, 0 if none), reused (the connection had answered before), detail.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import sys
import threading
import time

REQUESTS_PER_CONNECTION = 20
SOCKET_TIMEOUT_S = 5.0


def _dropped(connection: http.client.HTTPConnection) -> bool:
    sock = connection.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def run(
    port: int, path: str, name: str, stop: threading.Event, out: list[dict[str, object]]
) -> None:
    connection: http.client.HTTPConnection | None = None
    served = 0
    conn_pid = 0
    number = 0
    while not stop.is_set():
        if connection is not None and (served >= REQUESTS_PER_CONNECTION or _dropped(connection)):
            connection.close()
            connection = None
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_TIMEOUT_S)
            served = 0
            conn_pid = 0
        number += 1
        record: dict[str, object] = {
            "id": f"{name}-{number}",
            "start": time.monotonic(),
            "reused": served > 0,
            "pid": conn_pid,
        }
        separator = "&" if "?" in path else "?"
        got_status = False
        try:
            connection.request("GET", f"{path}{separator}id={record['id']}")
            response = connection.getresponse()
            got_status = True
            response.read()
            record["pid"] = conn_pid = int(response.getheader("X-Worker-Pid") or 0)
            record["outcome"] = "ok" if response.status == 200 else "failed"
            record["detail"] = str(response.status)
            served += 1
            if response.will_close:
                connection.close()
                connection = None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            # RemoteDisconnected: the connection closed before a status line.
            record["outcome"] = "failed" if got_status else "unanswered"
            record["detail"] = repr(exc)
            connection.close()
            connection = None
        except (OSError, http.client.HTTPException) as exc:
            record["outcome"] = "failed"
            record["detail"] = repr(exc)
            connection.close()
            connection = None
        record["end"] = time.monotonic()
        out.append(record)
    if connection is not None:
        connection.close()


def main() -> None:
    port, threads, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    stop = threading.Event()
    records: list[list[dict[str, object]]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(target=run, args=(port, path, f"t{i}", stop, records[i]), daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    print("started", flush=True)
    sys.stdin.readline()
    stop.set()
    for worker in workers:
        worker.join(SOCKET_TIMEOUT_S * 2)
    for per_thread in records:
        for record in per_thread:
            print(json.dumps(record))


if __name__ == "__main__":
    main()
