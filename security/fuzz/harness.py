"""The invariants the fuzzer holds the request parser to, as one function: `check_input`.

For one input (the bytes a client sends on one connection, then EOF), under two parser
configurations (small limits, so that every limit is reachable by a short input; and the default
limits with `refuse_underscore_headers`), `check_input` raises `Violation` unless:

1. outcome: the stream ends in parsed requests and then a clean close or a refusal whose reason
   is one of reasons.py (`by_code(code) is reason`, status 0 or 4xx/5xx); a refusal is final;
   no other exception escapes; the parser never loops without asking for data;
2. splitting: the outcome (every request head, body, trailers, and the end) is the same whether
   the input is fed whole, line by line, byte by byte, or in two random splittings seeded by the
   input's CRC-32;
3. buffer: whenever the parser answers NEED_DATA, `buffered_bytes` is within `buffer_bound()`
   (derived below from limits.py and parser.py), and it holds nothing after a refusal;
4. caches: the module-level caches of the parser (`_VERDICTS`) and of environ.py (`_KEY_CACHE`)
   stay within their bounds in entries and key sizes (every accepted head also goes through
   `build_environ`, so both are exercised);
5. differential: every complete request the parser accepts, h11 in the client role serialises
   and the parser reads back as the same request: method, target, headers, body and trailers.

`MemoryWatch` adds the run-level invariant (resident memory stays bounded after a warm-up), and
`seed_inputs` / `save_finding` are the file side of a run. The engines are in `run.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import h11

from hardserve.http import environ as environ_module
from hardserve.http import parser as parser_module
from hardserve.http import reasons
from hardserve.http.environ import build_environ, connection_addresses, worker_constants
from hardserve.http.limits import Limits
from hardserve.http.parser import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    BodyData,
    EndOfBody,
    Refusal,
    RequestHead,
    RequestParser,
)

ROOT: Final = Path(__file__).resolve().parents[2]
GUNICORN_CORPUS: Final = ROOT.parent / "shared" / "corpora" / "gunicorn-requests"
SECURITY_CORPUS: Final = ROOT / "security" / "corpus"
FUZZ_DIR: Final = Path(__file__).resolve().parent
FINDINGS_DIR: Final = FUZZ_DIR / "findings"

# Small enough that a fuzzer's short inputs reach every limit.
SMALL_LIMITS: Final = Limits(
    request_line_max_bytes=256,
    header_field_max_bytes=200,
    header_count_max=12,
    head_max_bytes=1024,
    body_max_bytes=2048,
    chunk_line_max_bytes=64,
    trailer_max_bytes=256,
)
DEFAULT_LIMITS: Final = Limits()

ParserFactory = Callable[..., RequestParser]
Header = tuple[bytes, bytes]

# A parser that answers this many events without NEED_DATA, PAUSED or an end is looping.
_EVENTS_MAX: Final = 100_000


class Violation(Exception):
    """An input broke an invariant. `kind` is one word; str() is one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.detail = message


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    name: str
    limits: Limits
    refuse_underscore: bool


CONFIGS: Final = (
    Config("small", SMALL_LIMITS, refuse_underscore=False),
    Config("default", DEFAULT_LIMITS, refuse_underscore=True),
)


def buffer_bound(limits: Limits, *, in_body: bool, chunked: bool) -> int:
    """The most bytes `RequestParser` may hold when it answers NEED_DATA.

    - In a head: the lines already scanned are whole lines, each checked to end within
      head_max_bytes, so they are at most head_max_bytes; the line still arriving is refused as
      soon as it (+1 for its LF) exceeds its limit, so it is at most request_line_max_bytes - 1
      (first line, nothing scanned before it) or header_field_max_bytes - 1 (a field line).
      Bound: max(request_line_max_bytes - 1, head_max_bytes + header_field_max_bytes - 1).
    - In a Content-Length body: every buffered byte is handed out as BodyData first: 0.
    - In a chunked body: chunk data is handed out (0); a chunk terminator waits with at most 1
      byte; a chunk-size line with at most chunk_line_max_bytes - 1; the trailer section with at
      most trailer_max_bytes - 1 (counted together with the trailer lines already read).
    After a refusal the parser holds nothing; at PAUSED (a message done) the pipelined bytes
    behind it are the caller's to bound (worker: pipeline_buffer_bytes), not the parser's.
    """
    if not in_body:
        return max(
            limits.request_line_max_bytes - 1,
            limits.head_max_bytes + limits.header_field_max_bytes - 1,
        )
    if not chunked:
        return 0
    return max(1, limits.chunk_line_max_bytes - 1, limits.trailer_max_bytes - 1)


