"""The one table of settings. Each is declared once here; the CLI flags, the HARDSERVE_*
environment variables and the defaults all come from it, and so does the frozen Config that is
passed down. Every field of http.limits.Limits is a setting too, named after the field."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hardserve.http.forwarded import TrustedPeers
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
    # The range of a number; load() refuses a value outside it, and NaN or infinity.
    minimum: int | float | None = None
    maximum: int | float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "HARDSERVE_" + self.name.upper()


def _octal(text: str) -> int:
    return int(text, 8)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def boolean(text: str) -> bool:
    """A yes/no setting from the environment: 1/true/yes/on or 0/false/no/off."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1, true, yes, on, 0, false, no, off")


def worker_count(text: str) -> int:
    """A number of workers, or 'auto': the CPUs this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    return int(text)


# The largest value the kernel takes where it wants a C int (listen's backlog) and the largest
# high-water mark uvloop's transports take (also a C int).
_C_INT_MAX = 2**31 - 1

# The longest wait threading accepts; a longer timeout raises OverflowError in the thread that
# waits, in the middle of a request. About 292 years, so it never gets in anyone's way.
_SECONDS_MAX = threading.TIMEOUT_MAX


def default_binds(env: Mapping[str, str]) -> tuple[str, ...]:
    """127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set (the container convention)."""
    port = env.get("PORT", "").strip()
    if port:
        # isascii: str.isdigit also accepts other scripts' digits ('\u0668') and superscripts
        # ('\u00b2'), which int() reads as another number or refuses with a traceback.
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
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
    Setting(
        "unix_mode",
        "Permissions of unix sockets (octal, 0 to 0777).",
        0o600,
        _octal,
        metavar="MODE",
        minimum=0,
        maximum=0o777,
    ),
    Setting(
        "listen_backlog",
        "Kernel queue of not yet accepted connections, at least 1 (gunicorn 2048).",
        2048,
        int,
        metavar="N",
        minimum=1,
        maximum=_C_INT_MAX,
    ),
    Setting(
        "workers",
        "Worker processes, or 'auto' (the CPUs this process may use). The master binds the "
        "listeners, supervises the workers and never serves a client itself (gunicorn 1).",
        1,
        worker_count,
        metavar="N|auto",
        minimum=1,
        maximum=1024,
    ),
    Setting(
        "threads",
        "Pool threads running the app per worker, 1 to 1024 (waitress 4, gunicorn gthread 1).",
        8,
        int,
        metavar="N",
        minimum=1,
        # Each thread holds a stack (8 MiB of address space on Linux) and all of them share one
        # GIL: past a few hundred, more threads only add switching. 1024 leaves room for apps
        # that mostly wait on I/O while refusing a typo that would start millions.
        maximum=1024,
    ),
    Setting(
        "pool_queue_max",
        "Requests waiting for a pool thread before new ones get 503 + Retry-After.",
        64,
        int,
        metavar="N",
        minimum=0,
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
        "Value of the Server header: printable ASCII (0x20-0x7e), no space at either end; "
        "an empty string sends none.",
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
        "path_encoded_slash",
        "An encoded slash (%2F) in the path: refuse with 400 (default) or pass it to the app "
        "decoded. Risky: an app or proxy that splits the path on '/' then sees other segments "
        "than the ones the server checked for '..'.",
        "refuse",
        choices=("refuse", "allow"),
    ),
    Setting(
        "path_backslash",
        "A backslash (raw or %5C) in the path: refuse with 400 (default) or pass it on. Risky: "
        "code that treats '\\' as a path separator sees other segments.",
        "refuse",
        choices=("refuse", "allow"),
    ),
    Setting(
        "forwarded_allow_ips",
        "Proxies whose forwarding fields (X-Forwarded-*, Forwarded) are believed: addresses, "
        "networks (CIDR) and 'unix', comma-separated. From every other peer these fields are "
        "removed before the app sees them. Default: none (docs/proxies.md).",
        "",
        metavar="LIST",
    ),
    Setting(
        "forwarded_headers",
        "Which forwarding fields a trusted proxy writes: 'auto' (either family; both at once "
        "is refused as ambiguous), 'forwarded' (RFC 7239) or 'x-forwarded' (the other family "
        "is then removed).",
        "auto",
        choices=("auto", "forwarded", "x-forwarded"),
    ),
    Setting(
        "proxy_protocol",
        "Expect a PROXY protocol header (v1 or v2) at the start of every connection, from "
        "the peers of the allow-list below (required); any other connection is closed.",
        "off",
        choices=("off", "on"),
    ),
    Setting(
        "proxy_allow_ips",
        "Peers allowed to send a PROXY protocol header: addresses, networks and 'unix'.",
        "",
        metavar="LIST",
    ),
    Setting(
        "graceful_timeout_s",
        "Seconds a stopping worker lets requests in progress finish.",
        30.0,
        float,
        metavar="SECONDS",
        minimum=0.0,
        maximum=_SECONDS_MAX,
    ),
    Setting(
        "timeout_s",
        "A worker whose event loop has not turned for this many seconds has every thread's "
        "stack written to the error log, then is killed and replaced; 0 turns it off "
        "(gunicorn --timeout 30).",
        30.0,
        float,
        metavar="SECONDS",
        minimum=0.0,
        maximum=_SECONDS_MAX,
    ),
    Setting(
        "max_requests",
        "A worker retires gracefully after serving this many requests and is replaced; "
        "0 turns it off (gunicorn 0).",
        0,
        int,
        metavar="N",
        minimum=0,
    ),
    Setting(
        "max_requests_jitter",
        "Each worker's max_requests is raised by a random 0..N, so workers do not all retire "
        "at once.",
        0,
        int,
        metavar="N",
        minimum=0,
    ),
    Setting(
        "user",
        "Run the workers as this user (name or id) after the listeners are bound.",
        None,
        metavar="USER",
    ),
    Setting(
        "group",
        "Run the workers as this group (name or id); default: the user's group.",
        None,
        metavar="GROUP",
    ),
    Setting(
        "allow_root",
        "Let workers run as root. Without it, hardserve started as root refuses to serve "
        "unless --user names another user.",
        False,
        boolean,
    ),
    Setting(
        "umask",
        "The process umask (octal), set before anything is created (unix sockets, pid file).",
        None,
        _octal,
        metavar="MODE",
        minimum=0,
        maximum=0o777,
    ),
    Setting("pid_file", "Write the master's process id to FILE.", None, metavar="FILE"),
    Setting("loop", "Event loop implementation.", "auto", choices=("auto", "uvloop", "asyncio")),
    Setting("access_log", "Write the access log to FILE, or '-' for stderr.", None, metavar="FILE"),
    Setting(
        "log_level",
        "Level of the error log.",
        "info",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
    Setting(
        "log_format",
        "Log lines as text, or as one JSON object per line (typed fields, for log shippers).",
        "text",
        choices=("text", "json"),
    ),
)

_LIMIT_HELP = "Limit (docs/limits.md): "

# The sizes below which the server cannot serve ordinary requests. One floor for all of them,
# 1 KiB: a usual request line, a Host, User-Agent or Cookie field, a chunk-size line with an
# extension all fit in it, and nginx reads a head into a 1 KiB buffer first. At 0 the two
# buffers stop all traffic (a body is never read; every response write waits until its
# timeout), and at a few bytes every loop wake-up moves a few bytes. A smaller value is a typo
# (a missing K), not hardening. Every other limit may be 0 (no body, no header, no waiting).
_LIMIT_MINIMUMS: dict[str, int] = {
    "request_line_max_bytes": 1024,
    "header_field_max_bytes": 1024,
    "head_max_bytes": 1024,
    "chunk_line_max_bytes": 1024,
    "body_buffer_bytes": 1024,
    "write_buffer_bytes": 1024,
    "write_queue_bytes": 1024,
    # At 0 a worker would never accept a connection: at least one.
    "connections_max": 1,
    "client_connections_max": 1,
}
_LIMIT_MAXIMUMS: dict[str, int] = {
    "write_buffer_bytes": _C_INT_MAX,  # uvloop's set_write_buffer_limits takes a C int
}


def _limit_setting(f: dataclasses.Field[Any]) -> Setting:
    is_float = f.type in ("float", float)
    return Setting(
        f.name,
        _LIMIT_HELP + f.name.replace("_", " ") + _range_help(f.name),
        f.default,
        float if is_float else int,
        metavar="N",
        minimum=_LIMIT_MINIMUMS.get(f.name, 0),
        maximum=_SECONDS_MAX if is_float else _LIMIT_MAXIMUMS.get(f.name),
    )


def _range_help(name: str) -> str:
    minimum = _LIMIT_MINIMUMS.get(name)
    return f" (at least {minimum})" if minimum else ""


LIMIT_SETTINGS: tuple[Setting, ...] = tuple(_limit_setting(f) for f in dataclasses.fields(Limits))

ALL_SETTINGS: tuple[Setting, ...] = SETTINGS + LIMIT_SETTINGS


class SettingError(ValueError):
    """A setting has a value it cannot take."""


@dataclass(frozen=True, slots=True)
class Config:
    bind: tuple[str, ...] = ("127.0.0.1:8000",)
    unix_mode: int = 0o600
    listen_backlog: int = 2048
    workers: int = 1
    threads: int = 8
    pool_queue_max: int = 64
    chdir: str | None = None
    pythonpath: tuple[str, ...] = ()
    server_header: str = "hardserve"
    underscore_headers: str = "drop"
    path_encoded_slash: str = "refuse"
    path_backslash: str = "refuse"
    forwarded_allow_ips: str = ""
    forwarded_headers: str = "auto"
    proxy_protocol: str = "off"
    proxy_allow_ips: str = ""
    graceful_timeout_s: float = 30.0
    timeout_s: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    user: str | None = None
    group: str | None = None
    allow_root: bool = False
    umask: int | None = None
    pid_file: str | None = None
    loop: str = "auto"
    access_log: str | None = None
    log_level: str = "info"
    log_format: str = "text"
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
    for setting in ALL_SETTINGS:
        _check_range(setting, resolved[setting.name])
    _check_server_header(resolved["server_header"])
    _check_proxies(resolved)
    limit_names = {s.name for s in LIMIT_SETTINGS}
    limits = Limits(**{name: resolved.pop(name) for name in limit_names})
    return Config(limits=limits, **resolved)


def _check_range(setting: Setting, value: Any) -> None:
    if value is None or (setting.minimum is None and setting.maximum is None):
        return
    # NaN passes every comparison below (nan < 0 is False), and infinity would be a timeout
    # that threading refuses mid-request.
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{setting.flag} must be a finite number, not {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        if setting.minimum == 0:
            raise SettingError(f"{setting.flag} cannot be negative")
        raise SettingError(f"{setting.flag} must be at least {_shown(setting, setting.minimum)}")
    if setting.maximum is not None and value > setting.maximum:
        raise SettingError(f"{setting.flag} must be at most {_shown(setting, setting.maximum)}")


def _shown(setting: Setting, bound: float) -> str:
    """A bound as the user writes the setting: octal for a mode."""
    if setting.type is _octal:
        return f"0{int(bound):o}"
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _check_server_header(value: str) -> None:
    # The value is written into every response head as it is. CR or LF would let whoever sets
    # it add header lines; other control characters, DEL and non-ASCII are not field-value
    # text a client reads reliably (and anything past latin-1 cannot be encoded at all).
    # RFC 9110 section 5.5 also allows HTAB inside; printable ASCII is the simpler rule.
    if not all(" " <= char <= "~" for char in value):
        raise SettingError(
            f"--server-header / HARDSERVE_SERVER_HEADER: {value!a} must be printable "
            "ASCII (0x20-0x7e)"
        )
    if value != value.strip(" "):
        raise SettingError(
            f"--server-header / HARDSERVE_SERVER_HEADER: {value!a} must not start or end "
            "with a space"
        )


def _check_proxies(resolved: dict[str, Any]) -> None:
    for name in ("forwarded_allow_ips", "proxy_allow_ips"):
        flag = "--" + name.replace("_", "-")
        try:
            TrustedPeers.parse(resolved[name])
        except ValueError as exc:
            raise SettingError(f"{flag}: {exc}") from exc
    if resolved["proxy_protocol"] == "on" and not resolved["proxy_allow_ips"].strip():
        # With nobody allowed, every connection would be closed: a mistake, not a policy.
        raise SettingError("--proxy-protocol on needs --proxy-allow-ips (the proxies' addresses)")


def _from_env(setting: Setting, raw: str) -> Any:
    if setting.multiple:
        return tuple(_convert(setting, part.strip()) for part in raw.split(",") if part.strip())
    return _convert(setting, raw)


def _convert(setting: Setting, raw: str) -> Any:
    try:
        return setting.type(raw)
    except ValueError as exc:
        raise SettingError(f"{setting.flag} / {setting.env_var}: {raw!r}: {exc}") from exc
