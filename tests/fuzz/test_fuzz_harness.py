"""The fuzzing harness (security/fuzz/), tested in the normal suite: its invariants hold on the
seed corpus and on a bounded, deterministic batch of mutated inputs; and each invariant fails
when it should, against parsers broken on purpose."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from security.fuzz import harness, run
from security.fuzz.harness import SMALL_LIMITS, Violation, buffer_bound, check_input

from hardserve.http import environ as environ_module
from hardserve.http import parser as parser_module
from hardserve.http.parser import CLOSED, NEED_DATA, Event, Refusal, RequestHead, RequestParser
from hardserve.http.reasons import Reason

GOOD = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 5\r\n\r\nhello"
SMOKE_COUNT = 2000
SMOKE_SEED = 20251126


def _seeds() -> list[tuple[str, bytes]]:
    seeds = list(harness.seed_inputs())
    assert sum(name.startswith("gunicorn-requests/") for name, _ in seeds) >= 100, "no corpus"
    return seeds


def _kind(data: bytes, parser_factory: harness.ParserFactory = RequestParser) -> str | None:
    try:
        check_input(data, parser_factory)
    except Violation as violation:
        assert "\n" not in str(violation)
        return violation.kind
    return None


# -- the real parser passes --------------------------------------------------------------------


def test_every_seed_input_holds_the_invariants(tmp_path: Path) -> None:
    seeds = _seeds()
    assert run.check_seeds(seeds, tmp_path) == (len(seeds), None)
    assert not list(tmp_path.iterdir())


def test_a_bounded_batch_of_mutated_inputs_holds_the_invariants() -> None:
    seeds = [data[: run.MAX_LEN] for _, data in _seeds()]
    for data in harness.smoke_inputs(seeds, SMOKE_COUNT, SMOKE_SEED):
        check_input(data)


def test_the_smoke_inputs_are_deterministic_and_varied() -> None:
    first = list(harness.smoke_inputs([GOOD], 50, 1))
    assert first == list(harness.smoke_inputs([GOOD], 50, 1))
    assert len(set(first)) > 40


def test_the_buffer_bound_is_exact_in_the_head_and_in_the_trailers() -> None:
    # Whole lines up to head_max_bytes, then a field line one byte short of its limit.
    lines = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n"]
    used = sum(map(len, lines))
    while used < SMALL_LIMITS.head_max_bytes:
        size = min(SMALL_LIMITS.header_field_max_bytes, SMALL_LIMITS.head_max_bytes - used)
        size = max(size, 6)
        lines.append(b"X: " + b"a" * (size - 5) + b"\r\n")
        used += size
    assert used == SMALL_LIMITS.head_max_bytes
    head = b"".join(lines) + b"Y: " + b"b" * (SMALL_LIMITS.header_field_max_bytes - 4)
    parser = RequestParser(SMALL_LIMITS)
    parser.feed(head)
    assert parser.next_event() is NEED_DATA
    bound = buffer_bound(SMALL_LIMITS, in_body=False, chunked=False)
    assert parser.buffered_bytes == bound
    parser.feed(b"b")
    assert isinstance(parser.next_event(), Refusal)

    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    parser = RequestParser(SMALL_LIMITS)
    parser.feed(chunked + b"X: " + b"c" * (SMALL_LIMITS.trailer_max_bytes - 4))
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() is NEED_DATA
    assert parser.buffered_bytes == buffer_bound(SMALL_LIMITS, in_body=True, chunked=True)


def test_the_parser_caches_stay_bounded_whatever_the_clients_send() -> None:
    config = harness.CONFIGS[0]
    for i in range(parser_module._VERDICTS_MAX + 100):
        harness.drive([b"GET / HTTP/1.1\r\nHost: x\r\nX-%d: v\r\n\r\n" % i], config)
    harness.drive([b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 5000 + b"\r\n\r\n"], config)
    assert len(parser_module._VERDICTS) <= parser_module._VERDICTS_MAX
    assert all(
        len(readings) <= parser_module._FIELD_READINGS_MAX
        for readings in parser_module._FIELD_READINGS
    )
    assert len(environ_module._KEY_CACHE) <= environ_module._KEY_CACHE_MAX
    harness.check_caches()


# -- and each invariant can fail -------------------------------------------------------------


class RaisesOnDel(RequestParser):
    def feed(self, data: bytes) -> None:
        if b"\x7f" in data:
            raise ValueError("DEL")
        super().feed(data)


class LosesLoneCR(RequestParser):
    """Depends on the split: a read of exactly one CR is dropped."""

    def feed(self, data: bytes) -> None:
        if data != b"\r":
            super().feed(data)


class WaitsForLongLines(RequestParser):
    """Holds a header line still arriving however long it grows (the h11 issue 182 class)."""

    def _head_incomplete(self, partial_line: int) -> Event:
        if self._eof:
            return super()._head_incomplete(partial_line)
        return NEED_DATA


class UncodedRefusal(RequestParser):
    def next_event(self) -> Event:
        event = super().next_event()
        if isinstance(event, Refusal):
            return dataclasses.replace(event, reason=Reason("made_up", 400, True, "not listed"))
        return event


class ForgetsItsRefusal(RequestParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._refused = False

    def next_event(self) -> Event:
        if self._refused:
            return CLOSED
        event = super().next_event()
        self._refused = isinstance(event, Refusal)
        return event


class DropsLastHeader(RequestParser):
    """Consistent under every split, but it reads a request other than the one h11 wrote."""

    def next_event(self) -> Event:
        event = super().next_event()
        if isinstance(event, RequestHead) and event.headers:
            return dataclasses.replace(event, headers=event.headers[:-1])
        return event


@pytest.mark.parametrize(
    ("broken", "data", "kind"),
    [
        (RaisesOnDel, GOOD + b"\x7f", "exception"),
        (LosesLoneCR, GOOD, "split"),
        (WaitsForLongLines, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 1500, "buffer"),
        (UncodedRefusal, b"GET / HTTP/1.1\r\n\r\n", "outcome"),
        (ForgetsItsRefusal, b"GET / HTTP/1.1\r\n\r\n", "outcome"),
        (DropsLastHeader, GOOD, "differential"),
    ],
)
def test_a_broken_parser_is_reported(broken: harness.ParserFactory, data: bytes, kind: str) -> None:
    assert _kind(data) is None
    assert _kind(data, broken) == kind


def test_overfull_caches_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    harness.check_caches()
    too_many = {b"%d" % i: None for i in range(parser_module._VERDICTS_MAX + 1)}
    monkeypatch.setattr(parser_module, "_VERDICTS", too_many)
    with pytest.raises(Violation, match="verdict cache"):
        harness.check_caches()
    monkeypatch.setattr(parser_module, "_VERDICTS", {b"k" * 5000: None})
    with pytest.raises(Violation, match="5000-byte key"):
        harness.check_caches()
    monkeypatch.setattr(parser_module, "_VERDICTS", {})
    too_many_readings = {b"%d" % i: None for i in range(parser_module._FIELD_READINGS_MAX + 1)}
    monkeypatch.setattr(parser_module, "_FIELD_READINGS", (too_many_readings, {}))
    with pytest.raises(Violation, match="header-section cache holds"):
        harness.check_caches()
    monkeypatch.setattr(parser_module, "_FIELD_READINGS", ({}, {b"k" * 3000: None}))
    with pytest.raises(Violation, match="3000-byte key"):
        harness.check_caches()
    monkeypatch.setattr(parser_module, "_FIELD_READINGS", ({}, {}))
    too_many_keys = {b"%d" % i: "" for i in range(environ_module._KEY_CACHE_MAX + 1)}
    monkeypatch.setattr(environ_module, "_KEY_CACHE", too_many_keys)
    with pytest.raises(Violation, match="environ key cache"):
        harness.check_caches()


def test_memory_growth_after_the_warm_up_is_reported() -> None:
    samples = iter([900, 100, 150, 120, 100 + 64, 100 + 65])
    watch = harness.MemoryWatch(warmup_s=10, growth_max_bytes=64, sample=lambda: next(samples))
    watch.observe(1)  # warm-up: not counted
    for elapsed in (10, 11, 12, 13):
        watch.observe(elapsed)
    assert (watch.baseline, watch.growth) == (100, 64)
    with pytest.raises(Violation, match="memory"):
        watch.observe(14)


# -- the command -------------------------------------------------------------------------------


def test_a_finding_is_saved_and_the_command_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--engine", "hypothesis", "--seconds", "1", "--findings", str(tmp_path)]
    assert run.main([*argv, "--no-database"], parser_factory=UncodedRefusal) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("FINDING ") and "made_up" in out[0], out
    (saved,) = tmp_path.glob("*.bin")
    assert saved.name == harness.finding_name(saved.read_bytes()) + ".bin"
    assert _kind(saved.read_bytes(), UncodedRefusal) == "outcome"


def test_the_hypothesis_engine_finds_shrinks_and_saves(tmp_path: Path) -> None:
    result = run.run_hypothesis(
        30, 1, tmp_path, 256, parser_factory=RaisesOnDel, database=None, batch=200
    )
    assert result.finding is not None and "ValueError: DEL" in result.finding
    (saved,) = tmp_path.glob("*.bin")
    assert saved.read_bytes() == b"\x7f"


def test_the_hypothesis_engine_passes_the_real_parser_for_a_second(tmp_path: Path) -> None:
    result = run.run_hypothesis(1, 1, tmp_path, 512, database=None, batch=100)
    assert result.finding is None and result.executions >= 100
    assert not list(tmp_path.iterdir())


def test_random_splittings_are_seeded_by_the_input() -> None:
    data = random.Random(3).randbytes(300)
    assert harness.splittings(data) == harness.splittings(data)
    for pieces in harness.splittings(data).values():
        assert b"".join(pieces) == data