# -- driving the parser ----------------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """One request as the parser delivered it (head fields, joined body, trailers)."""

    head: tuple[Any, ...]
    body: bytes = b""
    trailers: tuple[Header, ...] = ()
    complete: bool = False

    def key(self) -> tuple[Any, ...]:
        return (self.head, self.body, self.trailers, self.complete)


@dataclasses.dataclass
class Drive:
    requests: list[Seen]
    heads: list[RequestHead]
    end: str  # "closed" or a refusal's reason code

    def key(self) -> tuple[Any, ...]:
        return (tuple(r.key() for r in self.requests), self.end)


def _head_key(head: RequestHead) -> tuple[Any, ...]:
    target = head.target
    return (
        head.method,
        head.raw_target,
        target.raw_path,
        target.path,
        target.query,
        target.authority,
        head.http_version,
        head.headers,
        head.content_length,
        head.chunked,
        head.keep_alive,
        head.expect_continue,
        head.host,
    )


def drive(
    pieces: list[bytes],
    config: Config,
    parser_factory: ParserFactory = RequestParser,
) -> Drive:
    """Feed `pieces` one at a time, pulling every event after each, then EOF; check as it goes
    that the outcome is coded, final and within the buffer bound."""
    limits = config.limits
    parser = parser_factory(limits, refuse_underscore_headers=config.refuse_underscore)
    requests: list[Seen] = []
    heads: list[RequestHead] = []
    in_body = False
    chunked = False

    def pull() -> str | None:
        nonlocal in_body, chunked
        for _ in range(_EVENTS_MAX):
            event = parser.next_event()
            if event is NEED_DATA:
                bound = buffer_bound(limits, in_body=in_body, chunked=chunked)
                if parser.buffered_bytes > bound:
                    where = ("chunked body" if chunked else "body") if in_body else "head"
                    raise Violation(
                        "buffer",
                        f"{parser.buffered_bytes} bytes held in the {where}, bound {bound}",
                    )
                return None
            if event is PAUSED:
                if not requests or in_body:
                    raise Violation("outcome", "PAUSED without a finished request")
                requests[-1].complete = True
                parser.start_next_cycle()
            elif event is CLOSED:
                if parser.buffered_bytes:
                    raise Violation("buffer", f"CLOSED with {parser.buffered_bytes} bytes held")
                return "closed"
            elif isinstance(event, Refusal):
                _check_refusal(parser, event)
                return event.reason.code
            elif isinstance(event, RequestHead):
                if requests and not requests[-1].complete:
                    raise Violation("outcome", "a head before the previous request ended")
                requests.append(Seen(_head_key(event)))
                heads.append(event)
                _check_environ(event)
                in_body = event.has_body
                chunked = event.chunked
            elif isinstance(event, BodyData):
                if not in_body or not event.data:
                    raise Violation("outcome", f"BodyData({event.data[:20]!r}) out of a body")
                requests[-1].body += event.data
            elif isinstance(event, EndOfBody):
                if not requests or requests[-1].complete:
                    raise Violation("outcome", "EndOfBody without a request")
                requests[-1].trailers = event.trailers
                in_body = False
            else:
                raise Violation("outcome", f"unknown event {event!r}")
        raise Violation("outcome", f"{_EVENTS_MAX} events without asking for data")

    for piece in pieces:
        parser.feed(piece)
        end = pull()
        if end is not None:
            return Drive(requests, heads, end)
    parser.feed_eof()
    end = pull()
    if end is None:
        raise Violation("outcome", "after EOF the parser still asks for data")
    return Drive(requests, heads, end)


