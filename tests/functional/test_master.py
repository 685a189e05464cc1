"""The master with real processes: `python -m hardserve ... --workers N`, its worker processes
(read from /proc), the signals an operator sends, and what the log says.

Every wait is bounded and polls something the test can see (a process list, a log line, an
answer); the app names the worker that answered (tests/apps_cli/supervised.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, TIMEOUT_S, ServerProcess, serve_process, wait_for

APP = "tests.apps_cli.supervised:app"
APP_FILE = "supervised.py"


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


# -- what the test can see ------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of `pid`."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return {c for c in found if state_of(c) not in ("Z", None)}


def state_of(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]




def workers(server: ServerProcess, count: int, timeout_s: float = TIMEOUT_S) -> set[int]:
    """Wait until the master has exactly `count` live workers; their pids."""
    pid = server.process.pid
    return wait_for(
        f"{count} workers of {pid}",
        lambda: found if len(found := children(pid)) == count else None,
        timeout_s,
    )


def get(port: int, path: str = "/", timeout_s: float = TIMEOUT_S) -> tuple[int, int]:
    """One request on a new connection: (status, pid of the worker that answered)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, int(response.getheader("X-Worker-Pid") or 0)
    finally:
        connection.close()


def holders(path: Path, pids: set[int]) -> set[int]:
    """The processes of `pids` with a descriptor open on `path`."""
    found = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    found.add(pid)
    return found


def log_text(server: ServerProcess) -> str:
    return "".join(server.stderr_lines)


def wait_log(server: ServerProcess, pattern: str, timeout_s: float = TIMEOUT_S) -> re.Match[str]:
    return wait_for(
        f"{pattern!r} in the log", lambda: re.search(pattern, log_text(server)), timeout_s
    )


def stop(server: ServerProcess) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(TIMEOUT_S)


THREADS = 6


class Load:
    def __init__(self, port: int, access_log: Path, path: str = "/") -> None:
        self.access_log = access_log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.apps_cli.loadgen", str(port), str(THREADS), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "started\n"
        self.records: list[dict[str, Any]] = []

    def served(self) -> int:
        """Requests the server has logged so far."""
        try:
            return self.access_log.read_text().count("\n")
        except FileNotFoundError:
            return 0

    def wait_served(self, more: int) -> None:
        target = self.served() + more
        wait_for(f"{more} more requests served", lambda: self.served() >= target)

    def stop(self) -> list[dict[str, Any]]:
        out, _ = self.process.communicate("stop\n", timeout=TIMEOUT_S * 2)
        self.records = [json.loads(line) for line in out.splitlines() if line.strip()]
        return self.records

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT_S)

    def check_unanswered(self) -> list[dict[str, Any]]:
        """The unanswered requests; fails if the server read one of them."""
        unanswered = [r for r in self.records if r["outcome"] == "unanswered"]
        logged = self.access_log.read_text()
        read = [r for r in unanswered if f"id={r['id']} " in logged]
        assert read == [], f"read by the server but never answered: {read}"
        return unanswered


@contextmanager
def loaded_server(
    tmp_path: Path, *args: str, path: str = "/"
) -> Iterator[tuple[ServerProcess, Load]]:
    access_log = tmp_path / "access.log"
    with serve_process(APP, "--access-log", str(access_log), *args) as server:
        load = Load(server.port, access_log, path)
        try:
            yield server, load
        finally:
            load.kill()


def summary(records: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"ok": 0, "unanswered": 0, "failed": 0}
    for record in records:
        counts[record["outcome"]] += 1
    return counts


# -- workers ---------------------------------------------------------------------------------------


def test_workers_are_children_of_the_master_and_all_serve() -> None:
    with serve_process(APP, "--workers", "3") as server:
        pids = workers(server, 3)
        answered: set[int] = set()

        def every_worker_answered() -> bool:
            status, pid = get(server.port)
            assert status == 200 and pid in pids, (status, pid, pids)
            answered.add(pid)
            return answered == pids

        wait_for("an answer from each worker", every_worker_answered)
        assert stop(server) == 0


def test_ttin_adds_a_worker_and_ttou_removes_one() -> None:
    with serve_process(APP, "--workers", "3") as server:
        three = workers(server, 3)
        server.process.send_signal(signal.SIGTTIN)
        four = workers(server, 4)
        assert three < four
        server.process.send_signal(signal.SIGTTOU)
        after = workers(server, 3)
        assert len(after & three) >= 2
        assert get(server.port)[0] == 200
        assert stop(server) == 0


