"""The `hardserve` command, generated from the settings table.

`hardserve MODULE:APP [options]` serves; `hardserve NAME [options]`, NAME a subcommand
(`check-config`, `advisories`), runs that instead. A subcommand is one function decorated
with @subcommand(NAME).

Exit statuses: 0 after a clean stop, 2 for a usage error (click's), 3 when a listener cannot be
bound, a setting is invalid or a dependency is below its security floor, 4 when the app cannot
be loaded. `check-config`: 0 (with or without warnings), 1 when a setting, the config file, the
app spec or a dependency is wrong. `advisories`: 0 when no bundled advisory affects this
version, 1 when one does.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import click

from hardserve import __version__
from hardserve.settings import (
    ALL_SETTINGS,
    CONFIG_ENV,
    SECRET_SETTINGS,
    Config,
    Finding,
    Resolved,
    Setting,
    SettingError,
    boolean,
    load,
    resolve,
    review,
    toml_value,
)

EXIT_CONFIG = 3
EXIT_APP_LOAD = 4
EXIT_CHECK_FAILED = 1

_CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """The versions hardserve_build_info names."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "h11": _version("h11"),
        "uvloop": _version("uvloop"),
        "prometheus_client": _version("prometheus-client"),
    }


def version_text() -> str:
    return (
        f"hardserve {__version__} "
        f"(Python {platform.python_version()}, h11 {_version('h11')}, uvloop {_version('uvloop')}, "
        f"click {_version('click')}, prometheus-client {_version('prometheus-client')})"
    )


def _dependency_problems() -> list[str]:
    """Installed dependencies below their security floor (hardserve.dependencies)."""
    from hardserve.dependencies import check_floors

    return check_floors()


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit(0)


def _option(setting: Setting) -> Any:
    kwargs: dict[str, Any] = {
        "help": setting.help + ("" if setting.multiple else f"  [env {setting.env_var}]"),
        "default": None,
        "multiple": setting.multiple,
        "metavar": setting.metavar,
    }
    if setting.type is boolean:
        kwargs["is_flag"] = True
        kwargs["flag_value"] = True
        kwargs.pop("metavar")
    elif setting.choices:
        kwargs["type"] = click.Choice(setting.choices)
    elif setting.type is int:
        kwargs["type"] = int
    elif setting.type is float:
        kwargs["type"] = float
    return click.option(setting.flag, setting.name, **kwargs)


def _with_settings(command: click.Command) -> click.Command:
    """Add --config and a flag for every setting, in the table's order (click lists the
    options in the order they were added)."""
    command = click.option(
        "--config",
        "config",
        default=None,
        metavar="FILE",
        help="Read settings from this TOML file (docs/settings.md); the command line and "
        f"HARDSERVE_* variables win over it.  [env {CONFIG_ENV}]",
    )(command)
    for setting in ALL_SETTINGS:
        command = _option(setting)(command)
    return command


# -- subcommands ----------------------------------------------------------------------------------

SUBCOMMANDS: dict[str, click.Command] = {}


def subcommand(
    name: str, *, settings: bool = False
) -> Callable[[Callable[..., Any]], click.Command]:
    """Register `hardserve NAME`: decorate a function (with its own click options and
    arguments below this decorator; its docstring is its help). With settings=True it also
    takes --config and every setting flag, as keyword arguments named after the settings."""

    def register(function: Callable[..., Any]) -> click.Command:
        command = click.command(name, context_settings=_CONTEXT_SETTINGS)(function)
        if settings:
            command = _with_settings(command)
        SUBCOMMANDS[name] = command
        return command

    return register