def _check_refusal(parser: RequestParser, refusal: Refusal) -> None:
    code = refusal.reason.code
    try:
        known = reasons.by_code(code)
    except KeyError:
        raise Violation("outcome", f"refusal with unknown reason code {code!r}") from None
    if known is not refusal.reason:
        raise Violation("outcome", f"refusal reason {code!r} is not the one in reasons.py")
    if not (known.status == 0 or 400 <= known.status <= 599):
        raise Violation("outcome", f"refusal {code!r} with status {known.status}")
    if parser.buffered_bytes:
        raise Violation("buffer", f"{parser.buffered_bytes} bytes held after refusal {code!r}")
    again = parser.next_event()
    if again is not refusal:
        raise Violation("outcome", f"refusal {code!r} is not final: then {again!r}")


_ENVIRON_CONSTANTS = worker_constants(wsgi_errors=None, file_wrapper=None)
_ADDRESSES = connection_addresses(("192.0.2.1", 40000), ("127.0.0.1", 8000))


def _check_environ(head: RequestHead) -> None:
    build_environ(
        head,
        _ENVIRON_CONSTANTS,
        addresses=_ADDRESSES,
        url_scheme="http",
        wsgi_input=None,
    )


# -- the invariants --------------------------------------------------------------------------


def splittings(data: bytes) -> dict[str, list[bytes]]:
    """The ways the same bytes are cut into reads (the random ones seeded by the input)."""
    cuts: dict[str, list[bytes]] = {
        "whole": [data] if data else [],
        "lines": [p for p in re.split(rb"(?<=\n)", data) if p],
        "bytes": [data[i : i + 1] for i in range(len(data))],
    }
    rng = random.Random(zlib.crc32(data))
    for piece_max in (3, 40):
        pieces = []
        pos = 0
        while pos < len(data):
            size = rng.randint(1, piece_max)
            pieces.append(data[pos : pos + size])
            pos += size
        cuts[f"random{piece_max}"] = pieces
    return cuts


def check_caches() -> None:
    verdicts = parser_module._VERDICTS
    if len(verdicts) > parser_module._VERDICTS_MAX:
        raise Violation("memory", f"parser verdict cache holds {len(verdicts)} entries")
    longest = max(map(len, verdicts), default=0)
    if longest > parser_module._VERDICT_KEY_MAX_BYTES:
        raise Violation("memory", f"parser verdict cache holds a {longest}-byte key")
    for readings in parser_module._FIELD_READINGS:
        if len(readings) > parser_module._FIELD_READINGS_MAX:
            raise Violation("memory", f"header-section cache holds {len(readings)} entries")
        longest = max(map(len, readings), default=0)
        if longest > parser_module._FIELD_READING_KEY_MAX_BYTES:
            raise Violation("memory", f"header-section cache holds a {longest}-byte key")
    keys = environ_module._KEY_CACHE
    if len(keys) > environ_module._KEY_CACHE_MAX:
        raise Violation("memory", f"environ key cache holds {len(keys)} entries")


