"""The three logs: error (hardserve.error), access (hardserve.access) and security
(hardserve.security, one line per refusal). Client-controlled text is escaped before it is
logged so that no client can forge or split a line: backslash escapes in the access log's text
format, repr() in the security log's text format, JSON string escapes in the JSON format.

docs/logging.md describes the formats, the access-log atoms, request IDs and log files."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import logging.config
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from hardserve.http.parser import RequestHead

ERROR = "hardserve.error"
ACCESS = "hardserve.access"
SECURITY = "hardserve.security"

_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

# The structured fields a record may carry (logging's `extra`); the JSON format writes them
# as typed members, the text format has them in its message already.
EVENT_FIELDS = ("reason", "status", "peer", "request_line_sha256", "request_id", "detail")

_security_log = logging.getLogger(SECURITY)
_access_log = logging.getLogger(ACCESS)
_error_log = logging.getLogger(ERROR)


def _utc_time(created: float) -> str:
    """RFC 3339, UTC, milliseconds: 2026-01-02T03:04:05.678Z."""
    millis = int((created % 1.0) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, pid, message and the
    record's structured fields. json.dumps escapes every control character and non-ASCII
    byte, so a value can never end the line early."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        millis = int(record.msecs)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{millis:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def log_refusal(
    code: str,
    status: int,
    peer: tuple[str, int] | None,
    request_line: bytes,
    detail: str,
    request_id: str | None = None,
) -> None:
    """The one security-log line of a refusal: its reason code, the status sent (0: none, the
    connection was closed), the peer, a hash of the request line instead of the line itself
    (it may hold credentials in a query string, and it is the client's text), and the request
    ID when the refusal concerns a request whose head was read."""
    if not _security_log.isEnabledFor(logging.WARNING):
        return
    digest = hashlib.sha256(request_line).hexdigest()[:16] if request_line else "-"
    peer_text = f"{peer[0]}:{peer[1]}" if peer else "-"
    _security_log.warning(
        "refused reason=%s status=%d peer=%s request_line_sha256=%s request_id=%s detail=%r",
        code,
        status,
        peer_text,
        digest,
        request_id or "-",
        detail,
        extra={
            "reason": code,
            "status": status,
            "peer": peer_text,
            "request_line_sha256": digest,
            "request_id": request_id,
            "detail": detail,
        },
    )


# -- escaping ------------------------------------------------------------------------------------

# Printable ASCII without the quote and the backslash: written as it is.
_PLAIN_BYTES: Final = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_PLAIN_TEXT: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def escape_bytes(data: bytes) -> str:
    """Client bytes for a text log line: printable ASCII stays; a backslash is doubled, a quote
    becomes \\", every other byte (controls, DEL, 0x80-0xff) is written \\xHH (or \\t, \\n,
    \\r). The result is printable ASCII, so it can neither split the line nor end a quoted
    field early, and the escapes read back to the exact bytes."""
    if _PLAIN_BYTES.fullmatch(data):
        return data.decode("ascii")
    return data.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def escape_text(text: str) -> str:
    """escape_bytes for text (environ values an app may have set): characters past 0xff are
    written \\uHHHH or \\UHHHHHHHH."""
    if _PLAIN_TEXT.fullmatch(text):
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


# -- the access log ------------------------------------------------------------------------------

# gunicorn's default (Apache's combined format), then how long the request took in seconds,
# its request ID and how it ended.
DEFAULT_ACCESS_FORMAT: Final = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)s %(request_id)s %(outcome)s'
)


class AccessEntry:
    """What the access log knows about one finished request."""

    __slots__ = (
        "client",
        "duration_s",
        "environ",
        "head",
        "outcome",
        "request_id",
        "sent_bytes",
        "status",
    )

    def __init__(
        self,
        head: RequestHead,
        client: str,
        status: int,
        sent_bytes: int,
        duration_s: float,
        outcome: str,
        request_id: str,
        environ: Mapping[str, Any] | None,
    ) -> None:
        self.head = head
        self.client = client  # the client's address as the server resolved it (proxies too)
        self.status = status  # 0: no response was sent
        self.sent_bytes = sent_bytes
        self.duration_s = duration_s
        self.outcome = outcome
        self.request_id = request_id
        self.environ = environ


Getter = Callable[[AccessEntry], str]


def _header(entry: AccessEntry, name: bytes) -> bytes | None:
    """The request's field `name` (lower case); repeated fields joined with ", "."""
    found: bytes | None = None
    for key, value in entry.head.headers:
        if key == name:
            found = value if found is None else found + b", " + value
    return found