def test_ttou_never_goes_below_one_worker() -> None:
    with serve_process(APP, "--workers", "2") as server:
        workers(server, 2)
        for _ in range(3):
            server.process.send_signal(signal.SIGTTOU)
        wait_log(server, r"one worker fewer: 1")
        left = workers(server, 1)
        assert get(server.port) == (200, next(iter(left)))
        assert "one worker fewer: 0" not in log_text(server)
        assert stop(server) == 0


def test_a_killed_worker_is_replaced_and_serves_within_a_second() -> None:
    with serve_process(APP, "--workers", "2") as server:
        before = workers(server, 2)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def new_one_answers() -> int | None:
            status, pid = get(server.port, timeout_s=1.0)
            assert status == 200
            return pid if pid not in before else None

        new = wait_for("an answer from the new worker", new_one_answers, timeout_s=1.0)
        took = time.monotonic() - killed_at
        print(f"\nkilled worker replaced and serving after {took * 1000:.0f} ms")
        assert new in children(server.process.pid)
        assert victim not in children(server.process.pid)
        assert server.process.poll() is None
        assert re.search(
            rf"worker {victim} died unexpectedly \(killed by signal SIGKILL\)", log_text(server)
        )
        assert stop(server) == 0


def test_hup_replaces_every_worker_while_requests_succeed(tmp_path: Path) -> None:
    with loaded_server(tmp_path, "--workers", "2") as (server, load):
        before = workers(server, 2)
        load.wait_served(50)
        server.process.send_signal(signal.SIGHUP)
        wait_log(server, r"reloaded: every worker replaced")
        after = workers(server, 2)
        load.wait_served(50)
        records = load.stop()
        load.check_unanswered()
        assert not after & before, (before, after)
        assert summary(records)["failed"] == 0, records
        assert {r["pid"] for r in records if r["outcome"] == "ok"} & after
        assert stop(server) == 0


def test_max_requests_retires_the_worker_after_that_many() -> None:
    with serve_process(
        APP, "--workers", "1", "--max-requests", "5", "--max-requests-jitter", "0"
    ) as server:
        (first,) = workers(server, 1)
        for _ in range(4):
            assert get(server.port) == (200, first)
        # Four requests: nothing happens (a heartbeat is at most a second apart).
        time.sleep(1.2)
        assert children(server.process.pid) == {first}
        assert get(server.port) == (200, first)
        wait_log(server, rf"\[{first}\] \[INFO\] hardserve.error: served 5 requests: retiring")
        wait_log(server, rf"worker {first} retires after its max_requests")
        (second,) = wait_for(
            "the replacement", lambda: c if (c := children(server.process.pid)) - {first} else None
        ) - {first}
        wait_for("the old worker to exit", lambda: first not in children(server.process.pid))
        assert get(server.port) == (200, second)
        assert stop(server) == 0


@pytest.mark.parametrize(
    ("path", "how"),
    [
        # The loop itself is blocked (a C loop holding the GIL): no heartbeat, dump then KILL.
        ("/spin", r"worker (\d+) silent for"),
        # The loop turns but a request never ends: the worker reports itself stuck.
        ("/forever", r"worker (\d+) has a request in the app for more than 2 s"),
    ],
)
def test_a_blocked_worker_dumps_its_stacks_and_is_replaced(
    path: str, how: str, tmp_path: Path
) -> None:
    # Requests the blocked worker never read (a frozen loop can still have one connection
    # accepted under it by uvloop, which accepts before it needs the GIL) are "unanswered"
    # and sent again; load.check_unanswered() holds that the server never read them.
    timeout_s = 2.0
    with loaded_server(
        tmp_path, "--workers", "2", "--timeout-s", str(timeout_s), "--graceful-timeout-s", "1"
    ) as (server, load):
        before = workers(server, 2)
        load.wait_served(50)
        blocked = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
        started = time.monotonic()
        blocked.request("GET", path)
        victim = int(wait_log(server, how, timeout_s=timeout_s + 2).group(1))
        assert victim in before

        def replaced() -> set[int] | None:
            now = children(server.process.pid)
            return now if len(now - before) == 1 and len(now & before) >= 1 else None

        new = wait_for("a replacement", replaced, timeout_s=timeout_s + 2)
        took = time.monotonic() - started
        # faulthandler writes the dump a thread at a time: wait for the blocked app's frame
        # itself, not for the first thread's header (CI once read the log between the two).
        wait_log(server, rf'File ".*{APP_FILE}", line \d+ in {path[1:]}')
        assert "Thread 0x" in log_text(server)
        wait_for("the blocked worker to go", lambda: victim not in children(server.process.pid))
        wait_for("the replacement serving", lambda: get(server.port)[1] in new - before, 2.0)
        load.wait_served(50)
        records = load.stop()
        unanswered = load.check_unanswered()
        blocked.close()
        print(f"\n{path}: replaced {took:.2f} s after the request started; {summary(records)}")
        assert took < timeout_s + 2
        assert summary(records)["failed"] == 0, [r for r in records if r["outcome"] == "failed"]
        assert all(r["pid"] in (victim, 0) for r in unanswered), unanswered
        assert stop(server) == 0


