"""The fuzzing command: `python -m security.fuzz [--seconds N] [--seed S] [--engine E]`.

1. Every seed (gunicorn's request corpus, security/corpus/*.http) goes through `check_input`.
2. An engine then generates inputs for the rest of the time:
   - atheris (libFuzzer, coverage-guided over hardserve and h11), in a child process, with the
     seeds and the inputs it found before (security/fuzz/.corpus/) as its starting corpus;
   - hypothesis, in this process, where atheris is not installed (or `--engine hypothesis`):
     generated requests, random bytes and mutated seeds, its example database in
     security/fuzz/.hypothesis/.
3. A violation writes the input to security/fuzz/findings/<hash>.bin (its description beside
   it, in <hash>.txt), prints one line and the command exits 1. Otherwise it prints the figures
   of the run and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from security.fuzz import harness
from security.fuzz.harness import Violation

from hardserve.http.parser import RequestParser

DEFAULT_SECONDS = 600
MAX_LEN = 2048
GROWTH_MAX_BYTES = 64 * 2**20
CORPUS_DIR = harness.FUZZ_DIR / ".corpus"
HYPOTHESIS_DIR = harness.FUZZ_DIR / ".hypothesis"
LOG = harness.FUZZ_DIR / ".corpus" / "last-run.log"
DICTIONARY = harness.FUZZ_DIR / "http.dict"
_LIBFUZZER_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")


@dataclasses.dataclass
class Result:
    engine: str
    seconds: float = 0.0
    executions: int = 0
    coverage: str = ""
    peak_rss_mb: float = 0.0
    memory_growth_mb: float | None = None
    finding: str | None = None  # the one-line description

    def line(self) -> str:
        parts = [
            f"fuzz: {self.engine}",
            f"{self.seconds:.0f} s",
            f"{self.executions} executions",
        ]
        if self.coverage:
            parts.append(self.coverage)
        if self.peak_rss_mb:
            parts.append(f"peak rss {self.peak_rss_mb:.0f} MB")
        if self.memory_growth_mb is not None:
            parts.append(f"rss growth after warm-up {self.memory_growth_mb:.1f} MB")
        parts.append(f"finding: {self.finding}" if self.finding else "no findings")
        return ", ".join(parts)


def check_seeds(
    seeds: Iterable[tuple[str, bytes]],
    findings: Path,
    parser_factory: harness.ParserFactory = RequestParser,
) -> tuple[int, str | None]:
    """Run every seed through the invariants: (count, the first finding's line or None)."""
    count = 0
    for name, data in seeds:
        count += 1
        try:
            harness.check_input(data, parser_factory)
        except Violation as violation:
            path = harness.save_finding(data, str(violation), findings)
            return count, f"{path} (seed {name}): {violation}"
    return count, None


# -- atheris -----------------------------------------------------------------------------------


def atheris_available() -> bool:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(seconds: int, seed: int, findings: Path, max_len: int) -> Result:
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    for _name, data in harness.seed_inputs():
        path = CORPUS_DIR / f"seed-{hashlib.sha1(data).hexdigest()}"
        if not path.exists():
            path.write_bytes(data)
    findings.mkdir(parents=True, exist_ok=True)
    before = set(findings.iterdir())
    command = [
        sys.executable,
        "-m",
        "security.fuzz.atheris_target",
        f"-max_total_time={seconds}",
        f"-seed={seed}",
        f"-max_len={max_len}",
        "-timeout=10",
        f"-dict={DICTIONARY}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        str(CORPUS_DIR),
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(harness.ROOT), os.environ.get("PYTHONPATH", "")]),
        FUZZ_FINDINGS_DIR=str(findings),
        FUZZ_WARMUP_S=str(min(60.0, seconds / 5)),
        FUZZ_GROWTH_MAX_BYTES=str(GROWTH_MAX_BYTES),
    )
    result = Result("atheris")
    started = time.monotonic()
    rss_samples: list[tuple[float, float]] = []
    with LOG.open("w") as log:
        child = subprocess.Popen(
            command, cwd=harness.ROOT, env=env, stderr=subprocess.PIPE, text=True, errors="replace"
        )
        assert child.stderr is not None
        for line in child.stderr:
            log.write(line)
            _read_libfuzzer_line(line, result, rss_samples, time.monotonic() - started)
            if line.startswith("FINDING "):
                result.finding = line[len("FINDING ") :].strip()
            if any(word in line for word in ("INITED", "pulse", "DONE", "ERROR", "FINDING")):
                print(line, end="", file=sys.stderr, flush=True)
        status = child.wait()
    result.seconds = time.monotonic() - started
    # What libFuzzer saw of memory: the RSS on its status lines after the warm-up.
    warm = [rss for at, rss in rss_samples if at >= min(60.0, seconds / 5)]
    if warm:
        result.memory_growth_mb = max(warm) - warm[0]
    if status != 0 and result.finding is None:
        result.finding = _libfuzzer_finding(findings, before, status)
    return result


