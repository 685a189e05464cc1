"""`hardserve check-config` as a user runs it (a real subprocess): the effective settings with
their sources, as text and as JSON; every warning; exit status 0 with warnings and 1 on
errors, each error naming the key and where it came from. And `hardserve --config FILE
MODULE:APP` really serving with the file's settings."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hardserve.settings import ALL_SETTINGS
from tests.conftest import ALLOW_ROOT
from tests.functional.test_cli import free_port
from tests.helpers import ROOT, TIMEOUT_S, launch_process, serve_process

HELLO = "tests.apps_cli.hello:app"
PROBE = "tests.apps_cli.probe:app"
EXIT_USAGE = 2
EXIT_CONFIG = 3


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


def check(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    # HARDSERVE_ALLOW_ROOT, set for the servers the tests start as root, is itself a risk
    # check-config reports: it is only passed on where a test asks for it.
    base = {k: v for k, v in os.environ.items() if k not in ALLOW_ROOT}
    return subprocess.run(
        [sys.executable, "-m", "hardserve", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**base, **(env or {})},
        cwd=cwd,
        check=False,
    )


def check_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = check("--format", "json", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def ids(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["level"], f["id"]) for f in report["findings"]]


def write(tmp_path: Path, text: str, name: str = "hardserve.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hardserve: ")
    return lines[0].removeprefix("hardserve: ")


# -- the report -----------------------------------------------------------------------------------


def test_text_lists_every_setting_in_order_aligned_with_its_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'threads = 3\nbind = ["unix:/run/app.sock"]\nunix_mode = "0660"\n')
    result = check("--config", path, "--workers", "2", env={"HARDSERVE_BODY_MAX_BYTES": "1000"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"config file: {path} (from --config)"
    header = lines.index(next(line for line in lines if line.startswith("SETTING")))
    rows = lines[header + 1 : header + 1 + len(ALL_SETTINGS)]
    assert [row.split()[0] for row in rows] == [s.name for s in ALL_SETTINGS]
    # Aligned: every value starts in the same column, and so does every source.
    value_column = lines[header].index("VALUE")
    source_column = lines[header].index("SOURCE")
    for row in rows:
        assert row[value_column - 2 : value_column] == "  " and row[value_column] != " ", row
    table = {row.split()[0]: row for row in rows}
    assert table["threads"][value_column:].split() == ["3", f"file:{path}"]
    assert table["workers"][value_column:].split() == ["2", "cli:--workers"]
    assert table["body_max_bytes"][value_column:].split() == [
        "1000",
        "env:HARDSERVE_BODY_MAX_BYTES",
    ]
    assert table["unix_mode"][value_column:].split() == ['"0660"', f"file:{path}"]
    assert table["bind"][value_column:].split() == ['["unix:/run/app.sock"]', f"file:{path}"]
    assert table["log_level"][value_column:].split() == ['"info"', "default"]
    assert table["user"][value_column:].split() == ["(unset)", "default"]
    assert table["log_level"][source_column:] == "default"
    assert lines[-1] == "0 warnings, 0 notes"


def test_json_has_every_value_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 3\ntimeout_s = 45\n")
    report = check_json("--config", path, "--workers", "2", env={"HARDSERVE_LOG_LEVEL": "debug"})
    assert report["config_file"] == path
    assert report["config_file_source"] == "cli:--config"
    settings = report["settings"]
    assert list(settings) == [s.name for s in ALL_SETTINGS]
    assert settings["threads"] == {"value": 3, "source": f"file:{path}"}
    assert settings["timeout_s"] == {"value": 45.0, "source": f"file:{path}"}
    assert settings["workers"] == {"value": 2, "source": "cli:--workers"}
    assert settings["log_level"] == {"value": "debug", "source": "env:HARDSERVE_LOG_LEVEL"}
    assert settings["bind"] == {"value": ["127.0.0.1:8000"], "source": "default"}
    assert settings["unix_mode"] == {"value": "0600", "source": "default"}
    assert settings["user"] == {"value": None, "source": "default"}
    assert settings["body_max_bytes"]["value"] == 100 * 1024 * 1024
    assert report["findings"] == []


def test_the_file_named_by_the_variable_and_the_port_default(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 5\n")
    report = check_json(env={"HARDSERVE_CONFIG": path, "PORT": "5000"})
    assert (report["config_file"], report["config_file_source"]) == (path, "env:HARDSERVE_CONFIG")
    assert report["settings"]["threads"]["source"] == f"file:{path}"
    assert report["settings"]["bind"] == {"value": ["0.0.0.0:5000"], "source": "env:PORT"}


def test_the_json_values_can_be_written_back_as_a_config_file(tmp_path: Path) -> None:
    # Each value is shown as the file takes it: a check-config of that file changes nothing.
    path = write(tmp_path, 'workers = 2\nunix_mode = "0640"\ngraceful_timeout_s = 10\n')
    first = check_json("--config", path)
    lines = []
    for name, entry in first["settings"].items():
        if entry["value"] is not None:
            lines.append(f"{name} = {json.dumps(entry['value'])}")
    again = write(tmp_path, "\n".join(lines) + "\n", "again.toml")
    second = check_json("--config", again)
    assert {k: v["value"] for k, v in second["settings"].items()} == {
        k: v["value"] for k, v in first["settings"].items()
    }


def test_without_a_file_the_text_says_how_to_name_one() -> None:
    result = check()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "config file: none (--config or HARDSERVE_CONFIG)"


def test_it_neither_binds_nor_imports_the_app(tmp_path: Path) -> None:
    imported = tmp_path / "imported"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = check(
            "--bind",
            f"127.0.0.1:{port}",
            "tests.apps_cli.factory:make_app()",
            env={"APPS_CLI_IMPORT_MARKER": str(imported)},
        )
    assert result.returncode == 0, result.stderr
    assert "app: tests.apps_cli.factory:make_app()" in result.stdout
    assert not imported.exists()


# -- warnings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--bind", "0.0.0.0:8000", "--client-in-flight-max", "4"),
            ("warning", "public-plain-http"),
        ),
        (("--bind", "[::]:8000", "--client-in-flight-max", "4"), ("warning", "public-plain-http")),
        (("--forwarded-allow-ips", "0.0.0.0/0"), ("warning", "trusts-everyone")),
        (("--forwarded-allow-ips", "::/0"), ("warning", "trusts-everyone")),
        (
            ("--proxy-protocol", "on", "--proxy-allow-ips", "0.0.0.0/0, ::/0"),
            ("warning", "trusts-everyone"),
        ),
        (("--body-min-rate-bytes-s", "0"), ("warning", "limit-off")),
        (("--send-min-rate-bytes-s", "0"), ("warning", "limit-off")),
        (("--timeout-s", "0"), ("warning", "limit-off")),
        (("--body-max-bytes", str(100 * 1024 * 1024 * 1000)), ("warning", "limit-very-high")),
        (("--head-timeout-s", "3600"), ("warning", "limit-very-high")),
        (
            ("--bind", "0.0.0.0:8000", "--forwarded-allow-ips", "10.0.0.1"),
            ("note", "client-in-flight-off"),
        ),
        (("--allow-root",), ("warning", "root-workers")),
        (("--user", "root"), ("warning", "root-workers")),
        (
            ("--bind", "unix:/run/app.sock", "--unix-mode", "0666"),
            ("warning", "world-writable-socket"),
        ),
        (("--path-encoded-slash", "allow"), ("warning", "risky-path")),
        (("--path-backslash", "allow"), ("warning", "risky-path")),
        (("--graceful-timeout-s", "60"), ("note", "graceful-over-kubernetes")),
    ],
)
def test_each_risky_choice_is_reported_and_the_status_stays_0(
    args: tuple[str, ...], expected: tuple[str, str]
) -> None:
    assert ids(check_json(*args)) == [expected]
    result = check(*args)
    assert result.returncode == 0, result.stderr
    level, name = expected
    reported = [line for line in result.stdout.splitlines() if line.startswith(f"{level}: [")]
    assert len(reported) == 1 and reported[0].startswith(f"{level}: [{name}] "), result.stdout
    warnings = 1 if level == "warning" else 0
    assert result.stdout.splitlines()[-1] == (
        f"{warnings} warning{'' if warnings == 1 else 's'}, "
        f"{1 - warnings} note{'' if warnings == 0 else 's'}"
    )


def test_root_workers_allowed_by_the_environment() -> None:
    report = check_json(env={"HARDSERVE_ALLOW_ROOT": "1"})
    assert ids(report) == [("warning", "root-workers")]
    assert report["settings"]["allow_root"] == {"value": True, "source": "env:HARDSERVE_ALLOW_ROOT"}
    assert ids(check_json("--user", "nobody", env={"HARDSERVE_ALLOW_ROOT": "1"})) == []


def test_the_same_risks_from_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'bind = ["0.0.0.0:8000", "unix:/run/app.sock"]\n'
        'unix_mode = "0777"\n'
        "allow_root = true\n"
        "timeout_s = 0\n",
    )
    report = check_json("--config", path)
    assert ids(report) == [
        ("warning", "public-plain-http"),
        ("warning", "limit-off"),
        ("note", "client-in-flight-off"),
        ("warning", "root-workers"),
        ("warning", "world-writable-socket"),
    ]
    public = report["findings"][0]
    assert public["settings"] == ["bind", "forwarded_allow_ips"]
    assert "0.0.0.0:8000" in public["message"] and "plain HTTP" in public["message"]


def test_a_trusted_proxy_silences_the_public_bind_warning() -> None:
    report = check_json(
        "--bind", "0.0.0.0:8000", "--forwarded-allow-ips", "10.0.0.1", "--client-in-flight-max", "8"
    )
    assert report["findings"] == []


# -- errors -------------------------------------------------------------------------------------


def test_an_unknown_key_names_the_file_and_the_closest_setting(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 2\nworker = 4\n")
    assert one_error_line(check("--config", path)) == (
        f"{path}: unknown setting 'worker'; did you mean 'workers'?"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('threads = "4"', "{path}: threads must be an integer; a string was given"),
        ("threads = 0", "{path}: threads must be at least 1"),
        ('loop = "trio"', "{path}: loop must be one of auto, uvloop, asyncio"),
        ("[hardserve]\nworkers = 2", "{path}: [hardserve]: write the settings at the top level"),
        ('bind = ["::1:8000"]', "{path}: bind: '::1:8000': write IPv6 addresses as [ADDRESS]:PORT"),
        ("workers = 4\nthreads =", "{path}: not valid TOML: "),
    ],
)
def test_a_bad_file_exits_1_naming_the_key_and_the_file(
    text: str, expected: str, tmp_path: Path
) -> None:
    path = write(tmp_path, text + "\n")
    line = one_error_line(check("--config", path))
    assert line.startswith(expected.format(path=path)), line


def test_a_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 4\n\nthreads = [1,\n")
    line = one_error_line(check("--config", path))
    assert re.search(r"line \d+", line), line


def test_an_unreadable_file_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert one_error_line(check("--config", str(missing))) == (
        f"{missing}: cannot read the config file: No such file or directory"
    )
    line = one_error_line(check(env={"HARDSERVE_CONFIG": str(missing)}))
    assert "cannot read the config file" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--threads", "0"), {}, "--threads must be at least 1"),
        ((), {"HARDSERVE_THREADS": "0"}, "--threads must be at least 1 (from HARDSERVE_THREADS)"),
        ((), {"HARDSERVE_THREADS": "many"}, "--threads / HARDSERVE_THREADS: 'many'"),
        (("--bind", "127.0.0.1:http"), {}, "--bind: '127.0.0.1:http': 'http' is not a port"),
        ((), {"HARDSERVE_BIND": "unix:"}, "HARDSERVE_BIND: unix: needs a path"),
        ((), {"PORT": "http"}, "PORT='http' is not a TCP port"),
        (("not a module:app",), {}, "MODULE:APP: 'not a module:app' is not MODULE:NAME"),
    ],
)
def test_a_bad_value_exits_1_naming_its_source(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    line = one_error_line(check(*args, env=env))
    assert line.startswith(expected), line


def test_a_bad_flag_is_still_a_usage_error() -> None:
    result = check("--no-such-flag")
    assert result.returncode == EXIT_USAGE
    assert "No such option" in result.stderr


# -- the command line's shape -------------------------------------------------------------------


def test_top_level_help_names_the_subcommand() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hardserve", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0
    assert re.search(r"^\s+check-config\s+Show the effective settings", result.stdout, re.M)
    assert re.search(r"^\s+--config FILE", result.stdout, re.M)


def test_subcommand_help_lists_its_options_and_every_setting() -> None:
    result = check("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m hardserve check-config [OPTIONS] [MODULE:APP]" in result.stdout
    listed = re.findall(r"^\s*(--[a-z0-9-]+)", result.stdout, re.MULTILINE)
    assert {"--format", "--config"} <= set(listed)
    table = [setting.flag for setting in ALL_SETTINGS]
    assert [flag for flag in listed if flag in table] == table


# -- serving with a config file -----------------------------------------------------------------


def get(host: str, port: int, method: str = "GET", body: bytes | None = None) -> Any:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request(method, "/", body=body)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_serving_with_the_file_s_settings(tmp_path: Path) -> None:
    port = free_port()
    path = write(
        tmp_path,
        f'bind = ["127.0.0.1:{port}"]\n'
        "workers = 2\n"
        "threads = 3\n"
        'server_header = "from-the-file"\n'
        "body_max_bytes = 10\n",
    )
    command = [sys.executable, "-m", "hardserve", "--config", path, PROBE]
    with launch_process(command) as server:
        process, host = server.process, server.host
        assert (host, server.port) == ("127.0.0.1", port)
        status, headers, body = get(host, port)
        assert status == 200
        assert headers.get_all("Server") == ["from-the-file"]
        assert len(json.loads(body)["pool_threads"]) == 3
        status, _, _ = get(host, port, "POST", b"x" * 11)
        assert status == 413
        deadline = time.monotonic() + TIMEOUT_S
        while len(children_of(process.pid)) != 2:
            assert time.monotonic() < deadline, children_of(process.pid)
            time.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "env", "threads", "header"),
    [
        ((), {}, 3, "file"),
        ((), {"HARDSERVE_THREADS": "2"}, 2, "file"),
        (("--threads", "1"), {"HARDSERVE_THREADS": "2"}, 1, "file"),
        (("--server-header", "cli"), {"HARDSERVE_SERVER_HEADER": "env"}, 3, "cli"),
        ((), {"HARDSERVE_SERVER_HEADER": "env"}, 3, "env"),
    ],
)
@pytest.mark.parametrize("how", ["--config", "HARDSERVE_CONFIG"])
def test_the_command_line_and_the_environment_win_over_the_file(
    how: str,
    args: tuple[str, ...],
    env: dict[str, str],
    threads: int,
    header: str,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 'threads = 3\nserver_header = "file"\n')
    named = ("--config", path) if how == "--config" else ()
    env = {**env, **({"HARDSERVE_CONFIG": path} if how == "HARDSERVE_CONFIG" else {})}
    with serve_process(*named, PROBE, *args, env=env, cwd=str(ROOT)) as server:
        status, headers, body = get(server.host, server.port)
    assert status == 200
    assert headers.get_all("Server") == [header]
    assert len(json.loads(body)["pool_threads"]) == threads


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("threads = 0\n", "{path}: threads must be at least 1"),
        ("thread = 2\n", "{path}: unknown setting 'thread'; did you mean 'threads'?"),
        ("threads = \n", "{path}: not valid TOML"),
    ],
)
def test_serving_with_a_bad_file_exits_3_with_one_line(
    text: str, expected: str, tmp_path: Path
) -> None:
    path = write(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "hardserve", HELLO, "--config", path, "--bind", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hardserve: " + expected.format(path=path)), lines[0]


def test_the_console_script_runs_the_subcommand_and_still_serves(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hardserve")
    result = subprocess.run(
        [str(script), "check-config", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: hardserve check-config [OPTIONS] [MODULE:APP]" in result.stdout
    path = write(tmp_path, "threads = 2\n")
    command = [str(script), HELLO, "--config", path, "--workers", "1", "--bind", "127.0.0.1:0"]
    with launch_process(command) as server:
        status, _, body = get(server.host, server.port)
    assert (status, body) == (200, b"hello from apps_cli\n")


def test_a_subcommand_is_one_decorated_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from hardserve import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "say-threads", cli.SUBCOMMANDS["check-config"])

    @cli.subcommand("say-threads", settings=True)
    def say_threads(**values: Any) -> None:
        """Print the number of threads."""
        print(cli.load(values, env={}).threads)

    runner = CliRunner()
    result = runner.invoke(cli.main, ["say-threads", "--threads", "7"])
    assert (result.exit_code, result.output) == (0, "7\n")
    result = runner.invoke(cli.main, ["--help"])
    assert re.search(r"^\s+say-threads\s+Print the number of threads", result.output, re.M)
    # Anything else is still an app spec for the serving command.
    context = cli.main.make_context("hardserve", ["say_threads:app", "--threads", "3"])
    assert (context.params["app"], context.params["threads"]) == ("say_threads:app", 3)
