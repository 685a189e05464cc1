"""The one table of settings. Each is declared once here; the CLI flags, the HARDSERVE_*
environment variables and the defaults all come from it, and so does the frozen Config that is
passed down. Every field of http.limits.Limits is a setting too, named after the field."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hardserve.http.limits import Limits


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # the Config field; the flag is --name-with-dashes, the variable HARDSERVE_NAME
    help: str
    default: Any
    type: Callable[[str], Any] = str
    multiple: bool = False
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "HARDSERVE_" + self.name.upper()


def _octal(text: str) -> int:
    return int(text, 8)


def default_binds(env: Mapping[str, str]) -> tuple[str, ...]:
    """127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set (the container convention)."""
    port = env.get("PORT", "").strip()
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingError(f"PORT={port!r} is not a TCP port")
        return (f"0.0.0.0:{port}",)
    return ("127.0.0.1:8000",)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "bind",
        "Listen on HOST:PORT, [IPv6]:PORT, unix:/PATH or fd://N; repeatable. "
        "Default 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set.",
        (),
        multiple=True,
        metavar="ADDRESS",
    ),
    Setting("unix_mode", "Permissions of unix sockets (octal).", 0o600, _octal, metavar="MODE"),
    Setting(
        "listen_backlog",
        "Kernel queue of not yet accepted connections (gunicorn 2048).",
        2048,
        int,
        metavar="N",
    ),
    Setting(
        "threads",
        "Pool threads running the app per worker (waitress 4, gunicorn gthread 1).",
        8,
        int,
        metavar="N",
    ),
    Setting(
        "pool_queue_max",
        "Requests waiting for a pool thread before new ones get 503 + Retry-After.",
        64,
        int,
        metavar="N",
    ),
    Setting("chdir", "Change to this directory before loading the app.", None, metavar="DIR"),
    Setting(
        "pythonpath",
        "Directories to put in front of sys.path before loading the app; repeatable.",
        (),
        multiple=True,
        metavar="DIR",
    ),
    Setting(
        "server_header",
        "Value of the Server header; an empty string sends none.",
        "hardserve",
        metavar="TEXT",
    ),
    Setting(
        "underscore_headers",
        "Header names with '_': drop them (default) or refuse the request with 400.",
        "drop",
        choices=("drop", "refuse"),
    ),
    Setting(
        "graceful_timeout_s",
        "Seconds a stopping worker lets requests in progress finish.",
        30.0,
        float,
        metavar="SECONDS",
    ),
    Setting("loop", "Event loop implementation.", "auto", choices=("auto", "uvloop", "asyncio")),
    Setting("access_log", "Write the access log to FILE, or '-' for stderr.", None, metavar="FILE"),
    Setting(
        "log_level",
        "Level of the error log.",
        "info",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
)

_LIMIT_HELP = "Limit (see docs/limits): "
LIMIT_SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        f.name,
        _LIMIT_HELP + f.name.replace("_", " "),
        f.default,
        float if f.type in ("float", float) else int,
        metavar="N",
    )
    for f in dataclasses.fields(Limits)
)

ALL_SETTINGS: tuple[Setting, ...] = SETTINGS + LIMIT_SETTINGS


class SettingError(ValueError):
    """A setting has a value it cannot take."""


@dataclass(frozen=True, slots=True)
class Config:
    bind: tuple[str, ...] = ("127.0.0.1:8000",)
    unix_mode: int = 0o600
    listen_backlog: int = 2048
    threads: int = 8
    pool_queue_max: int = 64
    chdir: str | None = None
    pythonpath: tuple[str, ...] = ()
    server_header: str = "hardserve"
    underscore_headers: str = "drop"
    graceful_timeout_s: float = 30.0
    loop: str = "auto"
    access_log: str | None = None
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)


def load(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build the Config from explicit values (the CLI), then HARDSERVE_* variables, then
    defaults. A value of None in `values` means "not given"."""
    env = os.environ if env is None else env
    resolved: dict[str, Any] = {}
    for setting in ALL_SETTINGS:
        value = values.get(setting.name)
        if value is None or (setting.multiple and not value):
            raw = env.get(setting.env_var)
            if raw is not None:
                value = _from_env(setting, raw)
        elif isinstance(value, str) and setting.type is not str:
            value = _convert(setting, value)
        if value is None or (setting.multiple and not value):
            value = setting.default
        if setting.choices and value not in setting.choices:
            raise SettingError(f"{setting.flag} must be one of {', '.join(setting.choices)}")
        resolved[setting.name] = tuple(value) if setting.multiple else value
    if not resolved["bind"]:
        resolved["bind"] = default_binds(env)
    if resolved["threads"] < 1:
        raise SettingError("--threads must be at least 1")
    limit_names = {s.name for s in LIMIT_SETTINGS}
    limits = Limits(**{name: resolved.pop(name) for name in limit_names})
    for name, value in dataclasses.asdict(limits).items():
        if value < 0:
            raise SettingError(f"--{name.replace('_', '-')} cannot be negative")
    return Config(limits=limits, **resolved)


def _from_env(setting: Setting, raw: str) -> Any:
    if setting.multiple:
        return tuple(_convert(setting, part.strip()) for part in raw.split(",") if part.strip())
    return _convert(setting, raw)


def _convert(setting: Setting, raw: str) -> Any:
    try:
        return setting.type(raw)
    except ValueError as exc:
        raise SettingError(f"{setting.flag} / {setting.env_var}: {raw!r}: {exc}") from exc
