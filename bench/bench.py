"""Side-by-side load benchmark of hardserve, gunicorn (gthread), waitress and granian.

Each round starts every server once per app, one after the other, and loads it with wrk in
both connection modes (the matrix); then come interleaved pairs of hardserve and granian on
1 MiB responses and streams (bench/versus.py) and the scenarios of issue 7 (bench/scenarios.py:
1,024 connections, two workers, idle memory, slowloris and slow readers). The medians over
the rounds go to bench/RESULTS.md, bench/results.png and bench/goals.png, every single run to
bench/out/results-*.json. Run through bench/run.sh, which installs the tools;
`python -m bench.bench --help` lists the options.

The server runs on core 0 and wrk on core 1, so neither steals the other's CPU. Server CPU is
read from /proc (utime + stime of the server's whole process tree) around each measured wrk
run and divided by the requests wrk completed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
# The servers are the console scripts of the interpreter running this driver (bench/.venv).
BIN = Path(sys.executable).parent

SERVERS = ("hardserve", "gunicorn", "waitress", "granian")
PEERS = ("gunicorn", "waitress", "granian")
APPS = ("hello", "json", "echo", "big", "stream", "fresh", "sleep")
MODES = ("keep-alive", "close")
SERVER_CORE = "0"
CLIENT_CORE = "1"
THREADS = 8
CONNECTIONS = 64
ECHO_BYTES = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")

_LOG_ERROR = re.compile(r"Traceback|\b(ERROR|CRITICAL|Exception|Error)\b")
_LOG_WARNING = re.compile(r"\bWARNING\b")


# -- the servers ---------------------------------------------------------------------------


def server_argv(
    server: str, app: str, port: int | str, extra: tuple[str, ...] = (), workers: int = 1
) -> list[str]:
    """The server's command line, as documented in RESULTS.md (without the core pinning).

    `extra` is appended (the scenarios raise connection limits and timeouts with it);
    `workers` is the number of worker processes, for the servers that have them.
    """
    spec = f"bench.apps:{app}"
    bind = f"127.0.0.1:{port}"
    if server == "hardserve":
        argv = ["hardserve", spec, "--bind", bind, "--threads", str(THREADS)]
        if workers != 1:
            argv += ["--workers", str(workers)]
        # hardserve refuses to run as root unless told to; the peers do not ask.
        argv += ["--allow-root"] if os.geteuid() == 0 else []
    elif server == "gunicorn":
        argv = ["gunicorn", "-w", str(workers), "-k", "gthread", "--threads", str(THREADS)]
        argv += [spec, "-b", bind]
    elif server == "gunicorn-sync":
        argv = ["gunicorn", "-w", str(workers), "-k", "sync", spec, "-b", bind]
    elif server == "waitress":
        # waitress-serve takes its options before the app only.
        return ["waitress-serve", f"--threads={THREADS}", f"--listen={bind}", *extra, spec]
    elif server == "granian":
        host, _, port_text = bind.rpartition(":")
        argv = ["granian", "--interface", "wsgi", "--http", "1", "--no-ws"]
        argv += ["--workers", str(workers), "--blocking-threads", str(THREADS)]
        argv += ["--host", host, "--port", port_text, spec]
    else:
        raise ValueError(server)
    return [*argv, *extra]


def wrk_argv(mode: str, app: str, duration_s: int, url: str) -> list[str]:
    script = "echo.lua" if app == "echo" else "report.lua"
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--timeout", "5s"]
    argv += ["-s", str(BENCH / script)]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One server process, pinned to the server core, its stderr in a log file.

    `cores` is the taskset core list, or None for no pinning (the two-worker scenario).
    """

    def __init__(
        self,
        server: str,
        app: str,
        log_path: Path,
        env: dict[str, str],
        extra: tuple[str, ...] = (),
        workers: int = 1,
        cores: str | None = SERVER_CORE,
    ) -> None:
        self.name = server
        self.app = app
        self.port = free_port()
        self.log_path = log_path
        argv = server_argv(server, app, self.port, extra, workers)
        argv[0] = str(BIN / argv[0])
        pinning = ["taskset", "-c", cores] if cores is not None else []
        with log_path.open("wb") as log:
            # Run from the project root so `bench.apps` imports in every server.
            self.process = subprocess.Popen(
                [*pinning, *argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not accept on port {self.port} in {timeout_s:g} s")

    def cpu_ticks(self) -> int:
        return tree_cpu_ticks(self.process.pid)

    def system_ticks(self) -> int:
        """The kernel's part of cpu_ticks."""
        return tree_cpu_ticks(self.process.pid, SYSTEM_FIELDS)

    def worker_memory(self) -> dict[str, int]:
        """Resident memory of the worker processes (KiB): summed, and the largest of each."""
        return worker_memory(self.process.pid)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit status (None if it had to be killed)."""
        return stop_process(self.process, 15)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit status (None if it had to be killed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    # The list starts at field 3 (state), so field N of proc(5) is fields[N - 3].
    return text[text.rindex(")") + 2 :].split()


# Fields of /proc/PID/stat (proc(5) numbering): utime, stime, cutime, cstime; and the kernel's
# part alone, stime and cstime.
CPU_FIELDS = (14, 15, 16, 17)
SYSTEM_FIELDS = (15, 17)


def tree_cpu_ticks(root: int, fields: tuple[int, ...] = CPU_FIELDS) -> int:
    """utime + stime of root and all its descendants, in clock ticks (with SYSTEM_FIELDS, the
    kernel's part only).

    A process's stat counts all its threads, dead ones included. cutime + cstime add children
    that already exited and were reaped (a restarted gunicorn worker), which the walk over
    live processes cannot see.
    """
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        entry_stat = _stat_fields(int(entry))
        if entry_stat is None:
            continue
        stats[int(entry)] = entry_stat
        children.setdefault(int(entry_stat[1]), []).append(int(entry))
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        stat = stats.get(pid)
        if stat is None:
            continue
        total += sum(int(stat[n - 3]) for n in fields)
        todo.extend(children.get(pid, ()))
    return total


def process_tree(root: int) -> dict[int, list[int]]:
    """Children of each process under root (root included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree: dict[int, list[int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        tree[pid] = children.get(pid, [])
        todo.extend(tree[pid])
    return tree


def worker_pids(root: int) -> list[int]:
    """The processes that serve: the leaves of the server's tree (a master has children).

    hardserve, gunicorn and granian run a master with one child per worker; waitress is one
    process, its own worker.
    """
    tree = process_tree(root)
    return [pid for pid, kids in tree.items() if not kids] or [root]


def _status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_memory(root: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS since the process started) of the workers, in KiB."""
    pids = worker_pids(root)
    rss = [_status_kib(pid, "VmRSS") for pid in pids]
    hwm = [_status_kib(pid, "VmHWM") for pid in pids]
    return {
        "workers": len(pids),
        "rss_kib": sum(rss),
        "rss_max_kib": max(rss, default=0),
        "hwm_max_kib": max(hwm, default=0),
    }


def core_ticks() -> dict[str, tuple[int, int, int]]:
    """Per core from /proc/stat: (busy, total, steal) clock ticks since boot."""
    cores: dict[str, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal; guest time is already in user.
        ticks = [int(v) for v in values[:8]]
        total = sum(ticks)
        cores[name.removeprefix("cpu")] = (total - ticks[3] - ticks[4], total, ticks[7])
    return cores


def sanity_check(server: Server) -> dict[str, Any]:
    """One request before the load: status, framing headers and body size, for the record."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        if server.app == "echo":
            payload = b"e" * ECHO_BYTES
            conn.request("POST", "/", body=payload)
        else:
            payload = b""
            conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return {
        "status": response.status,
        "body_bytes": len(body),
        "content_length": response.getheader("Content-Length"),
        "transfer_encoding": response.getheader("Transfer-Encoding"),
        "connection": response.getheader("Connection"),
        "echo_matches": body == payload if server.app == "echo" else None,
    }


# -- one measured load -----------------------------------------------------------------------


@dataclass
class Run:
    round: int
    server: str
    app: str
    mode: str
    # Every response wrk read, and those with a status below 400: req/s and CPU per request
    # count only the latter, so a server gains nothing by refusing requests.
    requests: int
    ok_requests: int
    duration_s: float
    cpu_s: float
    client_cpu_s: float
    # Busy share of the server's core while measuring, and the part of it that was not the
    # server: other processes on a shared machine, which the medians over rounds damp.
    server_core_busy: float
    server_core_foreign: float
    server_core_steal: float
    errors: dict[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    wrk_command: list[str] = field(default_factory=list)
    # The workers' memory after the load: VmHWM is the peak since the process started (the
    # warm-up and earlier loads of the same process included), in KiB.
    worker_rss_kib: int = 0
    worker_hwm_kib: int = 0
    # The kernel's part of cpu_s: a 1 MiB response's cost is mostly the kernel's copy, which
    # some periods of the host make up to three times dearer for every server (NOTES.md).
    system_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok_requests / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.ok_requests if self.ok_requests else float("nan")

    @property
    def system_us_per_request(self) -> float:
        return self.system_cpu_s * 1e6 / self.ok_requests if self.ok_requests else float("nan")

    def record(self) -> dict[str, Any]:
        """The run as it goes into the raw JSON, with its per-request figures."""
        return asdict(self) | {
            "rps": self.rps,
            "cpu_us_per_request": self.cpu_us_per_request,
            "system_us_per_request": self.system_us_per_request,
        }


def run_wrk(
    argv: list[str], cores: str | None = CLIENT_CORE, timeout_s: float | None = None
) -> tuple[dict[str, int], float]:
    """Runs wrk on the client core (None: anywhere); its JSON summary and its CPU seconds.

    With timeout_s, a wrk still running after it is killed and RuntimeError raised: a wrk
    whose connections wait in a full backlog retries its SYNs for minutes before it gives up.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pinning = ["taskset", "-c", cores] if cores is not None else []
    try:
        completed = subprocess.run(
            [*pinning, *argv], capture_output=True, text=True, check=False, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"wrk did not finish in {timeout_s:g} s (no connection served)") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary: dict[str, int] = json.loads(line.removeprefix("BENCH_JSON "))
    return summary, client_cpu


def settle(server: Server, enabled: bool) -> None:
    """Wait until the server's CPU goes quiet after a load (at most 3 s).

    When wrk stops it hangs up with requests still queued in the server; the work those leave
    behind must not be billed to the next measured load, nor crowd its first requests.
    """
    if not enabled:
        return
    deadline = time.monotonic() + 3.0
    time.sleep(0.1)
    while time.monotonic() < deadline:
        before = server.cpu_ticks()
        time.sleep(0.1)
        # One tick in 100 ms (10 %) allows for idle timers, gunicorn's master among them.
        if server.cpu_ticks() - before <= 1:
            return


def measure(
    server: Server, mode: str, round_no: int, duration_s: int, warmup_s: int, settling: bool
) -> Run:
    settle(server, settling)
    if warmup_s:
        run_wrk(wrk_argv(mode, server.app, warmup_s, server.url))
        settle(server, settling)
    argv = wrk_argv(mode, server.app, duration_s, server.url)
    cores_before = core_ticks()
    before, system_before = server.cpu_ticks(), server.system_ticks()
    summary, client_cpu = run_wrk(argv)
    after, system_after = server.cpu_ticks(), server.system_ticks()
    cores_after = core_ticks()
    memory = server.worker_memory()
    busy0, total0, steal0 = cores_before[SERVER_CORE]
    busy1, total1, steal1 = cores_after[SERVER_CORE]
    core_total = max(total1 - total0, 1)
    core_busy = (busy1 - busy0) / core_total
    errors = {kind: summary[f"{kind}_errors"] for kind in ("connect", "read", "write", "timeout")}
    # wrk's "status" errors are responses with a status of 400 or more.
    errors["non_2xx"] = summary["status_errors"]
    return Run(
        round=round_no,
        server=server.name,
        app=server.app,
        mode=mode,
        requests=summary["requests"],
        ok_requests=summary["requests"] - summary["status_errors"],
        duration_s=summary["duration_us"] / 1e6,
        cpu_s=(after - before) / CLK_TCK,
        client_cpu_s=client_cpu,
        server_core_busy=core_busy,
        server_core_foreign=max(core_busy - (after - before) / core_total, 0.0),
        server_core_steal=(steal1 - steal0) / core_total,
        errors=errors,
        latency_p50_ms=summary["latency_p50_us"] / 1000,
        latency_p99_ms=summary["latency_p99_us"] / 1000,
        wrk_command=["taskset", "-c", CLIENT_CORE, *argv],
        worker_rss_kib=memory["rss_max_kib"],
        worker_hwm_kib=memory["hwm_max_kib"],
        system_cpu_s=(system_after - system_before) / CLK_TCK,
    )


def src_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_sources(stamp: str) -> Path:
    """Copies src/hardserve as it is now; the run's hardserve processes import this copy.

    The install is editable, and src/ may change while a run goes on (a rebase, an edit in
    another terminal); every round must measure the same code. The copy includes uncommitted
    changes, so `make bench` still measures the working tree.
    """
    target = OUT / f"src-{stamp}"
    shutil.copytree(
        ROOT / "src" / "hardserve",
        target / "hardserve",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


def scan_log(path: Path) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines()
    errors = [ln for ln in lines if _LOG_ERROR.search(ln)]
    warnings = [ln for ln in lines if _LOG_WARNING.search(ln)]
    return {
        "lines": len(lines),
        "error_lines": len(errors),
        "warning_lines": len(warnings),
        "first_errors": errors[:5],
        "first_warnings": warnings[:3],
    }


# -- the matrix --------------------------------------------------------------------------------


@dataclass
class Options:
    rounds: int
    duration_s: int
    warmup_s: int
    apps: tuple[str, ...]
    servers: tuple[str, ...]
    skip_handoff: bool
    skip_floor: bool
    quick: bool
    settle: bool
    report: bool
    # "matrix" (the apps x servers x modes above) and the names of bench/scenarios.py.
    scenarios: tuple[str, ...] = ()


SCENARIO_NAMES = ("matrix", "versus", "concurrency", "workers", "memory", "attack", "crowded")


def run_matrix(
    options: Options, stamp: str, hardserve_env: dict[str, str]
) -> tuple[list[Run], list[dict[str, Any]]]:
    logs_dir = OUT / f"logs-{stamp}"
    logs_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    processes: list[dict[str, Any]] = []
    for round_no in range(1, options.rounds + 1):
        for app in options.apps:
            # Servers alternate within each case, so a drift of the machine hits all alike.
            for name in options.servers:
                log_path = logs_dir / f"{name}-{app}-r{round_no}.log"
                env = hardserve_env if name == "hardserve" else dict(os.environ)
                server = Server(name, app, log_path, env)
                record: dict[str, Any] = {"round": round_no, "server": name, "app": app}
                try:
                    server.wait_ready()
                    record["sanity"] = sanity_check(server)
                    for mode in MODES:
                        run = measure(
                            server,
                            mode,
                            round_no,
                            options.duration_s,
                            options.warmup_s,
                            options.settle,
                        )
                        runs.append(run)
                        print(
                            f"round {round_no} {app:6} {mode:10} {name:9} "
                            f"{run.rps:9.0f} req/s {run.cpu_us_per_request:8.1f} µs/req "
                            f"errors {sum(run.errors.values())} "
                            f"(others on core {SERVER_CORE}: {run.server_core_foreign:.0%})",
                            flush=True,
                        )
                    record["alive_after_load"] = server.process.poll() is None
                except (RuntimeError, OSError, http.client.HTTPException) as exc:
                    record["failure"] = f"{type(exc).__name__}: {exc}"
                    print(f"round {round_no} {app} {name}: FAILED {exc}", flush=True)
                finally:
                    record["exit_status"] = server.stop()
                    record["log"] = str(log_path.relative_to(BENCH))
                    record.update(scan_log(log_path))
                    processes.append(record)
    return runs, processes


def run_handoff(quick: bool, hardserve_env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.handoff", "--json"]
    if quick:
        argv += ["--repeats", "3"]
    completed = subprocess.run(
        ["taskset", "-c", SERVER_CORE, *argv],
        cwd=ROOT,
        env=hardserve_env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def run_floor(quick: bool, hardserve_env: dict[str, str]) -> dict[str, Any]:
    """bench/floor.py: uvloop alone, with one pool hand-off, and hardserve, measured alike. It
    pins its servers and wrk itself."""
    argv = [sys.executable, "-m", "bench.floor", "--json"]
    if quick:
        argv += ["--rounds", "1", "--duration", "2"]
    completed = subprocess.run(
        argv, cwd=ROOT, env=hardserve_env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


# -- environment --------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout or wrk.stderr).splitlines()[0].split(" Copyright")[0]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # hardserve is installed editable: uncommitted changes under src/ are what gets measured.
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "hardserve": _version("hardserve"),
            "gunicorn": _version("gunicorn"),
            "waitress": _version("waitress"),
            "granian": _version("granian"),
            "h11": _version("h11"),
            "uvloop": _version("uvloop"),
            "wrk": wrk_version,
        },
        "hardserve_commit": commit,
        "hardserve_src_dirty": bool(dirty),
    }


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one round of 2 s per case (about 9 minutes)"
    )
    parser.add_argument("--rounds", type=int, help="rounds over all servers (default 3)")
    parser.add_argument("--duration", type=int, help="seconds of each measured load (default 3)")
    parser.add_argument("--warmup", type=int, help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated apps")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="start each load as soon as the previous one ends (see NOTES.md)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="write only the raw JSON, leave RESULTS.md and results.png as they are",
    )
    parser.add_argument("--skip-handoff", action="store_true", help="skip the hand-off benchmark")
    parser.add_argument(
        "--skip-floor", action="store_true", help="skip the floor (uvloop alone) benchmark"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_NAMES),
        help="comma-separated: matrix (apps x servers x modes), versus (interleaved pairs of "
        "hardserve and granian, 1 MiB and streams), concurrency (1,024 connections), "
        "workers (2 workers, 2 cores), memory (idle connections), attack (slowloris and slow "
        "readers), crowded (the attack beside 1,024 connections); all by default",
    )
    args = parser.parse_args(argv)
    apps = tuple(a for a in args.apps.split(",") if a)
    servers = tuple(s for s in args.servers.split(",") if s)
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    for name, allowed in ((apps, APPS), (servers, SERVERS), (scenarios, SCENARIO_NAMES)):
        unknown = set(name) - set(allowed)
        if unknown:
            parser.error(f"unknown: {', '.join(sorted(unknown))} (choose from {allowed})")
    default_rounds, default_duration = (1, 2) if args.quick else (3, 3)
    return Options(
        rounds=args.rounds or default_rounds,
        duration_s=args.duration or default_duration,
        warmup_s=1 if args.warmup is None else args.warmup,
        apps=apps,
        servers=servers,
        skip_handoff=args.skip_handoff,
        skip_floor=args.skip_floor,
        quick=args.quick,
        settle=not args.no_settle,
        report=not args.no_report,
        scenarios=scenarios,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    OUT.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = environment()
    snapshot = snapshot_sources(stamp)
    env["hardserve_src_digest"] = src_digest(snapshot / "hardserve")
    # PYTHONPATH comes before the editable install's path entry in sys.path.
    hardserve_env = dict(os.environ) | {"PYTHONPATH": str(snapshot)}
    started = time.monotonic()
    runs: list[Run] = []
    processes: list[dict[str, Any]] = []
    if "matrix" in options.scenarios:
        runs, processes = run_matrix(options, stamp, hardserve_env)
    from bench.scenarios import Context, run_scenarios
    from bench.versus import run_versus

    context = Context(
        rounds=options.rounds,
        duration_s=options.duration_s,
        warmup_s=options.warmup_s,
        servers=options.servers,
        logs_dir=OUT / f"logs-{stamp}",
        hardserve_env=hardserve_env,
        settling=options.settle,
        quick=options.quick,
    )
    context.logs_dir.mkdir(parents=True, exist_ok=True)
    versus = run_versus(context) if "versus" in options.scenarios else []
    scenarios = run_scenarios(context, options.scenarios)
    handoff = None if options.skip_handoff else run_handoff(options.quick, hardserve_env)
    floor = None if options.skip_floor else run_floor(options.quick, hardserve_env)
    env["elapsed_s"] = round(time.monotonic() - started)
    env["hardserve_snapshot"] = str(snapshot.relative_to(ROOT))
    env["src_changed_during_run"] = (
        src_digest(ROOT / "src" / "hardserve") != env["hardserve_src_digest"]
    )
    raw = {
        "environment": env,
        "options": asdict(options),
        "commands": {
            "servers": {
                s: shlex.join(["taskset", "-c", SERVER_CORE, *server_argv(s, "APP", "PORT")])
                for s in SERVERS
            },
        },
        "runs": [run.record() for run in runs],
        "processes": processes,
        "scenarios": scenarios,
        "versus": versus,
        "handoff": handoff,
        "floor": floor,
    }
    raw_path = OUT / f"results-{stamp}.json"
    raw_path.write_text(json.dumps(raw, indent=1))
    if not options.report:
        print(f"raw results: {raw_path.relative_to(ROOT)}")
        return 0
    # Imported late: the report needs matplotlib, the measuring does not.
    from bench.report import write_report

    write_report(raw, raw_path)
    print(f"raw results: {raw_path.relative_to(ROOT)}; report: bench/RESULTS.md, bench/results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
