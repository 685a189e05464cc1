"""End to end with real frameworks: a Flask app and a Django project, each wrapped in wsgiref's
validator (which also checks the server's side of PEP 3333 on every call: the environ, the
start_response and write callables, wsgi.input, and that the response iterable is closed),
served by a real hardserve worker and spoken to by real clients: httpx, http.client and curl.

A validator complaint raises inside the app, so it shows up as an unexpected 500 (or, for an
iterable that is never closed, as an unraisable-exception error from pytest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest

from tests.apps import common
from tests.helpers import ROOT, TIMEOUT_S, RunningServer, serve, serve_process

FRAMEWORKS = ("flask", "django")
UPLOAD_SIZE = 300 * 1024
# Flask's 500 page is 265 bytes, Django's 145, hardserve's own 22: anything longer than this
# has room for a traceback or the exception text.
SHORT_BODY_MAX = 512
DJANGO_WSGI = "tests.apps.django_project.wsgi:application"
DJANGO_SETTINGS = "tests.apps.django_project.settings"


@contextlib.contextmanager
def framework_app(
    name: str, *, propagate_exceptions: bool = False, validated: bool = True
) -> Iterator[Any]:
    """The framework's WSGI app, behind the validator unless told otherwise. The frameworks are
    imported here and not at module level so that collecting this file loads neither and
    configures no Django."""
    wrap = validator if validated else (lambda app: app)
    if name == "flask":
        from tests.apps.flask_app import create_app

        yield wrap(create_app(propagate_exceptions=propagate_exceptions))
        return
    from django.test import override_settings

    from tests.apps.django_project.wsgi import application

    # Django reads this setting when a view fails, so overriding it for the length of the
    # block is enough; override_settings restores it even if the test fails.
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=propagate_exceptions):
        yield wrap(application)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def server(framework: str) -> Iterator[RunningServer]:
    with framework_app(framework) as app, serve(app) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http_client:
        yield http_client


@pytest.fixture(scope="module")
def upload_data() -> bytes:
    # Seeded so that a failure reproduces; random so that no pattern hides a lost or moved block.
    return random.Random(3333).randbytes(UPLOAD_SIZE)


@pytest.fixture
def upload_file(tmp_path: Path, upload_data: bytes) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(upload_data)
    return path


def expected_upload(data: bytes, note: str = "hi") -> dict[str, Any]:
    return {
        "file": {
            "name": "payload.bin",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "fields": {"note": [note]},
    }


def expected_stream(count: int) -> bytes:
    return b"".join(common.stream_chunk(index) for index in range(count))


def secret_logged(records: list[logging.LogRecord]) -> bool:
    """The view's exception, traceback included, reached a log record."""
    return any(
        record.exc_info is not None and common.SECRET in str(record.exc_info[1])
        for record in records
    )


# -- curl --------------------------------------------------------------------------------------


@dataclasses.dataclass
class CurlResult:
    heads: list[tuple[int, dict[str, str]]]  # every head curl received, 1xx ones included
    body: bytes

    @property
    def status(self) -> int:
        return self.heads[-1][0]

    @property
    def headers(self) -> dict[str, str]:
        return self.heads[-1][1]


def curl(tmp_path: Path, *args: str) -> CurlResult:
    body_path = tmp_path / f"curl-body-{uuid.uuid4().hex}"
    completed = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-D", "-", "-o", str(body_path), *args],
        capture_output=True,
        timeout=TIMEOUT_S + 5,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    heads: list[tuple[int, dict[str, str]]] = []
    for block in completed.stdout.decode("latin-1").split("\r\n\r\n"):
        if not block:
            continue
        status_line, *lines = block.split("\r\n")
        fields = dict(line.split(":", 1) for line in lines)
        heads.append(
            (int(status_line.split()[1]), {k.lower(): v.strip() for k, v in fields.items()})
        )
    return CurlResult(heads, body_path.read_bytes())


_CHUNK_SIZE_RE = re.compile(rb"[0-9a-fA-F]{1,16}")


def split_chunks(raw: bytes) -> list[bytes]:
    """The chunks of a chunked body (RFC 9112 section 7.1) as it came off the wire (curl
    --raw). Strict: no extensions or trailers are expected and anything off fails."""
    chunks: list[bytes] = []
    pos = 0
    while True:
        line_end = raw.index(b"\r\n", pos)
        size_text = raw[pos:line_end]
        assert _CHUNK_SIZE_RE.fullmatch(size_text), f"bad chunk size line {size_text!r}"
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            assert raw[pos:] == b"\r\n", f"bytes after the last chunk: {raw[pos : pos + 40]!r}"
            return chunks
        chunks.append(raw[pos : pos + size])
        pos += size
        assert raw[pos : pos + 2] == b"\r\n", f"chunk not followed by CRLF at {pos}"
        pos += 2


# -- pages, forms, uploads -----------------------------------------------------------------------


