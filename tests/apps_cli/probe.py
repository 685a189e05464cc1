"""Reports, as JSON, what the serving process looks like from inside the app: its working
directory, how many pool threads hardserve started (they are named hardserve-pool-N) and how
many objects the worker moved out of the garbage collector's reach at start (gc.freeze), the
collector's thresholds, and with ?arenas how many malloc arenas the process has once six new
threads have each allocated (glibc's malloc_info)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any


def _arenas_after_new_threads(count: int = 6) -> int:
    """glibc gives a thread its arena at its first malloc: each new thread allocates a block
    below the mmap threshold (128 KiB) while all are alive, then the arenas are counted."""
    all_allocated = threading.Barrier(count)

    def allocate() -> None:
        block = bytearray(50_000)  # from the thread's arena, not a mapping of its own
        all_allocated.wait(timeout=10)
        del block

    threads = [threading.Thread(target=allocate) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "malloc.xml")
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        with open(path) as report:
            return report.read().count("<heap nr=")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    pool = sorted(t.name for t in threading.enumerate() if t.name.startswith("hardserve-pool-"))
    facts = {
        "cwd": os.getcwd(),
        "pool_threads": pool,
        "gc_frozen": gc.get_freeze_count(),
        "gc_threshold": gc.get_threshold(),
    }
    if environ.get("QUERY_STRING") == "arenas":
        facts["malloc_arenas"] = _arenas_after_new_threads()
    body = json.dumps(facts).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
