"""The parts of bench/RESULTS.md and bench/goals.png about the goals of issue 7.

bench/report.py calls these with the matrix's summary (report.summarise) and the raw records
of bench/scenarios.py; the figures are medians over the rounds, like the matrix's.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Servers of the scenarios, in table order.
ORDER = ("hardserve", "gunicorn", "gunicorn-sync", "waitress", "granian")
LABELS = {"gunicorn": "gunicorn gthread", "gunicorn-sync": "gunicorn sync"}
COLOURS = {
    "hardserve": "#1f77b4",
    "gunicorn": "#2ca02c",
    "gunicorn-sync": "#98df8a",
    "waitress": "#d62728",
    "granian": "#9467bd",
}
NAN = float("nan")

Scenarios = dict[str, list[dict[str, Any]]]
Summary = dict[tuple[str, str], dict[str, dict[str, Any]]]


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else NAN


def _fmt(value: float, digits: int = 0, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def _fmt_ratio(value: float, threshold: float) -> str:
    """Two decimals, or as many more (up to six) as it takes not to round across the goal's
    threshold: 0.896 of a goal of 0.9 is shown as 0.896, not as 0.90 beside "not met", and
    0.9996 of a goal of 1 as 0.9996."""
    digits = 2
    while (
        digits < 6
        and not math.isnan(value)
        and (round(value, digits) >= threshold) != (value >= threshold)
    ):
        digits += 1
    return _fmt(value, digits)


def _label(server: str) -> str:
    return LABELS.get(server, server)


def per_server(
    records: list[dict[str, Any]], figure: Callable[[dict[str, Any]], float]
) -> dict[str, float]:
    """Median over the rounds of `figure` per server; rounds that failed do not count."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if "failure" in record:
            continue
        try:
            grouped[record["server"]].append(float(figure(record)))
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return {server: _median(values) for server, values in grouped.items()}


def concurrency_pairs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The pairs of loads of a concurrency record, each with its "low" (64 connections) and
    "high" (1,024) load; a record from before the pairs holds one, in "low" and "high"."""
    if "pairs" in record:
        return list(record["pairs"])
    if "low" in record and "high" in record:
        return [{"low": record["low"], "high": record["high"], "first": "low"}]
    return []  # a round that failed before its first pair


def per_server_pairs(
    records: list[dict[str, Any]], figure: Callable[[dict[str, Any]], float]
) -> dict[str, float]:
    """Median over every pair of loads of every round of `figure` per server (concurrency);
    rounds that failed do not count."""
    return {server: _median(values) for server, values in _pair_values(records, figure).items()}


def _pair_values(
    records: list[dict[str, Any]], figure: Callable[[dict[str, Any]], float]
) -> dict[str, list[float]]:
    """`figure` of each pair of each server; rounds that failed are left out."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if "failure" in record:
            continue
        for pair in concurrency_pairs(record):
            try:
                value = float(figure(pair))
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            values[record["server"]].append(value)
    return values


def _servers(figures: dict[str, float]) -> list[str]:
    return [s for s in ORDER if s in figures]


# -- the figures ---------------------------------------------------------------------------------


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else NAN


def _pair_ratio(pair: dict[str, Any]) -> float:
    return _div(pair["high"]["rps"], pair["low"]["rps"])


def scenario_figures(scenarios: Scenarios) -> dict[str, dict[str, float]]:
    conc = scenarios.get("concurrency", [])
    mem = scenarios.get("memory", [])
    att = scenarios.get("attack", [])
    crowd = scenarios.get("crowded", [])
    return {
        "rps_64": per_server_pairs(conc, lambda p: p["low"]["rps"]),
        "rps_1024": per_server_pairs(conc, lambda p: p["high"]["rps"]),
        "ratio_1024": per_server_pairs(conc, _pair_ratio),
        "p50_1024": per_server_pairs(conc, lambda p: p["high"]["latency_p50_ms"]),
        "p99_1024": per_server_pairs(conc, lambda p: p["high"]["latency_p99_ms"]),
        "tail_1024": per_server_pairs(
            conc, lambda p: _div(p["high"]["latency_p99_ms"], p["high"]["latency_p50_ms"])
        ),
        "errors_1024": per_server_pairs(conc, lambda p: sum(p["high"]["errors"].values())),
        "cpu_64": per_server_pairs(conc, lambda p: p["low"]["cpu_us_per_request"]),
        "cpu_1024": per_server_pairs(conc, lambda p: p["high"]["cpu_us_per_request"]),
        "system_64": per_server_pairs(conc, lambda p: p["low"]["system_us_per_request"]),
        "system_1024": per_server_pairs(conc, lambda p: p["high"]["system_us_per_request"]),
        "rps_2w": per_server(scenarios.get("workers", []), lambda r: r["load"]["rps"]),
        "idle_rss_mib": per_server(mem, lambda r: r["idle"]["rss_max_kib"] / 1024),
        "bytes_per_conn": per_server(mem, lambda r: r["bytes_per_connection"]),
        "idle_answered": per_server(mem, lambda r: r["client_ready"].get("answered", 0)),
        "idle_open": per_server(
            mem, lambda r: r["client_ready"].get("open", r["client_ready"].get("answered", 0))
        ),
        "idle_still_open": per_server(mem, lambda r: r["client_done"].get("still_open", 0)),
        "rps_unloaded": per_server(att, lambda r: r["unloaded"]["rps"]),
        "rps_attacked": per_server(att, lambda r: r["attacked"]["rps"]),
        "ratio_attack": per_server(att, lambda r: r["ratio"]),
        "attack_non2xx": per_server(
            att, lambda r: r["attacked"].get("errors", {}).get("non_2xx", 0)
        ),
        "attack_hwm_mib": per_server(att, lambda r: r["attacked_memory"]["hwm_max_kib"] / 1024),
        "ratio_slowloris_only": per_server(att, lambda r: r["ratio_slowloris_only"]),
        "ratio_slow_readers_only": per_server(att, lambda r: r["ratio_slow_readers_only"]),
        "rps_crowded_unloaded": per_server(crowd, lambda r: r["unloaded"]["rps"]),
        "rps_crowded_attacked": per_server(crowd, lambda r: r["attacked"]["rps"]),
        "ratio_crowded": per_server(crowd, lambda r: r["ratio"]),
        # wrk's percentiles of no answer at all read 0.
        "p99_crowded_attacked": per_server(
            crowd,
            lambda r: r["attacked"]["latency_p99_ms"] if r["attacked"]["rps"] else NAN,
        ),
        "crowded_non2xx": per_server(
            crowd, lambda r: r["attacked"].get("errors", {}).get("non_2xx", 0)
        ),
    }


