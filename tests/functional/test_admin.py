"""The admin listener of a real server (python -m hardserve, a master and its workers): /metrics
checked by promtool and parsed back, exact values after known traffic, a worker killed under
scrapes, /readyz on TERM, tokens, OpenMetrics, slow admin clients, bounded labels.

Values come from the workers' snapshots, which reach the master about once a second: every
check of a value polls the scrape until it holds or a deadline passes, never a blind sleep."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TIMEOUT_S, ServerProcess, serve_process, wait_for

APP = "tests.apps_cli.supervised:app"
TOKEN = "admin-token-for-the-tests-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


@dataclass
class Admin:
    server: ServerProcess
    host: str
    port: int

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()

    def scrape_text(self, headers: dict[str, str] | None = None) -> str:
        status, _, body = self.get("/metrics", headers)
        assert status == 200, (status, body)
        return body.decode()

    def scrape(self, headers: dict[str, str] | None = None) -> Samples:
        return parse(self.scrape_text(headers))


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


_ADMIN_RE = re.compile(r"metrics and health: http://(?P<host>[^\s/]+):(?P<port>\d+)/metrics")


@contextmanager
def admin_server(*args: str) -> Iterator[Admin]:
    with serve_process(APP, "--admin-bind", "127.0.0.1:0", *args) as server:
        found = [m for line in server.stderr_lines if (m := _ADMIN_RE.search(line))]
        assert found, "no admin line:\n" + "".join(server.stderr_lines)
        yield Admin(server, found[0]["host"], int(found[0]["port"]))




def get(server: ServerProcess, path: str = "/") -> tuple[int, int]:
    """One request on a new connection to the public port: (status, worker pid)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, int(response.getheader("X-Worker-Pid") or 0)
    finally:
        connection.close()


def scrape_until(admin: Admin, what: str, check: Callable[[Samples], bool]) -> Samples:
    def probe() -> Samples | None:
        samples = admin.scrape()
        return samples if check(samples) else None

    return wait_for(what, probe)


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/system-deps.sh installs Debian's prometheus"
    return found


def test_promtool_checks_a_real_scrape() -> None:
    with admin_server("--workers", "2") as admin:
        for number in range(5):
            assert get(admin.server, f"/page/{number}")[0] == 200
        with socket.create_connection((admin.server.host, admin.server.port), TIMEOUT_S) as raw:
            raw.sendall(b"GET / HTTP/1.1\nHost: x\n\n")  # bare LF: refused
            raw.recv(4096)
        samples = scrape_until(
            admin,
            "the requests and the refusal",
            lambda s: (
                value(s, "hardserve_requests_total") == 5
                and value(s, "hardserve_refusals_total", reason="bare_lf") == 1
            ),
        )
        assert value(samples, "hardserve_build_info", **build_labels(samples)) == 1
        text = admin.scrape_text()
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).strip() == "", done.stdout + done.stderr


def build_labels(samples: Samples) -> dict[str, str]:
    (labels,) = [dict(k[1]) for k in samples if k[0] == "hardserve_build_info"]
    assert labels["version"] and labels["python"] and labels["h11"]
    return labels


def test_ten_requests_across_two_workers_count_exactly_ten() -> None:
    with admin_server("--workers", "2") as admin:
        pids: list[int] = []
        # New connections until both workers have answered, at least ten requests in all.
        while len(pids) < 10 or len(set(pids)) < 2:
            status, pid = get(admin.server)
            assert status == 200
            pids.append(pid)
            assert len(pids) < 500, "one worker answered every request"
        sent = len(pids)
        samples = scrape_until(
            admin,
            f"hardserve_requests_total == {sent}",
            lambda s: value(s, "hardserve_requests_total") == sent,
        )
        assert value(samples, "hardserve_connections_accepted_total") == sent
        assert (
            value(
                samples,
                "hardserve_request_duration_seconds_count",
                method="GET",
                status_class="2xx",
            )
            == sent
        )
        assert value(samples, "hardserve_pool_wait_seconds_count") == sent
        assert value(samples, "hardserve_workers", state="live") == 2
        assert value(samples, "hardserve_workers", state="ready") == 2
        assert sorted(by_label(samples, "hardserve_worker_pid", "worker").values()) == sorted(
            set(pids)
        )
        # Nothing is counted twice: after every worker has sent another snapshot, the same.
        counted_at = time.monotonic()

        def every_worker_reported_since() -> Samples | None:
            samples = admin.scrape()
            elapsed = time.monotonic() - counted_at
            ages = by_label(samples, "hardserve_worker_snapshot_age_seconds", "worker")
            return samples if len(ages) == 2 and max(ages.values()) < elapsed - 0.1 else None

        later = wait_for("a new snapshot from each worker", every_worker_reported_since)
        assert value(later, "hardserve_requests_total") == sent


