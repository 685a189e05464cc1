"""The security advisories shipped inside the package, and which of them affect a version.

The advisories are OSV records (https://ossf.github.io/osv-schema/), written in
security/advisories/ and copied into hardserve/_advisories/ so that an installed hardserve
carries them; tests/unit/test_advisories.py keeps the copy equal to the source and validates
every record against the schema. This module reads them with the standard library only.

`affecting(version, advisories)` evaluates, for the package `hardserve` in the `PyPI`
ecosystem, each affected entry's `versions` list and its ECOSYSTEM and SEMVER ranges (the
`introduced`, `fixed` and `last_affected` events, as the OSV format defines them; `limit`
events only bound GIT ranges, which name commits and are not evaluated). A withdrawn advisory
affects nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from hardserve.versions import InvalidVersion, VersionKey, version_key

PACKAGE = "hardserve"
ECOSYSTEM = "PyPI"
_DATA_PACKAGE = "hardserve._advisories"
_EVALUATED_RANGES = ("ECOSYSTEM", "SEMVER")

Advisory = dict[str, Any]


def bundled_advisories() -> list[Advisory]:
    """Every advisory shipped with this hardserve, sorted by id."""
    records = []
    for entry in resources.files(_DATA_PACKAGE).iterdir():
        if entry.name.endswith(".json") and entry.is_file():
            record = json.loads(entry.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError(f"{entry.name}: not an OSV record")
            records.append(record)
    return sorted(records, key=lambda record: record["id"])


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_hardserve(affected: Mapping[str, Any]) -> bool:
    package = affected.get("package") or {}
    return package.get("ecosystem") == ECOSYSTEM and _normalized(
        str(package.get("name", ""))
    ) == _normalized(PACKAGE)


def _event_key(event: Mapping[str, str]) -> VersionKey:
    (value,) = event.values()
    if value == "0":  # "introduced": "0" means every version from the first one on
        return (-1, (), (0, 0), -1, (0, 0))
    return version_key(value)


def in_range(version: str, events: Sequence[Mapping[str, str]]) -> bool:
    """Whether `version` is inside an ECOSYSTEM or SEMVER range, given its events.

    The events are taken in version order: an `introduced` at or below the version makes it
    affected, a `fixed` at or below it makes it no longer affected, a `last_affected` below it
    likewise. Raises InvalidVersion if an event's version cannot be read.
    """
    key = version_key(version)
    affected = False
    for event in sorted((e for e in events if "limit" not in e), key=_event_key):
        at = _event_key(event)
        if "introduced" in event:
            if key >= at:
                affected = True
        elif "fixed" in event:
            if key >= at:
                affected = False
        elif "last_affected" in event and key > at:
            affected = False
    return affected


def _affects(version: str, affected: Mapping[str, Any]) -> bool:
    listed = affected.get("versions") or []
    if any(version_key(v) == version_key(version) for v in listed):
        return True
    return any(
        in_range(version, ranges.get("events") or [])
        for ranges in affected.get("ranges") or []
        if ranges.get("type") in _EVALUATED_RANGES
    )


def affecting(version: str, advisories: Iterable[Mapping[str, Any]]) -> list[Advisory]:
    """The advisories (not withdrawn) that affect hardserve `version`, in the order given.

    An advisory whose versions cannot be read is counted as affecting: a record that cannot
    be checked must not pass silently.
    """
    found = []
    for advisory in advisories:
        if advisory.get("withdrawn"):
            continue
        for entry in advisory.get("affected") or []:
            if not _is_hardserve(entry):
                continue
            try:
                hit = _affects(version, entry)
            except InvalidVersion:
                hit = True
            if hit:
                found.append(dict(advisory))
                break
    return found


def summary_line(advisory: Mapping[str, Any]) -> str:
    """One line for a listing: id, aliases, summary, and the first fixed version if any."""
    aliases = ", ".join(advisory.get("aliases") or [])
    fixed = sorted(
        {
            event["fixed"]
            for entry in advisory.get("affected") or []
            if _is_hardserve(entry)
            for ranges in entry.get("ranges") or []
            for event in ranges.get("events") or []
            if "fixed" in event
        },
        key=_fixed_order,
    )
    parts = [advisory.get("id", "?")]
    if aliases:
        parts.append(f"({aliases})")
    parts.append(str(advisory.get("summary", "")))
    if fixed:
        parts.append(f"[fixed in {', '.join(fixed)}]")
    return " ".join(parts)


def _fixed_order(text: str) -> tuple[int, VersionKey | str]:
    try:
        return (0, version_key(text))
    except InvalidVersion:
        return (1, text)