# -- the goals table -----------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**not met**"


def _floor_note(ratio: float) -> str:
    if math.isnan(ratio):
        return ""
    return f"; bare uvloop, parsing nothing (Floor, below) {_fmt(ratio, 2)}"


def _peers(figures: dict[str, float], fmt: Callable[[float], str], skip: str = "hardserve") -> str:
    parts = [f"{_label(s)} {fmt(figures[s])}" for s in _servers(figures) if s != skip]
    return "; ".join(parts) if parts else "—"


def floor_ratio_1024(floor: dict[str, Any] | None) -> float:
    """The bare uvloop protocol's req/s at 1,024 connections over its req/s at 64, from
    bench/floor.py in the same run: what an answer that parses nothing keeps on this machine."""
    if not floor:
        return NAN
    rps = {row["case"]: row["rps"] for row in floor.get("rows", []) if row["variant"] == "bare"}
    return _div(rps.get("keep-alive, 1,024", NAN), rps.get("keep-alive, 64", NAN))


def versus_figures(versus: list[dict[str, Any]] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (app, mode) of bench/versus.py: the median of the pairs' ratios, the medians of
    each server's req/s and kernel µs per response, and how many pairs hardserve led."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for case in versus or []:
        pairs = [p for p in case["pairs"] if p.get("ratio") is not None]
        if not pairs:
            continue
        ratios = [p["ratio"] for p in pairs]
        figures[(case["app"], case["mode"])] = (
            {
                "pairs": len(pairs),
                "ratio": _median(ratios),
                "ratio_range": (min(ratios), max(ratios)),
                "ahead": sum(r >= 1 for r in ratios),
            }
            | {
                f"{key}_{server}": [p[server][key] for p in pairs]
                for server in ("hardserve", "granian")
                for key in ("rps", "system_us_per_request")
            }
            | {
                # wrk's own CPU per response: at a full client core (about 1 s per second), the
                # pace is the client's, and equal costs there mean a tie whatever the servers spend.
                f"client_us_{server}": [
                    _div(p[server]["client_cpu_s"] * 1e6, p[server]["requests"]) for p in pairs
                ]
                for server in ("hardserve", "granian")
            }
        )
    return figures


def goals_table(
    summary: Summary,
    scenarios: Scenarios,
    floor: dict[str, Any] | None = None,
    versus: list[dict[str, Any]] | None = None,
) -> list[str]:
    f = scenario_figures(scenarios)
    rows: list[tuple[str, str, str, bool | None]] = []

    def matrix(app: str, mode: str, key: str) -> dict[str, float]:
        return {s: v[key] for s, v in summary.get((app, mode), {}).items()}

    cpu = matrix("hello", "keep-alive", "cpu_us")
    own = cpu.get("hardserve", NAN)
    rows.append(
        (
            "hello, keep-alive, 1 worker: server CPU ≤ 45 µs/req",
            _fmt(own, 1, "µs"),
            _peers(cpu, lambda v: _fmt(v, 1, "µs")),
            None if math.isnan(own) else own <= 45,
        )
    )
    for peer, limit in (("waitress", 0.6), ("gunicorn", 0.35)):
        ratio = _div(own, cpu.get(peer, NAN))
        rows.append(
            (
                f"… under {limit} of {_label(peer)}'s CPU per request",
                f"{_fmt(ratio, 2)} of {peer}'s",
                f"{_label(peer)} {_fmt(cpu.get(peer, NAN), 1, 'µs')}",
                None if math.isnan(ratio) else ratio < limit,
            )
        )
    close = matrix("hello", "close", "cpu_us")
    own_close = close.get("hardserve", NAN)
    rows.append(
        (
            "`Connection: close` (hello): ≤ 100 µs per connection",
            _fmt(own_close, 0, "µs"),
            _peers(close, lambda v: _fmt(v, 0, "µs")),
            None if math.isnan(own_close) else own_close <= 100,
        )
    )
    paired = versus_figures(versus)
    for app, what in (("big", "1 MiB responses"), ("stream", "chunked streams")):
        for mode in ("keep-alive", "close"):
            rps = matrix(app, mode, "rps")
            ratio = _div(rps.get("hardserve", NAN), rps.get("granian", NAN))
            figure = f"{_fmt(rps.get('hardserve', NAN))} req/s ({_fmt_ratio(ratio, 1)} x granian)"
            pairs = paired.get((app, mode))
            if pairs is not None:
                # Judged by the interleaved pairs (see their section); the matrix's medians
                # are shown beside them.
                figure = (
                    f"{_fmt_ratio(pairs['ratio'], 1)} x granian, median of {pairs['pairs']} "
                    f"interleaved pairs ({_fmt(_median(pairs['rps_hardserve']))} against "
                    f"{_fmt(_median(pairs['rps_granian']))} req/s)"
                )
                if not math.isnan(ratio):
                    figure += f"; the matrix's medians {_fmt_ratio(ratio, 1)}"
                ratio = pairs["ratio"]
            rows.append(
                (
                    f"{what} ({app}, {mode}): req/s ≥ granian's",
                    figure,
                    _peers(rps, lambda v: f"{_fmt(v)} req/s"),
                    None if math.isnan(ratio) else ratio >= 1,
                )
            )
    peaks: dict[str, float] = {}
    for app in ("big", "stream"):
        for mode in ("keep-alive", "close"):
            for server, figures in summary.get((app, mode), {}).items():
                peaks[server] = max(peaks.get(server, 0.0), figures.get("hwm_kib", 0) / 1024)
    peak = peaks.get("hardserve", NAN)
    rows.append(
        (
            "big and stream: peak RSS per worker < 40 MiB",
            _fmt(peak, 1, "MiB"),
            _peers(peaks, lambda v: _fmt(v, 1, "MiB")),
            None if math.isnan(peak) or not peak else peak < 40,
        )
    )
    ratio = f["ratio_1024"].get("hardserve", NAN)
    pairs = _pair_values(scenarios.get("concurrency", []), _pair_ratio).get("hardserve", [])
    met = sum(1 for v in pairs if v >= 0.9)
    spread = f"{_fmt_ratio(min(pairs), 0.9)}-{_fmt_ratio(max(pairs), 0.9)}" if pairs else "n/a"
    rows.append(
        (
            "1,024 keep-alive connections, 1 worker: req/s ≥ 0.9 x the 64-connection figure",
            f"{_fmt_ratio(ratio, 0.9)}, the median of {len(pairs)} pairs ({spread}, {met} of "
            f"{len(pairs)} at 0.9 or more; {_fmt(f['rps_1024'].get('hardserve', NAN))} against "
            f"{_fmt(f['rps_64'].get('hardserve', NAN))} req/s)",
            _peers(f["ratio_1024"], lambda v: _fmt(v, 2)) + _floor_note(floor_ratio_1024(floor)),
            None if math.isnan(ratio) else ratio >= 0.9,
        )
    )
    tail = f["tail_1024"].get("hardserve", NAN)
    rows.append(
        (
            "… p99 ≤ 3 x p50 at 1,024 connections",
            f"{_fmt(tail, 1)} ({_fmt(f['p99_1024'].get('hardserve', NAN), 1)} / "
            f"{_fmt(f['p50_1024'].get('hardserve', NAN), 1)} ms)",
            _peers(f["tail_1024"], lambda v: _fmt(v, 1)),
            None if math.isnan(tail) else tail <= 3,
        )
    )
    two = f["rps_2w"]
    ratio = _div(two.get("hardserve", NAN), two.get("gunicorn", NAN))
    rows.append(
        (
            "2 workers on 2 cores (hello, keep-alive): ≥ 2 x gunicorn gthread's req/s",
            f"{_fmt(two.get('hardserve', NAN))} req/s ({_fmt_ratio(ratio, 2)} x gunicorn)",
            _peers(two, lambda v: f"{_fmt(v)} req/s"),
            None if math.isnan(ratio) else ratio >= 2,
        )
    )
    per_conn = f["bytes_per_conn"].get("hardserve", NAN)
    rows.append(
        (
            "an idle keep-alive connection costs ≤ 8 KiB",
            _fmt(per_conn / 1024, 1, "KiB"),
            _peers(f["bytes_per_conn"], lambda v: _fmt(v / 1024, 1, "KiB")),
            None if math.isnan(per_conn) else per_conn <= 8192,
        )
    )
    idle = f["idle_rss_mib"].get("hardserve", NAN)
    rows.append(
        (
            "an idle worker < 30 MiB RSS",
            _fmt(idle, 1, "MiB"),
            _peers(f["idle_rss_mib"], lambda v: _fmt(v, 1, "MiB")),
            None if math.isnan(idle) else idle < 30,
        )
    )
    kept = f["ratio_attack"].get("hardserve", NAN)
    rows.append(
        (
            "1,000 slowloris + 200 slow readers open: hello req/s ≥ 0.9 x unloaded",
            f"{_fmt_ratio(kept, 0.9)} ({_fmt(f['rps_attacked'].get('hardserve', NAN))} of "
            f"{_fmt(f['rps_unloaded'].get('hardserve', NAN))} req/s)",
            _peers(f["ratio_attack"], lambda v: _fmt(v, 2)),
            None if math.isnan(kept) else kept >= 0.9,
        )
    )
    lines = [
        "## Goals of issue 7",
        "",
        "Every figure below comes from this run; each goal's method is in its section further "
        "down. Ratios of a peer are its own figure in the same terms (for the 1,024-connection "
        "and attack rows, the peer's own ratio).",
        "",
        "| goal | hardserve | peers | |",
        "| --- | ---: | --- | --- |",
    ]
    for goal, figure, peers, ok in rows:
        lines.append(f"| {goal} | {figure} | {peers} | {_verdict(ok)} |")
    met = sum(ok is True for *_, ok in rows)
    measured = sum(ok is not None for *_, ok in rows)
    lines += ["", f"hardserve meets {met} of the {measured} goals measured in this run.", ""]
    lines += _granian_caveats(summary)
    return lines


# wrk's core share at or above which a load is taken to be set by the client, not the server.
CLIENT_BOUND = 0.95


def _granian_caveats(summary: Summary) -> list[str]:
    """How far to trust the rows against granian: a load where wrk's own core was full
    measures the client as much as the server, and rounds whose ranges overlap say the
    medians' order could turn in the next run."""
    bound: list[str] = []
    overlapping: list[str] = []
    for app in ("big", "stream"):
        for mode in ("keep-alive", "close"):
            case = summary.get((app, mode), {})
            own, peer = case.get("hardserve"), case.get("granian")
            if own is None or peer is None:
                continue
            name = f"{app} ({mode})"
            busy = max(own["client_busy"], peer["client_busy"])
            if busy >= CLIENT_BOUND:
                bound.append(f"{name}, wrk's core at {busy:.0%}")
            (own_low, own_high), (peer_low, peer_high) = own["rps_range"], peer["rps_range"]
            if own_low <= peer_high and peer_low <= own_high:
                overlapping.append(
                    f"{name}: hardserve {_fmt(own_low)}-{_fmt(own_high)}, granian "
                    f"{_fmt(peer_low)}-{_fmt(peer_high)} req/s"
                )
    lines = []
    if bound:
        lines.append(
            "Client-bound against granian (the pace was wrk's as much as the server's): "
            + "; ".join(bound)
            + "."
        )
    if overlapping:
        if lines:
            lines.append("")
        lines.append(
            "Rounds that overlap between hardserve and granian (the medians' order can turn "
            "from one run to the next): " + "; ".join(overlapping) + "."
        )
    return [*lines, ""] if lines else []


# -- the scenario sections -------------------------------------------------------------------


def _commands(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    for record in records:
        seen.setdefault(record["server"], record["command"])
    return [seen[s] for s in ORDER if s in seen]


def _failures(records: list[dict[str, Any]]) -> list[str]:
    out = []
    for record in records:
        if "failure" in record:
            out.append(
                f"- {_label(record['server'])}, round {record['round']}: {record['failure']}"
            )
    return ["Failed rounds (not in the medians):", "", *out, ""] if out else []


def _errors(record_part: dict[str, Any] | None) -> str:
    if not record_part or "errors" not in record_part:
        return "n/a"
    parts = [f"{k.replace('_', '-')} {v}" for k, v in record_part["errors"].items() if v]
    return ", ".join(parts) or "0"


def _summed_errors(records: list[dict[str, Any]], server: str, key: str) -> str:
    totals: dict[str, int] = defaultdict(int)
    found = False
    for record in records:
        part = record.get(key)
        if record["server"] == server and isinstance(part, dict) and "failure" in part:
            # wrk gave no summary: it could not even connect before its deadline.
            return "wrk served nothing: " + str(part["failure"]).split(":")[0]
        if record["server"] == server and isinstance(part, dict) and "errors" in part:
            found = True
            for kind, count in part["errors"].items():
                totals[kind] += count
    return _errors({"errors": totals}) if found else "n/a"


def concurrency_section(records: list[dict[str, Any]], duration_s: int) -> list[str]:
    if not records:
        return []
    f = scenario_figures({"concurrency": records})
    pair_records = [{"server": r["server"], **p} for r in records for p in concurrency_pairs(r)]
    per_round = max((len(concurrency_pairs(r)) for r in records), default=0)
    pairs_per_round = f"{per_round} pair{'' if per_round == 1 else 's'} of loads per round"
    lines = [
        "## 1,024 keep-alive connections on one worker",
        "",
        "hello with keep-alive, each server pinned to core 0 as in the matrix, wrk on core 1; "
        f"in the same server process, {pairs_per_round}: wrk runs 64 connections and 1,024 "
        f"(`-t1 -c1024 -d{duration_s}s`), each after a 1 s warm-up, 64 first in odd pairs and "
        "1,024 first in even ones. Each figure is the median over every pair of every round; "
        "the ratio is the median of the pairs' own ratios, so that a slow moment of the host "
        "weighs on both loads of a pair. Latency percentiles are wrk's, from "
        "`bench/report.lua`. Every connection comes from 127.0.0.1, so each server's own "
        "connection limit is raised where it would refuse them: hardserve's per-client cap "
        "(`client_connections_max`, 256 per address per worker; it has no off value, so 2048), "
        "gunicorn's `worker_connections` (1,000) and waitress's `connection_limit` (100; "
        "with `--asyncore-use-poll`, since its select() loop exits past file descriptor "
        "1023). hardserve's pool queue keeps its default (`pool_queue_max` 1,024, one request "
        "per connection); with the former default of 64 it answered ~950 of the 1,024 requests "
        "in flight 503 at once ([NOTES.md](NOTES.md)), where the peers queue them without "
        "bound.",
        "",
        "```sh",
        *_commands(records),
        "```",
        "",
        "| server | req/s, 64 conns | req/s, 1,024 conns | 1,024 ÷ 64 | p50 at 1,024 "
        "| p99 at 1,024 | p99 ÷ p50 | errors at 1,024 (all loads) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in _servers(f["rps_64"]):
        lines.append(
            f"| {_label(s)} | {_fmt(f['rps_64'][s])} | {_fmt(f['rps_1024'][s])} "
            f"| {_fmt(f['ratio_1024'][s], 2)} | {_fmt(f['p50_1024'][s], 1)} ms "
            f"| {_fmt(f['p99_1024'][s], 1)} ms | {_fmt(f['tail_1024'][s], 1)} "
            f"| {_summed_errors(pair_records, s, 'high')} |"
        )
    return [*lines, "", *_cpu_rise_table(f), *_failures(records)]


def _cpu_rise_table(f: dict[str, dict[str, float]]) -> list[str]:
    """Where the cost of 1,024 connections lands: the server's CPU per request at each count,
    and the kernel's part of it (what it spends on the sockets of both ends, since on loopback
    a write runs the receiving socket's side too)."""
    servers = _servers(f["system_1024"])
    if not servers:
        return []  # a run from before these figures were kept
    lines = [
        "Server CPU per request (medians over the pairs), and the kernel's part of it:",
        "",
        "| server | µs at 64 | kernel µs at 64 | µs at 1,024 | kernel µs at 1,024 "
        "| rise, user | rise, kernel |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in servers:
        cpu_64, cpu_1024 = f["cpu_64"][s], f["cpu_1024"][s]
        sys_64, sys_1024 = f["system_64"][s], f["system_1024"][s]
        lines.append(
            f"| {_label(s)} | {_fmt(cpu_64, 1)} | {_fmt(sys_64, 1)} | {_fmt(cpu_1024, 1)} "
            f"| {_fmt(sys_1024, 1)} | {_fmt((cpu_1024 - sys_1024) - (cpu_64 - sys_64), 1)} "
            f"| {_fmt(sys_1024 - sys_64, 1)} |"
        )
    return [*lines, ""]


def workers_section(records: list[dict[str, Any]], duration_s: int) -> list[str]:
    if not records:
        return []
    rps = per_server(records, lambda r: r["load"]["rps"])
    cpu = per_server(records, lambda r: r["load"]["cpu_us_per_request"])
    lines = [
        "## Two workers on two cores",
        "",
        "hello with keep-alive; each server runs 2 worker processes (8 threads each where it "
        "has threads; waitress has no worker processes and is left out), and nothing is "
        f"pinned: wrk (`-t2 -c64 -d{duration_s}s`, after a 1 s warm-up) shares the same two "
        "cores with the workers, so every figure includes the cost of the load generator "
        "stealing CPU from the server, alike for all. The goal is hardserve at 2 x gunicorn "
        "gthread's req/s or more. 64 connections, as in the matrix: with 128, hardserve's "
        "workers do not get half each, and the one with more than its threads and pool queue "
        "(72) answers the rest 503 ([NOTES.md](NOTES.md)).",
        "",
        "```sh",
        *_commands(records),
        "```",
        "",
        "| server | req/s | hardserve ÷ server | CPU µs/req (both workers and master) "
        "| errors (all rounds) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    own = rps.get("hardserve", NAN)
    for s in _servers(rps):
        ratio = "—" if s == "hardserve" else _fmt(_div(own, rps[s]), 2)
        lines.append(
            f"| {_label(s)} | {_fmt(rps[s])} | {ratio} | {_fmt(cpu.get(s, NAN), 1)} "
            f"| {_summed_errors(records, s, 'load')} |"
        )
    return [*lines, "", *_failures(records)]


def memory_section(records: list[dict[str, Any]], count: int) -> list[str]:
    if not records:
        return []
    f = scenario_figures({"memory": records})
    lines = [
        "## Memory: an idle worker, idle keep-alive connections",
        "",
        "Each server (one worker, pinned to core 0, hello app) answers one request; half a "
        "second later the worker's RSS (VmRSS of the worker process, `/proc/PID/status`) is "
        f"the *idle worker* figure. Then `bench/attack.py idle` (core 1) opens {count:,} "
        "keep-alive connections, sends one `GET /` on each and reads the whole answer, and "
        "leaves them open and silent; once all are answered the worker's RSS is read again. "
        "The difference over the connections answered and still open at that moment is the "
        "cost of one idle connection. "
        "The connections come from 127.0.0.2, 127.0.0.3, ..., 200 from each, so hardserve's "
        "per-client cap (256) stays in place; the idle timeouts are raised so none is closed "
        "before it is counted (hardserve `--keepalive-timeout-s 60`, gunicorn `--keep-alive "
        "60`, 2 s by default), and so are the connection limits (gunicorn "
        "`--worker-connections`, waitress `--connection-limit` with `--asyncore-use-poll`). "
        "granian has no keep-alive timeout setting; *open when measured* and *still open "
        "afterwards* say how many of the connections it kept.",
        "",
        "```sh",
        *_commands(records),
        "```",
        "",
        "| server | idle worker RSS | RSS per idle connection | connections answered "
        "| open when measured | still open afterwards |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in _servers(f["idle_rss_mib"]):
        lines.append(
            f"| {_label(s)} | {_fmt(f['idle_rss_mib'][s], 1, 'MiB')} "
            f"| {_fmt(f['bytes_per_conn'].get(s, NAN), 0, 'B')} "
            f"| {_fmt(f['idle_answered'].get(s, NAN))} "
            f"| {_fmt(f['idle_open'].get(s, NAN))} "
            f"| {_fmt(f['idle_still_open'].get(s, NAN))} |"
        )
    return [*lines, "", *_failures(records)]


def attack_section(records: list[dict[str, Any]], duration_s: int) -> list[str]:
    if not records:
        return []
    f = scenario_figures({"attack": records})
    ready = per_server(records, lambda r: r["attack_ready"]["opened_once"])
    ramp = per_server(records, lambda r: r["attack_ready"]["ramp_s"])
    closed = per_server(
        records,
        lambda r: (
            r["attack_done"].get("slowloris_closed_by_server", 0)
            + r["attack_done"].get("slow_reader_closed_by_server", 0)
        ),
    )
    lines = [
        "## Under attack: 1,000 slowloris and 200 slow readers",
        "",
        "Each server runs `bench.apps:attack` (hello on `/`, 16 MiB on `/big`) with its "
        "defaults, one worker pinned to core 0. wrk loads `/` with keep-alive from 127.0.0.1 "
        f"(64 connections, 1 s warm-up, {duration_s} s measured): the *unloaded* figure. Then "
        "`bench/attack.py slow` (core 1, beside wrk) opens 1,000 slowloris connections (each "
        "sends `GET / HTTP/1.1`, a Host field and the start of a header, then one more byte "
        "every second, never ending the head) and 200 slow readers (a 4 KiB receive buffer, "
        "`GET /big`, never read), from 127.0.0.2, 127.0.0.3, ... (200 per address, so no "
        "per-client cap refuses them, and the wrk load from 127.0.0.1 stays apart). A "
        "connection the server closes is opened again at once. Once all have connected "
        "(*ramp*) and a second has passed, wrk loads `/` again the same way: *under "
        "attack*. 16 MiB is more than the kernel's socket buffers take (tcp_wmem allows up to "
        "4 MiB), so a server has to wait on each slow reader, not just hand the bytes to the "
        "kernel. req/s counts only answers below 400, as everywhere. The same is then done "
        "with the 1,000 slowloris connections alone and with the 200 slow readers alone, a "
        "fresh attacker each time, to show which half costs what; the goal is the first, "
        "both together.",
        "",
        "```sh",
        *_commands(records),
        "```",
        "",
        "| server | req/s unloaded | req/s under attack | under attack ÷ unloaded "
        "| slowloris only ÷ unloaded | slow readers only ÷ unloaded "
        "| non-2xx under attack | attackers connected, ramp | closed by the server "
        "| worker peak RSS | errors under attack (all rounds) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in _servers(f["rps_unloaded"]):
        lines.append(
            f"| {_label(s)} | {_fmt(f['rps_unloaded'][s])} "
            f"| {_fmt(f['rps_attacked'].get(s, NAN))} | {_fmt(f['ratio_attack'].get(s, NAN), 2)} "
            f"| {_fmt(f['ratio_slowloris_only'].get(s, NAN), 2)} "
            f"| {_fmt(f['ratio_slow_readers_only'].get(s, NAN), 2)} "
            f"| {_fmt(f['attack_non2xx'].get(s, NAN))} "
            f"| {_fmt(ready.get(s, NAN))}, {_fmt(ramp.get(s, NAN), 1)} s "
            f"| {_fmt(closed.get(s, NAN))} | {_fmt(f['attack_hwm_mib'].get(s, NAN), 1, 'MiB')} "
            f"| {_summed_errors(records, s, 'attacked')} |"
        )
    lines += [
        "",
        "*closed by the server*: attacking connections the server closed while the attack "
        "lasted (each was opened again). *worker peak RSS*: VmHWM of the worker at the end "
        "of the attacked load.",
        "",
    ]
    return [*lines, *_failures(records)]


def crowded_section(records: list[dict[str, Any]], duration_s: int) -> list[str]:
    if not records:
        return []
    f = scenario_figures({"crowded": records})
    lines = [
        "## Under attack beside 1,024 connections",
        "",
        "Not a goal of issue 7: the attack above, with wrk's 1,024 keep-alive connections "
        "instead of 64. There more requests are in flight than hardserve prepares at once "
        "(`pool_prepared_max`, 128: the rest wait, unread, for their turn), so this shows "
        "whether the attackers' heads, which never end, take the places of the load's. wrk "
        f"loads `/` with 1,024 connections (1 s warm-up, {duration_s} s measured), then "
        "`bench/attack.py slow` opens the 1,000 slowloris and 200 slow readers as above and "
        "wrk loads `/` again the same way. Each server's connection limits are raised as in "
        "the 1,024-connection section, and so that 2,224 connections fit (hardserve's "
        "`connections_max` is 2,048 by default).",
        "",
        "```sh",
        *_commands(records),
        "```",
        "",
        "| server | req/s unloaded, 1,024 conns | req/s under attack | under attack ÷ unloaded "
        "| p99 under attack | non-2xx under attack | errors under attack (all rounds) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in _servers(f["rps_crowded_unloaded"]):
        lines.append(
            f"| {_label(s)} | {_fmt(f['rps_crowded_unloaded'][s])} "
            f"| {_fmt(f['rps_crowded_attacked'].get(s, NAN))} "
            f"| {_fmt(f['ratio_crowded'].get(s, NAN), 2)} "
            f"| {_fmt(f['p99_crowded_attacked'].get(s, NAN), 1, 'ms')} "
            f"| {_fmt(f['crowded_non2xx'].get(s, NAN))} "
            f"| {_summed_errors(records, s, 'attacked')} |"
        )
    return [*lines, "", *_failures(records)]


def _span(values: list[float]) -> str:
    return f"{_fmt(min(values))}-{_fmt(max(values))}" if values else "n/a"


def versus_section(versus: list[dict[str, Any]] | None, duration_s: int) -> list[str]:
    if not versus:
        return []
    figures = versus_figures(versus)
    pairs = max((f["pairs"] for f in figures.values()), default=0)
    lines = [
        "## 1 MiB and chunked streams: interleaved pairs against granian",
        "",
        "The goal rows for these four cases are judged here. A 1 MiB response costs mostly the "
        "kernel's copy, and this machine has periods of up to a minute in which that copy "
        "costs up to three times as much for whichever server runs then "
        "([NOTES.md](NOTES.md), eleventh look); in the matrix, one such period over two of a "
        "server's three loads turns the medians' order. Here hardserve and granian run side "
        "by side on core 0 (the matrix's command lines), and wrk (`-t1 -c64`, on core 1) loads "
        f"them in turn, {pairs} pairs of {duration_s} s loads per case, hardserve first in odd "
        "pairs and granian first in even ones, so that such a period or a drift falls on both "
        "alike. Each server warms up once; the ratio of a pair is hardserve's req/s over "
        "granian's, and the row takes the median of the pairs' ratios. *Kernel µs/resp* is "
        "the server's system time per response: the periods show there. *wrk µs/resp* is "
        "the client's CPU per response against each server: where it times the req/s comes "
        "to about a second per second, wrk's core was full and set the pace.",
        "",
        "| case | ratio, median (range) | pairs hardserve led | hardserve req/s | granian req/s "
        "| hardserve kernel µs/resp | granian kernel µs/resp | wrk µs/resp, hardserve / "
        "granian |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in versus:
        key = (case["app"], case["mode"])
        name = f"{case['app']} ({case['mode']})"
        if key not in figures:
            lines.append(f"| {name} | failed: {case.get('failure', 'no pair')} | | | | | | |")
            continue
        f = figures[key]
        low, high = f["ratio_range"]
        lines.append(
            f"| {name} | {_fmt_ratio(f['ratio'], 1)} ({_fmt(low, 2)}-{_fmt(high, 2)}) "
            f"| {f['ahead']} of {f['pairs']} "
            f"| {_fmt(_median(f['rps_hardserve']))} ({_span(f['rps_hardserve'])}) "
            f"| {_fmt(_median(f['rps_granian']))} ({_span(f['rps_granian'])}) "
            f"| {_fmt(_median(f['system_us_per_request_hardserve']))} "
            f"({_span(f['system_us_per_request_hardserve'])}) "
            f"| {_fmt(_median(f['system_us_per_request_granian']))} "
            f"({_span(f['system_us_per_request_granian'])}) "
            f"| {_fmt(_median(f['client_us_hardserve']))} / "
            f"{_fmt(_median(f['client_us_granian']))} |"
        )
    failed = [f"- {c['app']} ({c['mode']}): {c['failure']}" for c in versus if c.get("failure")]
    commands = next(iter(versus))["commands"]
    return [
        *lines,
        "",
        *(["Failed (pairs before the failure count):", "", *failed, ""] if failed else []),
        "```sh",
        *(commands[s] for s in ("hardserve", "granian") if s in commands),
        "```",
        "",
    ]


def scenario_sections(scenarios: Scenarios, duration_s: int, idle_count: int) -> list[str]:
    return [
        *concurrency_section(scenarios.get("concurrency", []), duration_s),
        *workers_section(scenarios.get("workers", []), duration_s),
        *memory_section(scenarios.get("memory", []), idle_count),
        *attack_section(scenarios.get("attack", []), duration_s),
        *crowded_section(scenarios.get("crowded", []), duration_s),
    ]


# -- the chart -----------------------------------------------------------------------------------


def write_goals_chart(summary: Summary, scenarios: Scenarios, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = scenario_figures(scenarios)
    fig, axes = plt.subplots(3, 3, figsize=(16, 13))

    def bars(
        axis: Any,
        figures: dict[str, float],
        title: str,
        goal: float | None = None,
        digits: int = 0,
    ) -> None:
        servers = _servers(figures)
        values = [figures[s] for s in servers]
        drawn = axis.bar([_label(s) for s in servers], values, color=[COLOURS[s] for s in servers])
        axis.bar_label(drawn, labels=[_fmt(v, digits) for v in values], fontsize=8, padding=2)
        if goal is not None:
            axis.axhline(goal, color="black", linestyle="--", linewidth=1)
            axis.text(
                0.99,
                goal,
                "goal",
                transform=axis.get_yaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=8,
            )
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8, rotation=15)
        axis.grid(axis="y", alpha=0.3)
        axis.margins(y=0.2)

    # 1 MiB and chunked: req/s per server, grouped by case.
    axis = axes[0][0]
    cases = [("big", "keep-alive"), ("big", "close"), ("stream", "keep-alive"), ("stream", "close")]
    servers = [s for s in ORDER if any(s in summary.get(c, {}) for c in cases)]
    width = 0.8 / max(len(servers), 1)
    for index, server in enumerate(servers):
        xs = [i + (index - (len(servers) - 1) / 2) * width for i in range(len(cases))]
        values = [summary.get(c, {}).get(server, {}).get("rps", NAN) for c in cases]
        axis.bar(xs, values, width, label=_label(server), color=COLOURS[server])
    axis.set_xticks(range(len(cases)), [f"{a}\n{m}" for a, m in cases], fontsize=8)
    axis.set_title("1 MiB and chunked 1 MiB: req/s, the matrix's medians", fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(axis="y", alpha=0.3)

    peaks: dict[str, float] = {}
    for case in cases:
        for server, figures in summary.get(case, {}).items():
            peaks[server] = max(peaks.get(server, 0.0), figures.get("hwm_kib", 0) / 1024)
    bars(axes[0][1], peaks, "big and stream: peak RSS per worker, MiB", 40, 1)
    bars(axes[0][2], f["rps_2w"], "2 workers on 2 cores: req/s (goal: ≥ 2 x gunicorn)")
    bars(
        axes[1][0],
        f["ratio_1024"],
        "1,024 connections: req/s ÷ req/s at 64",
        0.9,
        2,
    )
    bars(axes[1][1], f["tail_1024"], "1,024 connections: p99 ÷ p50 latency", 3, 1)
    bars(
        axes[1][2],
        {s: v / 1024 for s, v in f["bytes_per_conn"].items()},
        "RSS per idle keep-alive connection, KiB",
        8,
        1,
    )
    bars(axes[2][0], f["idle_rss_mib"], "idle worker RSS, MiB", 30, 1)
    axis = axes[2][1]
    servers = _servers(f["rps_unloaded"])
    xs = list(range(len(servers)))
    axis.bar(
        [x - 0.2 for x in xs],
        [f["rps_unloaded"][s] for s in servers],
        0.4,
        label="unloaded",
        color="#bbbbbb",
    )
    axis.bar(
        [x + 0.2 for x in xs],
        [f["rps_attacked"].get(s, NAN) for s in servers],
        0.4,
        label="under attack",
        color=[COLOURS[s] for s in servers],
    )
    axis.set_xticks(xs, [_label(s) for s in servers], fontsize=8, rotation=15)
    axis.set_title("hello req/s, unloaded and under attack", fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(axis="y", alpha=0.3)
    axis = axes[2][2]
    servers = _servers(f["ratio_attack"])
    phases = (
        ("ratio_attack", "both (the goal)", 1.0),
        ("ratio_slowloris_only", "1,000 slowloris only", 0.6),
        ("ratio_slow_readers_only", "200 slow readers only", 0.3),
    )
    for index, (key, label, alpha) in enumerate(phases):
        xs = [x + (index - 1) * 0.27 for x in range(len(servers))]
        values = [f[key].get(s, NAN) for s in servers]
        drawn = axis.bar(
            xs, values, 0.27, label=label, color=[COLOURS[s] for s in servers], alpha=alpha
        )
        axis.bar_label(drawn, labels=[_fmt(v, 2) for v in values], fontsize=6, padding=1)
    axis.axhline(0.9, color="black", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(servers)), [_label(s) for s in servers], fontsize=8, rotation=15)
    axis.set_title("hello req/s under attack ÷ unloaded (goal: ≥ 0.9 with both)", fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(axis="y", alpha=0.3)
    axis.margins(y=0.2)
    fig.suptitle("The goals of issue 7: hardserve and its peers, one run")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
