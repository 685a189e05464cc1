"""The security log's line, in text and in JSON: one line per refusal, whatever the client
sent; the access-log format compiler and escapes; --log-config and reopening log files."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hardserve.http.limits import Limits
from hardserve.http.parser import RequestHead, RequestParser
from hardserve.observe import logs
from hardserve.settings import SettingError, load

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


# -- the access-log format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("%(nope)s", "unknown atom %(nope)s"),
        ("%({content-type}o)s", "response headers are not available"),
        ("100%", "'%' at character 4"),
        ("%(h)x", "'%' at character 1"),
        ("%(h)s %", "'%' at character 7"),
    ],
)
def test_a_format_that_cannot_be_read_is_refused(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        logs.compile_access_format(spec)


def test_a_bad_format_is_a_setting_error() -> None:
    with pytest.raises(SettingError, match=r"--access-log-format: unknown atom %\(x\)s"):
        load({"access_log_format": "%(h)s %(x)s"}, env={})
    assert load({}, env={}).access_log_format == logs.DEFAULT_ACCESS_FORMAT


def test_the_format_compiles_to_one_template() -> None:
    template, getters = logs.compile_access_format('%(h)s "%(r)s" 100%% %({Host}i)s')
    assert template == '%s "%s" 100%% %s'
    assert len(getters) == 3


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"/plain?a=1", "/plain?a=1"),
        (b'a"b', 'a\\"b'),
        (b"a\\b", "a\\\\b"),
        (b"\r\n\t\x00\x1b\x7f", "\\r\\n\\t\\x00\\x1b\\x7f"),
        (b"\x80\xe9\xff", "\\x80\\xe9\\xff"),
        (b'\\"', '\\\\\\"'),
    ],
)
def test_escaped_bytes_are_printable_ascii_and_read_back(raw: bytes, shown: str) -> None:
    assert logs.escape_bytes(raw) == shown
    assert codecs.decode(shown, "unicode_escape").encode("latin-1") == raw


def test_escaped_text_covers_characters_past_latin1() -> None:
    assert logs.escape_text("a\u2028b\U0001f600") == "a\\u2028b\\U0001f600"


# -- --log-config and reopening -------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", logs.ERROR, logs.ACCESS, logs.SECURITY, "app")
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in names
    }
    propagate = {name: logging.getLogger(name).propagate for name in names}
    own_access_handler = logs._own_access_handler
    try:
        yield
    finally:
        logs._own_access_handler = own_access_handler
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate[name]
            logger.disabled = False


def test_a_log_config_in_toml_overrides_hardserves_handlers(
    tmp_path: Path, restore_logging: None
) -> None:
    target = tmp_path / "access.log"
    config = tmp_path / "logging.toml"
    config.write_text(
        f"""