def test_a_worker_killed_under_scrapes_keeps_the_counters_and_loses_its_gauges() -> None:
    with admin_server("--workers", "2") as admin:
        for _ in range(10):
            assert get(admin.server)[0] == 200
        before = scrape_until(
            admin, "10 requests counted", lambda s: value(s, "hardserve_requests_total") == 10
        )
        slots = by_label(before, "hardserve_worker_pid", "worker")
        victim = int(slots["0"])
        seen: list[Samples] = []
        stop = threading.Event()

        def scrape_all_along() -> None:
            while not stop.is_set():
                seen.append(admin.scrape())

        scraper = threading.Thread(target=scrape_all_along, daemon=True)
        scraper.start()
        try:
            os.kill(victim, signal.SIGKILL)
            after = scrape_until(
                admin,
                "the crash counted and a replacement ready",
                lambda s: (
                    value(s, "hardserve_worker_exits_total", cause="crash") == 1
                    and value(s, "hardserve_workers", state="ready") == 2
                ),
            )
        finally:
            stop.set()
            scraper.join(TIMEOUT_S)
        assert len(seen) >= 2
        for name in (
            "hardserve_requests_total",
            "hardserve_connections_accepted_total",
            "hardserve_sent_bytes_total",
            "hardserve_worker_starts_total",
        ):
            values = [value(s, name) for s in seen]
            assert values == sorted(values), f"{name} went backwards: {values}"
        assert value(after, "hardserve_requests_total") == 10
        assert value(after, "hardserve_worker_starts_total") == 3
        pids = by_label(after, "hardserve_worker_pid", "worker")
        assert victim not in pids.values()
        assert len(pids) == 2  # the replacement took the dead worker's slot
        for name in (
            "hardserve_pool_threads",
            "hardserve_worker_heartbeat_age_seconds",
            "hardserve_worker_snapshot_age_seconds",
        ):
            assert set(by_label(after, name, "worker")) <= set(pids), name


def test_readyz_turns_503_on_term_while_the_workers_still_serve() -> None:
    with admin_server("--workers", "2", "--shutdown-delay-s", "3") as admin:
        wait_for("ready", lambda: admin.get("/readyz")[0] == 200)
        sent_at = time.monotonic()
        admin.server.process.send_signal(signal.SIGTERM)
        wait_for("/readyz 503", lambda: admin.get("/readyz")[0] == 503, timeout_s=2.0)
        assert admin.get("/readyz")[2] == b"not ready\n"
        assert admin.get("/livez")[0] == 200
        # The listeners still accept and the workers still serve during the delay.
        assert get(admin.server)[0] == 200
        assert time.monotonic() - sent_at < 3.0, "the checks above outlasted the delay"
        assert value(admin.scrape(), "hardserve_ready") == 0
        assert admin.server.process.wait(TIMEOUT_S) == 0
        assert time.monotonic() - sent_at >= 3.0


def test_readyz_turns_503_on_term_while_a_request_finishes() -> None:
    with admin_server("--workers", "1", "--graceful-timeout-s", "10") as admin:
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(get(admin.server, "/sleep?s=2")[0]))
        slow.start()
        scrape_until(
            admin,
            "the slow request in flight",
            lambda s: value(s, "hardserve_requests_in_flight") == 1,
        )
        admin.server.process.send_signal(signal.SIGTERM)
        wait_for("/readyz 503", lambda: admin.get("/readyz")[0] == 503, timeout_s=2.0)
        assert admin.server.process.poll() is None
        assert admin.get("/livez")[0] == 200  # the master answers until it exits
        slow.join(TIMEOUT_S)
        assert answers == [200]
        assert admin.server.process.wait(TIMEOUT_S) == 0


