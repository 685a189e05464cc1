"""The floor under hardserve's figures: servers that do nothing but answer, measured like it.

Each variant answers every request with the same 13-byte response, on uvloop, pinned to one
core, with wrk on the other:

- bare: an asyncio Protocol that waits for the end of the head, writes a fixed response and
  closes the connection when the client asked for that. No parsing, no limits, no threads:
  what uvloop and the kernel cost on their own.
- pool: the same, but the response is written by a job handed to hardserve's Pool and back
  (Pool.submit, then Pool.call_in_loop): the one hand-off per request a thread-pool WSGI
  server cannot avoid, with nothing else of hardserve's.
- hardserve: `hardserve bench.apps:hello`, every check on.

Cases: `Connection: close` with 64 connections (the cost of a whole connection), and keep-alive
with 64 and with 1,024 connections. Output: server CPU µs per request (utime + stime of the
process, all threads, from /proc) and req/s, median of the rounds. `make bench` runs it and
bench/report.py renders it in RESULTS.md ("Floor").

    python -m bench.floor [--rounds 3] [--duration 3] [--json]
    python -m bench.floor --serve bare --port 8400   # one variant, in the foreground
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hardserve.worker.main import new_event_loop
from hardserve.worker.pool import Pool

RESPONSE_KEEP = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"
)
RESPONSE_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\n\r\nHello, world!"
)
VARIANTS = ("bare", "pool", "hardserve")
CASES = (("close, 64", 64, True), ("keep-alive, 64", 64, False), ("keep-alive, 1,024", 1024, False))
ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = "0"
CLIENT_CORE = "1"


class Answer(asyncio.Protocol):
    """Answers each head it sees; on the loop (bare) or from a pool thread (pool)."""

    def __init__(self, pool: Pool | None) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.pending = data
                return
            head, data = data[: end + 4], data[end + 4 :]
            close = b"close" in head.lower()
            if self.pool is None:
                self.answer(close)
            else:
                self.pool.submit(self._job(self.pool, close))

    def _job(self, pool: Pool, close: bool) -> Callable[[], None]:
        def job() -> None:  # on a pool thread: straight back to the loop
            pool.call_in_loop(self.answer, close)

        return job

    def answer(self, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.pool is not None:
            self.pool.job_done()
        if close:
            transport.write(RESPONSE_CLOSE)
            transport.close()
        else:
            transport.write(RESPONSE_KEEP)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve(variant: str, port: int) -> None:
    loop = new_event_loop("uvloop")
    asyncio.set_event_loop(loop)
    pool = None
    if variant == "pool":
        pool = Pool(8, 4096)
        pool.start(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: Answer(pool), "127.0.0.1", port, backlog=2048)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(variant: str, port: int) -> subprocess.Popen[bytes]:
    if variant == "hardserve":
        argv = [
            sys.executable, "-m", "hardserve", "bench.apps:hello", "--bind", f"127.0.0.1:{port}",
            "--threads", "8", "--allow-root", "--client-connections-max", "4096",
            "--error-log", "/dev/null",
        ]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "bench.floor", "--serve", variant, "--port", str(port)]
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if probe.recv(100).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{variant} did not start")


def _leaf(pid: int) -> int:
    """The worker: hardserve's master forks one; the floor servers are one process."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[-1]) if children else pid


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, connections: int, close: bool, duration_s: int) -> int:
    argv = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s"]
    if close:
        argv += ["-H", "Connection: close"]
    url = f"http://127.0.0.1:{port}/"
    result = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration_s + 30)
    match = re.search(r"(\d+) requests in", result.stdout)
    if match is None:
        raise RuntimeError(f"wrk printed no count: {result.stdout}{result.stderr}")
    return int(match.group(1))


Samples = dict[tuple[str, str], list[tuple[float, float]]]


def measure(rounds: int, duration_s: int) -> Samples:
    samples: Samples = {}
    for _ in range(rounds):
        for variant in VARIANTS:
            port = _free_port()
            process = _start(variant, port)
            try:
                pid = _leaf(process.pid)
                for case, connections, close in CASES:
                    _wrk(port, connections, close, 1)  # warm-up
                    before = _cpu_s(pid)
                    count = _wrk(port, connections, close, duration_s)
                    spent = _cpu_s(pid) - before
                    sample = (spent / count * 1e6, count / duration_s)
                    samples.setdefault((variant, case), []).append(sample)
            finally:
                process.terminate()
                process.wait(20)
    return samples


def summary(samples: Samples, rounds: int, duration_s: int) -> dict[str, object]:
    """The medians, as bench/report.py reads them."""
    rows = [
        {
            "variant": variant,
            "case": case,
            "cpu_us_per_request": statistics.median(run[0] for run in samples[(variant, case)]),
            "rps": statistics.median(run[1] for run in samples[(variant, case)]),
        }
        for case, _, _ in CASES
        for variant in VARIANTS
    ]
    return {"rounds": rounds, "duration_s": duration_s, "rows": rows}


def table(result: dict[str, object]) -> list[str]:
    rows = result["rows"]
    assert isinstance(rows, list)
    cells = {(row["variant"], row["case"]): row for row in rows}
    lines = [
        "| case | " + " | ".join(f"{v} µs/req | {v} req/s" for v in VARIANTS) + " |",
        "| --- |" + " ---: | ---: |" * len(VARIANTS),
    ]
    for case, _, _ in CASES:
        parts = [
            f"{cells[(v, case)]['cpu_us_per_request']:.1f} | {cells[(v, case)]['rps']:,.0f}"
            for v in VARIANTS
        ]
        lines.append(f"| {case} | " + " | ".join(parts) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=("bare", "pool"))
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    result = summary(measure(args.rounds, args.duration), args.rounds, args.duration)
    print(json.dumps(result) if args.json else "\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
