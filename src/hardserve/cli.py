"""The `hardserve` command, generated from the settings table.

Exit statuses: 0 after a clean stop, 2 for a usage error (click's), 3 when a listener cannot be
bound or a setting is invalid, 4 when the app cannot be loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import click

from hardserve import __version__
from hardserve.settings import ALL_SETTINGS, Setting, SettingError, boolean, load

EXIT_CONFIG = 3
EXIT_APP_LOAD = 4


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    return (
        f"hardserve {__version__} "
        f"(Python {platform.python_version()}, h11 {_version('h11')}, uvloop {_version('uvloop')})"
    )


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


def _build() -> click.Command:
    @click.command(
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
    )
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

    # click lists the options in the order they were added: the table's order.
    for setting in ALL_SETTINGS:
        command = _option(setting)(command)
    return command


def serve(app_spec: str, values: dict[str, Any]) -> int:
    """The master: check the settings and the app spec, bind, give up root, then start and
    supervise the workers, which import the app themselves (a HUP starts new workers, which
    import it again: code changes are picked up without a restart)."""
    # Imported here so that `--help` and `--version` stay fast.
    from hardserve.loader import AppLoadError, check_spec
    from hardserve.master.arbiter import Arbiter
    from hardserve.master.listeners import BindError, open_listeners
    from hardserve.master.process import (
        PrivilegeError,
        drop_privileges,
        remove_pid_file,
        set_title,
        write_pid_file,
    )
    from hardserve.master.systemd import Notifier, unset_env
    from hardserve.observe.logs import configure

    try:
        config = load(values)
    except SettingError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    if config.umask is not None:
        os.umask(config.umask)
    configure(
        log_level=config.log_level, access_log=config.access_log, log_format=config.log_format
    )
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
    try:
        drop_privileges(config.user, config.group, allow_root=config.allow_root)
    except (PrivilegeError, OSError) as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    notifier = Notifier.from_env()
    unset_env()  # workers never talk to systemd or take its sockets themselves
    if config.pid_file:
        write_pid_file(config.pid_file)
    set_title(f"hardserve: master {app_spec}")

    def worker_main(heartbeat_fd: int) -> int:
        set_title(f"hardserve: worker {app_spec}")
        return run_worker_process(app_spec, config, sockets, heartbeat_fd)

    try:
        return Arbiter(config, sockets, worker_main, notifier=notifier).run()
    finally:
        if config.pid_file:
            remove_pid_file(config.pid_file)


def run_worker_process(app_spec: str, config: Any, sockets: Any, heartbeat_fd: int) -> int:
    """In a worker process: import the app, then serve until told to stop."""
    from hardserve.loader import AppLoadError, load_app
    from hardserve.worker.main import run_worker

    try:
        app = load_app(app_spec, chdir=config.chdir, pythonpath=config.pythonpath)
    except AppLoadError as exc:
        click.echo(f"hardserve: cannot load the app: {exc}", err=True)
        return EXIT_APP_LOAD
    return run_worker(app, config, sockets, heartbeat_fd)


main = _build()
