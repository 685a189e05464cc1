"""An app module that raises something other than an import error while it is imported, like
an app reading a configuration it cannot parse."""

from __future__ import annotations

raise RuntimeError("apps_cli.raises_on_import: configuration is broken")