def _header_getter(name: bytes) -> Getter:
    def get(entry: AccessEntry) -> str:
        value = _header(entry, name)
        return "-" if value is None else escape_bytes(value)

    return get


def _environ_getter(name: str) -> Getter:
    def get(entry: AccessEntry) -> str:
        environ = entry.environ
        value = environ.get(name) if environ is not None else None
        return "-" if value is None else escape_text(str(value))

    return get


_clf_cache: list[Any] = [-1, ""]


def _clf_time(_entry: AccessEntry) -> str:
    """[27/Nov/2026:00:28:19 +0000]: local time, formatted once a second."""
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache[0] = now
        _clf_cache[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    text: str = _clf_cache[1]
    return text


def _request_line(entry: AccessEntry) -> str:
    head = entry.head
    return (
        f"{head.method.decode('ascii')} {escape_bytes(head.raw_target)} "
        f"HTTP/{head.http_version.decode('ascii')}"
    )


def _remote_user(entry: AccessEntry) -> str:
    environ = entry.environ
    user = environ.get("REMOTE_USER") if environ is not None else None
    return escape_text(str(user)) if user else "-"


_ATOMS: Final[dict[str, Getter]] = {
    "h": lambda e: escape_text(e.client) if e.client else "-",
    "l": lambda e: "-",
    "u": _remote_user,
    "t": _clf_time,
    "r": _request_line,
    "m": lambda e: e.head.method.decode("ascii"),
    "U": lambda e: escape_bytes(e.head.target.path),
    "q": lambda e: escape_bytes(e.head.target.query),
    "H": lambda e: "HTTP/" + e.head.http_version.decode("ascii"),
    "s": lambda e: str(e.status) if e.status else "-",
    "B": lambda e: str(e.sent_bytes),
    "b": lambda e: str(e.sent_bytes) if e.sent_bytes else "-",
    "f": _header_getter(b"referer"),
    "a": _header_getter(b"user-agent"),
    "T": lambda e: str(int(e.duration_s)),
    "M": lambda e: str(int(e.duration_s * 1000)),
    "D": lambda e: str(int(e.duration_s * 1_000_000)),
    "L": lambda e: f"{e.duration_s:.6f}",
    "request_id": lambda e: e.request_id,
    "outcome": lambda e: e.outcome,
}
# The process id is the worker's, so it is read when a worker compiles the format.
_PID_ATOM: Final = "p"

_TOKEN_RE: Final = re.compile(r"%(?:\((?P<name>[^()]*)\)(?P<conversion>[sd])|(?P<percent>%))|%")


def compile_access_format(spec: str) -> tuple[str, tuple[Getter, ...]]:
    """A gunicorn-style access-log format -> a %-template with one %s per atom, and the getter
    of each atom, in order. Raises ValueError naming the first atom or '%' it cannot read: a
    format with a typo is refused at start, not logged as '-' forever."""
    template: list[str] = []
    getters: list[Getter] = []
    pid = str(os.getpid())
    position = 0
    for match in _TOKEN_RE.finditer(spec):
        template.append(spec[position : match.start()].replace("%", "%%"))
        position = match.end()
        if match.group("percent"):
            template.append("%%")
            continue
        name = match.group("name")
        if name is None:
            raise ValueError(
                f"'%' at character {match.start() + 1} is not %(atom)s or %%; "
                "write a literal percent sign as %%"
            )
        getters.append(_atom_getter(name, pid))
        template.append("%s")
    template.append(spec[position:].replace("%", "%%"))
    return "".join(template), tuple(getters)


def _atom_getter(name: str, pid: str) -> Getter:
    if name == _PID_ATOM:
        text = f"<{pid}>"
        return lambda e: text
    getter = _ATOMS.get(name)
    if getter is not None:
        return getter
    if name.startswith("{") and len(name) > 3 and name[-2] == "}":
        inner, kind = name[1:-2], name[-1]
        if kind == "i" and inner:
            return _header_getter(inner.lower().encode("latin-1", "replace"))
        if kind == "e" and inner:
            return _environ_getter(inner)
        if kind == "o":
            raise ValueError(
                f"%({name})s: response headers are not available to the access log "
                "(docs/logging.md lists the atoms)"
            )
    raise ValueError(f"unknown atom %({name})s (docs/logging.md lists the atoms)")


class AccessLog:
    """The access log of one worker: the format compiled once, then one line per request.

    When the access logger still has only the handler configure() gave it, and the worker has
    given a way to run code at the end of its loop's turn (`schedule`, the loop's call_soon),
    the lines of one turn are written together: one write and one flush instead of a log
    record, a handler call and a write each. That was about two thirds of the access log's
    cost (some 15 µs per request with it on, bench/NOTES.md). A --log-config that replaces the
    handler or adds a filter gets every line through logging, as it comes."""

    def __init__(self, spec: str = DEFAULT_ACCESS_FORMAT, log_format: str = "text") -> None:
        self.json = log_format == "json"
        self._template, self._getters = compile_access_format(spec)
        self._pid = os.getpid()
        self.schedule: Callable[[Callable[[], None]], object] | None = None
        self._pending: list[str] = []

    @staticmethod
    def enabled() -> bool:
        return _access_log.isEnabledFor(logging.INFO)

    def line(self, entry: AccessEntry) -> str:
        if self.json:
            return self._json_line(entry)
        return self._template % tuple([getter(entry) for getter in self._getters])

    def _json_line(self, entry: AccessEntry) -> str:
        head = entry.head
        referer = _header(entry, b"referer")
        user_agent = _header(entry, b"user-agent")
        # Client bytes are decoded as latin-1 (each byte one character); json.dumps writes
        # every control and non-ASCII character as a \u escape.
        return json.dumps(
            {
                "time": _utc_time(time.time()),
                "remote_addr": entry.client,
                "method": head.method.decode("ascii"),
                "target": head.raw_target.decode("latin-1"),
                "path": head.target.path.decode("latin-1"),
                "query": head.target.query.decode("latin-1"),
                "protocol": "HTTP/" + head.http_version.decode("ascii"),
                "status": entry.status,
                "bytes": entry.sent_bytes,
                "duration_s": round(entry.duration_s, 6),
                "referer": None if referer is None else referer.decode("latin-1"),
                "user_agent": None if user_agent is None else user_agent.decode("latin-1"),
                "request_id": entry.request_id,
                "outcome": entry.outcome,
                "pid": self._pid,
            },
            separators=(",", ":"),
        )

    def log(self, entry: AccessEntry) -> None:
        """Write the entry's line: at the end of the loop's turn with the others of that turn
        (see the class), or now through logging. The record is made directly (no caller
        lookup, no %-formatting of the message): the line is complete already."""
        line = self.line(entry)
        if self.schedule is not None and _own_handler_only():
            pending = self._pending
            pending.append(line)
            if len(pending) == 1:
                self.schedule(self.flush)
            return
        _through_logging(line)

    def flush(self) -> None:
        """Write the lines held for the end of the turn (the worker calls it once more as it
        exits)."""
        lines = self._pending
        if not lines:
            return
        self._pending = []
        handler = _own_access_handler
        if handler is None:  # logging was configured again meanwhile
            for line in lines:
                _through_logging(line)
            return
        text = "\n".join(lines) + "\n"
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except Exception:  # as logging does: report on stderr, never fail the request
            handler.handleError(logging.makeLogRecord({"msg": text, "name": ACCESS}))
        finally:
            handler.release()


def _through_logging(line: str) -> None:
    logger = _access_log
    logger.handle(logger.makeRecord(ACCESS, logging.INFO, __file__, 0, line, (), None))


# The handler configure() gave the access logger (None: the access log is off, or not ours).
_own_access_handler: logging.StreamHandler[Any] | None = None


def _own_handler_only() -> bool:
    handler = _own_access_handler
    handlers = _access_log.handlers
    return (
        handler is not None
        and len(handlers) == 1
        and handlers[0] is handler
        and not _access_log.filters
        and not handler.filters
        and handler.level <= logging.INFO
    )


# -- request IDs ---------------------------------------------------------------------------------

REQUEST_ID_MAX_CHARS: Final = 128
_PLAIN_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % REQUEST_ID_MAX_CHARS)


