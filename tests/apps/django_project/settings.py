"""Settings of the test Django project.

Plain constants only: importing this module configures nothing, so test collection may import
it freely. wsgi.py applies it, either through DJANGO_SETTINGS_MODULE (as a deployment does) or
with settings.configure() when the tests serve the project in their own process.
"""

from __future__ import annotations

from typing import Any

# For these tests only; it protects nothing.
SECRET_KEY = "insecure-hardserve-functional-tests-only-key"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.apps.django_project.urls"
INSTALLED_APPS: list[str] = []
# The usual production middleware; the POST views are csrf_exempt, since the test clients
# have no form page to take a token from.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
# No view touches a database.
DATABASES: dict[str, Any] = {}
# No templates: the 404 and 500 pages are then Django's built-in short ones.
TEMPLATES: list[dict[str, Any]] = []
USE_TZ = True
# Leave the logging tree as the server (or pytest) set it up: Django's errors still reach it
# through the django.request logger, and serving Django does not reconfigure anyone else's.
LOGGING_CONFIG = None
# The tests upload about 300 KiB; keep such files in memory so no temporary file is written.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
