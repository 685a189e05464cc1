"""Instructions and simulated cache misses per request of one hardserve worker, under callgrind.

The timings of this shared machine move by more than the changes worth making to the request
path (bench/NOTES.md, "thirteenth look"); instruction counts and a simulated cache do not. The
worker runs under `valgrind --tool=callgrind --cache-sim=yes` with the core's own caches (48 KiB
L1 data, 1 MiB L2 as the simulated last level), pinned to core 0, wrk on core 1, hello with
keep-alive:

- instrumentation is switched on after a warm-up (`callgrind_control -i on`), so the start of
  the process is not counted;
- at each connection count, two windows are recorded (8 s and 24 s of wrk, each after its own
  warm-up): the figures per request are the difference between them over the difference in
  requests, so the requests wrk leaves in flight at the end of a window cancel out.

Under callgrind a worker serves about 350 requests a second instead of 45,000: whatever runs
once a second (the walk over all connections for overdue requests, the idle timers) weighs
over a hundred times more per request than at full speed. Compare versions with each other,
not with the timings. Two runs of one version agree to about 1 %.

    python -m bench.cachemodel [--src DIR] [--connections 1024 64] [--top 25] [-- SERVER ARGS]

`--src` runs another copy of hardserve's sources (a directory holding `hardserve/`), for an A/B.
Needs valgrind (`apt-get install valgrind`). About 2 minutes per connection count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench import BENCH, ROOT, free_port, stop_process

VENV_BIN = BENCH / ".venv" / "bin"
CACHES = ("--I1=32768,8,64", "--D1=49152,12,64", "--LL=1048576,16,64")
WINDOWS_S = (8, 24)
SHOWN = ("Ir", "DLmr", "DLmw")


def _wrk(port: int, connections: int, duration_s: int) -> int:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s"]
    argv += ["-s", str(BENCH / "report.lua"), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
    return int(json.loads(line.removeprefix("BENCH_JSON "))["requests"])


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


def _worker_pid(master: int, deadline_s: float) -> int:
    """The worker: the master's child (valgrind runs the master, and follows its fork)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[-1])
        time.sleep(0.5)
    raise RuntimeError("no worker process appeared")


def _wait_ready(port: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-m", "2", f"http://127.0.0.1:{port}/"], check=False
        )
        if done.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError("the server did not answer under valgrind")


def _annotate(path: Path) -> dict[str, list[int]]:
    """Per function (file:function), the events of SHOWN, from callgrind_annotate."""
    out = subprocess.run(
        ["callgrind_annotate", f"--show={','.join(SHOWN)}", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    number = r"([\d,]+|\.)\s*(?:\([^)]*\))?\s+"
    row = re.compile(r"\s*" + number * len(SHOWN) + r"(\S+)")
    table: dict[str, list[int]] = {}
    for line in out.splitlines():
        match = row.match(line)
        if match is None or ":" not in match.group(len(SHOWN) + 1):
            continue
        name = match.group(len(SHOWN) + 1).split(":", 1)[1]
        counts = [0 if text == "." else int(text.replace(",", "")) for text in match.groups()[:-1]]
        total = table.setdefault(name, [0] * len(SHOWN))
        for index, count in enumerate(counts):
            total[index] += count
    return table


def _totals(path: Path) -> dict[str, int]:
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            return dict(zip(events, (int(x) for x in line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {path}")


def measure(src: Path | None, counts: list[int], server_args: list[str], out: Path) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(src)) if src is not None else dict(os.environ)
    argv = ["taskset", "-c", "0", "valgrind", "--tool=callgrind", "--trace-children=yes"]
    argv += ["--instr-atstart=no", "--cache-sim=yes", *CACHES]
    argv += [f"--callgrind-out-file={out}/callgrind.%p.out"]
    argv += [str(VENV_BIN / "python"), str(VENV_BIN / "hardserve"), "bench.apps:hello"]
    argv += ["--bind", f"127.0.0.1:{port}", "--threads", "8", "--allow-root"]
    argv += ["--client-connections-max", "2048", "--error-log", "/dev/null", *server_args]
    with (out / "server.log").open("wb") as log:
        master = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
    result: dict[str, dict] = {}
    try:
        _wait_ready(port, 300)
        worker = _worker_pid(master.pid, 60)
        _wrk(port, max(counts), 15)  # warm-up, not instrumented
        _control(worker, "-i", "on")
        for connections in counts:
            windows = []
            for window_s in WINDOWS_S:
                _wrk(port, connections, 4)
                time.sleep(3)
                _control(worker, "--zero")
                requests = _wrk(port, connections, window_s)
                time.sleep(3)  # what wrk left in flight ends inside the window
                _control(worker, f"--dump=c{connections}-w{window_s}")
                time.sleep(1)
                dumps = sorted(out.glob(f"callgrind.{worker}.out.*"), key=os.path.getmtime)
                windows.append((requests, dumps[-1]))
            (short_n, short_path), (long_n, long_path) = windows
            served = long_n - short_n
            short_totals, long_totals = _totals(short_path), _totals(long_path)
            short_fns, long_fns = _annotate(short_path), _annotate(long_path)
            zero = [0] * len(SHOWN)
            result[str(connections)] = {
                "requests": served,
                "per_request": {
                    event: (long_totals[event] - short_totals[event]) / served
                    for event in long_totals
                },
                "functions": {
                    name: [
                        (long_fns.get(name, zero)[i] - short_fns.get(name, zero)[i]) / served
                        for i in range(len(SHOWN))
                    ]
                    for name in set(short_fns) | set(long_fns)
                },
            }
    finally:
        stop_process(master, 60)  # valgrind's workers take a while to write their last dump
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, help="a directory holding hardserve/ to run instead")
    parser.add_argument("--connections", type=int, nargs="+", default=[1024, 64])
    parser.add_argument("--top", type=int, default=20, help="functions shown, by LL misses")
    parser.add_argument("--json", type=Path, help="write the whole result here")
    parser.add_argument("server_args", nargs="*", help="more hardserve options, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cachemodel-") as tmp:
        result = measure(args.src, args.connections, args.server_args, Path(tmp))
    for connections, figures in result.items():
        per_request = figures["per_request"]
        misses = per_request.get("DLmr", 0.0) + per_request.get("DLmw", 0.0)
        print(
            f"{connections} connections, {figures['requests']} requests: "
            f"{per_request['Ir']:,.0f} instructions and {misses:.1f} L2 (simulated) data misses "
            f"per request"
        )
        ranked = sorted(figures["functions"].items(), key=lambda item: -(item[1][1] + item[1][2]))
        for name, (instructions, read_misses, write_misses) in ranked[: args.top]:
            print(f"  {instructions:9.0f} Ir {read_misses + write_misses:6.1f} misses  {name[:70]}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
