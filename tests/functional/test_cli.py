"""The `hardserve` command as a user runs it: a real subprocess (`python -m hardserve` or the
console script), its exit status, what it writes on stderr, and what it then serves.

Exit statuses (cli.py): 0 after a clean stop, 2 for a usage error, 3 for a setting or a
listener that cannot be used, 4 for an app that cannot be loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

import hardserve
from hardserve.http.limits import Limits
from hardserve.loader import SPEC_MAX_CHARS
from hardserve.settings import ALL_SETTINGS, Config
from tests.helpers import (
    ROOT,
    TIMEOUT_S,
    ServerProcess,
    launch_process,
    read_responses,
    serve_process,
)

EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_APP_LOAD = 4

HELLO = "tests.apps_cli.hello:app"
HELLO_BODY = b"hello from apps_cli\n"
PROBE = "tests.apps_cli.probe:app"
CONSOLE_SCRIPT = Path(sys.executable).with_name("hardserve")


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a command: the runner's (HARDSERVE_* and PORT already removed by
    the fixture above) plus `extra`."""
    return {**os.environ, **(extra or {})}


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m hardserve ARGS` expecting it to exit by itself (an error, --version)."""
    return subprocess.run(
        [sys.executable, "-m", "hardserve", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=clean_env(env),
        cwd=cwd,
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The error contract: the expected status, exactly one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hardserve: "), lines[0]
    assert result.stdout == ""
    return lines[0]


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def get(host: str, port: int, path: str = "/") -> Reply:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def fetch(server: ServerProcess, path: str = "/") -> Reply:
    return get(server.host, server.port, path)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a cheap condition (a file exists, a log line arrived) up to TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- serving an app ---------------------------------------------------------------------------


def test_python_dash_m_serves_module_app() -> None:
    with serve_process(HELLO, cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert reply.body == HELLO_BODY


def test_console_script_serves_module_app() -> None:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} is not installed"
    with launch_process([str(CONSOLE_SCRIPT), HELLO, "--bind", "127.0.0.1:0"]) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert reply.body == HELLO_BODY


@pytest.mark.parametrize(
    ("spec", "status", "body"),
    [
        ("tests.apps_cli.factory:make_app()", 200, b"hello"),
        ("tests.apps_cli.factory:make_app('bonjour', status=201)", 201, b"bonjour"),
        # Spaces around the call are part of what people type in shell scripts.
        ("tests.apps_cli.factory: make_app( greeting = 'hi' ) ", 200, b"hi"),
    ],
)
def test_factory_call_with_literal_arguments(spec: str, status: int, body: bytes) -> None:
    with serve_process(spec, cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert (reply.status, reply.body) == (status, body)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hardserve_no_such_module:app", "no module named 'hardserve_no_such_module'"),
        ("tests.apps_cli.no_such_module:app", "no module named 'tests.apps_cli.no_such_module'"),
        ("tests.apps_cli.hello:no_such_name", "has no attribute 'no_such_name'"),
        # Without ':NAME' the loader looks for `application`, which hello does not have.
        ("tests.apps_cli.hello", "has no attribute 'application'"),
        ("tests.apps_cli.hello:not_callable", "not a WSGI callable"),
        ("tests.apps_cli.hello:not_callable()", "is not callable"),
        ("tests.apps_cli.hello:app.__call__", "is not a name or a call"),
        ("not a module:app", "is not MODULE:NAME"),
        (":app", "is not MODULE:NAME"),
        ("tests.apps_cli.hello:app(", "is not a name or a call"),
        # These ended in a traceback and status 1: MemoryError from the parser, TypeError from
        # literal_eval (a list is not hashable).
        ("tests.apps_cli.factory:make_app(" + "-" * 100_000 + "1)", "characters long"),
        ("tests.apps_cli.factory:make_app({[1]: 2})", "unhashable type: 'list'"),
    ],
)
def test_app_that_cannot_be_loaded_exits_4_with_one_line(spec: str, expected: str) -> None:
    result = run_cli(spec, "--bind", "127.0.0.1:0")
    line = assert_one_clear_line(result, EXIT_APP_LOAD)
    assert line.startswith("hardserve: cannot load the app: ")
    assert expected in line


@pytest.mark.parametrize(
    "call",
    [
        "make_app(__import__('os').system('touch {pwned}'))",
        "make_app(greeting=__import__('os').system('touch {pwned}'))",
        "make_app(open('{pwned}', 'w'))",
        "make_app(greeting)",  # a name is not a literal
        "make_app(*['x'])",
        "make_app(**{{'greeting': 'x'}})",
        "make_app((lambda: 'x')())",
        "make_app(f'{{1}}')",
    ],
)
def test_factory_call_with_code_is_refused_and_nothing_runs(call: str, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    imported = tmp_path / "imported"
    spec = "tests.apps_cli.factory:" + call.format(pwned=pwned)
    result = run_cli(spec, "--bind", "127.0.0.1:0", env={"APPS_CLI_IMPORT_MARKER": str(imported)})
    line = assert_one_clear_line(result, EXIT_APP_LOAD)
    assert "not allowed" in line or "only have literal arguments" in line
    assert not pwned.exists(), "the spec's code ran"
    # The spec is refused before the module is imported: no code of the app ran either.
    assert not imported.exists(), "the app module was imported for a refused spec"


def test_import_marker_works_for_an_accepted_spec(tmp_path: Path) -> None:
    # Makes the "not imported" assertion above meaningful: the marker does appear when the
    # module is imported.
    imported = tmp_path / "imported"
    with serve_process(
        "tests.apps_cli.factory:make_app()",
        env={"APPS_CLI_IMPORT_MARKER": str(imported)},
        cwd=str(ROOT),
    ):
        assert imported.exists()


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            "tests.apps_cli.broken_import:app",
            "ModuleNotFoundError: No module named 'hardserve_test_dependency_that_is_not_installed'",
        ),
        (
            "tests.apps_cli.raises_on_import:app",
            "RuntimeError: apps_cli.raises_on_import: configuration is broken",
        ),
    ],
)
def test_error_inside_the_app_module_is_shown_with_its_traceback(spec: str, error: str) -> None:
    # Unlike a wrong MODULE:APP, this is a bug in the app: the user needs the app's own
    # traceback (file and line of the failing import), and it must not pass for a spec error
    # (status 4), a setting error (3), usage (2) or success (0).
    result = run_cli(spec, "--bind", "127.0.0.1:0")
    assert result.returncode not in (0, EXIT_USAGE, EXIT_CONFIG, EXIT_APP_LOAD), result.stderr
    assert result.returncode == 1, result.stderr  # Python's status for an uncaught exception
    module_file = spec.partition(":")[0].rpartition(".")[2] + ".py"
    assert "Traceback" in result.stderr
    assert module_file in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == error
    assert "listening at" not in result.stderr


def test_no_app_argument_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == EXIT_USAGE
    assert "Missing argument" in result.stderr
    assert "Traceback" not in result.stderr


# -- --version and --help ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_version_names_every_component_on_one_line(how: str) -> None:
    prefix = [sys.executable, "-m", "hardserve"] if how == "python -m" else [str(CONSOLE_SCRIPT)]
    result = subprocess.run(
        [*prefix, "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=clean_env(),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    for part in (
        f"hardserve {hardserve.__version__}",
        f"Python {platform.python_version()}",
        f"h11 {metadata.version('h11')}",
        f"uvloop {metadata.version('uvloop')}",
    ):
        assert part in lines[0], f"{part!r} missing from {lines[0]!r}"


def test_overlong_app_spec_message_does_not_repeat_the_spec() -> None:
    spec = "tests.apps_cli.factory:make_app(" + "-" * 100_000 + "1)"
    result = run_cli(spec, "--bind", "127.0.0.1:0")
    line = assert_one_clear_line(result, EXIT_APP_LOAD)
    assert line == (
        f"hardserve: cannot load the app: the app spec is {len(spec)} characters long; "
        f"at most {SPEC_MAX_CHARS} are allowed"
    )


def test_help_lists_the_settings_in_the_order_of_the_table() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^\s*(--[a-z0-9-]+)", result.stdout, re.MULTILINE)
    table = [setting.flag for setting in ALL_SETTINGS]
    assert [flag for flag in listed if flag in table] == table
    assert listed.index("--bind") < listed.index("--body-max-bytes")


def test_help_lists_a_flag_for_every_setting_and_limit() -> None:
    # The expected flags come from the dataclasses, not from the settings table, so a field
    # added to Config or Limits without a flag is caught here.
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    names = [f.name for f in dataclasses.fields(Config) if f.name != "limits"]
    names += [f.name for f in dataclasses.fields(Limits)]
    missing = [
        name
        for name in names
        if not re.search(r"^\s*--" + name.replace("_", "-") + r"\b", result.stdout, re.MULTILINE)
    ]
    assert not missing, f"--help has no flag for {missing}:\n{result.stdout}"
    assert "--body-max-bytes" in result.stdout
    assert "--version" in result.stdout


# -- settings on the command line and in the environment ---------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, Config().threads),
        (("--threads", "3"), {}, 3),
        ((), {"HARDSERVE_THREADS": "2"}, 2),
        (("--threads", "3"), {"HARDSERVE_THREADS": "2"}, 3),  # the command line wins
        (("--threads", "1"), {}, 1),
    ],
)
def test_threads_sets_the_pool_size(
    args: tuple[str, ...], env: dict[str, str], expected: int
) -> None:
    with serve_process("tests.apps_cli.probe:app", *args, env=env, cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    threads = json.loads(reply.body)["pool_threads"]
    assert len(threads) == expected, threads


def test_a_worker_freezes_what_it_holds_at_start() -> None:
    """The app and the modules a worker loaded live as long as it does: gc.freeze() keeps every
    full collection from walking them again."""
    with serve_process("tests.apps_cli.probe:app", cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert json.loads(reply.body)["gc_frozen"] > 1000


def _interpreter_gc_threshold() -> list[int]:
    """A fresh interpreter's thresholds (this test process's may have been changed)."""
    out = subprocess.run(
        [sys.executable, "-c", "import gc, json; print(json.dumps(gc.get_threshold()))"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    ).stdout
    return list(json.loads(out))


@pytest.mark.parametrize(
    ("app", "args", "env", "expected"),
    [
        ("probe", (), {}, "10000 and the interpreter's others"),
        ("probe", ("--gc-gen0-threshold", "2500"), {}, "2500 and the interpreter's others"),
        ("probe", (), {"HARDSERVE_GC_GEN0_THRESHOLD": "3000"}, "3000 and the interpreter's others"),
        ("probe", ("--gc-gen0-threshold", "0"), {}, "the interpreter's"),
        ("own_gc", (), {}, "the app's own"),  # set at import: applied before, so the app's win
    ],
)
def test_gc_gen0_threshold(
    app: str, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    interpreter = _interpreter_gc_threshold()
    wanted = {
        "the interpreter's": interpreter,
        "the app's own": [1234, 5, 6],
    }.get(expected) or [int(expected.split()[0]), *interpreter[1:]]
    with serve_process(f"tests.apps_cli.{app}:app", *args, env=env, cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert json.loads(reply.body)["gc_threshold"] == wanted


@pytest.mark.parametrize(
    ("args", "env", "most"),
    [
        ((), {}, 2),
        (("--malloc-arena-max", "1"), {}, 1),
        ((), {"HARDSERVE_MALLOC_ARENA_MAX": "1"}, 1),
        # 0 keeps glibc's own limit, 8 per core: each of the probe's six threads gets one.
        (("--malloc-arena-max", "0"), {}, None),
    ],
)
def test_malloc_arena_max(args: tuple[str, ...], env: dict[str, str], most: int | None) -> None:
    with serve_process(PROBE, *args, env=env, cwd=str(ROOT)) as server:
        reply = fetch(server, "/?arenas")
    assert reply.status == 200
    arenas = json.loads(reply.body)["malloc_arenas"]
    if most is None:
        assert arenas > 6, arenas
    else:
        assert 1 <= arenas <= most, arenas


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, "hardserve"),
        (("--server-header", "foo"), {}, "foo"),
        (("--server-header", ""), {}, None),
        ((), {"HARDSERVE_SERVER_HEADER": "bar"}, "bar"),
        ((), {"HARDSERVE_SERVER_HEADER": ""}, None),
        (("--server-header", "foo"), {"HARDSERVE_SERVER_HEADER": "bar"}, "foo"),
        (("--server-header", ""), {"HARDSERVE_SERVER_HEADER": "bar"}, None),
    ],
)
def test_server_header(args: tuple[str, ...], env: dict[str, str], expected: str | None) -> None:
    with serve_process(HELLO, *args, env=env, cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert reply.headers.get_all("Server") == (None if expected is None else [expected])


def test_server_header_removed_as_seen_on_the_wire() -> None:
    # http.client hides repeated or odd header lines; read the raw head with h11 as well.
    with (
        serve_process(HELLO, "--server-header", "", cwd=str(ROOT)) as server,
        socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200
    assert [name for name, _ in responses[0].headers if name.lower() == b"server"] == []


def test_chdir_changes_directory_before_loading(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # Importable only from `site`, so loading it proves --chdir happened before the import.
    (site / "hardserve_chdir_app.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = os.getcwd().encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    with serve_process("hardserve_chdir_app:app", "--chdir", str(site), cwd=str(ROOT)) as server:
        reply = fetch(server)
    assert reply.status == 200
    assert reply.body.decode() == os.path.realpath(site)


def test_chdir_to_a_missing_directory_exits_4(tmp_path: Path) -> None:
    result = run_cli(HELLO, "--chdir", str(tmp_path / "missing"), "--bind", "127.0.0.1:0")
    line = assert_one_clear_line(result, EXIT_APP_LOAD)
    assert "cannot change directory" in line


def _write_pythonpath_app(tmp_path: Path) -> tuple[Path, Path]:
    lib = tmp_path / "lib"
    elsewhere = tmp_path / "elsewhere"
    lib.mkdir()
    elsewhere.mkdir()
    (lib / "hardserve_pythonpath_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'pp']\n"
    )
    return lib, elsewhere


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_pythonpath_loads_an_app_from_a_directory_not_on_sys_path(how: str, tmp_path: Path) -> None:
    lib, elsewhere = _write_pythonpath_app(tmp_path)
    args = ("--pythonpath", str(lib)) if how == "flag" else ()
    env = {"HARDSERVE_PYTHONPATH": str(lib)} if how == "environment" else {}
    with serve_process("hardserve_pythonpath_app:app", *args, env=env, cwd=str(elsewhere)) as s:
        reply = fetch(s)
    assert (reply.status, reply.body) == (200, b"pp")


def test_pythonpath_wins_over_the_working_directory_with_the_console_script(
    tmp_path: Path,
) -> None:
    # The console script has its bin directory, not the working directory, at sys.path[0];
    # the loader used to put the working directory in front of --pythonpath.
    lib, elsewhere = _write_pythonpath_app(tmp_path)
    (elsewhere / "hardserve_pythonpath_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '3')])\n"
        "    return [b'cwd']\n"
    )
    for extra in ((), ("--chdir", str(elsewhere))):
        command = [
            str(CONSOLE_SCRIPT),
            "hardserve_pythonpath_app:app",
            "--pythonpath",
            str(lib),
            "--bind",
            "127.0.0.1:0",
            *extra,
        ]
        with launch_process(command, cwd=elsewhere if not extra else tmp_path) as server:
            reply = fetch(server)
        assert (reply.status, reply.body) == (200, b"pp"), extra


def test_without_pythonpath_the_same_app_is_not_found(tmp_path: Path) -> None:
    # The counterpart of the test above: the directory really is not on sys.path by itself.
    _, elsewhere = _write_pythonpath_app(tmp_path)
    result = run_cli("hardserve_pythonpath_app:app", "--bind", "127.0.0.1:0", cwd=elsewhere)
    line = assert_one_clear_line(result, EXIT_APP_LOAD)
    assert "no module named 'hardserve_pythonpath_app'" in line


# -- invalid settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--threads", "0"), {}, "--threads must be at least 1"),
        (("--threads", "-2"), {}, "--threads must be at least 1"),
        ((), {"HARDSERVE_THREADS": "many"}, "HARDSERVE_THREADS"),
        ((), {"HARDSERVE_LOOP": "trio"}, "--loop must be one of"),
        ((), {"HARDSERVE_UNIX_MODE": "999"}, "HARDSERVE_UNIX_MODE"),
        (("--unix-mode", "rw-------"), {}, "--unix-mode"),
        (("--body-max-bytes", "-1"), {}, "--body-max-bytes cannot be negative"),
        ((), {"HARDSERVE_HEAD_TIMEOUT_S": "-0.5"}, "--head-timeout-s cannot be negative"),
        (("--bind", "[::1"), {}, "is not [IPv6]:PORT"),
        (("--bind", "::1:8000"), {}, "write IPv6 addresses as [ADDRESS]:PORT"),
        (("--bind", "127.0.0.1:70000"), {}, "is not a port"),
        (("--bind", "unix:"), {}, "unix: needs a path"),
        (("--bind", "fd://x"), {}, "fd:// needs a descriptor number"),
        # These ended in a traceback (ValueError from int(), OverflowError from listen()).
        (("--bind", "127.0.0.1:\u00b2"), {}, "is not a port"),
        (("--bind", "127.0.0.1:\u0668\u0660\u0668\u0660"), {}, "is not a port"),
        (("--bind", "fd://\u0663"), {}, "fd:// needs a descriptor number"),
        (("--listen-backlog", "99999999999"), {}, "--listen-backlog must be at most"),
        # Negative values used to be accepted; -1 made every request a 503.
        (("--threads", "1", "--pool-queue-max", "-1"), {}, "--pool-queue-max cannot be negative"),
        (("--graceful-timeout-s", "-1"), {}, "--graceful-timeout-s cannot be negative"),
        (("--listen-backlog", "-1"), {}, "--listen-backlog must be at least 1"),
        (("--listen-backlog", "0"), {}, "--listen-backlog must be at least 1"),
        (("--head-max-bytes", "0"), {}, "--head-max-bytes must be at least 1024"),
        ((), {"HARDSERVE_WRITE_BUFFER_BYTES": "0"}, "--write-buffer-bytes must be at least 1024"),
        # NaN passed the "cannot be negative" check.
        (("--keepalive-timeout-s", "nan"), {}, "--keepalive-timeout-s must be a finite number"),
        ((), {"HARDSERVE_GRACEFUL_TIMEOUT_S": "inf"}, "--graceful-timeout-s must be a finite"),
        # CR/LF put a header line of the caller's choosing into every response; a character
        # outside latin-1 crashed the worker with UnicodeEncodeError.
        (("--server-header", "foo\r\nX-Injected: 1"), {}, "must be printable ASCII"),
        ((), {"HARDSERVE_SERVER_HEADER": "foo\r\nX-Injected: 1"}, "must be printable ASCII"),
        (("--server-header", "\u00e9\u20ac"), {}, "must be printable ASCII"),
        (("--server-header", "a\x1b[2Jb"), {}, "must be printable ASCII"),
    ],
)
def test_invalid_setting_exits_3_with_one_line(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    bind = () if "--bind" in args else ("--bind", "127.0.0.1:0")
    result = run_cli(HELLO, *args, *bind, env=env)
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert expected in line


@pytest.mark.parametrize("port", ["http", "\u00b2", "\u0668\u0660\u0668\u0660"])
def test_invalid_port_variable_exits_3_when_no_bind_is_given(port: str) -> None:
    result = run_cli(HELLO, env={"PORT": port})
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert f"PORT={port!r} is not a TCP port" in line


def test_refused_server_header_line_escapes_what_it_quotes() -> None:
    result = run_cli(HELLO, "--server-header", "foo\r\nX-Injected: 1", "--bind", "127.0.0.1:0")
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert line == (
        "hardserve: --server-header / HARDSERVE_SERVER_HEADER: 'foo\\r\\nX-Injected: 1' must be "
        "printable ASCII (0x20-0x7e)"
    )


@pytest.mark.parametrize("args", [("--threads", "many"), ("--loop", "trio"), ("--no-such-flag",)])
def test_malformed_flag_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = run_cli(HELLO, *args, "--bind", "127.0.0.1:0")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert "Error:" in result.stderr


def test_port_in_use_exits_3_with_one_line() -> None:
    # Listening (not just bound) keeps the port taken even for a socket with SO_REUSEADDR.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_cli(HELLO, "--bind", f"127.0.0.1:{port}")
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert f"cannot bind 127.0.0.1:{port}" in line
    assert "in use" in line


def test_address_not_on_this_machine_exits_3() -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a local interface.
    result = run_cli(HELLO, "--bind", "192.0.2.1:0")
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert "cannot bind 192.0.2.1:0" in line


# -- default binds ------------------------------------------------------------------------------


def test_port_variable_binds_all_interfaces_on_that_port() -> None:
    # Found by binding port 0 and releasing it: another process could take it in between, but
    # the window is tiny and the alternative, a fixed port, is worse.
    port = free_port()
    command = [sys.executable, "-m", "hardserve", HELLO]  # no --bind: the default applies
    with launch_process(command, env={"PORT": str(port)}) as server:
        assert (server.host, server.port) == ("0.0.0.0", port)
        reply = get("127.0.0.1", port)
    assert (reply.status, reply.body) == (200, HELLO_BODY)


def test_explicit_bind_wins_over_port_variable() -> None:
    # PORT=http would make the default bind fail (status 3); with --bind it is not consulted.
    with serve_process(HELLO, "--bind", "127.0.0.1:0", env={"PORT": "http"}, cwd=str(ROOT)) as s:
        reply = fetch(s)
    assert reply.status == 200


# -- stopping -----------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_progress_finish(tmp_path: Path) -> None:
    spec = f"tests.apps_cli.gate:make_app({str(tmp_path)!r})"
    with serve_process(spec, cwd=str(ROOT)) as server:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until((tmp_path / "started").exists, "the request to reach the app")
            server.process.send_signal(signal.SIGTERM)
            # The stop has begun (listeners closed) while the app still holds the request.
            wait_until(
                lambda: any("stopping" in line for line in server.stderr_lines),
                "the server to log that it is stopping",
            )
            assert server.process.poll() is None, "exited with a request in progress"
            (tmp_path / "release").touch()
            responses, _ = read_responses(sock, 1)
        assert responses[0].status == 200
        assert responses[0].body == b"finished after the signal\n"
        assert server.process.wait(TIMEOUT_S) == 0
    assert "Traceback" not in "".join(server.stderr_lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_fast_stop_cuts_the_request_in_progress(signum: int, tmp_path: Path) -> None:
    spec = f"tests.apps_cli.gate:make_app({str(tmp_path)!r})"
    with (
        serve_process(spec, cwd=str(ROOT)) as server,
        socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until((tmp_path / "started").exists, "the request to reach the app")
        server.process.send_signal(signum)
        # The app never lets go (nothing touches "release"), and the server does not wait.
        assert server.process.wait(TIMEOUT_S) == 0
        sock.settimeout(TIMEOUT_S)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert "Traceback" not in "".join(server.stderr_lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_an_idle_server_with_status_0(signum: int) -> None:
    with serve_process(HELLO, cwd=str(ROOT)) as server:
        assert fetch(server).status == 200
        server.process.send_signal(signum)
        assert server.process.wait(TIMEOUT_S) == 0
    assert "Traceback" not in "".join(server.stderr_lines)


def test_log_format_json_writes_one_typed_object_per_refusal() -> None:
    with serve_process(HELLO, "--log-format", "json", cwd=str(ROOT)) as server:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b'GET /"\n{"reason":"forged"} HTTP/1.1\r\nHost: x\r\n\r\n')
            sock.settimeout(TIMEOUT_S)
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        assert wait_for_line(server, '"logger":"hardserve.security"')
    entries = [json.loads(line) for line in server.stderr_lines]  # every line is one object
    refusals = [entry for entry in entries if entry["logger"] == "hardserve.security"]
    assert len(refusals) == 1
    assert refusals[0]["reason"] == "bare_lf"
    assert refusals[0]["status"] == 400
    assert refusals[0]["peer"].startswith("127.0.0.1:")
    assert re.fullmatch(r"[0-9a-f]{16}", refusals[0]["request_line_sha256"])


def wait_for_line(server: ServerProcess, text: str) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(text in line for line in server.stderr_lines):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- security: advisories and dependency floors --------------------------------------------------

_WITH_A_FLOOR_ABOVE_H11 = (
    "import sys, hardserve.dependencies as d; "
    "d.check_floors.__defaults__ = (None, (d.Floor('h11', '999.0', 'CVE-0000-0000: a test floor'),)); "
    "from hardserve.cli import main; sys.argv[0] = 'hardserve'; main()"
)


def test_a_dependency_below_its_security_floor_refuses_to_start() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITH_A_FLOOR_ABOVE_H11, HELLO, "--bind", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )
    line = assert_one_clear_line(result, EXIT_CONFIG)
    assert line.startswith("hardserve: refusing to start: ")
    assert "h11" in line and "CVE-0000-0000" in line


def test_check_config_reports_a_dependency_below_its_floor() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITH_A_FLOOR_ABOVE_H11, "check-config"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "h11" in result.stderr and "CVE-0000-0000" in result.stderr


def test_advisories_lists_none_for_this_version() -> None:
    result = run_cli("advisories")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"no bundled advisory affects hardserve {hardserve.__version__}"
    )


def test_version_names_the_dependencies_that_matter() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    for name in ("h11 ", "uvloop ", "click ", "prometheus-client "):
        assert name in result.stdout