def incoming_request_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The request's X-Request-ID when it is one short, plain value (at most 128 characters of
    A-Z a-z 0-9 . _ : -); None when it is absent, repeated, too long or anything else. Only
    asked for requests from a trusted proxy."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"x-request-id":
            if found is not None:
                return None  # two values: which one is the request's?
            found = value
    if found is None or _PLAIN_ID.fullmatch(found) is None:
        return None
    return found.decode("ascii")


class RequestIds:
    """Request IDs made by one worker: a random prefix drawn when the worker starts (48 bits),
    then a counter. Unique across workers and restarts without a system call per request;
    not secret and not unpredictable (an ID is a label for logs, never a credential)."""

    def __init__(self) -> None:
        self._template = os.urandom(6).hex() + "-%x"
        self._counter = itertools.count(1)

    def new(self) -> str:
        return self._template % next(self._counter)


# -- configuration -------------------------------------------------------------------------------


class LogConfigError(ValueError):
    """The --log-config file cannot be read or applied."""


def configure(
    *,
    log_level: str = "info",
    access_log: str | None = None,
    log_format: str = "text",
    error_log: str = "-",
) -> None:
    """hardserve's own logging: the error and security logs to `error_log` ('-': stderr), the
    access log to `access_log` (None: off). Raises OSError when a file cannot be opened."""
    level = getattr(logging, log_level.upper())
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(_FORMAT)
    )
    errors = _handler(error_log)
    errors.setFormatter(formatter)
    for name in (ERROR, SECURITY):
        logger = logging.getLogger(name)
        logger.handlers[:] = [errors]
        logger.setLevel(level)
        logger.propagate = False
    global _own_access_handler
    access = logging.getLogger(ACCESS)
    access.propagate = False
    _own_access_handler = None
    if access_log is None:
        access.handlers[:] = []
        access.setLevel(logging.CRITICAL + 1)
        return
    handler = _handler(access_log)
    # The line is complete (text or JSON) when it is logged: AccessLog formats it.
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    _own_access_handler = handler


