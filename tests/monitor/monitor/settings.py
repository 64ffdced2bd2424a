"""A monitoring service shaped like the one issue 15 put under protection: the tenant is a project, named by
the URL, by an API key or by a check's ping URL; no tenant middleware; Django's own test runner.

The server and role names come from the environment (tests/test_monitor_project.py sets them).
"""

from __future__ import annotations

import os


def _database(user: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "monitor",
        "USER": user,
        "PASSWORD": os.environ["MONITOR_PASSWORD"],
        "HOST": os.environ["MONITOR_HOST"],
        "PORT": os.environ["MONITOR_PORT"],
        # The template holds the extension (created there by a superuser).
        "TEST": {"NAME": "test_monitor", "TEMPLATE": os.environ["MONITOR_TEMPLATE"]},
    }


SECRET_KEY = "monitor test project only"
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "monitor.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django_rls",
    "monitor",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_rls.middleware.RlsMiddleware",
]
DATABASES = {
    "default": _database(os.environ["MONITOR_APP"]),
    "owner": _database(os.environ["MONITOR_OWNER"]),
    "bypass": _database(os.environ["MONITOR_BYPASS"]),
}
DATABASE_ROUTERS = ["django_rls.maintenance.BypassRouter"]
TEST_RUNNER = "django_rls.test_runner.RlsDiscoverRunner"
DJANGO_RLS = {
    "OWNER_DATABASE": "owner",
    "BYPASS_DATABASE": "bypass",
    "TEST_BYPASS_ROLE": os.environ["MONITOR_TEST_BYPASS"],
    # The project of an API key, of a check's secret ping URL, or named by the URL for a signed-in user.
    "SITE_RESOLVER": "monitor.resolvers.project",
}
