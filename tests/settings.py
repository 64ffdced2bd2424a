"""Django settings for the test suite. The server comes from DATABASE_URL (see tests/harness).

Three aliases reach the same test database as three roles: "default" is the
application (no superuser, no BYPASSRLS, owns nothing), "owner" owns the
tables and runs migrate and rls_apply, "bypass" is the BYPASSRLS maintenance
role behind django_rls.bypass().
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from tests.roles import APP_ROLE, BYPASS_ROLE, OWNER_ROLE, PASSWORD, TEST_DB

_server = urlparse(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))


def _database(role: str, **extra: object) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": TEST_DB,
        "USER": role,
        "PASSWORD": PASSWORD,
        "HOST": _server.hostname or "127.0.0.1",
        "PORT": str(_server.port or 5432),
        "TEST": {"NAME": TEST_DB},
        **extra,
    }


SECRET_KEY = "django_rls tests only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
# The async test client cannot replace its Host header, so async tests send X-Forwarded-Host.
USE_X_FORWARDED_HOST = True
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.sites",
    "django_rls",
    "tests.testapp",
    "tests.thirdparty",
    "tests.quoting",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_rls.middleware.RlsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    # Django's default client-side binding, as docs/getting-started.md sets it up: queries carry their context.
    "default": _database(APP_ROLE),
    "owner": _database(OWNER_ROLE),
    "bypass": _database(BYPASS_ROLE),
}
DATABASE_ROUTERS = ["django_rls.maintenance.BypassRouter"]
DJANGO_RLS = {
    "OWNER_DATABASE": "owner",
    "BYPASS_DATABASE": "bypass",
    # Two policies from settings, one of them Custom: a user's own widgets, never the "hidden" ones.
    "MODELS": {
        "thirdparty.Widget": {
            "policies": [
                {"policy": "owner", "field": "owner_id"},
                {"policy": "custom", "using": "name <> 'hidden'", "name": "not_hidden"},
            ]
        }
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# A second alias of the application role (as a read replica would be), with server-side binding
# (queries carry their context too, their own parameters bound after it), and one that uses
# Django's psycopg connection pool: both must get the context too.
DATABASES["replica"] = _database(APP_ROLE, OPTIONS={"server_side_binding": True})
DATABASES["pooled"] = _database(APP_ROLE, OPTIONS={"pool": {"min_size": 1, "max_size": 4}})
