"""An app module whose own import fails: it depends on a package that is not installed.

hardserve must show this error (it is the app's bug, not a wrong MODULE:APP spec), so the
user sees which dependency is missing and where it is imported.
"""

from __future__ import annotations

# The missing dependency; the name is chosen so that it can never be installed by accident.
import hardserve_test_dependency_that_is_not_installed  # noqa: F401


def app(environ: object, start_response: object) -> list[bytes]:
    return []
