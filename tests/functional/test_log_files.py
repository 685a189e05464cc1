"""The log files of a running server: --error-log, --access-log, --log-config, USR1 reopening
them after a rotation, and the startup lines (docs/logging.md)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, TIMEOUT_S, read_responses, serve_process, stop_process

HELLO = "tests.apps_cli.hello:app"
EXIT_CONFIG = 3


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


def wait_for(path: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} not in {path}:\n{text}")


def get(port: int, path: str = "/") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        (response,), _ = read_responses(sock, 1)
    return response.status


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hardserve", HELLO, "--bind", "127.0.0.1:0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            stop_process(process)


def test_error_and_access_logs_go_to_their_files_and_usr1_reopens_them(
    tmp_path: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    process = start("--error-log", str(errors), "--access-log", str(access), "--workers", "2")
    stopped.append(process)
    port = int(wait_for(errors, r"listening at http://127\.0\.0\.1:(\d+)").group(1))
    wait_for(errors, r"binds: http://127\.0\.0\.1:\d+")
    assert get(port, "/first") == 200
    wait_for(access, r'"GET /first HTTP/1\.1" 200')
    # logrotate moves the files, then sends USR1 to the master, which tells the workers.
    errors.rename(tmp_path / "error.log.1")
    access.rename(tmp_path / "access.log.1")
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + TIMEOUT_S
    while not access.exists() and time.monotonic() < deadline:
        assert get(port, "/probe") == 200
        time.sleep(0.05)
    for _ in range(4):  # reach both workers
        assert get(port, "/second") == 200
    wait_for(access, r'"GET /second HTTP/1\.1" 200')
    assert "/second" not in (tmp_path / "access.log.1").read_text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT_S) == 0
    assert "stopping" in errors.read_text()
    assert process.stderr is not None
    assert "listening at" not in process.stderr.read()


def test_a_log_config_replaces_the_access_handler(
    tmp_path: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    target = tmp_path / "custom.log"
    config = tmp_path / "logging.toml"
    config.write_text(
        f"""
[formatters.tagged]
format = "CUSTOM %(message)s"
[handlers.custom]
class = "logging.FileHandler"
filename = "{target}"
formatter = "tagged"
[loggers."hardserve.access"]
handlers = ["custom"]
level = "INFO"
propagate = false
"""
    )
    with serve_process(HELLO, "--log-config", str(config), "--log-format", "json") as server:
        assert get(server.port, "/x") == 200
        line = wait_for(target, r"CUSTOM (\{.*\})\n").group(1)
    assert '"path":"/x"' in line


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("missing.toml", None, "cannot read"),
        ("bad.toml", "[formatters\n", "not valid TOML"),
        ("bad.json", "{", "not valid JSON"),
        ("handler.toml", '[handlers.h]\nclass = "no.such.Handler"\n', "handler 'h'"),
    ],
)
def test_a_bad_log_config_exits_3_with_one_line(
    tmp_path: Path, name: str, text: str | None, error: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "hardserve", HELLO, "--log-config", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"hardserve: --log-config: {path}") and error in lines[0]


def test_a_bad_access_log_format_or_unwritable_file_exits_3(tmp_path: Path) -> None:
    for args, error in (
        (["--access-log-format", "%(h)s %(zz)s"], "unknown atom %(zz)s"),
        (["--error-log", str(tmp_path / "missing" / "e.log")], "cannot open a log file"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "hardserve", HELLO, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert len(result.stderr.splitlines()) == 1 and error in result.stderr, result.stderr


def _startup(lines: list[str]) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not any("listening at" in line for line in lines):
        time.sleep(0.02)
    return "".join(lines)


def test_startup_lines_with_defaults() -> None:
    with serve_process(HELLO) as server:
        text = _startup(server.stderr_lines)
    assert re.search(r"starting hardserve \S+ \(Python ", text)
    assert f"binds: http://127.0.0.1:{server.port}\n" in text
    assert "workers: 1, threads per worker: 8, pool queue: 1024, loop: auto" in text
    assert "limits: body_max_bytes=104857600, head_max_bytes=65536, head_timeout_s=10.0" in text
    assert "logs: error -, access off, format text" in text
    # The test machines run as root with HARDSERVE_ALLOW_ROOT (tests/conftest.py): that is named.
    changed = "allow_root=true" if os.geteuid() == 0 else "none"
    assert f"security settings changed from their defaults: {changed}\n" in text
    # Once, in the master, before the listening line.
    assert text.count("starting hardserve") == 1
    assert text.index("security settings changed") < text.index("listening at")


def test_startup_lines_name_every_security_setting_that_differs() -> None:
    args = (
        "--forwarded-allow-ips",
        "10.0.0.1, unix",
        "--path-backslash",
        "allow",
        "--underscore-headers",
        "refuse",
        "--client-in-flight-max",
        "4",
        "--header-count-max",
        "50",
        "--workers",
        "2",
        "--threads",
        "3",
    )
    env = {"HARDSERVE_ALLOW_ROOT": "1"} if os.geteuid() == 0 else {}
    with serve_process(HELLO, *args, env=env) as server:
        text = _startup(server.stderr_lines)
    (line,) = [x for x in text.splitlines() if "security settings changed" in x]
    assert 'forwarded_allow_ips="10.0.0.1, unix"' in line
    assert 'path_backslash="allow"' in line
    assert 'underscore_headers="refuse"' in line
    assert "header_count_max=50" in line
    assert "path_encoded_slash" not in line  # at its default
    if os.geteuid() == 0:
        assert "allow_root=true" in line
    assert "client_in_flight_max=4" in text  # a main limit: on the limits line
    assert "workers: 2, threads per worker: 3" in text


def test_every_access_line_reaches_the_file_by_a_graceful_stop(
    tmp_path: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    """A loop turn's access lines are written together at its end (observe/logs.py); the
    worker writes what its last turn held as it exits, so a stop right after the last response
    loses none."""
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    process = start("--error-log", str(errors), "--access-log", str(access))
    stopped.append(process)
    port = int(wait_for(errors, r"listening at http://127\.0\.0\.1:(\d+)").group(1))
    count = 50
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        # Pipelined: many requests answered in few turns of the loop.
        sock.sendall(
            b"".join(
                f"GET /n{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for index in range(count)
            )
        )
        responses, _ = read_responses(sock, count)
    assert [response.status for response in responses] == [200] * count
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT_S) == 0
    paths = re.findall(r'"GET (/n\d+) HTTP/1\.1" 200', access.read_text())
    assert paths == [f"/n{index}" for index in range(count)]
