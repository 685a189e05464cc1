"""Reports, as JSON, what the serving process looks like from inside the app: its working
directory, how many pool threads hardserve started (they are named hardserve-pool-N) and how
many objects the worker moved out of the garbage collector's reach at start (gc.freeze), and the
collector's thresholds."""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    pool = sorted(t.name for t in threading.enumerate() if t.name.startswith("hardserve-pool-"))
    body = json.dumps(
        {
            "cwd": os.getcwd(),
            "pool_threads": pool,
            "gc_frozen": gc.get_freeze_count(),
            "gc_threshold": gc.get_threshold(),
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
