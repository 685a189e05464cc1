"""The scenarios of issue 7 beyond the one-worker matrix, run by bench/bench.py after it.

- concurrency: hello with keep-alive on one pinned worker, in pairs of loads of 64 and 1,024
  wrk connections, in the same server process; req/s at 1,024 over req/s at 64 in each pair,
  and p99 over p50 at 1,024.
- workers: hello with keep-alive, 2 worker processes and wrk on the same 2 cores, unpinned.
- memory: the worker's RSS when idle, then with 2,000 idle keep-alive connections that have
  each had one answer (bench/attack.py idle); the difference over the connections.
- attack: hello with keep-alive, without and then with 1,000 slowloris and 200 slow-reader
  connections held open by bench/attack.py slow from other loopback addresses.
- crowded: the same attack beside 1,024 wrk connections instead of 64, where more requests are
  in flight than a busy server prepares at once (hardserve's pool_prepared_max), so that the
  attackers compete with the load for the places of requests that wait.

Each returns one record per server and round; bench/report.py takes the medians.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench import (
    BENCH,
    CLIENT_CORE,
    CLK_TCK,
    ROOT,
    Server,
    run_wrk,
    sanity_check,
    scan_log,
    server_argv,
    settle,
)

SCENARIOS = ("concurrency", "workers", "memory", "attack", "crowded")
HIGH_CONNECTIONS = 1024
IDLE_CONNECTIONS = 2000
SLOWLORIS = 1000
SLOW_READERS = 200
# At most this many attacking or idle connections come from one source address (127.0.0.2, ...),
# below hardserve's default per-client cap of 256.
PER_ADDRESS = 200

# What each server is given, beyond its matrix command line, so that its own connection limit
# does not refuse the load outright: the scenario measures the server, not a default cap.
CONCURRENCY_EXTRA: dict[str, tuple[str, ...]] = {
    # wrk's 1,024 connections all come from 127.0.0.1: above the per-client cap (256). The
    # pool queue's default (1,024) holds one request per connection.
    "hardserve": ("--client-connections-max", "2048"),
    "gunicorn": ("--worker-connections", "2048"),  # 1,000 by default
    # 100 by default; and select() fails past file descriptor 1023 (waitress exits), poll not.
    "waitress": ("--connection-limit=2048", "--asyncore-use-poll"),
    "granian": (),
}
# The idle connections come from 127.0.0.2.. at 200 per address, under the per-client cap; the
# idle timeouts are raised so that none is closed while they are counted (gunicorn's is 2 s).
IDLE_EXTRA: dict[str, tuple[str, ...]] = {
    "hardserve": ("--keepalive-timeout-s", "60"),
    "gunicorn": ("--worker-connections", "4096", "--keep-alive", "60"),
    # channel_timeout is 120 s already.
    "waitress": ("--connection-limit=4096", "--asyncore-use-poll"),
    "granian": (),
}
# The crowded attack: wrk's 1,024 connections from 127.0.0.1 as in the concurrency scenario, and
# 1,200 attackers on top, more than hardserve's default connections_max (2,048) takes in all.
CROWDED_EXTRA: dict[str, tuple[str, ...]] = {
    "hardserve": ("--client-connections-max", "2048", "--connections-max", "4096"),
    "gunicorn": ("--worker-connections", "4096"),
    "waitress": ("--connection-limit=4096", "--asyncore-use-poll"),
    "granian": (),
}
ATTACK_SERVERS = ("hardserve", "gunicorn-sync", "gunicorn", "waitress", "granian")
WORKER_SERVERS = ("hardserve", "gunicorn", "granian")


def _wrk_argv(server: Server, connections: int, threads: int, duration_s: int) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / "report.lua"),
        server.url,
    ]


def load(
    server: Server,
    *,
    duration_s: int,
    warmup_s: int,
    connections: int = 64,
    threads: int = 1,
    cores: str | None = CLIENT_CORE,
    settling: bool = True,
) -> dict[str, Any]:
    """One warm-up and one measured wrk load of hello with keep-alive."""
    settle(server, settling)
    if warmup_s:
        run_wrk(_wrk_argv(server, connections, threads, warmup_s), cores, warmup_s + 15)
        settle(server, settling)
    argv = _wrk_argv(server, connections, threads, duration_s)
    before, system_before = server.cpu_ticks(), server.system_ticks()
    summary, client_cpu = run_wrk(argv, cores, duration_s + 15)
    cpu_s = (server.cpu_ticks() - before) / CLK_TCK
    system_s = (server.system_ticks() - system_before) / CLK_TCK
    ok = summary["requests"] - summary["status_errors"]
    duration = summary["duration_us"] / 1e6
    errors = {kind: summary[f"{kind}_errors"] for kind in ("connect", "read", "write", "timeout")}
    errors["non_2xx"] = summary["status_errors"]
    pinning = ["taskset", "-c", cores] if cores is not None else []
    return {
        "connections": connections,
        "requests": summary["requests"],
        "ok_requests": ok,
        "duration_s": duration,
        "rps": ok / duration if duration else 0.0,
        "cpu_us_per_request": cpu_s * 1e6 / ok if ok else float("nan"),
        "system_us_per_request": system_s * 1e6 / ok if ok else float("nan"),
        "client_cpu_s": client_cpu,
        "latency_p50_ms": summary["latency_p50_us"] / 1000,
        "latency_p99_ms": summary["latency_p99_us"] / 1000,
        "errors": errors,
        "wrk_command": [*pinning, *argv],
    }


class Holder:
    """bench/attack.py in a child process on the client core: READY, then DONE on stdin close."""

    def __init__(self, args: list[str]) -> None:
        self.argv = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.attack", *args]
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self, tag: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                payload: dict[str, Any] = json.loads(line.removeprefix(tag + " "))
                return payload
        raise RuntimeError(f"bench.attack exited without {tag} ({self.process.wait()})")

    def ready(self) -> dict[str, Any]:
        return self._line("READY")

    def done(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self._line("DONE")
        finally:
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Context:
    def __init__(
        self,
        rounds: int,
        duration_s: int,
        warmup_s: int,
        servers: tuple[str, ...],
        logs_dir: Path,
        hardserve_env: dict[str, str],
        settling: bool,
        quick: bool,
    ) -> None:
        self.rounds = rounds
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.servers = servers
        self.logs_dir = logs_dir
        self.hardserve_env = hardserve_env
        self.settling = settling
        self.quick = quick

    def wanted(self, candidates: tuple[str, ...]) -> list[str]:
        # gunicorn's sync worker comes with gunicorn.
        return [s for s in candidates if s.removesuffix("-sync") in self.servers]

    def start(
        self,
        scenario: str,
        name: str,
        app: str,
        round_no: int,
        extra: tuple[str, ...] = (),
        workers: int = 1,
        cores: str | None = "0",
    ) -> tuple[Server, dict[str, Any]]:
        log_path = self.logs_dir / f"{scenario}-{name}-r{round_no}.log"
        env = self.hardserve_env if name == "hardserve" else dict(os.environ)
        server = Server(name, app, log_path, env, extra, workers, cores)
        record: dict[str, Any] = {
            "scenario": scenario,
            "server": name,
            "round": round_no,
            "command": server_command(name, app, extra, workers, cores),
        }
        return server, record


def server_command(
    name: str, app: str, extra: tuple[str, ...], workers: int, cores: str | None
) -> str:
    pinning = ["taskset", "-c", cores] if cores is not None else []
    return shlex.join([*pinning, *server_argv(name, app, "PORT", extra, workers)])


def finish_server(server: Server, record: dict[str, Any]) -> None:
    record["alive_after_load"] = server.process.poll() is None
    record["exit_status"] = server.stop()
    record["log"] = str(server.log_path.relative_to(BENCH))
    log = scan_log(server.log_path)
    record["error_lines"] = log["error_lines"]
    record["warning_lines"] = log["warning_lines"]
    record["first_errors"] = log["first_errors"]


def _say(record: dict[str, Any], text: str) -> None:
    print(
        f"round {record['round']} {record['scenario']:11} {record['server']:13} {text}", flush=True
    )


_FAILURES = (RuntimeError, OSError, http.client.HTTPException, json.JSONDecodeError)


Measure = Callable[[Context, Server, dict[str, Any]], str]


def _each_round(
    ctx: Context,
    scenario: str,
    servers: tuple[str, ...],
    measure: Measure,
    *,
    app: str = "hello",
    extra: dict[str, tuple[str, ...]] | None = None,
    workers: int = 1,
    cores: str | None = "0",
) -> list[dict[str, Any]]:
    """Each round, each wanted server in turn: start it, check that it answers, `measure` it
    into its record (which returns the line to print), stop it. A round that fails is recorded
    as failed, and the run goes on."""
    records = []
    for round_no in range(1, ctx.rounds + 1):
        for name in ctx.wanted(servers):
            server, record = ctx.start(
                scenario, name, app, round_no, (extra or {}).get(name, ()), workers, cores
            )
            try:
                server.wait_ready()
                sanity_check(server)
                _say(record, measure(ctx, server, record))
            except _FAILURES as exc:
                record["failure"] = f"{type(exc).__name__}: {exc}"
                _say(record, f"FAILED {exc}")
            finally:
                finish_server(server, record)
                records.append(record)
    return records


# Pairs of loads (64 connections and 1,024) per server and round. One 3 s load varies by about
# ±5 % from the next on this host, and hardserve's ratio lies near its goal's threshold (0.9):
# the median of nine ratios moves less than that of three (bench/NOTES.md, thirteenth look).
# The order alternates, 64 first in odd pairs and 1,024 first in even ones, so that a drift
# within a round weighs on both counts alike.
CONCURRENCY_PAIRS = 3


def _measure_concurrency(ctx: Context, server: Server, record: dict[str, Any]) -> str:
    counts = (("low", 64), ("high", HIGH_CONNECTIONS))
    pairs: list[dict[str, Any]] = []
    record["pairs"] = pairs
    for pair_no in range(1, (1 if ctx.quick else CONCURRENCY_PAIRS) + 1):
        order = counts if pair_no % 2 else counts[::-1]
        pair: dict[str, Any] = {"first": order[0][0]}
        for key, connections in order:
            pair[key] = load(
                server,
                duration_s=ctx.duration_s,
                warmup_s=ctx.warmup_s,
                connections=connections,
                settling=ctx.settling,
            )
            pair[key]["worker_memory"] = server.worker_memory()
        pairs.append(pair)
    ratios = ", ".join(
        f"{pair['high']['rps'] / pair['low']['rps']:.3f}" for pair in pairs if pair["low"]["rps"]
    )
    low, high = pairs[0]["low"], pairs[0]["high"]
    return (
        f"{low['rps']:8.0f} req/s at 64, {high['rps']:8.0f} at {HIGH_CONNECTIONS} "
        f"(p50 {high['latency_p50_ms']:.1f} ms, p99 {high['latency_p99_ms']:.1f} ms); "
        f"1,024 ÷ 64 by pair {ratios}"
    )


def concurrency(ctx: Context) -> list[dict[str, Any]]:
    return _each_round(
        ctx,
        "concurrency",
        tuple(CONCURRENCY_EXTRA),
        _measure_concurrency,
        extra=CONCURRENCY_EXTRA,
    )


def _measure_workers(ctx: Context, server: Server, record: dict[str, Any]) -> str:
    record["load"] = load(
        server,
        duration_s=ctx.duration_s,
        warmup_s=ctx.warmup_s,
        connections=64,
        threads=2,
        cores=None,
        settling=ctx.settling,
    )
    record["workers"] = server.worker_memory()["workers"]
    return f"{record['load']['rps']:8.0f} req/s, 2 workers unpinned"


def workers(ctx: Context) -> list[dict[str, Any]]:
    return _each_round(ctx, "workers", WORKER_SERVERS, _measure_workers, workers=2, cores=None)


def _measure_memory(ctx: Context, server: Server, record: dict[str, Any]) -> str:
    time.sleep(0.5)
    record["idle"] = server.worker_memory()
    holder = Holder(
        [
            "idle",
            "--port",
            str(server.port),
            "--count",
            str(IDLE_CONNECTIONS),
            "--per-address",
            str(PER_ADDRESS),
        ]
    )
    try:
        record["client_ready"] = holder.ready()
        record["held"] = server.worker_memory()
        record["client_done"] = holder.done()
    finally:
        holder.kill()
    if server.process.poll() is not None:
        raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
    # Connections answered and still open when the RSS was read.
    answered = min(
        record["client_ready"].get("answered", 0),
        record["client_ready"].get("open", IDLE_CONNECTIONS),
    )
    delta_kib = record["held"]["rss_kib"] - record["idle"]["rss_kib"]
    record["bytes_per_connection"] = delta_kib * 1024 / answered if answered else float("nan")
    return (
        f"idle worker {record['idle']['rss_kib'] / 1024:.1f} MiB, "
        f"{record['bytes_per_connection']:,.0f} B per idle connection "
        f"({answered} answered, {record['client_done'].get('still_open')} open)"
    )


def memory(ctx: Context) -> list[dict[str, Any]]:
    return _each_round(ctx, "memory", tuple(IDLE_EXTRA), _measure_memory, extra=IDLE_EXTRA)


# The attack as the goal states it, then each half alone, to tell which one costs what.
ATTACK_PHASES = (
    ("attacked", SLOWLORIS, SLOW_READERS),
    ("slowloris_only", SLOWLORIS, 0),
    ("slow_readers_only", 0, SLOW_READERS),
)


def _attacked_load(
    ctx: Context, server: Server, slowloris: int, slow_readers: int, connections: int = 64
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, int]]:
    """Holds the attackers open, loads hello meanwhile; (load, ready, done, worker memory)."""
    holder = Holder(
        [
            "slow",
            "--port",
            str(server.port),
            "--slowloris",
            str(slowloris),
            "--slow-readers",
            str(slow_readers),
            "--per-address",
            str(PER_ADDRESS),
            "--ramp-timeout",
            "10" if ctx.quick else "20",
        ]
    )
    try:
        ready = holder.ready()
        # The server is busy with the attackers: waiting for it to go quiet is moot.
        try:
            result = load(
                server,
                duration_s=ctx.duration_s,
                warmup_s=ctx.warmup_s,
                connections=connections,
                settling=False,
            )
        except RuntimeError as exc:
            # wrk gave no summary at all: nothing was served.
            result = {"rps": 0.0, "failure": str(exc)}
        memory = server.worker_memory()
        done = holder.done()
    finally:
        holder.kill()
    return result, ready, done, memory


def _measure_attack(ctx: Context, server: Server, record: dict[str, Any]) -> str:
    record["unloaded"] = load(
        server, duration_s=ctx.duration_s, warmup_s=ctx.warmup_s, settling=ctx.settling
    )
    base = record["unloaded"]["rps"]
    for key, slowloris, slow_readers in ATTACK_PHASES:
        result, ready, done, memory = _attacked_load(ctx, server, slowloris, slow_readers)
        suffix = "" if key == "attacked" else "_" + key
        record[key] = result
        record["attack_ready" + suffix] = ready
        record["attack_done" + suffix] = done
        record["attacked_memory" + suffix] = memory
        record["ratio" + suffix] = result["rps"] / base if base else float("nan")
        # Let the server finish with the attackers before the next phase.
        settle(server, ctx.settling)
    return (
        f"{base:8.0f} req/s unloaded; under attack {record['attacked']['rps']:8.0f} "
        f"({record['ratio']:.2f}), slowloris only "
        f"{record['ratio_slowloris_only']:.2f}, slow readers only "
        f"{record['ratio_slow_readers_only']:.2f}; attackers "
        f"{record['attack_ready']}"
    )


def attack(ctx: Context) -> list[dict[str, Any]]:
    return _each_round(ctx, "attack", ATTACK_SERVERS, _measure_attack, app="attack")


def _measure_crowded(ctx: Context, server: Server, record: dict[str, Any]) -> str:
    record["unloaded"] = load(
        server,
        duration_s=ctx.duration_s,
        warmup_s=ctx.warmup_s,
        connections=HIGH_CONNECTIONS,
        settling=ctx.settling,
    )
    base = record["unloaded"]["rps"]
    result, ready, done, memory = _attacked_load(
        ctx, server, SLOWLORIS, SLOW_READERS, HIGH_CONNECTIONS
    )
    record["attacked"] = result
    record["attack_ready"] = ready
    record["attack_done"] = done
    record["attacked_memory"] = memory
    record["ratio"] = result["rps"] / base if base else float("nan")
    return (
        f"{base:8.0f} req/s unloaded at {HIGH_CONNECTIONS}; under attack "
        f"{result['rps']:8.0f} ({record['ratio']:.2f}); attackers {ready}"
    )


def crowded(ctx: Context) -> list[dict[str, Any]]:
    return _each_round(
        ctx, "crowded", tuple(CROWDED_EXTRA), _measure_crowded, app="attack", extra=CROWDED_EXTRA
    )


RUNNERS = {
    "concurrency": concurrency,
    "workers": workers,
    "memory": memory,
    "attack": attack,
    "crowded": crowded,
}


def run_scenarios(ctx: Context, names: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    return {name: RUNNERS[name](ctx) for name in SCENARIOS if name in names}
