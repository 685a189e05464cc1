"""settings.load: defaults, HARDSERVE_* variables, explicit (command-line) values, in that
order of strength; validation; and the one-table promise (every Config and Limits field is a
setting, a flag and a variable)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import types
from pathlib import Path
from typing import Any

import click
import pytest

from hardserve import settings_doc
from hardserve.cli import main as cli_command
from hardserve.http.limits import Limits
from hardserve.settings import (
    ALL_SETTINGS,
    LIMIT_SETTINGS,
    RISKS,
    SETTINGS,
    Config,
    Setting,
    SettingError,
    default_binds,
    is_public_bind,
    load,
    review,
    toml_value,
)

LIMIT_FIELDS = dataclasses.fields(Limits)
CONFIG_FIELDS = [f for f in dataclasses.fields(Config) if f.name != "limits"]
BY_NAME = {s.name: s for s in ALL_SETTINGS}


def value_of(config: Config, name: str) -> Any:
    return getattr(config.limits if hasattr(config.limits, name) else config, name)


# -- one table --------------------------------------------------------------------------------


def test_setting_names_are_unique() -> None:
    names = [s.name for s in ALL_SETTINGS]
    assert len(names) == len(set(names))


def test_settings_are_exactly_the_config_and_limits_fields() -> None:
    expected = {f.name for f in CONFIG_FIELDS} | {f.name for f in LIMIT_FIELDS}
    assert set(BY_NAME) == expected


@pytest.mark.parametrize("field", LIMIT_FIELDS, ids=lambda f: f.name)
def test_every_limits_field_is_a_setting_with_its_default_and_type(
    field: dataclasses.Field[Any],
) -> None:
    setting = BY_NAME[field.name]
    assert setting in LIMIT_SETTINGS
    assert setting.default == field.default
    # A float limit must not be parsed as int (and the other way round).
    assert setting.type is type(field.default)
    assert setting.flag == "--" + field.name.replace("_", "-")
    assert setting.env_var == "HARDSERVE_" + field.name.upper()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_default_is_the_config_default(setting: Setting) -> None:
    if setting.name == "bind":
        # The table says "none given"; load() then picks default_binds().
        assert setting.default == ()
        assert Config().bind == default_binds({})
    else:
        assert getattr(Config(), setting.name) == setting.default


@pytest.mark.parametrize("setting", ALL_SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_a_command_line_flag(setting: Setting) -> None:
    options = {
        opt: param
        for param in cli_command.params
        if isinstance(param, click.Option)
        for opt in param.opts
    }
    assert setting.flag in options
    assert options[setting.flag].multiple == setting.multiple
    if setting.choices:
        assert isinstance(options[setting.flag].type, click.Choice)
        assert tuple(options[setting.flag].type.choices) == setting.choices


def test_flag_and_variable_names() -> None:
    setting = Setting("some_thing_s", "help", 1.0, float)
    assert setting.flag == "--some-thing-s"
    assert setting.env_var == "HARDSERVE_SOME_THING_S"


# -- defaults ---------------------------------------------------------------------------------


def test_nothing_given_gives_the_config_defaults() -> None:
    assert load({}, env={}) == Config()


def test_default_bind_is_loopback_port_8000() -> None:
    assert load({}, env={}).bind == ("127.0.0.1:8000",)
    assert default_binds({}) == ("127.0.0.1:8000",)


@pytest.mark.parametrize(
    ("port", "binds"),
    [
        ("5000", ("0.0.0.0:5000",)),
        (" 5000 ", ("0.0.0.0:5000",)),
        ("1", ("0.0.0.0:1",)),
        ("65535", ("0.0.0.0:65535",)),
        ("", ("127.0.0.1:8000",)),  # set but empty counts as unset
    ],
)
def test_port_variable_gives_all_interfaces(port: str, binds: tuple[str, ...]) -> None:
    assert default_binds({"PORT": port}) == binds
    assert load({}, env={"PORT": port}).bind == binds


@pytest.mark.parametrize(
    "port",
    [
        "0",
        "65536",
        "-1",
        "http",
        "80.5",
        "8080/tcp",
        # str.isdigit accepts these; int() refuses the superscript with a ValueError and reads
        # the Arabic-Indic and fullwidth digits as 8080 and 5000.
        "\u00b2",
        "\u0668\u0660\u0668\u0660",
        "\uff15\uff10\uff10\uff10",
    ],
)
def test_port_variable_that_is_not_a_port_is_refused(port: str) -> None:
    with pytest.raises(SettingError, match="is not a TCP port"):
        default_binds({"PORT": port})
    with pytest.raises(SettingError, match="is not a TCP port"):
        load({}, env={"PORT": port})


def test_explicit_bind_wins_over_port_variable_and_port_is_then_not_read() -> None:
    assert load({"bind": ("unix:/run/a.sock",)}, env={"PORT": "http"}).bind == ("unix:/run/a.sock",)


def test_bind_variable_wins_over_port_variable() -> None:
    env = {"HARDSERVE_BIND": "127.0.0.1:1, [::1]:2 ,", "PORT": "5000"}
    assert load({}, env=env).bind == ("127.0.0.1:1", "[::1]:2")


# -- precedence -------------------------------------------------------------------------------

# (setting, text in the environment, its value, an explicit value)
PRECEDENCE = [
    ("threads", "3", 3, 5),
    ("server_header", "from-env", "from-env", "from-cli"),
    ("server_header", "", "", "from-cli"),  # an empty variable is a value: no Server header
    ("unix_mode", "0644", 0o644, 0o640),
    ("log_level", "debug", "debug", "error"),
    ("loop", "asyncio", "asyncio", "uvloop"),
    ("chdir", "/srv/env", "/srv/env", "/srv/cli"),
    ("pythonpath", "a, b", ("a", "b"), ("c",)),
    ("bind", "127.0.0.1:1", ("127.0.0.1:1",), ("127.0.0.1:2",)),
    ("graceful_timeout_s", "2.5", 2.5, 7.0),
    ("body_max_bytes", "1024", 1024, 2048),
    ("keepalive_timeout_s", "0.25", 0.25, 3.0),
]


@pytest.mark.parametrize(("name", "raw", "from_env", "explicit"), PRECEDENCE)
def test_environment_beats_default(name: str, raw: str, from_env: Any, explicit: Any) -> None:
    env = {BY_NAME[name].env_var: raw}
    assert value_of(load({}, env=env), name) == from_env
    # None (and an empty tuple for a repeatable flag) means "not given on the command line".
    empty = () if BY_NAME[name].multiple else None
    assert value_of(load({name: empty}, env=env), name) == from_env


@pytest.mark.parametrize(("name", "raw", "from_env", "explicit"), PRECEDENCE)
def test_explicit_value_beats_environment(
    name: str, raw: str, from_env: Any, explicit: Any
) -> None:
    env = {BY_NAME[name].env_var: raw}
    assert value_of(load({name: explicit}, env=env), name) == explicit


def test_environment_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARDSERVE_THREADS", "6")
    monkeypatch.delenv("HARDSERVE_BIND", raising=False)
    monkeypatch.setenv("PORT", "5001")
    config = load({})
    assert config.threads == 6
    assert config.bind == ("0.0.0.0:5001",)


def test_load_only_reads_its_inputs() -> None:
    values = types.MappingProxyType({"threads": 2, "pythonpath": ["x"]})
    env = types.MappingProxyType({"HARDSERVE_SERVER_HEADER": "s"})
    config = load(values, env=env)
    assert (config.threads, config.pythonpath, config.server_header) == (2, ("x",), "s")


def test_explicit_text_is_converted_like_the_environment() -> None:
    # The command line hands --unix-mode over as text; it must become the number it spells.
    assert load({"unix_mode": "0644"}, env={}).unix_mode == 0o644
    with pytest.raises(SettingError, match="--unix-mode"):
        load({"unix_mode": "rw-r--r--"}, env={})


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("HARDSERVE_THREADS", "many"),
        ("HARDSERVE_THREADS", ""),
        ("HARDSERVE_THREADS", "2.0"),
        ("HARDSERVE_UNIX_MODE", "999"),
        ("HARDSERVE_UNIX_MODE", "u=rw"),
        ("HARDSERVE_BODY_MAX_BYTES", "1.5"),
        ("HARDSERVE_BODY_MAX_BYTES", "1MB"),
        ("HARDSERVE_KEEPALIVE_TIMEOUT_S", "soon"),
    ],
)
def test_environment_value_of_the_wrong_type_is_refused(variable: str, raw: str) -> None:
    with pytest.raises(SettingError, match=variable):
        load({}, env={variable: raw})


CHOICE_SETTINGS = [s for s in ALL_SETTINGS if s.choices]


def test_some_settings_have_choices() -> None:
    assert {s.name for s in CHOICE_SETTINGS} >= {"loop", "log_level", "underscore_headers"}


@pytest.mark.parametrize("setting", CHOICE_SETTINGS, ids=lambda s: s.name)
def test_value_outside_the_choices_is_refused(setting: Setting) -> None:
    for given in ({setting.name: "not-a-choice"}, {setting.name: setting.choices[0].upper()}):
        with pytest.raises(SettingError, match=f"{setting.flag} must be one of"):
            load(given, env={})
    with pytest.raises(SettingError, match=f"{setting.flag} must be one of"):
        load({}, env={setting.env_var: "not-a-choice"})


@pytest.mark.parametrize("setting", CHOICE_SETTINGS, ids=lambda s: s.name)
def test_every_choice_is_accepted(setting: Setting) -> None:
    # The PROXY protocol needs its allow-list (tested below), client certificates a certificate,
    # key and CAs (tests/unit/test_tls.py); every other choice stands alone.
    needed: dict[str, str] = {}
    if setting.name == "proxy_protocol":
        needed = {"proxy_allow_ips": "127.0.0.1"}
    elif setting.name == "client_cert":
        needed = {"certfile": "c.pem", "keyfile": "k.pem", "ca_certs": "ca.pem"}
    for choice in setting.choices:
        assert getattr(load({setting.name: choice, **needed}, env={}), setting.name) == choice


def test_proxy_protocol_without_an_allow_list_is_refused() -> None:
    with pytest.raises(SettingError, match="--proxy-protocol on needs --proxy-allow-ips"):
        load({"proxy_protocol": "on"}, env={})


@pytest.mark.parametrize("name", ["forwarded_allow_ips", "proxy_allow_ips"])
@pytest.mark.parametrize("value", ["10.0.0.0/33", "example.com", "*", "1.2.3.4.5"])
def test_a_bad_trust_list_is_refused_with_its_flag(name: str, value: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(SettingError, match=f"^{flag}: "):
        load({name: value}, env={})
    with pytest.raises(SettingError, match=f"^{flag}: "):
        load({}, env={"HARDSERVE_" + name.upper(): value})


def test_trust_lists_accept_addresses_networks_and_unix() -> None:
    config = load({"forwarded_allow_ips": "127.0.0.1, 10.0.0.0/8, ::1, fd00::/8, unix"}, env={})
    assert config.forwarded_allow_ips.startswith("127.0.0.1")


@pytest.mark.parametrize("threads", [0, -1])
def test_fewer_than_one_thread_is_refused(threads: int) -> None:
    with pytest.raises(SettingError, match="--threads must be at least 1"):
        load({"threads": threads}, env={})
    with pytest.raises(SettingError, match="--threads must be at least 1"):
        load({}, env={"HARDSERVE_THREADS": str(threads)})


def test_one_thread_is_accepted() -> None:
    assert load({"threads": 1}, env={}).threads == 1


# The sizes that make the server unusable below a floor (settings.py says why 1 KiB).
SIZE_MINIMUMS = {
    "request_line_max_bytes": 1024,
    "header_field_max_bytes": 1024,
    "head_max_bytes": 1024,
    "chunk_line_max_bytes": 1024,
    "body_buffer_bytes": 1024,
    "write_buffer_bytes": 1024,
    "write_queue_bytes": 1024,
    "connections_max": 1,
    "client_connections_max": 1,
}


@pytest.mark.parametrize("field", LIMIT_FIELDS, ids=lambda f: f.name)
def test_negative_limit_is_refused(field: dataclasses.Field[Any]) -> None:
    flag = "--" + field.name.replace("_", "-")
    minimum = SIZE_MINIMUMS.get(field.name)
    expected = f"{flag} must be at least {minimum}" if minimum else f"{flag} cannot be negative"
    with pytest.raises(SettingError, match=expected):
        load({field.name: -1}, env={})
    with pytest.raises(SettingError, match=expected):
        load({}, env={"HARDSERVE_" + field.name.upper(): "-1"})


@pytest.mark.parametrize("field", LIMIT_FIELDS, ids=lambda f: f.name)
def test_limit_minimum_is_accepted_and_one_less_is_refused(field: dataclasses.Field[Any]) -> None:
    minimum = SIZE_MINIMUMS.get(field.name, 0)
    flag = "--" + field.name.replace("_", "-")
    assert getattr(load({field.name: minimum}, env={}).limits, field.name) == minimum
    if minimum:
        with pytest.raises(SettingError, match=f"{flag} must be at least {minimum}"):
            load({field.name: minimum - 1}, env={})
        with pytest.raises(SettingError, match=f"{flag} must be at least {minimum}"):
            load({}, env={"HARDSERVE_" + field.name.upper(): str(minimum - 1)})


def test_size_minimums_name_limits() -> None:
    assert set(SIZE_MINIMUMS) <= {f.name for f in LIMIT_FIELDS}


NUMBER_SETTINGS = [s for s in ALL_SETTINGS if s.type in (int, float) or s.name == "unix_mode"]
FLOAT_SETTINGS = [s for s in ALL_SETTINGS if s.type is float]


@pytest.mark.parametrize("setting", NUMBER_SETTINGS, ids=lambda s: s.name)
def test_every_number_setting_has_a_lower_bound(setting: Setting) -> None:
    # A number setting added without a range would take -1 again.
    assert setting.minimum is not None
    assert setting.minimum <= setting.default
    assert setting.maximum is None or setting.default <= setting.maximum


def test_some_settings_are_floats() -> None:
    assert {s.name for s in FLOAT_SETTINGS} >= {"graceful_timeout_s", "keepalive_timeout_s"}


@pytest.mark.parametrize("setting", FLOAT_SETTINGS, ids=lambda s: s.name)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_float_is_refused(setting: Setting, value: float) -> None:
    # NaN passes a `< 0` check (every comparison with NaN is False).
    with pytest.raises(SettingError, match=f"{setting.flag} must be a finite number"):
        load({setting.name: value}, env={})


@pytest.mark.parametrize("setting", FLOAT_SETTINGS, ids=lambda s: s.name)
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_non_finite_float_from_the_environment_or_text_is_refused(
    setting: Setting, raw: str
) -> None:
    with pytest.raises(SettingError, match=f"{setting.flag} must be a finite number"):
        load({}, env={setting.env_var: raw})
    with pytest.raises(SettingError, match=f"{setting.flag} must be a finite number"):
        load({setting.name: raw}, env={})


@pytest.mark.parametrize("setting", FLOAT_SETTINGS, ids=lambda s: s.name)
def test_timeout_longer_than_threading_can_wait_is_refused(setting: Setting) -> None:
    # threading raises OverflowError for a longer wait, in the middle of a request.
    assert value_of(load({setting.name: 0.0}, env={}), setting.name) == 0.0
    with pytest.raises(SettingError, match=f"{setting.flag} must be at most"):
        load({setting.name: threading.TIMEOUT_MAX * 2}, env={})
    with pytest.raises(SettingError, match=f"{setting.flag} must be at most"):
        load({}, env={setting.env_var: "1e300"})


@pytest.mark.parametrize(
    ("name", "refused", "message", "lowest"),
    [
        # -1 made every request a 503: the queue was always "full".
        ("pool_queue_max", -1, "--pool-queue-max cannot be negative", 0),
        ("graceful_timeout_s", -0.5, "--graceful-timeout-s cannot be negative", 0.0),
        ("listen_backlog", 0, "--listen-backlog must be at least 1", 1),
        ("listen_backlog", -1, "--listen-backlog must be at least 1", 1),
        ("unix_mode", -1, "--unix-mode cannot be negative", 0),
    ],
)
def test_setting_below_its_range_is_refused(
    name: str, refused: float, message: str, lowest: float
) -> None:
    with pytest.raises(SettingError, match=message):
        load({name: refused}, env={})
    with pytest.raises(SettingError, match=message):
        load({}, env={BY_NAME[name].env_var: str(refused)})
    assert getattr(load({name: lowest}, env={}), name) == lowest


@pytest.mark.parametrize(
    ("name", "refused", "message", "highest"),
    [
        # listen() takes a C int: a larger backlog raised OverflowError at bind time.
        ("listen_backlog", 2**31, "--listen-backlog must be at most 2147483647", 2**31 - 1),
        ("unix_mode", 0o1000, "--unix-mode must be at most 0777", 0o777),
    ],
)
def test_setting_above_its_range_is_refused(
    name: str, refused: int, message: str, highest: int
) -> None:
    with pytest.raises(SettingError, match=message):
        load({name: refused}, env={})
    assert getattr(load({name: highest}, env={}), name) == highest


def test_write_buffer_larger_than_the_transport_takes_is_refused() -> None:
    # uvloop's set_write_buffer_limits takes a C int; more raised OverflowError per connection.
    with pytest.raises(SettingError, match="--write-buffer-bytes must be at most 2147483647"):
        load({"write_buffer_bytes": 2**31}, env={})
    assert load({"write_buffer_bytes": 2**31 - 1}, env={}).limits.write_buffer_bytes == 2**31 - 1


# -- the Server header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "foo\r\nX-Injected: 1",  # a header line of the caller's choosing in every response
        "foo\nX-Injected: 1",
        "foo\r",
        "\r\n",
        "a\x00b",
        "a\tb",  # allowed by RFC 9110 inside a value, but not printable ASCII
        "a\x7fb",
        "\u00e9",  # latin-1, but not ASCII
        "\u00e9\u20ac",  # not even latin-1: it used to fail when the worker encoded it
        "\u2028",
        " foo",
        "foo ",
        " ",
    ],
)
def test_server_header_outside_printable_ascii_is_refused(value: str) -> None:
    for given, env in (({"server_header": value}, {}), ({}, {"HARDSERVE_SERVER_HEADER": value})):
        with pytest.raises(SettingError, match="--server-header") as caught:
            load(given, env=env)
        # The message is one line, whatever the value holds.
        message = str(caught.value)
        assert message.isprintable() and message.isascii(), message


@pytest.mark.parametrize(
    "value", ["", "foo", "hardserve/1.0 (Linux)", "a b", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
)
def test_server_header_of_printable_ascii_is_accepted(value: str) -> None:
    assert load({"server_header": value}, env={}).server_header == value
    assert load({}, env={"HARDSERVE_SERVER_HEADER": value}).server_header == value


@pytest.mark.parametrize("field", LIMIT_FIELDS, ids=lambda f: f.name)
def test_limit_is_set_from_flag_value_and_environment(field: dataclasses.Field[Any]) -> None:
    raised = field.default * 2 + 1
    assert getattr(load({field.name: raised}, env={}).limits, field.name) == raised
    from_env = load({}, env={"HARDSERVE_" + field.name.upper(): str(raised)})
    assert getattr(from_env.limits, field.name) == raised
    assert type(getattr(from_env.limits, field.name)) is type(field.default)


# -- the result -------------------------------------------------------------------------------


def test_config_and_limits_are_frozen() -> None:
    config = load({}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threads = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.body_max_bytes = 1  # type: ignore[misc]


def test_repeatable_values_become_tuples() -> None:
    config = load({"bind": ["127.0.0.1:1"], "pythonpath": ["a", "b"]}, env={})
    assert config.bind == ("127.0.0.1:1",)
    assert config.pythonpath == ("a", "b")


def test_threads_have_an_upper_bound() -> None:
    assert load({"threads": 1024}, env={}).threads == 1024
    with pytest.raises(SettingError, match="--threads must be at most 1024"):
        load({"threads": 1025}, env={})
    with pytest.raises(SettingError, match="--threads must be at most 1024"):
        load({}, env={"HARDSERVE_THREADS": "100000000000000000000"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("No", False)],
)
def test_a_yes_no_setting_reads_the_usual_words(text: str, value: bool) -> None:
    assert load({}, env={"HARDSERVE_ALLOW_ROOT": text}).allow_root is value


def test_a_yes_no_setting_refuses_anything_else() -> None:
    with pytest.raises(SettingError, match="--allow-root / HARDSERVE_ALLOW_ROOT: 'maybe'"):
        load({}, env={"HARDSERVE_ALLOW_ROOT": "maybe"})


def test_workers_auto_is_the_cpus_this_process_may_use() -> None:
    assert load({"workers": "auto"}, env={}).workers == len(os.sched_getaffinity(0))
    assert load({}, env={"HARDSERVE_WORKERS": "3"}).workers == 3
    with pytest.raises(SettingError, match="--workers must be at least 1"):
        load({"workers": "0"}, env={})


# -- risky choices (check-config) -------------------------------------------------------------


def findings_of(**values: Any) -> list[tuple[str, str]]:
    return [(f.level, f.id) for f in review(load(values, env={}))]


def test_the_defaults_are_not_risky() -> None:
    assert review(Config()) == []
    assert review(load({}, env={})) == []


@pytest.mark.parametrize(
    ("bind", "public"),
    [
        ("127.0.0.1:8000", False),
        ("127.1.2.3:8000", False),
        ("[::1]:8000", False),
        ("localhost:8000", False),
        ("unix:/run/app.sock", False),
        ("fd://3", False),
        ("0.0.0.0:8000", True),
        (":8000", True),
        ("[::]:8000", True),
        ("192.0.2.10:80", True),
        ("[2001:db8::1]:80", True),
        ("example.com:80", True),
    ],
)
def test_public_binds(bind: str, public: bool) -> None:
    assert is_public_bind(bind) is public
    assert (("warning", "public-plain-http") in findings_of(bind=(bind,))) is public


def test_a_trusted_proxy_answers_the_public_bind_warning() -> None:
    found = findings_of(bind=("0.0.0.0:80",), forwarded_allow_ips="10.0.0.1")
    assert ("warning", "public-plain-http") not in found
    assert ("note", "client-in-flight-off") in found
    found = findings_of(bind=("0.0.0.0:80",), client_in_flight_max=8, forwarded_allow_ips="::1")
    assert found == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"forwarded_allow_ips": "0.0.0.0/0"}, ("warning", "trusts-everyone")),
        ({"forwarded_allow_ips": "10.0.0.1, ::/0"}, ("warning", "trusts-everyone")),
        ({"proxy_protocol": "on", "proxy_allow_ips": "0.0.0.0/0"}, ("warning", "trusts-everyone")),
        ({"timeout_s": 0.0}, ("warning", "limit-off")),
        ({"body_min_rate_bytes_s": 0}, ("warning", "limit-off")),
        ({"send_min_rate_bytes_s": 0}, ("warning", "limit-off")),
        ({"socket_unsent_max_bytes": 0}, ("warning", "limit-off")),
        ({"body_max_bytes": 100 * 1024 * 1024 * 101}, ("warning", "limit-very-high")),
        ({"keepalive_timeout_s": 501.0}, ("warning", "limit-very-high")),
        ({"timeout_s": 3001.0}, ("warning", "limit-very-high")),
        ({"allow_root": True}, ("warning", "root-workers")),
        ({"user": "root"}, ("warning", "root-workers")),
        ({"bind": ("unix:/run/a.sock",), "unix_mode": 0o666}, ("warning", "world-writable-socket")),
        ({"bind": ("unix:/run/a.sock",), "unix_mode": 0o602}, ("warning", "world-writable-socket")),
        ({"path_encoded_slash": "allow"}, ("warning", "risky-path")),
        ({"path_backslash": "allow"}, ("warning", "risky-path")),
        ({"graceful_timeout_s": 31.0}, ("note", "graceful-over-kubernetes")),
    ],
)
def test_each_risky_choice_is_found_alone(
    values: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert findings_of(**values) == [expected]


@pytest.mark.parametrize(
    "values",
    [
        {"forwarded_allow_ips": "10.0.0.0/8, 0.0.0.0/1"},  # large, but not everyone
        {"proxy_allow_ips": "0.0.0.0/0"},  # the PROXY protocol is off: the list is unused
        {"body_max_bytes": 100 * 1024 * 1024 * 100},  # exactly 100 times: not past it
        {"max_requests": 0, "client_in_flight_max": 0},  # off by default, at loopback
        {"allow_root": True, "user": "www-data"},
        {"unix_mode": 0o666},  # no unix socket bound
        {"bind": ("unix:/run/a.sock",), "unix_mode": 0o660},
        {"graceful_timeout_s": 30.0},
        {"keepalive_requests_max": 0, "pool_queue_max": 0},  # 0 is strict here, not off
    ],
)
def test_safe_or_default_choices_are_not_reported(values: dict[str, Any]) -> None:
    assert findings_of(**values) == []


def test_toml_value_writes_what_the_file_takes() -> None:
    assert toml_value(BY_NAME["unix_mode"], 0o600) == "0600"
    assert toml_value(BY_NAME["umask"], 0o022) == "0022"
    assert toml_value(BY_NAME["umask"], None) is None
    assert toml_value(BY_NAME["bind"], ("a", "b")) == ["a", "b"]
    assert toml_value(BY_NAME["threads"], 8) == 8


# -- docs/settings.md -------------------------------------------------------------------------

SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_reference_is_up_to_date() -> None:
    # Regenerate with: python -m hardserve.settings_doc > docs/settings.md
    assert SETTINGS_DOC.read_text(encoding="utf-8") == settings_doc.render()


@pytest.mark.parametrize("setting", ALL_SETTINGS, ids=lambda s: s.name)
def test_the_reference_shows_every_setting_s_flag_variable_key_and_default(
    setting: Setting,
) -> None:
    text = settings_doc.render()
    section = text.split(f"\n### `{setting.name}`\n", 1)[1].split("\n### ", 1)[0]
    assert setting.help in section
    assert f"- Flag: `{setting.flag}" in section
    assert f"- Environment: `{setting.env_var}`" in section
    assert f"- File: `{setting.name}`, " in section
    if setting.name != "bind" and setting.default is not None:
        assert f"- Default: `{json.dumps(toml_value(setting, setting.default))}`" in section
    for choice in setting.choices:
        assert f'`"{choice}"`' in section
    if setting.minimum is not None:
        assert "- Range: " in section


def test_the_reference_lists_every_finding_of_check_config() -> None:
    text = settings_doc.render()
    for id_, (level, _) in RISKS.items():
        assert f"| `{id_}` | {level} |" in text


def test_the_reference_is_printed_by_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    settings_doc.main()
    assert capsys.readouterr().out == settings_doc.render()


def test_every_finding_review_makes_is_documented() -> None:
    config = load(
        {
            "bind": ("0.0.0.0:80", "unix:/run/a.sock"),
            "unix_mode": 0o666,
            "forwarded_allow_ips": "0.0.0.0/0",
            "timeout_s": 0.0,
            "body_max_bytes": 2**40,
            "allow_root": True,
            "path_backslash": "allow",
            "graceful_timeout_s": 60.0,
            "admin_bind": "0.0.0.0:9191",
        },
        env={},
    )
    found = {f.id for f in review(config)}
    assert found == set(RISKS) - {"public-plain-http"}  # a proxy is trusted (everyone is)
