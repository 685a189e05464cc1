"""An app for the master's tests: every answer names the worker that gave it (X-Worker-Pid),
and some paths misbehave the ways a supervisor must handle.

    /            200 at once
    /sleep?s=F   200 after F seconds (a request in flight)
    /spin        sum(range(10**11)): a C loop that holds the GIL, so the worker's event loop
                 stops turning (no heartbeat)
    /forever     sleeps forever in the app: the loop still turns, the request never ends
    /orphan      starts `sh`, which starts a `sleep` in the background and exits at once:
                 the sleep outlives its parent and is re-parented (to PID 1 or the nearest
                 subreaper); the body is the sleep's pid as seen inside the worker
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs


def spin() -> int:
    return sum(range(10**11))


def forever() -> None:
    threading.Event().wait()


def orphan() -> bytes:
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    out, _ = shell.communicate(timeout=10)  # sh is reaped here: only the sleep is left
    return out.strip()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    body = b"ok\n"
    if path == "/sleep":
        time.sleep(float(query.get("s", ["0.1"])[0]))
    elif path == "/spin":
        body = str(spin()).encode()
    elif path == "/forever":
        forever()
    elif path == "/orphan":
        body = orphan()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [body]
