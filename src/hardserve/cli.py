"""The `hardserve` command, generated from the settings table.

Exit statuses: 0 after a clean stop, 2 for a usage error (click's), 3 when a listener cannot be
bound or a setting is invalid, 4 when the app cannot be loaded.
"""

from __future__ import annotations

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
    # Imported here so that `--help` and `--version` stay fast.
    from hardserve.loader import AppLoadError, load_app
    from hardserve.master.listeners import BindError, open_listeners
    from hardserve.observe.logs import configure
    from hardserve.worker.main import run_worker

    try:
        config = load(values)
    except SettingError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    configure(
        log_level=config.log_level, access_log=config.access_log, log_format=config.log_format
    )
    try:
        app = load_app(app_spec, chdir=config.chdir, pythonpath=config.pythonpath)
    except AppLoadError as exc:
        click.echo(f"hardserve: cannot load the app: {exc}", err=True)
        return EXIT_APP_LOAD
    try:
        sockets = open_listeners(config)
    except BindError as exc:
        click.echo(f"hardserve: {exc}", err=True)
        return EXIT_CONFIG
    return run_worker(app, config, sockets)


main = _build()