def test_term_while_workers_are_being_forked_stops_at_once() -> None:
    # "listening at" comes as the first worker serves, when the master forks the others: a
    # TERM sent on to a worker before it had dropped the master's signal handlers was lost,
    # and that worker served on until the stop deadline (graceful timeout + 1 s) killed it.
    for _ in range(5):
        with serve_process(APP, "--workers", "4") as server:
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(5.0) == 0


# -- start-up errors ------------------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardserve", *args, "--bind", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **(env or {})} if env is None or "PATH" not in env else env,
        cwd=ROOT,
        check=False,
    )


def test_an_app_that_cannot_load_stops_with_4_and_one_line_even_with_three_workers() -> None:
    for _ in range(3):  # the workers used to race to print the same line
        result = run("tests.apps_cli.hello:no_such_name", "--workers", "3")
        assert result.returncode == 4, result.stderr
        assert result.stderr.splitlines() == [
            "hardserve: cannot load the app: module 'tests.apps_cli.hello' has no attribute "
            "'no_such_name'"
        ]


def test_an_app_raising_at_import_stops_with_1_and_its_traceback_once() -> None:
    result = run("tests.apps_cli.raises_on_import:app", "--workers", "3")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("Traceback") == 1, result.stderr
    assert "raises_on_import.py" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        "RuntimeError: apps_cli.raises_on_import: configuration is broken"
    )
    assert "listening at" not in result.stderr


def test_root_is_refused_without_user_or_allow_root() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HARDSERVE_ALLOW_ROOT"}
    if os.geteuid() == 0:
        result = run("tests.apps_cli.hello:app", env=env)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines() == [
            "hardserve: refusing to run as root: give --user (and --group) to drop privileges "
            "after binding, or --allow-root"
        ]
        # And each way out of it works.
        with serve_process("tests.apps_cli.hello:app", "--allow-root", env=env) as server:
            assert get(server.port)[0] == 200
    else:
        result = run("tests.apps_cli.hello:app", "--user", "nobody", env=env)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines() == [
            "hardserve: --user and --group need hardserve to be started as root"
        ]


def test_an_unknown_user_is_one_clear_line() -> None:
    result = run("tests.apps_cli.hello:app", "--user", "hardserve-no-such-user")
    assert result.returncode == 3, result.stderr
    if os.geteuid() == 0:
        expected = "hardserve: --user 'hardserve-no-such-user': no such user"
    else:
        expected = "hardserve: --user and --group need hardserve to be started as root"
    assert result.stderr.splitlines() == [expected]