class _Main(click.Command):
    """The serving command, which hands its arguments to a subcommand when the first one names
    it. An app spec can never be mistaken for one: a subcommand's name has a '-' or is not a
    MODULE:APP (a module named like a subcommand is written MODULE:application)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if args and args[0] in SUBCOMMANDS:
            name = args[0]
            prefix = f"{info_name} " if info_name else ""
            return SUBCOMMANDS[name].make_context(prefix + name, args[1:], parent, **extra)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.command is not self:
            return ctx.command.invoke(ctx)
        return super().invoke(ctx)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, command.get_short_help_str(70)) for name, command in SUBCOMMANDS.items()]
        if rows:
            with formatter.section("Commands (hardserve COMMAND --help)"):
                formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


def _build() -> click.Command:
    @click.command(cls=_Main, context_settings=_CONTEXT_SETTINGS)
    @click.argument("app", metavar="MODULE:APP")
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_print_version,
        help="Show the versions of hardserve, Python, h11 and uvloop.",
    )
    def command(app: str, **values: Any) -> None:
        """Serve the WSGI app MODULE:APP (or MODULE:factory(literal args))."""
        sys.exit(serve(app, values))

    return _with_settings(command)


# -- hardserve check-config -----------------------------------------------------------------------


@subcommand("check-config", settings=True)
@click.argument("app", metavar="[MODULE:APP]", required=False)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="Aligned text, or one JSON object.",
)
def check_config(app: str | None, output_format: str, **values: Any) -> None:
    """Show the effective settings and warn about risky choices.

    Prints every setting with its value and where it comes from (default, the config file, a
    HARDSERVE_* variable or the command line), then warnings and notes (docs/settings.md).
    Binds nothing and imports no app: MODULE:APP is only checked for its form. Exit status 0
    with or without warnings, 1 when a setting, the config file or MODULE:APP is wrong."""
    sys.exit(run_check_config(app, output_format, values))


@subcommand("advisories")
@click.option("--all", "show_all", is_flag=True, help="List every bundled advisory.")
def advisories(show_all: bool) -> None:
    """List the security advisories bundled with this hardserve that affect it.

    The advisories (OSV records) ship inside the package, so the list is as recent as the
    installed release. Exit status 0 when none affects the running version, 1 when one does."""
    from hardserve.advisories import affecting, bundled_advisories, summary_line

    bundled = bundled_advisories()
    shown = bundled if show_all else affecting(__version__, bundled)
    for advisory in shown:
        click.echo(summary_line(advisory))
    affected = affecting(__version__, bundled)
    if not shown:
        click.echo(f"no bundled advisory affects hardserve {__version__} ({len(bundled)} bundled)")
    sys.exit(1 if affected else 0)


def run_check_config(app: str | None, output_format: str, values: dict[str, Any]) -> int:
    from hardserve.loader import AppLoadError, check_spec
    from hardserve.master.listeners import BindError, parse_bind

    try:
        resolved = resolve(values)
    except SettingError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CHECK_FAILED
    for bind in resolved.config.bind:
        try:
            parse_bind(bind)
        except BindError as exc:
            where = _named("bind", resolved.sources["bind"])
            click.echo(f"hardserve: {where}: {exc}", err=True)
            return EXIT_CHECK_FAILED
    if app is not None:
        try:
            check_spec(app)
        except AppLoadError as exc:
            click.echo(f"hardserve: MODULE:APP: {exc}", err=True)
            return EXIT_CHECK_FAILED
    problems = _dependency_problems()
    for problem in problems:
        click.echo(f"hardserve: {problem}", err=True)
    if problems:
        return EXIT_CHECK_FAILED
    findings = review(resolved.config)
    if output_format == "json":
        click.echo(json.dumps(_report(resolved, app, findings), indent=2))
    else:
        click.echo(_text_report(resolved, app, findings), nl=False)
    return 0


def _named(name: str, source: str) -> str:
    """A setting as its source spells it: FILE: key, HARDSERVE_NAME or --flag."""
    kind, _, where = source.partition(":")
    if kind == "file":
        return f"{where}: {name}"
    if kind in ("env", "cli"):
        return where
    return name


def _report(resolved: Resolved, app: str | None, findings: list[Finding]) -> dict[str, Any]:
    return {
        "config_file": resolved.config_file,
        "config_file_source": resolved.config_file_source,
        "app": app,
        "settings": {
            s.name: {
                "value": _visible(s, resolved.value(s.name)),
                "source": resolved.sources[s.name],
            }
            for s in ALL_SETTINGS
        },
        "findings": [
            {"level": f.level, "id": f.id, "settings": list(f.settings), "message": f.message}
            for f in findings
        ],
    }


_VALUE_WIDTH = 36


def _text_report(resolved: Resolved, app: str | None, findings: list[Finding]) -> str:
    lines: list[str] = []
    if resolved.config_file is not None:
        source = (resolved.config_file_source or "").partition(":")[2]
        lines.append(f"config file: {resolved.config_file} (from {source})")
    else:
        lines.append(f"config file: none (--config or {CONFIG_ENV})")
    if app is not None:
        lines.append(f"app: {app}")
    rows = [
        (s.name, _shown_value(_visible(s, resolved.value(s.name))), resolved.sources[s.name])
        for s in ALL_SETTINGS
    ]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(_VALUE_WIDTH, max(len(value) for _, value, _ in rows))
    lines.append("")
    lines.append(f"{'SETTING':<{name_width}}  {'VALUE':<{value_width}}  SOURCE")
    lines += [f"{n:<{name_width}}  {v:<{value_width}}  {src}" for n, v, src in rows]
    lines.append("")
    lines += [f"{f.level}: [{f.id}] {f.message}" for f in findings]
    warnings = sum(f.level == "warning" for f in findings)
    notes = len(findings) - warnings
    lines.append(f"{_count(warnings, 'warning')}, {_count(notes, 'note')}")
    return "\n".join(lines) + "\n"


def _visible(setting: Setting, value: Any) -> Any:
    """A setting's value as check-config shows it: a secret only as whether it is set."""
    if setting.name in SECRET_SETTINGS and value is not None:
        return "(hidden)"
    return toml_value(setting, value)