def test_the_token_guards_metrics_and_is_never_shown(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with admin_server("--admin-token-file", str(token_file)) as admin:
        assert admin.get("/metrics")[0] == 401
        status, headers, _ = admin.get(
            "/metrics", {"Authorization": "Bearer wrong-token-0123456789abcdef"}
        )
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert admin.get("/metrics", {"Authorization": f"Basic {TOKEN}"})[0] == 401
        status, _, body = admin.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"hardserve_requests_total" in body
        assert admin.get("/livez")[0] == 200
        assert admin.get("/readyz")[0] == 200
        log = "".join(admin.server.stderr_lines)
        assert "metrics and health:" in log and "(token required)" in log
        assert TOKEN not in log
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "hardserve",
            "check-config",
            "--admin-bind",
            "127.0.0.1:9191",
            "--admin-token",
            TOKEN,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 3,
    )
    assert checked.returncode == 0, checked.stderr
    assert TOKEN not in checked.stdout + checked.stderr
    shown = json.loads(checked.stdout)["settings"]["admin_token"]
    assert shown == {"value": "(hidden)", "source": "cli:--admin-token"}


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    with admin_server() as admin:
        assert get(admin.server)[0] == 200
        scrape_until(admin, "one request", lambda s: value(s, "hardserve_requests_total") == 1)
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        status, headers, body = admin.get("/metrics", {"Accept": accept})
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        text = body.decode()
        assert text.endswith("# EOF\n")
        families = {family.name: family for family in openmetrics_families(text)}
        (sample,) = families["hardserve_requests"].samples
        assert (sample.name, sample.value) == ("hardserve_requests_total", 1)
        status, headers, _ = admin.get("/metrics", {"Accept": "text/plain"})
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_a_silent_admin_client_blocks_neither_the_endpoints_nor_supervision() -> None:
    with admin_server("--workers", "2", "--timeout-s", "2") as admin:
        silent = socket.create_connection((admin.host, admin.port), TIMEOUT_S)
        partial = socket.create_connection((admin.host, admin.port), TIMEOUT_S)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost:")
        try:
            started = time.monotonic()
            assert admin.get("/livez")[0] == 200
            assert time.monotonic() - started < 1.0
            # A worker whose loop stops is still found silent, dumped and replaced.
            victim = int(by_label(admin.scrape(), "hardserve_worker_pid", "worker")["1"])
            os.kill(victim, signal.SIGSTOP)
            after = scrape_until(
                admin,
                "the stopped worker replaced",
                lambda s: (
                    value(s, "hardserve_worker_exits_total", cause="timeout") == 1
                    and value(s, "hardserve_workers", state="ready") == 2
                ),
            )
            assert victim not in by_label(after, "hardserve_worker_pid", "worker").values()
            # The silent connections were closed at their deadline, unanswered.
            silent.settimeout(TIMEOUT_S)
            assert silent.recv(1) == b""
        finally:
            silent.close()
            partial.close()


def test_labels_stay_bounded_whatever_the_paths() -> None:
    with admin_server("--workers", "1") as admin:

        def series_after(paths: list[str], total: int) -> set[tuple[str, tuple[str, ...]]]:
            for path in paths:
                assert get(admin.server, path)[0] == 200
            samples = scrape_until(
                admin, f"{total} requests", lambda s: value(s, "hardserve_requests_total") == total
            )
            for (_, labels), _ in samples.items():
                for key, text in labels:
                    if key not in ("le", "version", "python", "h11", "uvloop", "prometheus_client"):
                        assert "/" not in text and "127.0.0.1" not in text, (key, text)
            return {(name, tuple(k for k, _ in labels)) for (name, labels) in samples}

        first = series_after([f"/first/{n}" for n in range(3)], 3)
        second = series_after([f"/other/{n}?q={n}" for n in range(60)], 63)
        assert second == first


