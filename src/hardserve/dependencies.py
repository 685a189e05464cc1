"""Dependency floors: versions of hardserve's dependencies known to be vulnerable in a way
that matters to hardserve, below which it must not run.

pyproject.toml already asks for these minimums, but an environment can still hold an older
version (installed with --no-deps, pinned by a lock file, provided by the system). At startup
the command calls `check_floors()` and refuses to serve, with the messages it returns, when
any dependency is below its floor. tests/unit/test_dependencies.py keeps every floor equal to
pyproject.toml's minimum for that dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import NamedTuple

from hardserve.versions import InvalidVersion, version_key


class Floor(NamedTuple):
    name: str  # the distribution name, as installed
    minimum: str  # the first version without the problem
    reason: str  # why the versions below it are refused


KNOWN_VULNERABLE: tuple[Floor, ...] = (
    Floor(
        "h11",
        "0.16.0",
        "CVE-2025-43859: h11 before 0.16.0 accepts any two bytes in place of the CRLF after a"
        " chunk's data, so a proxy that reads the chunked body otherwise and hardserve can"
        " disagree on where a request ends (request smuggling)",
    ),
)


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_floors(
    versions: Mapping[str, str | None] | Callable[[str], str | None] | None = None,
    floors: Iterable[Floor] = KNOWN_VULNERABLE,
) -> list[str]:
    """One message per installed dependency below its floor; empty when all is well.

    `versions` gives the installed versions (a mapping or a function of the name); by default
    they are read from the installed distributions' metadata. A dependency that is not
    installed is not reported here (an optional one such as uvloop may be absent; a required
    one fails at import). A version that cannot be read as a version is reported: it cannot be
    shown to be above the floor.
    """
    if versions is None:
        lookup: Callable[[str], str | None] = installed_version
    elif callable(versions):
        lookup = versions
    else:
        lookup = versions.get
    messages = []
    for floor in floors:
        found = lookup(floor.name)
        if found is None:
            continue
        try:
            below = version_key(found) < version_key(floor.minimum)
        except InvalidVersion:
            messages.append(
                f"{floor.name} {found!r} is installed, which is not a version hardserve can"
                f" compare with its floor {floor.minimum} ({floor.reason})"
            )
            continue
        if below:
            messages.append(
                f"{floor.name} {found} is installed; hardserve needs {floor.name} >="
                f" {floor.minimum} ({floor.reason}). Upgrade it:"
                f" python -m pip install '{floor.name}>={floor.minimum}'"
            )
    return messages
