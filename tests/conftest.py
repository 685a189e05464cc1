from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their helpers as `tests.helpers`, from the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# hardserve started as root refuses to serve unless told to (--user or --allow-root). The test
# machines run as root (containers), so every server the tests start may run as root; the
# refusal itself is tested with this variable removed (tests/functional/test_master.py).
ALLOW_ROOT = {"HARDSERVE_ALLOW_ROOT": "1"} if os.geteuid() == 0 else {}
os.environ.update(ALLOW_ROOT)


@pytest.fixture
def clean_server_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Servers the tests start get the runner's environment: a HARDSERVE_* setting, a PORT, or
    systemd's own variables (when the tests themselves run under systemd) would change what
    they do. Removed for the test, with ALLOW_ROOT put back."""
    for name in list(os.environ):
        if name.startswith(("HARDSERVE_", "LISTEN_", "WATCHDOG_")) or name in (
            "PORT",
            "NOTIFY_SOCKET",
        ):
            monkeypatch.delenv(name)
    for name, value in ALLOW_ROOT.items():
        monkeypatch.setenv(name, value)
    yield
