"""Parsing Python source for the tests that hold rules by reading it (test_architecture,
test_slots, test_stats)."""

from __future__ import annotations

import ast
import gc


def parse_source(source: str, filename: str) -> ast.Module:
    """ast.parse with the cyclic collector held off. On Python 3.11 a collection inside
    ast.parse may finalize an object that logs a traceback (an asyncio task of an earlier
    test whose exception was never retrieved), and formatting it parses again (the traceback's
    caret anchors); when that inner parse fails, it leaves the AST builder's depth count off
    and the outer parse raises "SystemError: AST constructor recursion depth mismatch"
    (CPython gh-106905, seen here under load)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=filename)
    finally:
        if enabled:
            gc.enable()
