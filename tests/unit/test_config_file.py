"""The TOML config file (--config / HARDSERVE_CONFIG): its layout, strict types, unknown keys,
syntax errors, and its place in the order of strength: command line > HARDSERVE_* variable >
file > default, with the source of every value reported by settings.resolve."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hardserve.settings import (
    ALL_SETTINGS,
    CONFIG_ENV,
    Config,
    Setting,
    SettingError,
    load,
    read_config_file,
    resolve,
    toml_type,
)

BY_NAME = {s.name: s for s in ALL_SETTINGS}


def write(tmp_path: Path, text: str, name: str = "hardserve.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def from_file(tmp_path: Path, text: str, **env: str) -> Any:
    """resolve() with only the file (and `env`) as input."""
    return resolve({"config": write(tmp_path, text)}, env=env)


# -- a value for every setting --------------------------------------------------------------------


def sample(setting: Setting) -> tuple[str, Any]:
    """A TOML value other than the default that the setting accepts, and what it becomes."""
    special: dict[str, tuple[str, Any]] = {
        "bind": ('["127.0.0.1:1", "unix:/run/a.sock"]', ("127.0.0.1:1", "unix:/run/a.sock")),
        "pythonpath": ('["lib", "src"]', ("lib", "src")),
        "unix_mode": ('"0640"', 0o640),
        "umask": ('"0022"', 0o022),
        "workers": ("3", 3),
        "forwarded_allow_ips": ('"10.0.0.0/8, unix"', "10.0.0.0/8, unix"),
        "proxy_allow_ips": ('"127.0.0.1"', "127.0.0.1"),
        "allow_root": ("true", True),
        "proxy_protocol": ('"off"', "off"),
        "admin_bind": ('"127.0.0.1:9191"', "127.0.0.1:9191"),
        "admin_token": ('"a-token-of-sixteen-chars"', "a-token-of-sixteen-chars"),
    }
    if setting.name in special:
        return special[setting.name]
    if setting.choices:
        return f'"{setting.choices[-1]}"', setting.choices[-1]
    if setting.type is float:
        return "1.5", 1.5
    if setting.type is int:
        value = setting.default + 1
        return str(value), value
    return '"text-value"', "text-value"


# TLS settings that only load together (tests/unit/test_tls.py): each is tested with these.
TLS_COMPANIONS = {"certfile": '"c.pem"', "keyfile": '"k.pem"', "ca_certs": '"ca.pem"'}
# The admin token needs an admin listener (tests/unit/test_admin.py).
ADMIN_COMPANIONS = {"admin_bind": '"127.0.0.1:9191"'}


@pytest.mark.parametrize("setting", ALL_SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_a_top_level_key(setting: Setting, tmp_path: Path) -> None:
    text, expected = sample(setting)
    tls_settings = ("certfile", "keyfile", "keyfile_password_file", "ca_certs", "client_cert")
    companions = TLS_COMPANIONS if setting.name in (*tls_settings, "ciphers") else {}
    if setting.name in ("admin_token", "admin_token_file"):
        companions = ADMIN_COMPANIONS
    lines = [f"{name} = {value}" for name, value in companions.items() if name != setting.name]
    resolved = from_file(tmp_path, "\n".join([*lines, f"{setting.name} = {text}"]) + "\n")
    assert resolved.value(setting.name) == expected
    assert type(resolved.value(setting.name)) is type(expected)
    path = str(tmp_path / "hardserve.toml")
    assert resolved.sources[setting.name] == f"file:{path}"
    others = {name for name, source in resolved.sources.items() if source != "default"}
    assert others == {setting.name} | set(companions)


def test_sample_values_differ_from_the_defaults() -> None:
    # Otherwise the test above could pass with the file ignored.
    for setting in ALL_SETTINGS:
        _, expected = sample(setting)
        default = setting.default
        if setting.name == "bind":
            continue  # () in the table; the file's binds are compared above
        if setting.name == "proxy_protocol":
            continue  # "on" needs proxy_allow_ips; the source check still proves it was read
        assert expected != default, setting.name


def test_an_integer_is_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    resolved = from_file(tmp_path, "timeout_s = 45\nkeepalive_timeout_s = 1\n")
    assert resolved.config.timeout_s == 45.0
    assert type(resolved.config.timeout_s) is float
    assert type(resolved.config.limits.keepalive_timeout_s) is float


def test_workers_auto_and_modes_as_text(tmp_path: Path) -> None:
    resolved = from_file(tmp_path, 'workers = "auto"\numask = "0027"\nunix_mode = "0660"\n')
    assert resolved.config.workers == len(os.sched_getaffinity(0))
    assert (resolved.config.umask, resolved.config.unix_mode) == (0o027, 0o660)


def test_an_empty_array_is_not_a_value(tmp_path: Path) -> None:
    resolved = from_file(tmp_path, "bind = []\n")
    assert resolved.config.bind == ("127.0.0.1:8000",)
    assert resolved.sources["bind"] == "default"


def test_an_empty_file_changes_nothing(tmp_path: Path) -> None:
    resolved = from_file(tmp_path, "# nothing here\n")
    assert resolved.config == Config()
    assert set(resolved.sources.values()) == {"default"}


# -- strict types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('threads = "4"', "threads must be an integer; a string was given"),
        ("threads = 4.0", "threads must be an integer; a float was given"),
        ("threads = true", "threads must be an integer; a boolean was given"),
        ("body_max_bytes = 1.5", "body_max_bytes must be an integer; a float was given"),
        ('body_max_bytes = "1MB"', "body_max_bytes must be an integer; a string was given"),
        ('timeout_s = "30"', "timeout_s must be a number; a string was given"),
        ("timeout_s = false", "timeout_s must be a number; a boolean was given"),
        ('allow_root = "yes"', "allow_root must be true or false; a string was given"),
        ("allow_root = 1", "allow_root must be true or false; an integer was given"),
        ('bind = "127.0.0.1:8000"', "bind must be an array of strings"),
        ("bind = [8000]", "bind must be an array of strings"),
        ('pythonpath = "lib"', "pythonpath must be an array of strings"),
        # An integer mode is ambiguous: 660 is not 0o660.
        ("unix_mode = 660", 'unix_mode must be a string of octal digits ("0660")'),
        ("umask = 0o22", 'umask must be a string of octal digits ("0660")'),
        ('unix_mode = "rw-r--r--"', "unix_mode: 'rw-r--r--': invalid literal"),
        ('workers = "many"', "workers: 'many': invalid literal"),
        ("workers = true", 'workers must be an integer or "auto"; a boolean was given'),
        ("server_header = 5", "server_header must be a string; an integer was given"),
        ("user = 1000", "user must be a string; an integer was given"),
        ("forwarded_allow_ips = ['10.0.0.1']", "forwarded_allow_ips must be a string; an array"),
        ("loop = { name = 'uvloop' }", "loop must be a string; a table was given"),
        ("chdir = 1979-05-27", "chdir must be a string; a date or time was given"),
        ("timeout_s = 1e400", "timeout_s must be a finite number"),
        ("timeout_s = nan", "timeout_s must be a finite number"),
        ("keepalive_timeout_s = " + "9" * 400, "keepalive_timeout_s is too large"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(
    line: str, expected: str, tmp_path: Path
) -> None:
    path = write(tmp_path, line + "\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("threads = 0", "threads must be at least 1"),
        ("threads = 1025", "threads must be at most 1024"),
        ("body_max_bytes = -1", "body_max_bytes cannot be negative"),
        ("head_max_bytes = 10", "head_max_bytes must be at least 1024"),
        ('unix_mode = "1777"', "unix_mode must be at most 0777"),
        ('loop = "trio"', "loop must be one of auto, uvloop, asyncio"),
        ('log_level = "INFO"', "log_level must be one of"),
        ('server_header = "a\\r\\nX-Injected: 1"', "server_header: 'a\\r\\nX-Injected: 1' must be"),
        ('forwarded_allow_ips = "*"', "forwarded_allow_ips: trusted proxies: '*'"),
        ('proxy_allow_ips = "example.com"', "proxy_allow_ips: trusted proxies:"),
        ('proxy_protocol = "on"', 'proxy_protocol = "on" needs proxy_allow_ips'),
    ],
)
def test_a_value_out_of_range_names_the_file_and_the_key(
    line: str, expected: str, tmp_path: Path
) -> None:
    path = write(tmp_path, line + "\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(
        SettingError, match=r"^--threads must be at least 1 \(from HARDSERVE_THREADS\)$"
    ):
        load({}, env={"HARDSERVE_THREADS": "0"})
    with pytest.raises(SettingError, match=r"^--threads must be at least 1$"):
        load({"threads": 0}, env={})


def test_a_bad_value_in_the_file_is_not_reported_when_a_stronger_source_overrides_it(
    tmp_path: Path,
) -> None:
    # The file is still read whole (a wrong type is an error, whoever wins), but a value that
    # is only out of range is checked where it takes effect.
    path = write(tmp_path, "threads = 0\n")
    assert load({"config": path, "threads": 2}, env={}).threads == 2
    path = write(tmp_path, 'threads = "2"\n')
    with pytest.raises(SettingError, match="threads must be an integer"):
        load({"config": path, "threads": 2}, env={})


# -- unknown keys and the layout ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("worker", "workers"),
        ("thread", "threads"),
        ("body-max-bytes", "body_max_bytes"),
        ("Body_Max_Bytes", "body_max_bytes"),
        ("HARDSERVE_THREADS", "threads"),
        ("keepalive_timeout", "keepalive_timeout_s"),
        ("forwarded_allowed_ips", "forwarded_allow_ips"),
        ("graceful_timeout", "graceful_timeout_s"),
    ],
)
def test_an_unknown_key_names_the_file_and_the_closest_setting(
    key: str, suggestion: str, tmp_path: Path
) -> None:
    path = write(tmp_path, f'"{key}" = 4\n')
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value) == (f"{path}: unknown setting {key!r}; did you mean {suggestion!r}?")


def test_an_unknown_key_far_from_every_setting_has_no_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "zzzz = 1\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value) == f"{path}: unknown setting 'zzzz'"


def test_the_hardserve_table_layout_is_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, "[hardserve]\nworkers = 4\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value) == (
        f"{path}: [hardserve]: write the settings at the top level of the file, without a "
        "[hardserve] table (docs/settings.md)"
    )


def test_the_same_settings_at_the_top_level_are_read(tmp_path: Path) -> None:
    assert from_file(tmp_path, "workers = 4\n").config.workers == 4


@pytest.mark.parametrize("table", ["limits", "tool", "server"])
def test_any_other_table_is_refused(table: str, tmp_path: Path) -> None:
    path = write(tmp_path, f"[{table}]\nbody_max_bytes = 1\n")
    with pytest.raises(SettingError, match=re.escape(f"{path}: unknown table [{table}]")):
        load({"config": path}, env={})


# -- files that cannot be read --------------------------------------------------------------------


def test_a_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 4\nthreads = \nbind = []\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid TOML: "), message
    assert "line 2" in message, message


def test_a_statement_left_unfinished_at_the_end_gives_its_line(tmp_path: Path) -> None:
    # tomllib says "at end of document" here; the message names the last line instead.
    path = write(tmp_path, "workers = 4\n\nthreads = [1,\n")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value).endswith("(at the end, line 3)"), str(caught.value)


def test_a_key_given_twice_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 4\nworkers = 5\n")
    with pytest.raises(SettingError, match=r"not valid TOML: .*line 2"):
        load({"config": path}, env={})


def test_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.toml")
    with pytest.raises(SettingError) as caught:
        load({"config": path}, env={})
    assert str(caught.value) == f"{path}: cannot read the config file: No such file or directory"


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="cannot read the config file: Is a directory"):
        load({"config": str(tmp_path)}, env={})


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'server_header = "caf\xe9"\n')
    with pytest.raises(SettingError, match=f"^{re.escape(str(path))}: not UTF-8 text"):
        load({"config": str(path)}, env={})


def test_an_empty_config_name_is_refused() -> None:
    with pytest.raises(SettingError, match="--config needs a file name"):
        load({"config": ""}, env={})


# -- which file -----------------------------------------------------------------------------------


def test_the_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 3\n")
    resolved = resolve({}, env={CONFIG_ENV: path})
    assert resolved.config.threads == 3
    assert (resolved.config_file, resolved.config_file_source) == (path, "env:HARDSERVE_CONFIG")
    assert resolved.sources["threads"] == f"file:{path}"


def test_the_flag_wins_over_the_variable(tmp_path: Path) -> None:
    flag = write(tmp_path, "threads = 3\n", "flag.toml")
    variable = write(tmp_path, "threads = 4\n", "variable.toml")
    resolved = resolve({"config": flag}, env={CONFIG_ENV: variable})
    assert resolved.config.threads == 3
    assert (resolved.config_file, resolved.config_file_source) == (flag, "cli:--config")


def test_an_empty_variable_is_no_file() -> None:
    resolved = resolve({}, env={CONFIG_ENV: " "})
    assert (resolved.config_file, resolved.config_file_source) == (None, None)
    assert resolved.config == Config()


def test_read_config_file_returns_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'workers = 2\nbind = ["unix:/a"]\nunix_mode = "0660"\n')
    assert read_config_file(path) == {"workers": 2, "bind": ("unix:/a",), "unix_mode": 0o660}


def test_every_setting_names_its_toml_type() -> None:
    assert toml_type(BY_NAME["bind"]) == "array of strings"
    assert toml_type(BY_NAME["allow_root"]) == "boolean"
    assert toml_type(BY_NAME["threads"]) == "integer"
    assert toml_type(BY_NAME["timeout_s"]) == "number"
    assert toml_type(BY_NAME["workers"]) == 'integer or "auto"'
    assert toml_type(BY_NAME["unix_mode"]).startswith("string of octal digits")
    assert toml_type(BY_NAME["loop"]) == "string"


# -- precedence and sources -----------------------------------------------------------------------

# (setting, file text, environment text, command-line value, and the value each gives)
LAYERS = [
    ("threads", "3", "4", 5, (3, 4, 5)),
    ("body_max_bytes", "1000", "2000", 3000, (1000, 2000, 3000)),
    ("keepalive_timeout_s", "1.5", "2.5", 3.5, (1.5, 2.5, 3.5)),
    ("server_header", '"file"', "env", "cli", ("file", "env", "cli")),
    (
        "bind",
        '["127.0.0.1:1"]',
        "127.0.0.1:2",
        ("127.0.0.1:3",),
        (("127.0.0.1:1",), ("127.0.0.1:2",), ("127.0.0.1:3",)),
    ),
    ("unix_mode", '"0640"', "0660", "0600", (0o640, 0o660, 0o600)),
    ("allow_root", "true", "yes", True, (True, True, True)),
    ("workers", "2", "3", "4", (2, 3, 4)),
]


@pytest.mark.parametrize(("name", "in_file", "in_env", "on_cli", "values"), LAYERS)
@pytest.mark.parametrize(
    "present",
    list(itertools.product([False, True], repeat=3)),
    ids=lambda p: "".join("FEC"[i] if on else "-" for i, on in enumerate(p)),
)
def test_the_strongest_source_wins_and_is_reported(
    name: str,
    in_file: str,
    in_env: str,
    on_cli: Any,
    values: tuple[Any, Any, Any],
    present: tuple[bool, bool, bool],
    tmp_path: Path,
) -> None:
    file_on, env_on, cli_on = present
    setting = BY_NAME[name]
    path = write(tmp_path, f"{name} = {in_file}\n" if file_on else "")
    env = {setting.env_var: in_env} if env_on else {}
    given: dict[str, Any] = {"config": path}
    if cli_on:
        given[name] = on_cli
    resolved = resolve(given, env=env)
    if cli_on:
        expected, source = values[2], f"cli:{setting.flag}"
    elif env_on:
        expected, source = values[1], f"env:{setting.env_var}"
    elif file_on:
        expected, source = values[0], f"file:{path}"
    else:
        default = resolve({}, env={})
        expected, source = default.value(name), "default"
    assert resolved.value(name) == expected
    assert resolved.sources[name] == source


def test_every_setting_has_a_source() -> None:
    resolved = resolve({}, env={})
    assert list(resolved.sources) == [s.name for s in ALL_SETTINGS]
    assert set(resolved.sources.values()) == {"default"}


def test_a_default_bind_from_port_says_so(tmp_path: Path) -> None:
    resolved = resolve({}, env={"PORT": "5000"})
    assert (resolved.config.bind, resolved.sources["bind"]) == (("0.0.0.0:5000",), "env:PORT")


def test_a_bind_in_the_file_wins_over_port(tmp_path: Path) -> None:
    path = write(tmp_path, 'bind = ["unix:/run/app.sock"]\n')
    resolved = resolve({"config": path}, env={"PORT": "not-a-port"})
    assert resolved.config.bind == ("unix:/run/app.sock",)
    assert resolved.sources["bind"] == f"file:{path}"


def test_load_and_resolve_agree(tmp_path: Path) -> None:
    path = write(tmp_path, "threads = 3\nbody_max_bytes = 10\n")
    values = {"config": path, "workers": 2}
    env = {"HARDSERVE_LOG_LEVEL": "debug"}
    assert load(values, env=env) == resolve(values, env=env).config
    config = load(values, env=env)
    assert (config.threads, config.limits.body_max_bytes, config.workers, config.log_level) == (
        3,
        10,
        2,
        "debug",
    )


def test_without_a_file_load_is_unchanged() -> None:
    assert load({}, env={}) == Config()
    assert load({"threads": 2}, env={"HARDSERVE_THREADS": "3"}).threads == 2
