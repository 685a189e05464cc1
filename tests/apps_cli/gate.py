"""An app whose request stays in progress until the test lets it finish.

make_app(DIRECTORY): each request creates DIRECTORY/started, then waits for DIRECTORY/release
to appear (polled, at most TIMEOUT_S) and answers 200. That lets a test signal the server while
it knows for certain a request is inside the app. If release never comes the answer is 504, so
the test fails on the status instead of hanging.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TIMEOUT_S = 10.0
POLL_S = 0.01


def make_app(directory: str) -> Callable[..., Iterable[bytes]]:
    started = Path(directory) / "started"
    release = Path(directory) / "release"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started.touch()
        deadline = time.monotonic() + TIMEOUT_S
        while not release.exists():
            if time.monotonic() > deadline:
                start_response("504 Gateway Timeout", [("Content-Length", "0")])
                return [b""]
            time.sleep(POLL_S)
        body = b"finished after the signal\n"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


def make_app_slowly(directory: str) -> Callable[..., Iterable[bytes]]:
    """A factory that loads slowly: it writes its worker's pid to DIRECTORY/loading, then waits
    for DIRECTORY/loaded to appear (at most TIMEOUT_S) before it returns a hello app. A test
    can signal a worker that is certainly still loading its app."""

    loading = Path(directory) / "loading"
    loaded = Path(directory) / "loaded"
    loading.write_text(str(os.getpid()))
    deadline = time.monotonic() + TIMEOUT_S
    while not loaded.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = b"loaded\n"
        start_response(
            "200 OK", [("Content-Length", str(len(body))), ("X-Worker-Pid", str(os.getpid()))]
        )
        return [body]

    return app
