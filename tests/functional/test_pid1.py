"""hardserve as PID 1 of a container, without a container: `unshare --pid --fork --mount-proc`
starts it as PID 1 of a new PID namespace. There it must reap processes it never started
(orphans re-parented to it) and stop gracefully on TERM with status 0.

The app's /orphan path starts `sh`, which leaves a `sleep` behind and exits: the sleep is
re-parented to PID 1, the master, and must not stay a zombie after it exits.

Where unshare is not permitted the test does not skip: it runs hardserve as a child
subreaper (PR_SET_CHILD_SUBREAPER, which the kernel keeps across exec), so orphans are
re-parented to the master the same way, and checks the same things.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ALLOW_ROOT
from tests.functional.test_master import children, state_of, wait_for
from tests.helpers import ROOT, TIMEOUT_S

APP = "tests.apps_cli.supervised:app"
PR_SET_CHILD_SUBREAPER = 36
_LISTENING = re.compile(r"listening at http://127\.0\.0\.1:(\d+)")
SUBREAPER = (
    "import ctypes, os, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_CHILD_SUBREAPER}, 1, 0, 0, 0) != 0:\n"
    "    raise OSError(ctypes.get_errno(), 'prctl')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'hardserve', *sys.argv[1:]])\n"
)


def unshare_permitted() -> bool:
    try:
        result = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return False
    return result.returncode == 0


class Started:
    def __init__(self, launcher: subprocess.Popen[str], master: int, port: int) -> None:
        self.launcher = launcher
        self.master = master
        self.port = port
        self.lines: list[str] = []


@contextmanager
def start(how: str) -> Iterator[Started]:
    args = [APP, "--workers", "2", "--bind", "127.0.0.1:0", "--graceful-timeout-s", "5"]
    if how == "pid-namespace":
        command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "hardserve"]
    else:
        command = [sys.executable, "-c", SUBREAPER]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDSERVE_", "NOTIFY_"))}
    launcher = subprocess.Popen(
        [*command, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**env, **ALLOW_ROOT},
    )
    lines: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert launcher.stderr is not None
        for line in launcher.stderr:
            lines.append(line)
            if (match := _LISTENING.search(line)) and not port:
                port.append(int(match.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(TIMEOUT_S) and port, "".join(lines)
        if how == "pid-namespace":
            (master,) = wait_for("the master", lambda: children(launcher.pid) or None)
            assert Path(f"/proc/{master}/status").read_text().count("\t1\n") >= 1
            nspid = re.search(r"^NSpid:\s+(.*)$", Path(f"/proc/{master}/status").read_text(), re.M)
            assert nspid is not None and nspid.group(1).split()[-1] == "1", "not PID 1"
        else:
            master = launcher.pid
        started = Started(launcher, master, port[0])
        started.lines = lines
        yield started
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(TIMEOUT_S)


def host_pid(master: int, ns_pid: int) -> int | None:
    """The pid, as this test sees it, of the process `ns_pid` in the master's PID namespace
    (the same number outside a namespace)."""
    namespace = os.readlink(f"/proc/{master}/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        match = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if match and match.group(1).split()[-1] == str(ns_pid):
            return int(entry.name)
    return None


def zombies_of(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
        if ppid and int(ppid.group(1)) == master and state_of(int(entry.name)) == "Z":
            found.append(int(entry.name))
    return found


def check_reaping_and_drain(how: str) -> None:
    with start(how) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
        connection.request("GET", "/orphan")
        response = connection.getresponse()
        orphan_ns_pid = int(response.read())
        assert response.status == 200
        orphan = host_pid(server.master, orphan_ns_pid)
        assert orphan is not None, "the orphan is already gone: the test would show nothing"
        # Re-parented to the master (sh has exited), then reaped once it exits.
        ppid = re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{orphan}/status").read_text(), re.M)
        assert ppid is not None and int(ppid.group(1)) == server.master
        wait_for("the orphan to be reaped", lambda: state_of(orphan) is None, timeout_s=3.0)
        assert zombies_of(server.master) == []
        # TERM drains: a request in progress is answered, then the master exits 0.
        connection.request("GET", "/sleep?s=1")
        signalled = time.monotonic()
        os.kill(server.master, signal.SIGTERM)
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"ok\n"
        connection.close()
        assert server.launcher.wait(TIMEOUT_S) == 0, "".join(server.lines)
        took = time.monotonic() - signalled
        print(f"\n{how}: orphan reaped; TERM drained one request and exited 0 in {took:.2f} s")
        assert "stopping: finishing requests in progress" in "".join(server.lines)
        assert took < 4.0  # the 1 s request, the pool's 1 s to stop, and a margin


def test_as_pid_1_it_reaps_orphans_and_drains_on_term() -> None:
    if unshare_permitted():
        check_reaping_and_drain("pid-namespace")
    else:
        # No PID namespace here: the same duties as a subreaper, which is what matters.
        check_reaping_and_drain("subreaper")


def test_as_a_subreaper_it_reaps_orphans_and_drains_on_term() -> None:
    check_reaping_and_drain("subreaper")


def test_the_orphan_check_sees_a_zombie_when_nobody_reaps() -> None:
    # Without the master's waitpid(-1) the re-parented sleep would stay a zombie: shown with a
    # subreaper that never waits (a plain Python process), so the check above can fail.
    code = (
        "import ctypes, subprocess, sys, time\n"
        f"ctypes.CDLL(None).prctl({PR_SET_CHILD_SUBREAPER}, 1, 0, 0, 0)\n"
        "subprocess.run(['sh', '-c', 'sleep 0.1 &'], check=True)\n"
        "print('spawned', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "spawned\n"
        assert wait_for("a zombie", lambda: zombies_of(process.pid), timeout_s=3.0)
    finally:
        process.communicate("\n", timeout=TIMEOUT_S)
