"""WSGI entry point of the test Django project: `hardserve tests.apps.django_project.wsgi`.

Django is configured when this module is imported, never when the settings module is: tests that
do not serve Django never load it. With DJANGO_SETTINGS_MODULE set (how a deployment runs it),
Django reads that module itself. Without it (the tests serving the project in their own process)
the same settings are applied with settings.configure(), which, unlike setting the environment
variable, is not inherited by the subprocesses other tests start.
"""

from __future__ import annotations

import importlib
import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

SETTINGS_MODULE = "tests.apps.django_project.settings"


def _configure() -> None:
    if settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    module = importlib.import_module(SETTINGS_MODULE)
    settings.configure(**{name: getattr(module, name) for name in dir(module) if name.isupper()})


_configure()
application = get_wsgi_application()
