"""The one table of settings. Each is declared once here; the CLI flags, the HARDSERVE_*
environment variables, the keys of the TOML config file, the defaults and the settings
reference (docs/settings.md, written by settings_doc.py) all come from it, and so does the
frozen Config that is passed down. Every field of http.limits.Limits is a setting too, named
after the field.

Where a value comes from, strongest first: the command line, a HARDSERVE_* variable, the config
file (--config or HARDSERVE_CONFIG), the default. resolve() says which, for every setting."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hardserve.http.forwarded import TrustedPeers
from hardserve.http.limits import Limits
from hardserve.observe.logs import DEFAULT_ACCESS_FORMAT, compile_access_format


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
        "Listen on HOST:PORT, [IPv6]:PORT, tls://HOST:PORT, unix:/PATH or fd://N; "
        "repeatable. With certfile and no tls:// bind every TCP bind is TLS; with a tls:// "
        "bind only those are (docs/tls.md). "
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
        "Requests waiting for a pool thread before new ones get 503 + Retry-After. A waiting "
        "request is a parsed head on a connection the worker holds anyway, so the default "
        "queues one per connection of a busy keep-alive load (gunicorn's worker_connections is "
        "1000); queue_timeout_s sheds what waits too long.",
        1024,
        int,
        metavar="N",
        minimum=0,
    ),
    Setting(
        "pool_prepared_max",
        "Requests a worker prepares for its pool at once (made into an environ and a call, "
        "queued or running). A later request waits unread on its connection, in arrival order, "
        "and is read when a call ends; it counts against pool_queue_max like a queued call. "
        "Keeps many connections' requests within the CPU's cache (bench/NOTES.md). Taken as at "
        "least the number of threads. 0 prepares every request at once, and so does a worker "
        "with client_in_flight_max set (a request is counted against its client when read).",
        128,
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
    Setting(
        "gc_gen0_threshold",
        "Each worker's gc.set_threshold() first value, set before the app is imported (an app "
        "that sets its own keeps it); 0 keeps the interpreter's (700 up to Python 3.12). "
        "Python's 700 makes a worker with many requests in flight collect hundreds of times a "
        "second, some 6 % of its CPU at 1,024 connections (docs/performance.md); no peer "
        "changes it.",
        10_000,
        int,
        metavar="N",
        minimum=0,
    ),
    Setting(
        "malloc_arena_max",
        "Each worker's malloc arenas (glibc's M_ARENA_MAX), set before the app is imported; 0 "
        "keeps the C library's (8 per core, or MALLOC_ARENA_MAX from the environment). A "
        "worker runs Python on one thread at a time, so more arenas only spread its large "
        "objects over more heaps, each grown and trimmed on its own: with 2, 8 app threads "
        "streaming new 64 KiB pieces made 5-6 page faults per response instead of 22-76, spent "
        "15-40 % less CPU and peaked a quarter lower in RSS (docs/performance.md); no peer "
        "sets it.",
        2,
        int,
        metavar="N",
        minimum=0,
    ),
    Setting(
        "access_log",
        "Write the access log to FILE, or '-' for stderr; default: no access log.",
        None,
        metavar="FILE",
    ),
    Setting(
        "access_log_format",
        "The access log's line, in gunicorn's format (%(h)s, %(r)s, %({header}i)s, ...; "
        "docs/logging.md lists the atoms). Ignored with --log-format json. The default is "
        "gunicorn's (Apache combined) followed by the duration in seconds, the request ID and "
        "the outcome.",
        DEFAULT_ACCESS_FORMAT,
        metavar="FORMAT",
    ),
    Setting(
        "error_log",
        "Write the error log and the security log to FILE, or '-' for stderr (the default).",
        "-",
        metavar="FILE",
    ),
    Setting(
        "log_config",
        "A logging configuration (logging.config.dictConfig) in a JSON (*.json) or TOML file, "
        "applied after hardserve's own, so it can replace handlers, formatters and levels "
        "(docs/logging.md).",
        None,
        metavar="FILE",
    ),
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
    Setting(
        "admin_bind",
        "Serve /metrics, /livez and /readyz on this address: HOST:PORT, [IPv6]:PORT or "
        "unix:/PATH (docs/metrics.md), answered by the master even while every worker is busy. "
        "Never one of the bind addresses: the admin listener belongs on loopback, a private "
        "network or a unix socket. Default: off (127.0.0.1:9191 is the documented choice).",
        None,
        metavar="ADDRESS",
    ),
    Setting(
        "admin_token",
        "A bearer token /metrics requires (Authorization: Bearer TOKEN); /livez and /readyz "
        "stay open for probes. At least 16 characters of A-Z a-z 0-9 - . _ ~ + / =. Prefer "
        "admin_token_file: a value here is visible in the process list or the environment. "
        "Never shown by check-config or the logs.",
        None,
        metavar="TOKEN",
    ),
    Setting(
        "admin_token_file",
        "A file whose first line is the admin token (as admin_token); read by the master at "
        "start, before it gives up root, and again on HUP.",
        None,
        metavar="FILE",
    ),
    Setting(
        "shutdown_delay_s",
        "Seconds between TERM and the workers being told to stop: /readyz answers 503 at once "
        "while the workers go on serving, so a load balancer polling /readyz takes the server "
        "out before its listeners close. 0 stops at once; INT and QUIT never wait.",
        0.0,
        float,
        metavar="SECONDS",
        minimum=0.0,
        maximum=3600.0,
    ),
    Setting(
        "certfile",
        "Serve TLS with this certificate chain (PEM), together with keyfile. Every TCP "
        "listener then speaks TLS; unix sockets stay plain (docs/tls.md).",
        None,
        metavar="FILE",
    ),
    Setting("keyfile", "The private key of the certificate (PEM).", None, metavar="FILE"),
    Setting(
        "keyfile_password_file",
        "A file whose first line is the password of an encrypted key file.",
        None,
        metavar="FILE",
    ),
    Setting(
        "ca_certs",
        "CA certificates (PEM) that client certificates are checked against.",
        None,
        metavar="FILE",
    ),
    Setting(
        "client_cert",
        "Client certificates: not asked for (none), checked when sent (optional) or required "
        "(mutual TLS); optional and required need the CA certificates (ca_certs).",
        "none",
        choices=("none", "optional", "required"),
    ),
    Setting(
        "tls_min_version",
        "The oldest TLS version accepted: TLSv1.2 (the default) or TLSv1.3.",
        "TLSv1.2",
        choices=("TLSv1.2", "TLSv1.3"),
    ),
    Setting(
        "ciphers",
        "OpenSSL cipher list for TLS 1.2; default: the ssl module's secure set.",
        None,
        metavar="LIST",
    ),
    Setting(
        "tls_reload_check_s",
        "How often the master looks for a change of the certificate, key, password and CA "
        "files; a change that has settled and loads is loaded again by the running workers for "
        "new connections, without a restart. 0 turns it off.",
        5.0,
        float,
        metavar="SECONDS",
        minimum=0.0,
        maximum=_SECONDS_MAX,
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
    "socket_unsent_max_bytes": _C_INT_MAX,  # setsockopt takes a C int
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
    pool_queue_max: int = 1024
    pool_prepared_max: int = 128
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
    gc_gen0_threshold: int = 10_000
    malloc_arena_max: int = 2
    access_log: str | None = None
    access_log_format: str = DEFAULT_ACCESS_FORMAT
    error_log: str = "-"
    log_config: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    admin_bind: str | None = None
    admin_token: str | None = None
    admin_token_file: str | None = None
    shutdown_delay_s: float = 0.0
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password_file: str | None = None
    ca_certs: str | None = None
    client_cert: str = "none"
    tls_min_version: str = "TLSv1.2"
    ciphers: str | None = None
    tls_reload_check_s: float = 5.0
    limits: Limits = field(default_factory=Limits)


# The variable naming the config file; --config wins over it.
CONFIG_ENV = "HARDSERVE_CONFIG"
DEFAULT_SOURCE = "default"

_BY_NAME: dict[str, Setting] = {s.name: s for s in ALL_SETTINGS}
_LIMIT_NAMES = frozenset(s.name for s in LIMIT_SETTINGS)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The Config and where each of its values came from."""

    config: Config
    # Every setting's name -> "default", "file:PATH", "env:HARDSERVE_NAME" or "cli:--flag"
    # (PATH as it was given). The default bind taken from PORT says "env:PORT".
    sources: Mapping[str, str]
    # The config file read, as it was named, and by what: "cli:--config" or
    # "env:HARDSERVE_CONFIG". None and None without a file.
    config_file: str | None = None
    config_file_source: str | None = None

    def value(self, name: str) -> Any:
        """The effective value of the setting `name` (a Config or a Limits field)."""
        return _value(self.config, name)


