"""An app that sets the garbage collector's thresholds itself, at import: the server must leave
them as they are (tests/functional/test_cli.py)."""

from __future__ import annotations

import gc

from tests.apps_cli.probe import app

gc.set_threshold(1234, 5, 6)

__all__ = ["app"]