def test_not_found_and_method_not_allowed() -> None:
    with admin_server() as admin:
        assert admin.get("/")[0] == 404
        assert admin.get("/metrics/extra")[0] == 404
        status, headers, _ = admin.get("/metrics", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = admin.get("/readyz", method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["connection"] == "close"


def test_admin_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with serve_process(APP, "--admin-bind", f"unix:{path}") as server:
        assert any(f"metrics and health: unix:{path}" in line for line in server.stderr_lines)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT_S)
            client.connect(str(path))
            client.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n")
        assert (path.stat().st_mode & 0o777) == 0o600


def test_the_admin_address_cannot_be_a_public_one() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hardserve",
            APP,
            "--bind",
            f"127.0.0.1:{port}",
            "--admin-bind",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 3,
    )
    assert done.returncode == 3
    assert "--admin-bind" in done.stderr and "public listener" in done.stderr


def test_without_admin_bind_the_startup_says_where_to_turn_it_on() -> None:
    with serve_process(APP) as server:
        assert any(
            "metrics and health: off (--admin-bind ADDRESS serves them)" in line
            for line in server.stderr_lines
        )


def test_hup_reads_the_token_file_again_and_a_bad_one_keeps_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    rotated = "rotated-admin-token-0123456789"

    def status_with(token: str) -> int:
        return admin.get("/metrics", {"Authorization": f"Bearer {token}"})[0]

    with admin_server("--admin-token-file", str(token_file)) as admin:
        assert status_with(TOKEN) == 200
        token_file.write_text(rotated + "\n")
        admin.server.process.send_signal(signal.SIGHUP)
        wait_for("the rotated token", lambda: status_with(rotated) == 200)
        assert status_with(TOKEN) == 401
        token_file.write_text("tiny-tok\n")  # not a token: the running one stays
        admin.server.process.send_signal(signal.SIGHUP)
        wait_for(
            "the reload's complaint",
            lambda: "reload: admin token not changed" in "".join(admin.server.stderr_lines),
        )
        assert status_with(rotated) == 200
        log = "".join(admin.server.stderr_lines)
        assert TOKEN not in log and rotated not in log and "tiny-tok" not in log


def _listening_inode(port: int) -> str:
    """The inode of the TCP socket listening on 127.0.0.1:`port` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return inode
    raise AssertionError(f"nothing listens on port {port}")


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def test_workers_do_not_inherit_the_admin_listener() -> None:
    with admin_server("--workers", "2") as admin:
        samples = scrape_until(
            admin, "two workers", lambda s: value(s, "hardserve_workers", state="ready") == 2
        )
        inode = _listening_inode(admin.port)
        assert inode in _socket_inodes(admin.server.process.pid)  # the master holds it
        for pid in by_label(samples, "hardserve_worker_pid", "worker").values():
            assert inode not in _socket_inodes(int(pid)), f"worker {int(pid)} holds it"


def test_load_shedding_and_timeouts_are_counted_by_reason_and_kind() -> None:
    with admin_server(
        "--workers", "1", "--threads", "1", "--pool-queue-max", "0", "--head-timeout-s", "0.5"
    ) as admin:
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(get(admin.server, "/sleep?s=1.5")[0]))
        slow.start()
        scrape_until(
            admin,
            "the slow request running",
            lambda s: value(s, "hardserve_pool_threads_busy", worker="0") == 1,
        )
        assert get(admin.server)[0] == 503  # the one thread is busy and no queue: shed
        with socket.create_connection((admin.server.host, admin.server.port), TIMEOUT_S) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n")  # a head that never ends: 408 at the deadline
            raw.settimeout(TIMEOUT_S)
            assert raw.recv(4096).startswith(b"HTTP/1.1 408")
        slow.join(TIMEOUT_S)
        assert answers == [200]
        samples = scrape_until(
            admin,
            "the shed request and the head timeout",
            lambda s: (
                value(s, "hardserve_load_shed_total", reason="pool_saturated") == 1
                and value(s, "hardserve_timeouts_total", kind="head") == 1
            ),
        )
        assert value(samples, "hardserve_refusals_total", reason="pool_saturated") == 1
        assert value(samples, "hardserve_refusals_total", reason="head_timeout") == 1
        assert value(samples, "hardserve_load_shed_total", reason="queue_timeout") == 0
        assert value(samples, "hardserve_timeouts_total", kind="body") == 0
        assert value(samples, "hardserve_requests_total") == 1  # the shed one never reached the app
