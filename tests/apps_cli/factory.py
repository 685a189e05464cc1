"""An app factory, for `MODULE:make_app(literal args)` specs.

When APPS_CLI_IMPORT_MARKER names a file, importing this module creates it: a test that
hands the loader a spec it must refuse uses this to prove the module was never even imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_marker = os.environ.get("APPS_CLI_IMPORT_MARKER")
if _marker:
    Path(_marker).touch()


def make_app(greeting: str = "hello", *, status: int = 200) -> Callable[..., Iterable[bytes]]:
    body = greeting.encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(f"{status} Whatever", [("Content-Length", str(len(body)))])
        return [body]

    return app