def _shown_value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


# -- serving --------------------------------------------------------------------------------------


def serve(app_spec: str, values: dict[str, Any]) -> int:
    """The master: check the settings and the app spec, bind, give up root, then start and
    supervise the workers, which import the app themselves (a HUP starts new workers, which
    import it again: code changes are picked up without a restart)."""
    # A dependency with a known vulnerability that matters to hardserve (h11 < 0.16.0, request
    # smuggling) is refused before anything else happens.
    problems = _dependency_problems()
    for problem in problems:
        click.echo(f"hardserve: refusing to start: {problem}", err=True)
    if problems:
        return EXIT_CONFIG
    # Imported here so that `--help` and `--version` stay fast.
    from hardserve.loader import AppLoadError, check_spec
    from hardserve.master.arbiter import Arbiter
    from hardserve.master.listeners import (
        BindError,
        describe,
        open_listeners,
        tls_listener_fds,
    )
    from hardserve.master.process import (
        PrivilegeError,
        drop_privileges,
        remove_pid_file,
        set_title,
        write_pid_file,
    )
    from hardserve.master.systemd import Notifier, unset_env
    from hardserve.observe.logs import LogConfigError, apply_log_config, configure

    try:
        config = load(values)
    except SettingError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    if config.umask is not None:
        os.umask(config.umask)
    try:
        configure(
            log_level=config.log_level,
            access_log=config.access_log,
            log_format=config.log_format,
            error_log=config.error_log,
        )
    except OSError as exc:
        click.echo(f"hardserve: cannot open a log file: {exc}", err=True)
        return EXIT_CONFIG
    if config.log_config is not None:
        try:
            apply_log_config(config.log_config)
        except LogConfigError as exc:
            click.echo(f"hardserve: --log-config: {exc}", err=True)
            return EXIT_CONFIG
    try:
        check_spec(app_spec)
    except AppLoadError as exc:
        click.echo(f"hardserve: cannot load the app: {exc}", err=True)
        return EXIT_APP_LOAD
    try:
        sockets = open_listeners(config)
    except BindError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    # The admin listener (/metrics, /livez, /readyz) is the master's own: bound here, and its
    # token read now, while a file only root may read can still be read.
    admin_socket = None
    admin_token = config.admin_token
    if config.admin_bind is not None:
        from hardserve.master.listeners import bind
        from hardserve.settings import read_admin_token

        try:
            if config.admin_token_file is not None:
                admin_token = read_admin_token(config.admin_token_file)
            admin_socket = bind(config.admin_bind, unix_mode=config.unix_mode, backlog=64)
        except (BindError, SettingError) as exc:
            for sock in sockets:
                sock.close()
            click.echo(f"hardserve: --admin-bind: {exc}", err=True)
            return EXIT_CONFIG
    # What the workers run is imported now, while the files are surely readable: after
    # dropping root, the user may not be able to read the Python installation.
    from hardserve.worker.main import preload

    preload(config.loop)
    # Made now: after dropping root, the versions' metadata may not be readable.
    from hardserve import tls

    tls.mark_tls_listeners(tls_listener_fds())
    is_tls = config.certfile is not None
    announced = startup_lines(
        config,
        [describe(sock, tls=is_tls and tls.serves_tls(sock)) for sock in sockets],
        admin=describe(admin_socket) if admin_socket is not None else None,
        admin_token=admin_token is not None,
    )
    try:
        drop_privileges(config.user, config.group, allow_root=config.allow_root)
    except (PrivilegeError, OSError) as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    # The certificate and key are loaded once here, as the user the workers run as, so a bad
    # pair (or a key only root can read) is one line and exit 3, not a crash in every worker.
    try:
        tls.check(config)
    except tls.TlsError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    notifier = Notifier.from_env()
    unset_env()  # workers never talk to systemd or take its sockets themselves
    if config.pid_file:
        write_pid_file(config.pid_file)
    set_title(f"hardserve: master {app_spec}")

    def worker_main(heartbeat_fd: int, config: Config) -> int:
        set_title(f"hardserve: worker {app_spec}")
        return run_worker_process(app_spec, config, sockets, heartbeat_fd)

    try:
        # HUP reads the configuration again (the file and the environment the master started
        # with); the listeners stay as they were bound, so a new bind needs a restart.
        return Arbiter(
            config,
            sockets,
            worker_main,
            notifier=notifier,
            reload_config=lambda: _reload_config(values),
            startup_lines=lambda: announced,
            admin_socket=admin_socket,
            admin_token=admin_token,
            build_info=versions(),
        ).run()
    finally:
        if config.pid_file:
            remove_pid_file(config.pid_file)