def check_differential(
    drive_result: Drive, config: Config, parser_factory: ParserFactory = RequestParser
) -> None:
    """Each complete request, written by h11 as a client, reads back as the same request."""
    for seen, head in zip(drive_result.requests, drive_result.heads, strict=True):
        if not seen.complete:
            continue
        # h11 writes only HTTP/1.1; an HTTP/1.0 request is sent as 1.1 when it has the Host
        # that 1.1 requires (the version, keep-alive default and Expect are then not compared).
        if head.http_version != b"1.1" and head.host is None:
            continue
        client = h11.Connection(h11.CLIENT)
        try:
            wire = client.send(
                h11.Request(
                    method=head.method,
                    target=head.raw_target,
                    headers=list(head.headers),
                    http_version=b"1.1",
                )
            )
            assert wire is not None
            if seen.body:
                wire += client.send(h11.Data(data=seen.body)) or b""
            wire += client.send(h11.EndOfMessage(headers=list(seen.trailers))) or b""
        except h11.LocalProtocolError as exc:
            raise Violation(
                "differential", f"h11 will not write the accepted request: {exc}"
            ) from exc
        # Read back with room for h11's own spacing ("name: value"); the same underscore rule.
        readback = Config("readback", DEFAULT_LIMITS, config.refuse_underscore)
        again = drive([wire], readback, parser_factory)
        if len(again.requests) != 1 or not again.requests[0].complete:
            raise Violation(
                "differential", f"h11's bytes {wire[:80]!r} read back as {again.key()!r}"
            )
        want = _comparable(seen.head, seen.body, seen.trailers)
        got = _comparable(
            again.requests[0].head, again.requests[0].body, again.requests[0].trailers
        )
        if want != got:
            raise Violation("differential", f"sent {want!r}, read back {got!r}")


def _comparable(head: tuple[Any, ...], body: bytes, trailers: tuple[Header, ...]) -> Any:
    method, raw_target, headers = head[0], head[1], head[7]
    # h11 writes Host first, and the Transfer-Encoding value lower-cased (the parser accepts
    # 'Chunked'): neither changes the meaning. The order of fields with the same name does, and
    # a stable sort by name keeps it.
    headers = tuple(
        sorted(
            ((n, v.lower() if n == b"transfer-encoding" else v) for n, v in headers),
            key=lambda field: field[0],
        )
    )
    return (method, raw_target, headers, body, trailers)


def check_input(data: bytes, parser_factory: ParserFactory = RequestParser) -> None:
    """Raise `Violation` if `data` breaks an invariant (module docstring) in any configuration."""
    for config in CONFIGS:
        reference: Drive | None = None
        for name, pieces in splittings(data).items():
            try:
                result = drive(pieces, config, parser_factory)
                if reference is None:
                    reference = result
                    check_differential(result, config, parser_factory)
            except Violation as violation:
                raise Violation(
                    violation.kind, f"{violation.detail} ({config.name}, {name})"
                ) from None
            except Exception as exc:
                raise Violation(
                    "exception", f"{type(exc).__name__}: {exc} ({config.name}, {name})"
                ) from exc
            if result.key() != reference.key():
                raise Violation(
                    "split",
                    f"fed {name!r} ({config.name}): {_summary(result)}; fed whole: "
                    f"{_summary(reference)}",
                )
    check_caches()


def _summary(result: Drive) -> str:
    return f"{len(result.requests)} request(s), end {result.end}"


# -- files -------------------------------------------------------------------------------------


def seed_inputs(
    gunicorn: Path = GUNICORN_CORPUS, security: Path = SECURITY_CORPUS
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every seed: gunicorn's raw requests, then security/corpus/*.http (read
    at call time: the corpus grows between runs). A missing directory gives no seeds."""
    for directory, pattern in ((gunicorn, "*/*.raw"), (security, "**/*.http")):
        if directory.is_dir():
            for path in sorted(directory.glob(pattern)):
                yield str(path.relative_to(directory.parent)), path.read_bytes()


def finding_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save_finding(data: bytes, description: str, directory: Path = FINDINGS_DIR) -> Path:
    """Write the input to <directory>/<hash>.bin and its one-line description beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{finding_name(data)}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(description + "\n")
    return path


