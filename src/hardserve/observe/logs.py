"""The three logs: error (hardserve.error), access (hardserve.access) and security
(hardserve.security, one line per refusal). Client-controlled text is escaped before it is
logged so that no client can forge or split a line: repr() in the text format, JSON string
escapes in the JSON format."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any

ERROR = "hardserve.error"
ACCESS = "hardserve.access"
SECURITY = "hardserve.security"

_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

# The structured fields a record may carry (logging's `extra`); the JSON format writes them
# as typed members, the text format has them in its message already.
EVENT_FIELDS = ("reason", "status", "peer", "request_line_sha256", "detail")

_security_log = logging.getLogger(SECURITY)


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
    code: str, status: int, peer: tuple[str, int] | None, request_line: bytes, detail: str
) -> None:
    """The one security-log line of a refusal: its reason code, the status sent (0: none, the
    connection was closed), the peer, and a hash of the request line instead of the line
    itself (it may hold credentials in a query string, and it is the client's text)."""
    if not _security_log.isEnabledFor(logging.WARNING):
        return
    digest = hashlib.sha256(request_line).hexdigest()[:16] if request_line else "-"
    peer_text = f"{peer[0]}:{peer[1]}" if peer else "-"
    _security_log.warning(
        "refused reason=%s status=%d peer=%s request_line_sha256=%s detail=%r",
        code,
        status,
        peer_text,
        digest,
        detail,
        extra={
            "reason": code,
            "status": status,
            "peer": peer_text,
            "request_line_sha256": digest,
            "detail": detail,
        },
    )


def configure(
    *, log_level: str = "info", access_log: str | None = None, log_format: str = "text"
) -> None:
    level = getattr(logging, log_level.upper())
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(_FORMAT)
    )
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    for name in (ERROR, SECURITY):
        logger = logging.getLogger(name)
        logger.handlers[:] = [stderr]
        logger.setLevel(level)
        logger.propagate = False
    access = logging.getLogger(ACCESS)
    access.propagate = False
    if access_log is None:
        access.handlers[:] = []
        access.setLevel(logging.CRITICAL + 1)
        return
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if access_log == "-" else logging.FileHandler(access_log)
    )
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(message)s")
    )
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)


def reopen_files() -> None:
    """USR1: reopen every log file (after logrotate moved it). Streams are left alone."""
    for name in (ERROR, ACCESS, SECURITY):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    handler.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