def _python_readable_by(uid: int, gid: int) -> bool:
    """Whether a process of that user can import the standard library the workers need
    (not where the interpreter lives under a private home such as /root)."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import asyncio, ssl, email.utils"],
            user=uid,
            group=gid,
            extra_groups=[],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
            cwd="/",
        )
    except PermissionError:  # the interpreter itself
        return False
    return result.returncode == 0


# The modules a worker imports after the master gave up root; loaded before, for an
# interpreter that user cannot read.
_PRELOAD = (
    "import hardserve.worker.main, hardserve.loader, hardserve.observe.logs, "
    "tests.apps_cli.supervised; from hardserve.cli import main; main(prog_name='hardserve')"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root; without it see the test above")
def test_user_nobody_runs_the_workers_as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    readable = _python_readable_by(nobody.pw_uid, nobody.pw_gid)
    env = {k: v for k, v in os.environ.items() if k != "HARDSERVE_ALLOW_ROOT"}
    args = (APP, "--workers", "2", "--user", "nobody")
    if readable:
        context = serve_process(*args, env=env, cwd=str(ROOT))
    else:
        context = _serve_preloaded(*args, env=env)
    with context as server:
        pids = workers(server, 2)
        for pid in pids:
            uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
            assert uids is not None
            assert uids.group(1).split() == [str(nobody.pw_uid)] * 4
            gids = re.search(r"^Gid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
            assert gids is not None
            assert gids.group(1).split() == [str(nobody.pw_gid)] * 4
        assert get(server.port)[0] == 200
        assert stop(server) == 0


def _serve_preloaded(*args: str, env: dict[str, str]) -> Iterator[ServerProcess]:
    @contextlib.contextmanager
    def context() -> Iterator[ServerProcess]:
        original = sys.executable
        with tempfile.TemporaryDirectory() as directory:
            shim = Path(directory) / "python"
            shim.write_text(f'#!/bin/sh\nshift 2\nexec {original} -c "{_PRELOAD}" "$@"\n')
            shim.chmod(0o755)
            sys.executable = str(shim)
            try:
                with serve_process(*args, env=env, cwd=str(ROOT)) as server:
                    sys.executable = original
                    yield server
            finally:
                sys.executable = original

    return context()  # type: ignore[return-value]


# -- pid file, logs -------------------------------------------------------------------------------


def test_pid_file_holds_the_master_pid_and_is_removed_at_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "hardserve.pid"
    with serve_process(APP, "--workers", "2", "--pid-file", str(pid_file)) as server:
        assert pid_file.read_text() == f"{server.process.pid}\n"
        assert stop(server) == 0
    assert not pid_file.exists()


def test_usr1_reopens_the_access_log(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    with serve_process(APP, "--workers", "2", "--access-log", str(access)) as server:
        pids = workers(server, 2)
        for _ in range(4):
            assert get(server.port, "/before")[0] == 200
        wait_for("4 lines", lambda: access.read_text().count("/before") == 4)
        access.rename(rotated)
        assert holders(rotated, pids) == pids
        server.process.send_signal(signal.SIGUSR1)
        # The first process to reopen creates the new file; each worker is done only when no
        # descriptor of its own still points at the rotated one.
        wait_for("the new file", access.exists)
        wait_for("every worker reopened", lambda: not holders(rotated, pids))
        for _ in range(6):
            assert get(server.port, "/after")[0] == 200
        wait_for("6 lines", lambda: access.read_text().count("/after") == 6)
        assert "/after" not in rotated.read_text()
        assert rotated.read_text().count("/before") == 4
        assert stop(server) == 0


def signal_pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits to be delivered to `pid` (False once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    bit = 1 << (signum - 1)
    return any(
        int(line.split()[1], 16) & bit
        for line in status.splitlines()
        if line.startswith(("SigPnd:", "ShdPnd:"))
    )


def test_usr1_while_a_worker_loads_its_app_is_done_once_it_serves(tmp_path: Path) -> None:
    # By default USR1 ends a process: a worker that is still importing its app must neither die
    # of it nor lose it. The rotation is done once the worker serves.
    access = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    loading = tmp_path / "loading"
    signalled: list[int] = []

    def rotate_while_loading() -> None:
        wait_for("the worker to load", loading.exists)
        pid = wait_for("its pid", lambda: int(loading.read_text() or 0))
        access.rename(rotated)
        os.kill(pid, signal.SIGUSR1)
        wait_for("the signal taken", lambda: not signal_pending(pid, signal.SIGUSR1))
        signalled.append(pid)
        (tmp_path / "loaded").touch()

    rotator = threading.Thread(target=rotate_while_loading, daemon=True)
    rotator.start()
    app = f"tests.apps_cli.gate:make_app_slowly({str(tmp_path)!r})"
    with serve_process(app, "--workers", "1", "--access-log", str(access)) as server:
        rotator.join(TIMEOUT_S)
        assert signalled, "the worker was never signalled"
        assert workers(server, 1) == set(signalled)
        for _ in range(3):
            assert get(server.port, "/after") == (200, signalled[0])
        wait_for("3 lines", lambda: access.exists() and access.read_text().count("/after") == 3)
        assert "/after" not in rotated.read_text()
        assert stop(server) == 0


# -- systemd notifications (tests/functional/test_systemd.py covers READY, RELOADING, STOPPING
# and WATCHDOG of a healthy server) ------------------------------------------------------------


class Notifications:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path

    def all(self, quiet_s: float = 0.3) -> list[bytes]:
        self.sock.settimeout(quiet_s)
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096))
            except TimeoutError:
                return received


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        receiver = Notifications(str(Path(name) / "notify"))
        try:
            yield receiver
        finally:
            receiver.sock.close()


def test_an_app_that_cannot_load_never_says_ready(notifications: Notifications) -> None:
    result = run(
        "tests.apps_cli.hello:no_such_name",
        "--workers",
        "2",
        env={**os.environ, "NOTIFY_SOCKET": notifications.path},
    )
    assert result.returncode == 4
    received = notifications.all()
    assert received == [b"STOPPING=1"], received


def test_fast_stop_says_stopping_and_exits_0(notifications: Notifications) -> None:
    with serve_process(APP, "--workers", "2", env={"NOTIFY_SOCKET": notifications.path}) as server:
        workers(server, 2)
        wait_for("READY=1", lambda: any(b"READY=1" in d for d in notifications.all(0.05)))
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(TIMEOUT_S) == 0
        assert notifications.all() == [b"STOPPING=1"]