# -- memory ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryWatch:
    """Resident memory sampled over a run: after `warmup_s`, the first sample is the baseline,
    and a later sample more than `growth_max_bytes` above it is a violation."""

    def __init__(
        self,
        *,
        warmup_s: float,
        growth_max_bytes: int,
        sample: Callable[[], int] = rss_bytes,
    ) -> None:
        self.warmup_s = warmup_s
        self.growth_max_bytes = growth_max_bytes
        self._sample = sample
        self.baseline: int | None = None
        self.peak = 0

    def observe(self, elapsed_s: float) -> None:
        now = self._sample()
        if elapsed_s < self.warmup_s:
            return
        if self.baseline is None:
            self.baseline = now
        self.peak = max(self.peak, now)
        growth = now - self.baseline
        if growth > self.growth_max_bytes:
            raise Violation(
                "memory",
                f"resident memory grew {growth / 2**20:.1f} MiB after warm-up "
                f"(bound {self.growth_max_bytes / 2**20:.0f} MiB)",
            )

    @property
    def growth(self) -> int:
        return 0 if self.baseline is None else self.peak - self.baseline


# -- generated inputs --------------------------------------------------------------------------

# Pieces a request is made of, good and bad, so that mixes of them reach deep into the parser.
ATOMS: Final = (
    b"GET / HTTP/1.1\r\n",
    b"POST /a?b=c HTTP/1.1\r\n",
    b"GET /x HTTP/1.0\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"GET http://h:80/p?q HTTP/1.1\r\n",
    b"GET /%2e%2e/%2F%5C%00 HTTP/1.1\r\n",
    b"Host: x\r\n",
    b"Host: [::1]:8\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 007\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: Chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b"Content-Type: a\r\n",
    b"X_Under: 1\r\n",
    b"X-A: \x80\xff \t v\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"hello",
    b"5\r\nhello\r\n",
    b'3;ext="q\\"" ; e\r\nabc\r\n',
    b"0\r\n\r\n",
    b"0\r\nX-T: 1\r\n\r\n",
    b"0\r\nHost: t\r\n\r\n",
    b"fffffffffffffffff\r\n",
    b"\x00",
    b"\x7f",
    b" ",
    b":",
    b"%",
)


def mutate(data: bytes, rng: random.Random, pool: tuple[bytes, ...] = ATOMS) -> bytes:
    """One random edit of `data`: insert an atom, delete or repeat a slice, change a byte,
    or cut it short. A plain mutator for deterministic smoke runs (the engines have their own)."""
    pos = rng.randint(0, len(data))
    end = min(len(data), pos + rng.randint(1, 16))
    choice = rng.randrange(5)
    if choice == 0:
        return data[:pos] + rng.choice(pool) + data[pos:]
    if choice == 1:
        return data[:pos] + data[end:]
    if choice == 2:
        return data[:end] + data[pos:end] + data[end:]
    if choice == 3 and data:
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1 :]
    return data[:pos]


def smoke_inputs(seeds: list[bytes], count: int, seed: int) -> Iterator[bytes]:
    """`count` deterministic inputs: atom mixes, and seeds with one to four mutations."""
    rng = random.Random(seed)
    for _ in range(count):
        if not seeds or rng.random() < 0.3:
            data = b"".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 12)))
        else:
            data = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            data = mutate(data, rng)
        yield data


def fuzz_inputs(seeds: list[bytes], max_len: int) -> Any:
    """The hypothesis strategy of the hypothesis engine: atom mixes, arbitrary bytes, and seeds
    edited at positions hypothesis chooses (and shrinks)."""
    from hypothesis import strategies as st

    atoms = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=24).map(b"".join)
    edits = st.lists(
        st.tuples(st.integers(0, max_len), st.integers(0, 16), st.sampled_from(ATOMS)),
        max_size=6,
    )

    def apply(data: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
        for pos, cut, atom in changes:
            pos %= len(data) + 1
            data = data[:pos] + atom + data[pos + cut :]
        return data[:max_len]

    strategies = [atoms, st.binary(max_size=max_len)]
    if seeds:
        strategies.append(st.builds(apply, st.sampled_from(seeds), edits))
    strategies.append(st.builds(apply, atoms, edits))
    return st.one_of(*strategies)
