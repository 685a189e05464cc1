"""The atheris (libFuzzer) target: run as a child process by `python -m security.fuzz`.

The arguments are libFuzzer's. hardserve and h11 are imported under atheris's instrumentation,
so libFuzzer is guided by their branch coverage. A violation writes the input to the findings
directory, prints one `FINDING <path> <description>` line to stderr and exits with status 3;
resident memory is sampled once a second (`FUZZ_WARMUP_S`, `FUZZ_GROWTH_MAX_BYTES`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["hardserve", "h11"]):
    from security.fuzz import harness

FINDING_EXIT = 3

_findings = Path(os.environ.get("FUZZ_FINDINGS_DIR", str(harness.FINDINGS_DIR)))
_watch = harness.MemoryWatch(
    warmup_s=float(os.environ.get("FUZZ_WARMUP_S", "60")),
    growth_max_bytes=int(os.environ.get("FUZZ_GROWTH_MAX_BYTES", str(64 * 2**20))),
)
_start = time.monotonic()
_next_sample = _start


def _report(data: bytes, violation: harness.Violation) -> None:
    path = harness.save_finding(data, str(violation), _findings)
    print(f"FINDING {path} {violation}", file=sys.stderr, flush=True)
    os._exit(FINDING_EXIT)


def test_one_input(data: bytes) -> None:
    global _next_sample
    try:
        harness.check_input(data)
        now = time.monotonic()
        if now >= _next_sample:
            _next_sample = now + 1.0
            _watch.observe(now - _start)
    except harness.Violation as violation:
        _report(data, violation)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
