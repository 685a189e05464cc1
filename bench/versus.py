"""Interleaved pairs against granian: the 1 MiB and chunked stream rows of issue 7.

A 1 MiB response's cost is mostly the kernel's copy, and this machine has periods, up to a
minute long, in which that copy costs up to three times as much for every server (NOTES.md,
"eleventh look"). The matrix gives each server three loads per case, each some seconds apart
from the other server's; one such period over two of one server's loads turns the medians'
order. Here hardserve and granian run side by side, both pinned to the server core, and wrk
loads them in turn: PAIRS pairs per case, the order alternating (hardserve first, then granian
first), so that a slow period or a drift of the machine falls on both alike. The goal rows
take the median of the pairs' ratios; every load's kernel time per response is kept, so a
report can show which pairs fell in such a period.
"""

from __future__ import annotations

import http.client
from typing import Any

from bench.bench import measure, sanity_check
from bench.scenarios import Context, finish_server

CASES = (("big", "keep-alive"), ("big", "close"), ("stream", "keep-alive"), ("stream", "close"))
SERVERS = ("hardserve", "granian")
PAIRS = 8
QUICK_PAIRS = 2


def _case(ctx: Context, case_no: int, app: str, mode: str, pairs: int) -> dict[str, Any]:
    # The case's number stands for the round in the log's name and in the process records.
    started = [ctx.start("versus", name, app, case_no) for name in SERVERS]
    servers = {name: server for name, (server, _) in zip(SERVERS, started, strict=True)}
    case: dict[str, Any] = {
        "app": app,
        "mode": mode,
        "commands": {
            name: record["command"] for name, (_, record) in zip(SERVERS, started, strict=True)
        },
        "pairs": [],
    }
    try:
        for server in servers.values():
            server.wait_ready()
            sanity_check(server)
        for pair_no in range(1, pairs + 1):
            order = SERVERS if pair_no % 2 else SERVERS[::-1]
            loads = {
                name: measure(
                    servers[name],
                    mode,
                    pair_no,
                    ctx.duration_s,
                    # Each server warms up once, before its first measured load.
                    ctx.warmup_s if pair_no == 1 else 0,
                    ctx.settling,
                ).record()
                for name in order
            }
            own, peer = loads["hardserve"]["rps"], loads["granian"]["rps"]
            pair = {"pair": pair_no, "first": order[0], "ratio": own / peer if peer else None}
            case["pairs"].append(pair | loads)
            print(
                f"versus {app:6} {mode:10} pair {pair_no}: hardserve {own:7.0f} req/s "
                f"({loads['hardserve']['system_us_per_request']:5.0f} µs kernel/resp), "
                f"granian {peer:7.0f} ({loads['granian']['system_us_per_request']:5.0f}), "
                f"ratio {pair['ratio'] or 0:.3f}",
                flush=True,
            )
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        case["failure"] = f"{type(exc).__name__}: {exc}"
        print(f"versus {app} {mode}: FAILED {exc}", flush=True)
    finally:
        case["processes"] = []
        for server, record in started:
            finish_server(server, record)
            case["processes"].append(record)
    return case


def run_versus(ctx: Context) -> list[dict[str, Any]]:
    """Every case of CASES with both servers, unless one of them is not in this run."""
    if not all(name in ctx.servers for name in SERVERS):
        return []
    pairs = QUICK_PAIRS if ctx.quick else PAIRS
    return [_case(ctx, n, app, mode, pairs) for n, (app, mode) in enumerate(CASES, 1)]