def _read_libfuzzer_line(
    line: str, result: Result, rss_samples: list[tuple[float, float]], at: float
) -> None:
    status = re.match(r"#(\d+)\s+\w+\s+(cov: \d+ ft: \d+ corp: \S+).*rss: (\d+)Mb", line)
    if status:
        result.executions = int(status.group(1))
        result.coverage = status.group(2)
        rss = float(status.group(3))
        result.peak_rss_mb = max(result.peak_rss_mb, rss)
        rss_samples.append((at, rss))
    done = re.match(r"stat::number_of_executed_units: (\d+)", line)
    if done:
        result.executions = int(done.group(1))
    peak = re.match(r"stat::peak_rss_mb: (\d+)", line)
    if peak:
        result.peak_rss_mb = float(peak.group(1))


def _libfuzzer_finding(findings: Path, before: set[Path], status: int) -> str:
    """libFuzzer's own artifact (a crash, timeout or out-of-memory), renamed to <hash>.bin."""
    for path in sorted(set(findings.iterdir()) - before):
        kind = _LIBFUZZER_ARTIFACT.match(path.name)
        if kind:
            data = path.read_bytes()
            description = f"libFuzzer {kind.group(1)} (exit status {status}); see {LOG}"
            saved = harness.save_finding(data, description, findings)
            path.unlink()
            return f"{saved} {description}"
    return f"the atheris child exited with status {status}; see {LOG}"


# -- hypothesis --------------------------------------------------------------------------------


def run_hypothesis(
    seconds: float,
    seed: int,
    findings: Path,
    max_len: int,
    *,
    parser_factory: harness.ParserFactory = RequestParser,
    database: Path | None = HYPOTHESIS_DIR,
    batch: int = 500,
) -> Result:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    seeds = [data[:max_len] for _name, data in harness.seed_inputs()]
    strategy = harness.fuzz_inputs(seeds, max_len)
    result = Result("hypothesis")
    watch = harness.MemoryWatch(warmup_s=min(60.0, seconds / 5), growth_max_bytes=GROWTH_MAX_BYTES)
    started = time.monotonic()
    failing: list[bytes] = []
    next_sample = started

    def one(data: bytes) -> None:
        nonlocal next_sample
        result.executions += 1
        try:
            harness.check_input(data, parser_factory)
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + 1.0
                watch.observe(now - started)
        except Violation:
            failing.append(data)
            raise

    config = settings(
        max_examples=batch,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(database)) if database else None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
    )
    round_ = 0
    while time.monotonic() - started < seconds:
        test: Callable[[], None] = hypothesis_seed(seed * 1_000_003 + round_)(
            config(given(strategy)(one))  # type: ignore[no-untyped-call]
        )
        round_ += 1
        try:
            test()
        except Violation as violation:
            data = failing[-1]  # hypothesis runs the shrunk example last
            path = harness.save_finding(data, str(violation), findings)
            result.finding = f"{path} {violation}"
            break
    result.seconds = time.monotonic() - started
    result.peak_rss_mb = watch.peak / 2**20
    result.memory_growth_mb = watch.growth / 2**20 if watch.baseline is not None else None
    return result


# -- the command -------------------------------------------------------------------------------


def main(
    argv: list[str] | None = None, *, parser_factory: harness.ParserFactory = RequestParser
) -> int:
    parser = argparse.ArgumentParser(prog="python -m security.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=DEFAULT_SECONDS, help="run time")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0: from the clock)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--max-len", type=int, default=MAX_LEN, help="longest input in bytes")
    parser.add_argument("--findings", type=Path, default=harness.FINDINGS_DIR)
    parser.add_argument(
        "--no-database", action="store_true", help="hypothesis: keep no example database"
    )
    args = parser.parse_args(argv)
    seed = args.seed or int(time.time()) % 2**31

    count, finding = check_seeds(harness.seed_inputs(), args.findings, parser_factory)
    print(f"fuzz: {count} seed inputs checked", file=sys.stderr)
    if finding is not None:
        print(f"FINDING {finding}")
        return 1

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "hypothesis"
    if engine == "atheris":
        if parser_factory is not RequestParser:
            raise SystemExit("the atheris engine runs the real parser only")
        result = run_atheris(args.seconds, seed, args.findings, args.max_len)
    else:
        database = None if args.no_database else HYPOTHESIS_DIR
        result = run_hypothesis(
            args.seconds,
            seed,
            args.findings,
            args.max_len,
            parser_factory=parser_factory,
            database=database,
        )
    print(f"{result.line()} (seed {seed})")
    if result.finding is not None:
        print(f"FINDING {result.finding}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
