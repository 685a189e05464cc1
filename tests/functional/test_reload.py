"""HUP reads the configuration again: new workers start with the file's new settings, and no
request is refused while they replace the old ones."""

from __future__ import annotations

import http.client
import signal
import time
from pathlib import Path

from tests.helpers import ROOT, TIMEOUT_S, serve_process

HELLO = "tests.apps_cli.hello:app"


def server_header(host: str, port: int) -> str | None:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        return response.getheader("Server")
    finally:
        connection.close()


def test_hup_applies_a_changed_config_file_to_new_workers(tmp_path: Path) -> None:
    config = tmp_path / "hardserve.toml"
    config.write_text('server_header = "before-reload"\nworkers = 2\n')
    with serve_process(HELLO, "--config", str(config), cwd=str(ROOT)) as server:
        assert server_header(server.host, server.port) == "before-reload"
        config.write_text('server_header = "after-reload"\nworkers = 2\n')
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        seen = []
        while time.monotonic() < deadline:
            # Every request during the reload is answered, by an old worker or a new one.
            seen.append(server_header(server.host, server.port))
            if seen[-1] == "after-reload" and any(
                "every worker replaced" in line for line in server.stderr_lines
            ):
                break
            time.sleep(0.02)
        assert seen[-1] == "after-reload", seen[-5:]
        assert set(seen) <= {"before-reload", "after-reload"}


def test_a_broken_file_on_hup_keeps_the_running_configuration(tmp_path: Path) -> None:
    config = tmp_path / "hardserve.toml"
    config.write_text('server_header = "kept"\n')
    with serve_process(HELLO, "--config", str(config), cwd=str(ROOT)) as server:
        config.write_text("server_header = \n")  # not TOML
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        while not any("configuration not changed" in line for line in server.stderr_lines):
            assert time.monotonic() < deadline, "no reload error logged"
            time.sleep(0.02)
        assert server_header(server.host, server.port) == "kept"
        assert server.process.poll() is None