[formatters.plain]
format = "ACCESS %(message)s"
[handlers.file]
class = "logging.FileHandler"
filename = "{target}"
formatter = "plain"
[loggers."hardserve.access"]
handlers = ["file"]
level = "INFO"
propagate = false
"""
    )
    logs.configure(access_log=None)
    logs.apply_log_config(str(config))
    logging.getLogger(logs.ACCESS).info("one")
    assert logging.getLogger(logs.ERROR).handlers, "an unnamed logger keeps its handlers"
    assert not logging.getLogger(logs.ERROR).disabled
    for handler in logging.getLogger(logs.ACCESS).handlers:
        handler.flush()
    assert target.read_text() == "ACCESS one\n"


def test_a_log_config_in_json_works_too(tmp_path: Path, restore_logging: None) -> None:
    config = tmp_path / "logging.json"
    config.write_text(json.dumps({"loggers": {"app": {"level": "ERROR"}}}))
    logs.apply_log_config(str(config))
    assert logging.getLogger("app").level == logging.ERROR


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("missing.toml", None, "cannot read"),
        ("bad.toml", "[handlers\n", "not valid TOML"),
        ("bad.json", "{", "not valid JSON"),
        ("list.json", "[1]", "must hold one object"),
        ("class.toml", '[handlers.h]\nclass = "no.such.Handler"\n', "handler 'h'"),
        ("version.toml", "version = 2\n", "version"),
    ],
)
def test_a_bad_log_config_is_one_line(
    tmp_path: Path, restore_logging: None, name: str, text: str | None, error: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(logs.LogConfigError) as caught:
        logs.apply_log_config(str(path))
    message = str(caught.value)
    assert error in message and "\n" not in message and message.startswith(str(path))


def test_reopen_covers_every_file_handler(tmp_path: Path, restore_logging: None) -> None:
    errors, access, other = tmp_path / "error.log", tmp_path / "access.log", tmp_path / "o.log"
    logs.configure(error_log=str(errors), access_log=str(access))
    extra = logging.FileHandler(other)
    logging.getLogger("app").addHandler(extra)
    for path in (errors, access, other):
        path.rename(path.with_suffix(".1"))
    logs.reopen_files()
    logging.getLogger(logs.ERROR).error("after")
    logging.getLogger(logs.ACCESS).info("after")
    logging.getLogger("app").error("after")
    for handler in (
        *logging.getLogger(logs.ERROR).handlers,
        *logging.getLogger(logs.ACCESS).handlers,
        extra,
    ):
        handler.flush()
    for path in (errors, access, other):
        assert "after" in path.read_text(), path
        assert path.with_suffix(".1").read_text() == ""


def test_a_refusal_names_its_request_id(captured: tuple[str, io.StringIO]) -> None:
    log_format, stream = captured
    logs.log_refusal("forwarded_invalid", 400, ("192.0.2.7", 1), b"GET / HTTP/1.1", "x", "r-1")
    line = stream.getvalue().strip()
    if log_format == "json":
        assert json.loads(line)["request_id"] == "r-1"
    else:
        assert " request_id=r-1 detail='x'" in line


# -- the access log's lines, one write per loop turn ---------------------------------------------


class CountingStream(io.StringIO):
    """A stream that counts the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _access_entry(path: bytes) -> logs.AccessEntry:
    parser = RequestParser(Limits())
    parser.feed(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head = parser.next_event()
    assert isinstance(head, RequestHead)
    return logs.AccessEntry(head, "127.0.0.1", 200, 2, 0.001, "ok", "id-1", None)


@pytest.fixture
def own_access_log(restore_logging: None) -> Iterator[CountingStream]:
    """hardserve's own access-log handler (configure), writing to a counting stream."""
    logs.configure(access_log="-")
    handler = logging.getLogger(logs.ACCESS).handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = CountingStream()
    handler.setStream(stream)
    yield stream


def _only_hardserves_handler() -> None:
    """As in a server: pytest's log capture adds its handlers to every logger during a test,
    and any handler but hardserve's own takes the access log off the batched path."""
    access = logging.getLogger(logs.ACCESS)
    access.handlers[:] = [
        handler for handler in access.handlers if handler is logs._own_access_handler
    ]


def test_a_turns_access_lines_are_written_together_at_its_end(
    own_access_log: CountingStream,
) -> None:
    _only_hardserves_handler()
    scheduled: list[Callable[[], None]] = []
    access = logs.AccessLog()
    access.schedule = scheduled.append  # stands for the loop's call_soon
    for path in (b"/a", b"/b", b"/c"):
        access.log(_access_entry(path))
    assert own_access_log.getvalue() == "", "nothing is written before the turn ends"
    assert len(scheduled) == 1, "one flush per turn, however many lines"
    scheduled[0]()
    lines = own_access_log.getvalue().splitlines()
    assert [line.split('"')[1] for line in lines] == [
        "GET /a HTTP/1.1",
        "GET /b HTTP/1.1",
        "GET /c HTTP/1.1",
    ]
    assert own_access_log.writes == 1
    access.log(_access_entry(b"/d"))
    assert len(scheduled) == 2, "the next turn's first line schedules the next flush"
    access.flush()  # as the worker does when it exits
    assert own_access_log.getvalue().count("\n") == 4


def test_without_a_loop_each_access_line_is_written_at_once(
    own_access_log: CountingStream,
) -> None:
    _only_hardserves_handler()
    access = logs.AccessLog()
    access.log(_access_entry(b"/now"))
    assert "GET /now HTTP/1.1" in own_access_log.getvalue()


def test_a_handler_from_a_log_config_gets_each_access_line_as_it_comes(
    own_access_log: CountingStream,
) -> None:
    _only_hardserves_handler()
    scheduled: list[Callable[[], None]] = []
    access = logs.AccessLog()
    access.schedule = scheduled.append
    records: list[str] = []
    foreign = logging.Handler()
    foreign.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(logs.ACCESS).addHandler(foreign)
    access.log(_access_entry(b"/both"))
    assert scheduled == [] and len(records) == 1 and "/both" in records[0]
    assert "/both" in own_access_log.getvalue(), "hardserve's handler still gets it"
    logging.getLogger(logs.ACCESS).removeHandler(foreign)
    filtered: list[str] = []
    logging.getLogger(logs.ACCESS).addFilter(lambda record: not filtered.append("seen"))
    access.log(_access_entry(b"/filtered"))
    assert scheduled == [] and filtered == ["seen"], "a filter sees every line"
