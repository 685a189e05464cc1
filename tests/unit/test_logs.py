"""The security log's line, in text and in JSON: one line per refusal, whatever the client
sent."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator

import pytest

from hardserve.observe import logs

HOSTILE = 'x"\n[2026-01-01] [1] [WARNING] hardserve.security: refused reason=forged\x1b[31m\u2028'


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    logs.configure(log_format=request.param)
    stream = io.StringIO()
    logger = logging.getLogger(logs.SECURITY)
    logger.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield request.param, stream
    finally:
        logger.handlers[:] = []
        logger.propagate = True
        logging.getLogger(logs.ERROR).handlers[:] = []
        logging.getLogger(logs.ERROR).propagate = True


def test_one_line_per_refusal_whatever_the_client_sent(captured: tuple[str, io.StringIO]) -> None:
    log_format, stream = captured
    request_line = HOSTILE.encode()
    logs.log_refusal("bare_lf", 400, ("192.0.2.7", 5555), request_line, HOSTILE)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\x1b" not in line and "\u2028" not in line
    digest = hashlib.sha256(request_line).hexdigest()[:16]
    if log_format == "json":
        entry = json.loads(line)
        assert entry["reason"] == "bare_lf"
        assert entry["status"] == 400
        assert entry["peer"] == "192.0.2.7:5555"
        assert entry["request_line_sha256"] == digest
        assert entry["detail"] == HOSTILE  # escaped on the line, exact once parsed
        assert entry["logger"] == "hardserve.security" and entry["level"] == "warning"
    else:
        assert "refused reason=bare_lf status=400 peer=192.0.2.7:5555" in line
        assert f"request_line_sha256={digest}" in line
        # The forged text stays inside the quoted detail, after every real field.
        fields, detail = line.split(" detail=", 1)
        assert "forged" not in fields and detail.startswith("'") and detail.endswith("'")


def test_refusal_without_status_or_peer(captured: tuple[str, io.StringIO]) -> None:
    log_format, stream = captured
    logs.log_refusal("send_timeout", 0, None, b"", "10 bytes unread")
    line = stream.getvalue().strip()
    if log_format == "json":
        entry = json.loads(line)
        assert (entry["status"], entry["peer"], entry["request_line_sha256"]) == (0, "-", "-")
    else:
        assert "status=0 peer=- request_line_sha256=-" in line