def load(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build the Config from explicit values (the CLI), then HARDSERVE_* variables, then the
    config file (values["config"] or HARDSERVE_CONFIG), then defaults. A value of None in
    `values` means "not given"; keys that are not settings are ignored."""
    return resolve(values, env).config


def resolve(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Resolved:
    """load(), and the source of every value."""
    env = os.environ if env is None else env
    path, path_source = config_file_of(values, env)
    from_file = read_config_file(path) if path is not None else {}
    resolved: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in ALL_SETTINGS:
        value, source = _given(setting, values, env)
        if value is None and setting.name in from_file:
            value, source = from_file[setting.name], f"file:{path}"
        if value is None:
            value, source = setting.default, DEFAULT_SOURCE
        if setting.choices and value not in setting.choices:
            raise _error(setting, source, f" must be one of {', '.join(setting.choices)}")
        resolved[setting.name] = tuple(value) if setting.multiple else value
        sources[setting.name] = source
    if not resolved["bind"]:
        resolved["bind"] = default_binds(env)
        if env.get("PORT", "").strip():
            sources["bind"] = "env:PORT"
    for setting in ALL_SETTINGS:
        _check_range(setting, resolved[setting.name], sources[setting.name])
    _check_server_header(resolved["server_header"], sources["server_header"])
    _check_proxies(resolved, sources)
    _check_logs(resolved, sources)
    _check_tls(resolved, sources)
    _check_admin(resolved, sources)
    limits = Limits(**{name: resolved.pop(name) for name in _LIMIT_NAMES})
    return Resolved(Config(limits=limits, **resolved), sources, path, path_source)


def config_file_of(
    values: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The config file to read and what named it: --config (values["config"]) over
    HARDSERVE_CONFIG. An empty variable counts as unset."""
    given = values.get("config")
    if given is not None:
        if not str(given).strip():
            raise SettingError("--config needs a file name")
        return str(given), "cli:--config"
    named = env.get(CONFIG_ENV, "")
    if named.strip():
        return named, f"env:{CONFIG_ENV}"
    return None, None


def _given(setting: Setting, values: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Any, str]:
    """The value from the command line, else from the environment, with its source; None
    when neither gives one (an empty repeatable value is not a value)."""
    value = values.get(setting.name)
    if value is not None and not (setting.multiple and not value):
        if isinstance(value, str) and setting.type is not str:
            value = _convert(setting, value)
        return value, "cli:" + setting.flag
    raw = env.get(setting.env_var)
    if raw is not None:
        value = _from_env(setting, raw)
        if not (setting.multiple and not value):
            return value, "env:" + setting.env_var
    return None, DEFAULT_SOURCE


def _error(setting: Setting, source: str, text: str) -> SettingError:
    """A refusal naming the setting as its source spells it: the file and key, or the flag
    (and the variable, when the value came from one). `text` starts with its separator."""
    if source.startswith("file:"):
        return SettingError(f"{source.removeprefix('file:')}: {setting.name}{text}")
    if source.startswith("env:"):
        return SettingError(f"{setting.flag}{text} (from {source.removeprefix('env:')})")
    return SettingError(f"{setting.flag}{text}")


def _check_range(setting: Setting, value: Any, source: str = DEFAULT_SOURCE) -> None:
    if value is None or (setting.minimum is None and setting.maximum is None):
        return
    # NaN passes every comparison below (nan < 0 is False), and infinity would be a timeout
    # that threading refuses mid-request.
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(setting, source, f" must be a finite number, not {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        if setting.minimum == 0:
            raise _error(setting, source, " cannot be negative")
        raise _error(setting, source, f" must be at least {_shown(setting, setting.minimum)}")
    if setting.maximum is not None and value > setting.maximum:
        raise _error(setting, source, f" must be at most {_shown(setting, setting.maximum)}")


def _shown(setting: Setting, bound: float) -> str:
    """A bound as the user writes the setting: octal for a mode."""
    if setting.type is _octal:
        return f"0{int(bound):o}"
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _check_server_header(value: str, source: str = DEFAULT_SOURCE) -> None:
    # The value is written into every response head as it is. CR or LF would let whoever sets
    # it add header lines; other control characters, DEL and non-ASCII are not field-value
    # text a client reads reliably (and anything past latin-1 cannot be encoded at all).
    # RFC 9110 section 5.5 also allows HTAB inside; printable ASCII is the simpler rule.
    if source.startswith("file:"):
        subject = f"{source.removeprefix('file:')}: server_header"
    else:
        subject = "--server-header / HARDSERVE_SERVER_HEADER"
    if not all(" " <= char <= "~" for char in value):
        raise SettingError(f"{subject}: {value!a} must be printable ASCII (0x20-0x7e)")
    if value != value.strip(" "):
        raise SettingError(f"{subject}: {value!a} must not start or end with a space")


def _check_proxies(resolved: dict[str, Any], sources: Mapping[str, str]) -> None:
    for name in ("forwarded_allow_ips", "proxy_allow_ips"):
        try:
            TrustedPeers.parse(resolved[name])
        except ValueError as exc:
            raise _error(_BY_NAME[name], sources[name], f": {exc}") from exc
    if resolved["proxy_protocol"] == "on" and not resolved["proxy_allow_ips"].strip():
        # With nobody allowed, every connection would be closed: a mistake, not a policy.
        source = sources["proxy_protocol"]
        if source.startswith("file:"):
            raise SettingError(
                f'{source.removeprefix("file:")}: proxy_protocol = "on" needs '
                "proxy_allow_ips (the proxies' addresses)"
            )
        raise SettingError("--proxy-protocol on needs --proxy-allow-ips (the proxies' addresses)")


def _check_logs(resolved: dict[str, Any], sources: Mapping[str, str]) -> None:
    try:
        compile_access_format(resolved["access_log_format"])
    except ValueError as exc:
        name = "access_log_format"
        raise _error(_BY_NAME[name], sources[name], f": {exc}") from exc
    for name in ("access_log", "error_log", "log_config"):
        value = resolved[name]
        if value is not None and not value.strip():
            raise _error(_BY_NAME[name], sources[name], " needs a file name (or '-')")
    if resolved["log_config"] == "-":
        raise _error(_BY_NAME["log_config"], sources["log_config"], " needs a file name")


def _check_tls(resolved: dict[str, Any], sources: Mapping[str, str]) -> None:
    """TLS settings that only make sense together. Whether the files load is checked by the
    master before it forks (tls.check)."""
    for name in ("certfile", "keyfile", "keyfile_password_file", "ca_certs", "ciphers"):
        value = resolved[name]
        if value is not None and not value.strip():
            raise _error(_BY_NAME[name], sources[name], " needs a value")
    certfile, keyfile = resolved["certfile"], resolved["keyfile"]
    tls_binds = [b for b in resolved["bind"] if b.startswith("tls://")]
    if tls_binds and certfile is None:
        raise _error(_BY_NAME["bind"], sources["bind"], f" {tls_binds[0]} needs --certfile")
    if certfile is not None and keyfile is None:
        raise _error(_BY_NAME["certfile"], sources["certfile"], " needs --keyfile as well")
    if keyfile is not None and certfile is None:
        raise _error(_BY_NAME["keyfile"], sources["keyfile"], " needs --certfile as well")
    if certfile is None:
        for name in ("keyfile_password_file", "ca_certs", "ciphers"):
            if resolved[name] is not None:
                raise _error(_BY_NAME[name], sources[name], " needs --certfile and --keyfile")
        if resolved["client_cert"] != "none":
            name = "client_cert"
            raise _error(_BY_NAME[name], sources[name], " needs --certfile and --keyfile")
    if certfile is not None and resolved["proxy_protocol"] == "on":
        # The PROXY header comes before the TLS handshake; the loop's TLS transport would
        # read it as a broken handshake.
        name = "proxy_protocol"
        raise _error(_BY_NAME[name], sources[name], " on cannot be combined with TLS (certfile)")
    if resolved["client_cert"] != "none" and resolved["ca_certs"] is None:
        name = "client_cert"
        raise _error(_BY_NAME[name], sources[name], " needs --ca-certs (the CAs to check against)")


# Settings whose value is a secret: check-config shows only whether they are set.
SECRET_SETTINGS = frozenset({"admin_token"})

# RFC 6750 b64token: the characters a bearer token may have.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
ADMIN_TOKEN_MIN_CHARS = 16


def check_admin_token(token: str) -> str | None:
    """Why `token` cannot be the admin token, or None when it can."""
    if len(token) < ADMIN_TOKEN_MIN_CHARS:
        return f"must be at least {ADMIN_TOKEN_MIN_CHARS} characters"
    if not set(token) <= _TOKEN_CHARS:
        return "may only have the characters A-Z a-z 0-9 - . _ ~ + / ="
    return None


def admin_address(spec: str) -> tuple[str, str, int]:
    """An admin bind: ("unix", PATH, 0) or ("inet", HOST, PORT) (HOST without brackets).
    ValueError for anything else (tls:// and fd:// are not admin addresses)."""
    if spec.startswith("unix:"):
        if not spec[5:]:
            raise ValueError("unix: needs a path")
        return "unix", spec[5:], 0
    if spec.startswith(("tls://", "fd://")):
        raise ValueError("takes HOST:PORT, [IPv6]:PORT or unix:/PATH (no tls:// or fd://)")
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not bracket or not host:
            raise ValueError("is not [IPv6]:PORT")
    else:
        host, colon, port = spec.rpartition(":")
        if not colon or ":" in host:
            raise ValueError("takes HOST:PORT, [IPv6]:PORT or unix:/PATH")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{port!r} is not a port")
    return "inet", host or "0.0.0.0", int(port)


_WILDCARDS = frozenset({"0.0.0.0", "::", "*"})


def _same_listener(admin: tuple[str, str, int], bind: str) -> bool:
    """Whether the admin address would be (or overlap) the public listener `bind`."""
    kind, where, port = admin
    if kind == "unix":
        return bind.startswith("unix:") and os.path.normpath(bind[5:]) == os.path.normpath(where)
    host = _inet_host(bind)
    if host is None or port == 0:  # port 0: each gets a port of its own
        return False
    bind_port = bind.removeprefix("tls://").rpartition(":")[2]
    if not (bind_port.isascii() and bind_port.isdigit()) or int(bind_port) != port:
        return False
    return host == where or host in _WILDCARDS or where in _WILDCARDS


def _check_admin(resolved: dict[str, Any], sources: Mapping[str, str]) -> None:
    spec = resolved["admin_bind"]
    token, token_file = resolved["admin_token"], resolved["admin_token_file"]
    if spec is not None:
        try:
            address = admin_address(spec)
        except ValueError as exc:
            raise _error(_BY_NAME["admin_bind"], sources["admin_bind"], f": {exc}") from None
        for bind in resolved["bind"]:
            if _same_listener(address, bind):
                raise _error(
                    _BY_NAME["admin_bind"],
                    sources["admin_bind"],
                    f" {spec} is the public listener {bind}: the admin listener needs an "
                    "address of its own (loopback, a private network or a unix socket)",
                )
    if token is not None and token_file is not None:
        raise _error(
            _BY_NAME["admin_token"], sources["admin_token"], " and --admin-token-file: one only"
        )
    for name in ("admin_token", "admin_token_file"):
        if resolved[name] is not None and spec is None:
            raise _error(_BY_NAME[name], sources[name], " needs --admin-bind")
    if token_file is not None and not token_file.strip():
        name = "admin_token_file"
        raise _error(_BY_NAME[name], sources[name], " needs a file name")
    if token is not None:
        problem = check_admin_token(token)
        if problem is not None:
            # The value itself is never repeated: it is a secret.
            raise _error(_BY_NAME["admin_token"], sources["admin_token"], f" {problem}")


def read_admin_token(path: str) -> str:
    """The token in the first line of `path`; SettingError naming the file when it cannot be
    read or is not a token. The token itself is never in the message."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingError(f"--admin-token-file {path}: cannot read it: {reason}") from None
    problem = check_admin_token(token)
    if problem is not None:
        raise SettingError(f"--admin-token-file {path}: the token {problem}")
    return token


def _from_env(setting: Setting, raw: str) -> Any:
    if setting.multiple:
        return tuple(_convert(setting, part.strip()) for part in raw.split(",") if part.strip())
    return _convert(setting, raw)


def _convert(setting: Setting, raw: str) -> Any:
    try:
        return setting.type(raw)
    except ValueError as exc:
        raise SettingError(f"{setting.flag} / {setting.env_var}: {raw!r}: {exc}") from exc


# -- the config file ----------------------------------------------------------------------------


def read_config_file(path: str) -> dict[str, Any]:
    """The settings of a TOML config file, each converted to its Config type.

    Its keys are the setting names at the top level of the file (`workers = 4`); a
    [hardserve] table, any other table and any other key are refused, naming the file and the
    closest setting name. Values are typed strictly: an integer setting takes a TOML integer,
    not "4"; only settings whose own parser reads text take a string for it (workers "auto",
    the octal modes "0660")."""
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except OSError as exc:
        raise SettingError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "(at end of document)" in message:
            # The statement left unfinished is on the last line: say which one.
            last = len(text.splitlines()) or 1
            message = message.replace("(at end of document)", f"(at the end, line {last})")
        raise SettingError(f"{path}: not valid TOML: {message}") from None
    settings: dict[str, Any] = {}
    for key, raw in data.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            raise SettingError(_unknown_key(path, key, raw))
        value = _from_file(setting, raw, path)
        if not (setting.multiple and not value):  # [] is "not given", like an empty variable
            settings[key] = value
    return settings


def _unknown_key(path: str, key: str, raw: Any) -> str:
    if key == "hardserve" and isinstance(raw, dict):
        return (
            f"{path}: [hardserve]: write the settings at the top level of the file, without "
            "a [hardserve] table (docs/settings.md)"
        )
    text = f"{path}: unknown setting {key!r}"
    if isinstance(raw, dict):
        text = f"{path}: unknown table [{key}]; every setting is a top-level key"
    suggestion = closest_setting(key)
    return text + (f"; did you mean {suggestion!r}?" if suggestion else "")


def closest_setting(key: str) -> str | None:
    """The setting name a mistyped one most likely meant, if any is close."""
    normalized = key.strip().lower().replace("-", "_").removeprefix("hardserve_")
    if normalized in _BY_NAME:
        return normalized
    matches = difflib.get_close_matches(normalized, list(_BY_NAME), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def toml_type(setting: Setting) -> str:
    """What the config file takes for `setting`, in words (for errors and docs/settings.md)."""
    if setting.multiple:
        return "array of strings"
    if setting.type is boolean:
        return "boolean"
    if setting.type is int:
        return "integer"
    if setting.type is float:
        return "number"
    if setting.type is _octal:
        return 'string of octal digits ("0660")'
    if setting.type is worker_count:
        return 'integer or "auto"'
    return "string"


def _from_file(setting: Setting, raw: Any, path: str) -> Any:
    where = f"{path}: {setting.name}"
    kind = setting.type
    is_integer = isinstance(raw, int) and not isinstance(raw, bool)
    if setting.multiple:
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        expected = f'an array of strings ({setting.name} = ["..."])'
    elif kind is boolean:
        if isinstance(raw, bool):
            return raw
        expected = "true or false"
    elif kind is int or kind is worker_count:
        if is_integer:
            return raw
        if kind is worker_count and isinstance(raw, str):
            return _parse_text(setting, raw, where)
        expected = "an integer" if kind is int else 'an integer or "auto"'
    elif kind is float:
        if is_integer or isinstance(raw, float):
            try:
                return float(raw)
            except OverflowError:
                raise _error(setting, f"file:{path}", " is too large") from None
        expected = "a number"
    elif kind is _octal:
        if isinstance(raw, str):
            return _parse_text(setting, raw, where)
        # A TOML integer cannot say whether 660 was meant as octal; 0o660 would be right but
        # 660 silently becomes mode 01224. Only the string form is unambiguous.
        expected = 'a string of octal digits ("0660"), not an integer'
    else:
        if isinstance(raw, str):
            return raw if kind is str else _parse_text(setting, raw, where)
        expected = "a string"
    raise SettingError(f"{where} must be {expected}; {_toml_type(raw)} was given")


def _parse_text(setting: Setting, raw: str, where: str) -> Any:
    try:
        return setting.type(raw)
    except ValueError as exc:
        raise SettingError(f"{where}: {raw!r}: {exc}") from None


def toml_value(setting: Setting, value: Any) -> Any:
    """`value` as the config file writes it (and JSON can): a mode as a string of octal
    digits, a repeatable setting as a list; None for a setting that is not set."""
    if value is None:
        return None
    if setting.type is _octal:
        return f"{value:04o}"
    if setting.multiple:
        return list(value)
    return value


# -- risky choices (hardserve check-config) -------------------------------------------------------

# Settings where 0 turns a protection off rather than making it strict (docs/limits.md); every
# other limit at 0 refuses or stops at once.
OFF_AT_ZERO: dict[str, str] = {
    "timeout_s": "a worker whose loop is stuck is never replaced",
    "body_min_rate_bytes_s": "a client may send a body as slowly as it likes "
    "(only body_idle_timeout_s bounds a stall)",
    "send_min_rate_bytes_s": "a client may read a response as slowly as it likes "
    "(only write_timeout_s bounds a stall)",
    "client_in_flight_max": "one client address may take every pool thread",
    "max_requests": "workers are never recycled",
    "tls_handshake_timeout_s": "a TLS handshake may take the event loop's own 60 s",
    "socket_unsent_max_bytes": "the kernel may hold up to net.ipv4.tcp_wmem's maximum (4 MiB "
    "by default) unsent for each client that stops reading",
}
# A limit raised past this many times its default is as good as off.
VERY_HIGH_FACTOR = 100
# Kubernetes' default terminationGracePeriodSeconds.
KUBERNETES_GRACE_S = 30.0


# What check-config reports: id -> (level, when). docs/settings.md lists them from here.
RISKS: dict[str, tuple[str, str]] = {
    "public-plain-http": (
        "warning",
        "A bind other machines can reach (not loopback, not a unix socket) while no proxy is "
        "trusted (no forwarded_allow_ips, PROXY protocol off). hardserve has no TLS yet, so "
        "every TCP bind is plain HTTP: clients reach the app unencrypted, not through a proxy.",
    ),
    "trusts-everyone": (
        "warning",
        "forwarded_allow_ips (or proxy_allow_ips with the PROXY protocol on) contains "
        "0.0.0.0/0 or ::/0: any client can claim any address and scheme.",
    ),
    "limit-off": (
        "warning",
        "A protection that is on by default set to 0, which turns it off: timeout_s (stuck "
        "workers are never replaced), body_min_rate_bytes_s and send_min_rate_bytes_s (slow "
        "senders and readers hold connections). Every other limit at 0 is strict, not off.",
    ),
    "limit-very-high": (
        "warning",
        f"A limit (or timeout_s) more than {VERY_HIGH_FACTOR} times its default: about as good "
        "as none.",
    ),
    "client-in-flight-off": (
        "note",
        "client_in_flight_max is 0 (off, the default) at a public bind: one client address can "
        "take every pool thread. Often right (one address is many clients behind a NAT or an "
        "undeclared proxy), hence a note; at the edge, set it below threads.",
    ),
    "root-workers": (
        "warning",
        "allow_root without a user (started as root, the workers serve as root), or user root.",
    ),
    "world-writable-socket": (
        "warning",
        "A unix socket bind with unix_mode writable by others (o+w): every local user can connect.",
    ),
    "risky-path": (
        "warning",
        "path_encoded_slash or path_backslash set to allow (docs/paths.md).",
    ),
    "admin-open": (
        "warning",
        "admin_bind reachable from other machines (not loopback, not a unix socket) without "
        "admin_token or admin_token_file: anyone who reaches it reads the metrics.",
    ),
    "graceful-over-kubernetes": (
        "note",
        f"graceful_timeout_s longer than {KUBERNETES_GRACE_S:g} s, Kubernetes' default "
        "terminationGracePeriodSeconds: on Kubernetes, raise that above it (plus any preStop "
        "sleep) or requests still running are killed.",
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "warning" (a risk) or "note" (worth a look, often fine)
    id: str
    settings: tuple[str, ...]
    message: str


def _inet_host(bind: str) -> str | None:
    """The host of a TCP bind (as master/listeners.parse_bind reads it); None for unix: and
    fd:// (a systemd socket's address is not known here)."""
    if bind.startswith(("unix:", "fd://")):
        return None
    bind = bind.removeprefix("tls://")
    if bind.startswith("["):
        return bind[1:].partition("]")[0]
    host, colon, _ = bind.rpartition(":")
    return (host if colon else bind) or "0.0.0.0"


def is_public_bind(bind: str) -> bool:
    """A TCP bind other machines may reach: not loopback. Names other than localhost count
    as public (they may resolve to anything)."""
    host = _inet_host(bind)
    if host is None:
        return False
    if host.lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _trusts_everyone(spec: str) -> list[str]:
    try:
        peers = TrustedPeers.parse(spec)
    except ValueError:
        return []
    return [str(network) for network in peers.networks if network.prefixlen == 0]


def review(config: Config) -> list[Finding]:
    """The risky choices in a valid Config, for `hardserve check-config` (docs/settings.md
    lists them). Nothing here is an error: each can be right in some deployment."""
    found: list[Finding] = []

    def add(id_: str, names: tuple[str, ...], message: str) -> None:
        found.append(Finding(RISKS[id_][0], id_, names, message))

    public = [bind for bind in config.bind if is_public_bind(bind)]
    trusted_proxy = bool(config.forwarded_allow_ips.strip()) or config.proxy_protocol == "on"
    for bind in public:
        if not trusted_proxy:
            add(
                "public-plain-http",
                ("bind", "forwarded_allow_ips"),
                f"bind {bind} is reachable from other machines over plain HTTP (hardserve does "
                "not serve TLS) and no proxy is trusted: put a TLS-terminating proxy in front "
                "and list it in forwarded_allow_ips, or bind to loopback or a unix socket",
            )
    for name, what in (
        ("forwarded_allow_ips", "every client's X-Forwarded-* and Forwarded fields are believed"),
        ("proxy_allow_ips", "every client may send a PROXY header"),
    ):
        everyone = _trusts_everyone(getattr(config, name))
        if everyone and (name == "forwarded_allow_ips" or config.proxy_protocol == "on"):
            add(
                "trusts-everyone",
                (name,),
                f"{name} contains {', '.join(everyone)}: {what}, so any client can claim any "
                "address and scheme; list only the proxies",
            )
    for name, what in OFF_AT_ZERO.items():
        if _value(config, name) != 0 or _BY_NAME[name].default == 0:
            continue  # off by default (max_requests, client_in_flight_max): not a choice
        add("limit-off", (name,), f"{name} is 0, which turns it off: {what}")
    if config.limits.client_in_flight_max == 0 and public:
        add(
            "client-in-flight-off",
            ("client_in_flight_max", "threads"),
            "client_in_flight_max is 0 (off) at a public bind: one client address may take "
            f"every pool thread; at the edge set it below threads ({config.threads}), "
            f"e.g. {max(1, config.threads // 4)}",
        )
    for setting in (*LIMIT_SETTINGS, _BY_NAME["timeout_s"]):
        value = _value(config, setting.name)
        if setting.default and value > setting.default * VERY_HIGH_FACTOR:
            add(
                "limit-very-high",
                (setting.name,),
                f"{setting.name} is {value:g}, more than {VERY_HIGH_FACTOR} times its default "
                f"({setting.default:g}): about as good as no limit",
            )
    if config.allow_root and config.user is None:
        add(
            "root-workers",
            ("allow_root", "user"),
            "allow_root is set and no user is named: started as root, the workers serve as root; "
            "name an unprivileged user",
        )
    elif config.user in ("root", "0"):
        add(
            "root-workers",
            ("user",),
            f"user is {config.user!r}: the workers serve as root",
        )
    sockets = [bind for bind in config.bind if bind.startswith("unix:")]
    if sockets and config.unix_mode & 0o002:
        add(
            "world-writable-socket",
            ("unix_mode", "bind"),
            f"unix_mode is 0{config.unix_mode:o}: every local user may connect to "
            f"{', '.join(sockets)}; use 0660 with a shared group, or 0600",
        )
    for name in ("path_encoded_slash", "path_backslash"):
        if getattr(config, name) == "allow":
            add(
                "risky-path",
                (name,),
                f"{name} is 'allow': an app or proxy that splits the path differently sees "
                "other segments than the ones checked for '..' (docs/paths.md)",
            )
    admin = config.admin_bind
    if (
        admin is not None
        and is_public_bind(admin)
        and config.admin_token is None
        and config.admin_token_file is None
    ):
        add(
            "admin-open",
            ("admin_bind", "admin_token_file"),
            f"admin_bind {admin} is reachable from other machines and /metrics needs no "
            "token: bind it to loopback or a unix socket, or set admin_token_file",
        )
    if config.graceful_timeout_s > KUBERNETES_GRACE_S:
        add(
            "graceful-over-kubernetes",
            ("graceful_timeout_s",),
            f"graceful_timeout_s is {config.graceful_timeout_s:g}, longer than Kubernetes' "
            f"default terminationGracePeriodSeconds ({KUBERNETES_GRACE_S:g}): on Kubernetes, "
            "raise terminationGracePeriodSeconds above it or requests still running are killed",
        )
    return found


def _value(config: Config, name: str) -> Any:
    return getattr(config.limits if name in _LIMIT_NAMES else config, name)
