"""Version numbers as PyPI orders them (PEP 440), without a third-party parser.

hardserve compares versions in two places: its own version against the ranges of its
advisories (advisories.py), and its dependencies' versions against their floors
(dependencies.py). Both need the ordering of the Python package index: 0.16.0 equals 0.16,
1.0rc1 comes before 1.0, 1.0.post1 after it, 1.0.dev1 before 1.0a1. Local labels (+ubuntu1)
do not change the order. `packaging` does the same but is not a runtime dependency.
"""

from __future__ import annotations

import re

_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}

_VERSION_RE = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:[-_.]?(?P<pre>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre_n>[0-9]*))?
    (?:-(?P<post_implicit>[0-9]+)|[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>[0-9]*))?
    (?:[-_.]?(?P<dev>dev)[-_.]?(?P<dev_n>[0-9]*))?
    (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?
    """,
    re.VERBOSE | re.IGNORECASE,
)

# A sort key: epoch, release (trailing zeros removed), pre-release, post-release, development.
VersionKey = tuple[int, tuple[int, ...], tuple[int, int], int, tuple[int, int]]


class InvalidVersion(ValueError):
    pass


def version_key(text: str) -> VersionKey:
    """A key that sorts versions as PEP 440 does. Raises InvalidVersion for anything else."""
    match = _VERSION_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidVersion(f"not a version: {text!r}")
    release = [int(part) for part in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    has_post = match["post_implicit"] is not None or match["post_n"] is not None
    post = int(match["post_implicit"] or match["post_n"] or 0) if has_post else -1
    dev = (0, int(match["dev_n"] or 0)) if match["dev"] else (1, 0)
    if match["pre"]:
        pre = (_PRE_RANK[match["pre"].lower()], int(match["pre_n"] or 0))
    elif match["dev"] and not has_post:
        pre = (-1, 0)  # 1.0.dev1 comes before 1.0a1
    else:
        pre = (3, 0)  # a final release comes after its pre-releases
    return (int(match["epoch"] or 0), tuple(release), pre, post, dev)


def is_version(text: str) -> bool:
    try:
        version_key(text)
    except InvalidVersion:
        return False
    return True
