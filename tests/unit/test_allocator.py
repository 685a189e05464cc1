"""hardserve.worker.allocator: the malloc arena limit. Whether it holds for new threads is shown
end to end by tests/functional/test_cli.py::test_malloc_arena_max (glibc's malloc_info)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hardserve.worker import allocator
from tests.helpers import TIMEOUT_S


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt's numbers are glibc's")
def test_glibc_takes_the_limit() -> None:
    # In a child: the limit stays with the process that sets it.
    code = "from hardserve.worker.allocator import limit_malloc_arenas as f; print(f(2))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    )
    assert out.stdout.strip() == "True"


def test_elsewhere_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.limit_malloc_arenas(2) is False