def _handler(target: str) -> logging.StreamHandler[Any]:
    if target == "-":
        return logging.StreamHandler(sys.stderr)
    return logging.FileHandler(target)


def read_log_config(path: str) -> dict[str, Any]:
    """A logging.config.dictConfig dictionary from a JSON file (*.json) or a TOML file (any
    other name)."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise LogConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LogConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise LogConfigError(f"{path}: not valid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LogConfigError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise LogConfigError(f"{path}: must hold one object (a dictConfig dictionary)")
    return data


def apply_log_config(path: str) -> None:
    """Apply a --log-config file after configure(), so that it can replace handlers, formatters
    and levels. Loggers it does not name keep working (disable_existing_loggers defaults to
    false here, unlike dictConfig's own default). One-line LogConfigError when it fails."""
    data = read_log_config(path)
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(data)
    except (ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        message = " ".join(str(exc).split())  # dictConfig's messages may span lines
        cause = exc.__cause__
        if cause is not None and str(cause) not in message:
            message += f": {' '.join(str(cause).split())}"
        raise LogConfigError(f"{path}: {message}") from None


def _file_handlers() -> list[logging.FileHandler]:
    """Every file handler on any logger (hardserve's, and those a --log-config added), once."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    seen: dict[int, logging.FileHandler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                seen.setdefault(id(handler), handler)
    return list(seen.values())


# A USR1 that comes while a worker still loads its app, before its loop takes the signal over,
# must neither kill it (the default action) nor be lost: the early handler only remembers it.
_reopen_asked = False


def remember_reopen(signum: int, frame: object) -> None:
    """The worker's USR1 handler until its loop has one: reopen_if_asked() does the work."""
    global _reopen_asked
    _reopen_asked = True


def reopen_if_asked() -> None:
    """Reopen the log files if a USR1 came before the loop's handler was in place."""
    global _reopen_asked
    if _reopen_asked:
        _reopen_asked = False
        reopen_files()


def reopen_files() -> None:
    """USR1: reopen every log file (after logrotate moved it): the error, access and security
    logs' files and any file handler of a --log-config. Streams are left alone. A file that
    cannot be opened again keeps its old stream, and the error log says so."""
    failed: list[str] = []
    for handler in _file_handlers():
        handler.acquire()
        try:
            try:
                stream = handler._open()
            except OSError as exc:
                failed.append(f"{handler.baseFilename}: {exc.strerror or exc}")
                continue
            old = handler.stream
            handler.stream = stream
            if old is not None:
                with contextlib.suppress(OSError):
                    old.close()
        finally:
            handler.release()
    for text in failed:
        _error_log.error("log file not reopened: %s", text)
