"""The smallest app: 200 and a fixed body, so a test can tell it is really being served."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello from apps_cli\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


# Names the loader must refuse or report: a value that is not callable, and a factory.
not_callable = {"a": "dict is not a WSGI app"}
