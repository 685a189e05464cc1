"""Turns the raw results of bench/bench.py into bench/RESULTS.md and bench/results.png.

`python -m bench.report bench/out/results-STAMP.json` rebuilds both from a saved run.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.floor import table as floor_table
from bench.goals import goals_table, scenario_sections, versus_section, write_goals_chart

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_PNG = BENCH / "results.png"

SERVERS = ("hardserve", "gunicorn", "waitress", "granian")
PEERS = ("gunicorn", "waitress", "granian")
COLOURS = {
    "hardserve": "#1f77b4",
    "gunicorn": "#2ca02c",
    "gunicorn-sync": "#98df8a",
    "waitress": "#d62728",
    "granian": "#9467bd",
}
RESULTS_GOALS_PNG = BENCH / "goals.png"
IDLE_CONNECTIONS = 2000

APP_NOTES = {
    "hello": "13-byte body, Content-Length",
    "json": "small JSON document serialised per request",
    "echo": "POST of 4 KiB, read and returned",
    "big": "1 MiB body, Content-Length",
    "stream": "16 x 64 KiB from a generator, no Content-Length (chunked)",
    "fresh": "as stream, each 64 KiB piece built when it is sent (a malloc per piece)",
    "sleep": "time.sleep(0.01), then a short body",
}

Case = tuple[str, str]  # (app, mode)


def summarise(runs: list[dict[str, Any]]) -> dict[Case, dict[str, dict[str, Any]]]:
    """Per case and server: medians, the spread over the rounds, and summed errors."""
    grouped: dict[Case, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[(run["app"], run["mode"])][run["server"]].append(run)
    summary: dict[Case, dict[str, dict[str, Any]]] = {}
    for case, by_server in grouped.items():
        summary[case] = {}
        for server, server_runs in by_server.items():
            rps = [r["rps"] for r in server_runs]
            cpu = [r["cpu_us_per_request"] for r in server_runs]
            busy = [r["cpu_s"] / r["duration_s"] for r in server_runs]
            client = [r["client_cpu_s"] / r["duration_s"] for r in server_runs]
            foreign = [r["server_core_foreign"] for r in server_runs]
            errors: dict[str, int] = defaultdict(int)
            for r in server_runs:
                for kind, count in r["errors"].items():
                    errors[kind] += count
            summary[case][server] = {
                "rps": statistics.median(rps),
                "rps_range": (min(rps), max(rps)),
                "cpu_us": statistics.median(cpu),
                "cpu_range": (min(cpu), max(cpu)),
                "core_busy": statistics.median(busy),
                "client_busy": statistics.median(client),
                "foreign": statistics.median(foreign),
                "p99_ms": statistics.median(r["latency_p99_ms"] for r in server_runs),
                # Peak RSS of a worker over the process's life until the end of this load.
                "hwm_kib": max(r.get("worker_hwm_kib", 0) for r in server_runs),
                "requests": sum(r["requests"] for r in server_runs),
                "errors": dict(errors),
                "rounds": len(server_runs),
            }
    return summary


def _ordered_cases(summary: dict[Case, Any]) -> list[Case]:
    apps = ("hello", "json", "echo", "big", "stream", "fresh", "sleep")
    modes = ("keep-alive", "close")
    return sorted(summary, key=lambda c: (apps.index(c[0]), modes.index(c[1])))


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(hardserve: float, peer: float) -> str:
    if not peer or math.isnan(peer) or math.isnan(hardserve):
        return "n/a"
    return f"{hardserve / peer:.2f}"


def _error_text(errors: dict[str, int]) -> str:
    parts = [f"{kind.replace('_', '-')} {count}" for kind, count in errors.items() if count]
    return ", ".join(parts) if parts else "0"


def case_table(case: Case, by_server: dict[str, dict[str, Any]]) -> list[str]:
    app, mode = case
    lines = [
        f"### {app}, {mode}",
        "",
        f"{APP_NOTES.get(app, '')}.",
        "",
        "| server | req/s | CPU µs/req | hardserve ÷ server, req/s | hardserve ÷ server, "
        "CPU µs/req | core 0: server / others | wrk core | p99 latency | peak RSS per worker "
        "| errors (all rounds) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    own = by_server.get("hardserve")
    for server in SERVERS:
        figures = by_server.get(server)
        if figures is None:
            continue
        low, high = figures["rps_range"]
        cpu_low, cpu_high = figures["cpu_range"]
        if server == "hardserve" or own is None:
            rps_ratio = cpu_ratio = "—"
        else:
            rps_ratio = _ratio(own["rps"], figures["rps"])
            cpu_ratio = _ratio(own["cpu_us"], figures["cpu_us"])
        spread = figures["rounds"] > 1
        lines.append(
            f"| {server} "
            f"| {_num(figures['rps'])}"
            + (f" ({_num(low)}-{_num(high)})" if spread else "")
            + f" | {_num(figures['cpu_us'])}"
            + (f" ({_num(cpu_low)}-{_num(cpu_high)})" if spread else "")
            + f" | {rps_ratio} | {cpu_ratio} "
            f"| {figures['core_busy']:.0%} / {figures['foreign']:.0%} "
            f"| {figures['client_busy']:.0%} "
            f"| {figures['p99_ms']:.1f} ms | {_mib(figures['hwm_kib'])} "
            f"| {_error_text(figures['errors'])} |"
        )
    return [*lines, ""]


def overview_table(summary: dict[Case, dict[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    nan = {"cpu_us": float("nan"), "rps": float("nan"), "hwm_kib": 0}
    for key, title in (
        ("cpu_us", "Server CPU µs per request (per connection in the close cases)"),
        ("rps", "Requests per second"),
    ):
        lines += [
            f"{title}:",
            "",
            "| case | "
            + " | ".join(SERVERS)
            + " | "
            + " | ".join(f"hardserve ÷ {p}" for p in PEERS)
            + " |",
            "| --- |" + " ---: |" * (len(SERVERS) + len(PEERS)),
        ]
        for case in _ordered_cases(summary):
            row = {s: summary[case].get(s, nan) for s in SERVERS}
            cells = [f"{case[0]}, {case[1]}"]
            cells += [_num(row[s][key]) for s in SERVERS]
            cells += [_ratio(row["hardserve"][key], row[p][key]) for p in PEERS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Peak RSS per worker (VmHWM of the worker process at the end of the case's load, the "
        "largest over the rounds; the process served only this app, warm-up included):",
        "",
        "| case | " + " | ".join(SERVERS) + " |",
        "| --- |" + " ---: |" * len(SERVERS),
    ]
    for case in _ordered_cases(summary):
        row = {s: summary[case].get(s, nan) for s in SERVERS}
        lines.append(
            f"| {case[0]}, {case[1]} | "
            + " | ".join(_mib(row[s]["hwm_kib"]) for s in SERVERS)
            + " |"
        )
    return lines


def _mib(kib: float) -> str:
    if not kib or math.isnan(kib):
        return "n/a"
    return f"{kib / 1024:.1f} MiB"


def floor_section(floor: dict[str, Any] | None) -> list[str]:
    lines = ["## Floor: uvloop alone, and with one pool hand-off", ""]
    if floor is None:
        return [*lines, "Not run (--skip-floor).", ""]
    lines += [
        "`bench/floor.py`: servers that only answer, pinned and loaded like the others, median "
        f"of {floor['rounds']} rounds of {floor['duration_s']} s. **bare** is an asyncio "
        "protocol on uvloop that writes a fixed 13-byte response when it sees the end of a "
        "head: no parsing, no limits, no threads. **pool** does the same from a job handed to "
        "hardserve's Pool and back, the one hand-off per request a thread-pool WSGI server "
        "cannot avoid. **hardserve** is `bench.apps:hello` with every check on.",
        "",
        *floor_table(floor),
        "",
        "What hardserve cannot go below on this machine: the bare column is uvloop and the "
        "kernel, the pool column adds the thread. Read with the goals: at 1,024 connections "
        "even the bare protocol spends more CPU per request than at 64 (kernel and cache "
        "work per connection), and `Connection: close` costs the pool floor about as much as "
        "five keep-alive requests.",
        "",
    ]
    return lines


def handoff_section(handoff: dict[str, Any] | None) -> list[str]:
    lines = ["## Hand-off: loop -> thread -> loop", ""]
    if handoff is None:
        return [*lines, "Not run (--skip-handoff).", ""]
    lines += [
        "`bench/handoff.py`, pinned to one core like a server worker: "
        f"{handoff['round_trips']:,} round trips of a no-op job per sample, "
        f"{handoff['threads']} threads, median of {handoff['repeats']} samples. "
        "`run_in_executor` wakes the loop once per result; hardserve's `Pool.call_in_loop` "
        "wakes it once per batch of results. CPU counts all threads of the process.",
        "",
        "| loop | jobs in flight | hand-off | wall µs / round trip | CPU µs / round trip "
        "| Pool ÷ run_in_executor (CPU) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    rows = handoff["rows"]
    baseline = {
        (r["loop"], r["in_flight"]): r["cpu_us_per_trip"]
        for r in rows
        if r["variant"] == "run_in_executor"
    }
    for r in rows:
        ratio = (
            _ratio(r["cpu_us_per_trip"], baseline[(r["loop"], r["in_flight"])])
            if r["variant"] != "run_in_executor"
            else "—"
        )
        lines.append(
            f"| {r['loop']} | {r['in_flight']} | {r['variant']} | {r['wall_us_per_trip']:.2f} "
            f"| {r['cpu_us_per_trip']:.2f} | {ratio} |"
        )
    lines += [
        "",
        "The job does nothing, so these figures are the hand-off alone. With 64 in flight a "
        "pool thread finds many jobs queued and their results leave in one wake-up; with one "
        "in flight there is nothing to batch and both pay a thread switch and a wake-up per "
        "round trip.",
        "",
    ]
    return lines


def logs_section(
    processes: list[dict[str, Any]], scenarios: dict[str, list[dict[str, Any]]] | None = None
) -> list[str]:
    lines = ["## Server processes", ""]
    names = ("hardserve", "gunicorn", "gunicorn-sync", "waitress", "granian")
    totals: dict[str, dict[str, int]] = {
        s: {"started": 0, "failed": 0, "died": 0, "errors": 0, "warnings": 0} for s in names
    }
    processes = list(processes)
    for records in (scenarios or {}).values():
        for record in records:
            processes.append(
                {
                    "server": record["server"],
                    "app": record["scenario"],
                    "round": record["round"],
                    "failure": record["failure"],
                }
                | {k: record.get(k, 0) for k in ("error_lines", "warning_lines")}
                | {"alive_after_load": record.get("alive_after_load")}
                | {"first_errors": record.get("first_errors", []), "first_warnings": []}
                if "failure" in record
                else {
                    "server": record["server"],
                    "app": record["scenario"],
                    "round": record["round"],
                    "alive_after_load": record.get("alive_after_load"),
                    "error_lines": record.get("error_lines", 0),
                    "warning_lines": record.get("warning_lines", 0),
                    "first_errors": record.get("first_errors", []),
                    "first_warnings": [],
                }
            )
    examples: dict[str, list[str]] = defaultdict(list)
    warning_examples: dict[str, list[str]] = defaultdict(list)
    for p in processes:
        t = totals[p["server"]]
        t["started"] += 1
        t["failed"] += "failure" in p
        t["died"] += p.get("alive_after_load") is False
        t["errors"] += p["error_lines"]
        t["warnings"] += p["warning_lines"]
        examples[p["server"]] += [f"{p['app']} r{p['round']}: {line}" for line in p["first_errors"]]
        warning_examples[p["server"]] += [
            f"{p['app']} r{p['round']}: {line}" for line in p["first_warnings"]
        ]
    lines += [
        "Each server's stderr is kept in `bench/out/logs-*/`; lines are counted over all its "
        "processes of the run, the scenarios' included (the attack makes hardserve log one "
        "`hardserve.security` warning per refused or cut connection).",
        "",
        "| server | processes | failed to serve | died under load | error lines | warning lines |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server in names:
        t = totals[server]
        if t["started"]:
            lines.append(
                f"| {server} | {t['started']} | {t['failed']} | {t['died']} | {t['errors']} "
                f"| {t['warnings']} |"
            )
    for server in names:
        if examples[server]:
            lines += ["", f"First error lines of {server}:", "", "```"]
            lines += [line[:200] for line in examples[server][:8]]
            lines.append("```")
        if warning_examples[server]:
            lines += ["", f"First warning lines of {server}:", "", "```"]
            lines += [line[:200] for line in warning_examples[server][:3]]
            lines.append("```")
    sanity = [p for p in processes if "sanity" in p and p["round"] == 1]
    if sanity:
        lines += [
            "",
            "One request before each load, round 1 (status, framing, body bytes):",
            "",
            "| app | server | status | Content-Length | Transfer-Encoding | Connection "
            "| body bytes |",
            "| --- | --- | ---: | ---: | --- | --- | ---: |",
        ]
        for p in sanity:
            s = p["sanity"]
            lines.append(
                f"| {p['app']} | {p['server']} | {s['status']} | {s['content_length'] or '—'} "
                f"| {s['transfer_encoding'] or '—'} | {s['connection'] or '—'} "
                f"| {s['body_bytes']:,} |"
            )
    return [*lines, ""]


def write_chart(summary: dict[Case, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the PNG
    import matplotlib.pyplot as plt

    cases = _ordered_cases(summary)
    labels = [f"{app}\n{mode}" for app, mode in cases]
    fig, axes = plt.subplots(2, 1, figsize=(14, 9), sharex=True)
    width = 0.27
    for axis, key, title in (
        (axes[0], "cpu_us", "server CPU µs per request (lower is better, log scale)"),
        (axes[1], "rps", "requests per second (higher is better, log scale)"),
    ):
        for index, server in enumerate(SERVERS):
            xs = [i + (index - 1) * width for i in range(len(cases))]
            values = [summary[c].get(server, {}).get(key, float("nan")) for c in cases]
            bars = axis.bar(xs, values, width, label=server, color=COLOURS[server])
            axis.bar_label(
                bars, labels=[_num(v) for v in values], fontsize=7, rotation=90, padding=2
            )
        axis.set_yscale("log")
        axis.set_title(title)
        axis.grid(axis="y", which="both", alpha=0.3)
        axis.margins(y=0.25)
    axes[0].legend(loc="upper left")
    axes[1].set_xticks(range(len(cases)), labels)
    fig.suptitle("hardserve, gunicorn (gthread) and waitress: one worker, 8 threads, one core")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(raw: dict[str, Any], raw_path: Path) -> None:
    env = raw["environment"]
    options = raw["options"]
    summary = summarise(raw["runs"])
    scenarios = raw.get("scenarios") or {}
    if summary:
        write_chart(summary, RESULTS_PNG)
    write_goals_chart(summary, scenarios, RESULTS_GOALS_PNG)
    versions = env["versions"]
    lines = [
        "# Benchmark: hardserve, gunicorn, waitress and granian",
        "",
        f"- Date: {env['date']}; hardserve at commit `{env['hardserve_commit']}`"
        + (" with uncommitted changes in src/" if env.get("hardserve_src_dirty") else "")
        + f" (sources digest `{env.get('hardserve_src_digest', '?')}`, copied to "
        f"`{env.get('hardserve_snapshot', '?')}` at the start and run from there"
        + (
            "; src/ changed during the run, the copy did not"
            if env.get("src_changed_during_run")
            else ""
        )
        + "); the whole run "
        f"took {env['elapsed_s'] // 60} min {env['elapsed_s'] % 60} s.",
        f"- Machine: {env['nproc']} cores, {env['cpu_model']}, Linux {env['kernel']}, "
        f"Python {env['python']}.",
        f"- Versions: hardserve {versions['hardserve']} (h11 {versions['h11']}, uvloop "
        f"{versions['uvloop']}), gunicorn {versions['gunicorn']}, waitress "
        f"{versions['waitress']}, granian {versions.get('granian', 'not installed')}, "
        f"{versions['wrk']}.",
        f"- Run: {options['rounds']} round(s); each case {options['warmup_s']} s of unmeasured "
        f"load, then {options['duration_s']} s measured; figures are the medians over the "
        "rounds, with the range in brackets.",
        f"- Raw results: `{raw_path.relative_to(ROOT)}` (not in git). Rebuild this page with "
        f"`bench/.venv/bin/python -m bench.report {raw_path.relative_to(ROOT)}`.",
        "",
    ]
    if options.get("quick"):
        lines += [
            "**A quick run** (`--quick`: one round, short loads): the figures are indicative "
            "only; `make bench` on a quiet machine gives the ones to quote.",
            "",
        ]
    lines += goals_table(summary, scenarios, raw.get("floor"), raw.get("versus"))
    lines += [
        "Behaviour of hardserve seen while building this benchmark, with reproductions: "
        "[NOTES.md](NOTES.md). Rerun everything with `make bench` (or `bench/run.sh`; "
        "`bench/run.sh --quick` for one short round).",
        "",
        "![The goals of issue 7: hardserve and its peers](goals.png)",
        "",
        "![CPU µs per request and requests per second, per case](results.png)",
        "",
        "## Method",
        "",
        "Every server runs one worker process with 8 app threads, pinned to core 0; wrk runs "
        "with one thread and 64 connections, pinned to core 1. Rounds are interleaved: in "
        "each round every app is served by hardserve, then gunicorn, then waitress, then "
        "granian, each a "
        "fresh process started from the project root, which takes the keep-alive load and "
        "then the `Connection: close` load. A server is loaded once its port accepts and one "
        "request has been answered; before each load (warm-up or measured) the driver waits "
        "until the server's CPU has gone quiet, so work left by the previous load's "
        "abandoned requests is neither billed to nor crowds the next one"
        + ("" if options.get("settle", True) else " (not in this run: --no-settle)")
        + ".",
        "",
        "- **req/s**: responses wrk read with a status below 400, divided by its measured "
        "duration. Refused requests (503 and the like) are counted under errors only, so a "
        "server gains nothing by refusing.",
        "- **CPU µs/req**: utime + stime (plus those of reaped children) of the server process "
        "and every descendant (gunicorn's master and its worker), from `/proc/PID/stat`, "
        "read before and after the measured load, divided by the same successful responses. A "
        "process's stat counts all its threads.",
        "- **core 0: server / others**: the server's CPU time over the wall time (near 100 % "
        "the server is the bottleneck; far below, it waits: on the sleep app, on the client, "
        "or on itself), and the share of core 0 that other processes of the machine took "
        "meanwhile, from `/proc/stat`. **wrk core**: wrk's own CPU share of core 1; near "
        "100 % the client is the limit.",
        "- **errors**: wrk's connect/read/write/timeout errors and responses with status "
        "400 or more (`non-2xx`), summed over all rounds.",
        "- **peak RSS per worker**: VmHWM from `/proc/PID/status` of the worker process (the "
        "leaf of the server's process tree: hardserve's, gunicorn's and granian's masters "
        "are left out; waitress is one process) after the load, so the peak since the "
        "process started; each app has a fresh process.",
        "",
        "granian runs its WSGI interface with 8 blocking threads, the same count as the "
        "others' app threads, and HTTP/1 only. The scenarios of issue 7 (1,024 connections, "
        "two workers, memory, attack, and the attack beside 1,024 connections) have their "
        "own sections and commands below.",
        "",
        "Commands (`PORT` is a free port picked per process, `APP` one of hello, json, echo, "
        "big, stream, fresh, sleep):",
        "",
        "```sh",
    ]
    lines += [raw["commands"]["servers"][s] for s in SERVERS]
    lines += [
        f"taskset -c 1 wrk -t1 -c64 -d{options['duration_s']}s --timeout 5s "
        "-s bench/report.lua http://127.0.0.1:PORT/",
        f"taskset -c 1 wrk -t1 -c64 -d{options['duration_s']}s --timeout 5s "
        "-s bench/report.lua -H 'Connection: close' http://127.0.0.1:PORT/",
        "# echo: -s bench/echo.lua (POST with a 4 KiB body) instead of bench/report.lua",
        "```",
        "",
        "The tools are installed by `bench/run.sh`: wrk from Debian, gunicorn, waitress, "
        "granian and matplotlib from PyPI into `bench/.venv` (versions pinned in "
        "`bench/requirements.txt`), and hardserve editable from this checkout into the same "
        "environment, so the servers share one interpreter.",
        "",
        "## Overview",
        "",
        "Ratios are hardserve's figure divided by the peer's: below 1 for CPU µs/req means "
        "hardserve spends less CPU per request; above 1 for req/s means it serves more. "
        "In the close cases every request is a new connection, so CPU µs/req there is the "
        "cost of a whole connection (accept, request, response, close): the goal of issue 7 "
        "is at most 100 µs for hello.",
        "",
    ]
    lines += [*overview_table(summary), ""]
    lines += versus_section(raw.get("versus"), options["duration_s"])
    lines += scenario_sections(
        scenarios, options["duration_s"], raw.get("idle_connections", IDLE_CONNECTIONS)
    )
    lines += ["## Per case", ""]
    for case in _ordered_cases(summary):
        lines += case_table(case, summary[case])
    lines += handoff_section(raw.get("handoff"))
    lines += floor_section(raw.get("floor"))
    versus_processes = [p for case in raw.get("versus") or [] for p in case["processes"]]
    lines += logs_section(raw["processes"], scenarios | {"versus": versus_processes})
    RESULTS_MD.write_text("\n".join(lines).rstrip() + "\n" + _kept_sections())


# Sections written by hand (figures measured by other commands) that a rebuild keeps.
KEPT_HEADINGS = ("## Hardening figures", "## Supervision figures")


def _kept_sections() -> str:
    if not RESULTS_MD.exists():
        return ""
    old = RESULTS_MD.read_text()
    starts = [old.find("\n" + heading + "\n") for heading in KEPT_HEADINGS]
    found = [start for start in starts if start >= 0]
    return "\n" + old[min(found) + 1 :] if found else ""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.report bench/out/results-STAMP.json", file=sys.stderr)
        return 2
    raw_path = Path(argv[0]).resolve()
    write_report(json.loads(raw_path.read_text()), raw_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