def _reload_config(values: dict[str, Any]) -> Config:
    """The configuration a HUP's new workers get: read again, and its certificate and key
    loaded once by the master first, so a pair that does not load is refused with its reason
    (the arbiter keeps the running configuration) instead of failing in every new worker."""
    from hardserve import tls

    config = load(values)
    tls.check(config)
    return config


# Settings that change what the server lets through or who it believes: the startup lines name
# every one that differs from its default, with every limit (docs/logging.md).
SECURITY_SETTINGS = (
    "forwarded_allow_ips",
    "forwarded_headers",
    "proxy_protocol",
    "proxy_allow_ips",
    "path_encoded_slash",
    "path_backslash",
    "underscore_headers",
    "allow_root",
    "user",
    "group",
    "umask",
    "unix_mode",
    "server_header",
    "timeout_s",
    "max_requests",
)
# The limits every startup shows, changed or not.
MAIN_LIMITS = (
    "body_max_bytes",
    "head_max_bytes",
    "head_timeout_s",
    "body_idle_timeout_s",
    "keepalive_timeout_s",
    "request_timeout_s",
    "write_timeout_s",
    "connections_max",
    "client_connections_max",
    "client_in_flight_max",
)


def startup_lines(
    config: Config, binds: list[str], *, admin: str | None = None, admin_token: bool = False
) -> list[str]:
    """What an operator needs to know about a server that starts: the versions, where it
    listens, how many workers and threads, the main limits, the log files, where metrics and
    health are served, and every security-relevant setting that differs from its default.
    Never a secret: the admin token is only said to be required."""
    from hardserve.settings import LIMIT_SETTINGS

    defaults = {s.name: s.default for s in ALL_SETTINGS}

    def value(name: str) -> Any:
        return getattr(config.limits if hasattr(config.limits, name) else config, name)

    def shown(name: str) -> str:
        setting = next(s for s in ALL_SETTINGS if s.name == name)
        text = toml_value(setting, value(name))
        return json.dumps(text) if isinstance(text, str) else str(text).lower()

    changed = [
        name
        for name in (*SECURITY_SETTINGS, *(s.name for s in LIMIT_SETTINGS))
        if value(name) != defaults[name] and name not in MAIN_LIMITS
    ]
    return [
        f"starting {version_text()}",
        f"binds: {', '.join(binds)}",
        f"workers: {config.workers}, threads per worker: {config.threads}, "
        f"pool queue: {config.pool_queue_max}, loop: {config.loop}",
        "limits: " + ", ".join(f"{name}={shown(name)}" for name in MAIN_LIMITS),
        f"logs: error {config.error_log}, access {config.access_log or 'off'}, "
        f"format {config.log_format}"
        + (f", log config {config.log_config}" if config.log_config else ""),
        admin_line(admin, admin_token),
        "security settings changed from their defaults: "
        + (", ".join(f"{name}={shown(name)}" for name in changed) or "none"),
    ]


def admin_line(admin: str | None, token: bool) -> str:
    """Where metrics and health are served (the startup line)."""
    if admin is None:
        return "metrics and health: off (--admin-bind ADDRESS serves them)"
    metrics = "token required" if token else "no token"
    return (
        f"metrics and health: {admin}/metrics ({metrics}), {admin}/livez, {admin}/readyz"
        if not admin.startswith("unix:")
        else f"metrics and health: {admin} (/metrics: {metrics}; /livez, /readyz)"
    )


def run_worker_process(app_spec: str, config: Any, sockets: Any, heartbeat_fd: int) -> int:
    """In a worker process: import the app, then serve until told to stop."""
    from hardserve.loader import AppLoadError, load_app
    from hardserve.worker.allocator import limit_malloc_arenas
    from hardserve.worker.main import run_worker

    if config.malloc_arena_max:
        # Before the app is imported and the pool's threads start: an arena is made for a
        # thread the first time it allocates.
        limit_malloc_arenas(config.malloc_arena_max)
    if config.gc_gen0_threshold:
        # Before the app is imported, so that an app setting its own thresholds keeps them.
        gc.set_threshold(config.gc_gen0_threshold, *gc.get_threshold()[1:])
    try:
        app = load_app(app_spec, chdir=config.chdir, pythonpath=config.pythonpath)
    except AppLoadError as exc:
        click.echo(f"hardserve: cannot load the app: {exc}", err=True)
        return EXIT_APP_LOAD
    return run_worker(app, config, sockets, heartbeat_fd)


main = _build()