def test_index_page(client: httpx.Client, framework: str) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == common.page(framework).encode("utf-8")
    assert common.PAGE_TEXT in response.text
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers
    assert response.headers["server"] == "hardserve"
    assert "date" in response.headers


def test_head_has_the_get_headers_and_no_body_and_keeps_the_connection(
    server: RunningServer, framework: str
) -> None:
    page = common.page(framework).encode("utf-8")
    connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    try:
        connection.request("HEAD", "/")
        head = connection.getresponse()
        assert head.read() == b""
        first_socket = connection.sock
        connection.request("GET", "/")
        get = connection.getresponse()
        assert get.read() == page
        # http.client silently reconnects when the server closed: the same socket proves the
        # HEAD response left the connection usable (no stray body bytes, no close).
        assert first_socket is not None
        assert connection.sock is first_socket
    finally:
        connection.close()
    assert head.status == get.status == 200
    assert head.getheader("Content-Length") == str(len(page))
    assert head.getheader("Content-Type") == get.getheader("Content-Type")


def test_form_post_is_echoed_as_json(client: httpx.Client) -> None:
    fields = {"name": ["Zoë"], "tags": ["a", "b&c=d"], "empty": [""]}
    response = client.post("/form", data=fields)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"fields": fields}


def test_upload_with_httpx(client: httpx.Client, upload_data: bytes) -> None:
    response = client.post(
        "/upload",
        files={"file": ("payload.bin", upload_data, "application/octet-stream")},
        data={"note": "hi"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected_upload(upload_data)


@pytest.mark.parametrize(
    ("expect", "statuses"),
    [("Expect: 100-continue", [100, 200]), ("Expect:", [200])],
    ids=["expect-100-continue", "no-expect"],
)
def test_upload_with_curl(
    server: RunningServer,
    upload_file: Path,
    upload_data: bytes,
    tmp_path: Path,
    expect: str,
    statuses: list[int],
) -> None:
    # "Expect:" with no value stops curl from adding the field itself. With it, curl holds the
    # body back (up to one second) until the server sends 100 Continue, which hardserve does
    # when the app starts reading; the 100 head is in curl's header dump.
    result = curl(
        tmp_path,
        "-H",
        expect,
        "-F",
        f"file=@{upload_file};filename=payload.bin",
        "-F",
        "note=hi",
        f"{server.url}/upload",
    )
    assert [status for status, _ in result.heads] == statuses
    assert result.headers["content-type"] == "application/json"
    assert json.loads(result.body) == expected_upload(upload_data)


@pytest.mark.parametrize("validated", [True, False], ids=["validated", "sendfile"])
def test_file_download(framework: str, validated: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both frameworks hand a file response to wsgi.file_wrapper. Behind the validator the
    # wrapper reaches hardserve hidden inside the validator's iterator and is read block by
    # block; unwrapped it reaches hardserve as its own FileWrapper and goes out with
    # os.sendfile. Counting the bytes os.sendfile sends shows which path was taken.
    sendfile_bytes: list[int] = []
    real_sendfile = os.sendfile

    def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real_sendfile(out_fd, in_fd, offset, count)
        sendfile_bytes.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    with (
        framework_app(framework, validated=validated) as app,
        serve(app) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http_client,
    ):
        response = http_client.get("/download")
        after = http_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(common.DOWNLOAD_SIZE)
    assert (
        hashlib.sha256(response.content).digest() == hashlib.sha256(common.download_data()).digest()
    )
    assert sum(sendfile_bytes) == (0 if validated else common.DOWNLOAD_SIZE)
    # The connection survives a file response (same client, kept alive).
    assert after.status_code == 200


# -- streaming -----------------------------------------------------------------------------------


def test_stream_is_chunked(client: httpx.Client) -> None:
    with client.stream("GET", "/stream") as response:
        body = response.read()
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert body == expected_stream(common.STREAM_COUNT_DEFAULT)


def test_stream_chunks_on_the_wire_with_curl(server: RunningServer, tmp_path: Path) -> None:
    # --raw keeps the chunked coding, so each chunk can be checked.
    result = curl(tmp_path, "--raw", f"{server.url}/stream?count=8")
    assert result.status == 200
    assert result.headers["transfer-encoding"] == "chunked"
    # One chunk per piece the app yielded: PEP 3333 has the server send each piece before it
    # asks for the next, so pieces are neither merged nor held back.
    assert split_chunks(result.body) == [common.stream_chunk(index) for index in range(8)]


def test_stream_to_an_http10_client_ends_with_the_connection(
    server: RunningServer, tmp_path: Path
) -> None:
    # HTTP/1.0 has no chunked coding: the body of unknown length ends when the server closes.
    result = curl(tmp_path, "--http1.0", f"{server.url}/stream?count=3")
    assert result.status == 200
    assert "transfer-encoding" not in result.headers
    assert "content-length" not in result.headers
    assert result.headers["connection"].lower() == "close"
    assert result.body == expected_stream(3)


def test_stream_leaves_the_server_piece_by_piece(server: RunningServer) -> None:
    # The app sends its first chunk, then waits for this test to open the gate. Only a server
    # that sends each piece as it is produced lets the client read that chunk first; one that
    # buffered the body would time out here (10 s socket timeout) and the app would then send
    # the gate-timed-out marker.
    name = uuid.uuid4().hex
    gate = common.gate(name)
    first = common.stream_chunk(0)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", f"/stream?count=3&gate={name}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read(len(first)) == first
        gate.set()
        rest = response.read()
    finally:
        gate.set()  # never leave the app's thread waiting, whatever failed above
        connection.close()
        common.discard_gate(name)
    assert first + rest == expected_stream(3)


# -- errors --------------------------------------------------------------------------------------


def test_unknown_path_is_404(client: httpx.Client) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "Not Found" in response.text
    assert response.headers["content-length"] == str(len(response.content))


def test_view_exception_is_a_short_generic_500(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # The framework catches the exception and renders its own production 500 page.
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "Server Error" in response.text
    assert len(response.content) <= SHORT_BODY_MAX
    assert "Traceback" not in response.text
    assert common.SECRET not in response.text
    assert "RuntimeError" not in response.text
    # Not lost either: the traceback went to the log.
    assert secret_logged(caplog.records)
    # And the server carries on.
    assert client.get("/").status_code == 200


def test_exception_reaching_the_server_is_its_generic_500(
    framework: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The framework is told to let the exception out (Flask PROPAGATE_EXCEPTIONS, Django
    # DEBUG_PROPAGATE_EXCEPTIONS), so hardserve itself must answer, log, and close.
    error_log = logging.getLogger("hardserve.error")
    # On the logger itself: hardserve's log configuration, if another test in this process ran
    # it, stops its loggers from propagating to the root where caplog listens.
    error_log.addHandler(caplog.handler)
    try:
        with (
            framework_app(framework, propagate_exceptions=True) as app,
            serve(app) as server,
            httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http_client,
        ):
            response = http_client.get("/boom")
            after = http_client.get("/")
    finally:
        error_log.removeHandler(caplog.handler)
    assert response.status_code == 500
    assert response.content == b"Internal Server Error\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["connection"] == "close"
    assert secret_logged([r for r in caplog.records if r.name == "hardserve.error"])
    assert after.status_code == 200


def test_exception_mid_stream_cuts_the_connection(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # The 200 head and the first chunk are out when the generator fails: the only honest
    # signal left is to drop the connection so that the client cannot take the truncated body
    # for a complete one (no terminating zero-size chunk).
    received = bytearray()
    with client.stream("GET", "/stream-boom") as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            for piece in response.iter_raw():
                received += piece
    # Closing the connection may discard bytes still in flight, so only a prefix is certain.
    assert common.stream_chunk(0).startswith(bytes(received))
    assert secret_logged(caplog.records)
    assert client.get("/").status_code == 200


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "options", "env"),
    [
        # How a Django deployment is started: the settings module in the environment, the
        # project directory given with --chdir.
        (DJANGO_WSGI, ("--chdir", str(ROOT)), {"DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS}),
        # A Flask app factory, the project on --pythonpath.
        ("tests.apps.flask_app:create_app()", ("--pythonpath", str(ROOT)), {}),
    ],
    ids=["django", "flask"],
)
def test_served_by_the_command_line(
    spec: str,
    options: tuple[str, ...],
    env: dict[str, str],
    tmp_path: Path,
    upload_file: Path,
    upload_data: bytes,
) -> None:
    # Started from an unrelated directory, so the project is found only through the options.
    with (
        serve_process(spec, *options, "--threads", "2", env=env, cwd=str(tmp_path)) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http_client,
    ):
        page = http_client.get("/")
        form = http_client.post("/form", data={"name": "Zoë"})
        upload = curl(
            tmp_path,
            "-F",
            f"file=@{upload_file};filename=payload.bin",
            "-F",
            "note=hi",
            f"{server.url}/upload",
        )
        stream = curl(tmp_path, "--raw", f"{server.url}/stream?count=4")
        boom = http_client.get("/boom")
    framework = "django" if spec == DJANGO_WSGI else "flask"
    assert page.status_code == 200
    assert page.content == common.page(framework).encode("utf-8")
    assert form.json() == {"fields": {"name": ["Zoë"]}}
    assert upload.status == 200
    assert json.loads(upload.body) == expected_upload(upload_data)
    assert stream.headers["transfer-encoding"] == "chunked"
    assert b"".join(split_chunks(stream.body)) == expected_stream(4)
    assert boom.status_code == 500
    assert len(boom.content) <= SHORT_BODY_MAX
    assert "Traceback" not in boom.text
    assert common.SECRET not in boom.text
