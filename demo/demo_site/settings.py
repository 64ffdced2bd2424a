"""Settings of the demo: two companies (sites) on one database, kept apart by django_rls."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from django_rls.resolvers import from_attribute

_server = urlparse(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
DEMO_DB = "django_rls_demo"
DEMO_PASSWORD = "demo"


def _database(role: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DEMO_DB,
        "USER": role,
        "PASSWORD": DEMO_PASSWORD,
        "HOST": _server.hostname or "127.0.0.1",
        "PORT": str(_server.port or 5432),
    }


SECRET_KEY = "demo only, not secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver", "0.0.0.0"]
ROOT_URLCONF = "demo_site.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.sites",
    "django_rls",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "shop.middleware.SiteFromPathMiddleware",
    "django_rls.middleware.RlsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csrf",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": _database("demo_app"),  # the application: no superuser, no BYPASSRLS, owns nothing
    "owner": _database("demo_owner"),  # owns the tables: migrate and rls_apply
    "maintenance": _database("demo_maintenance"),  # BYPASSRLS, used only inside django_rls.bypass()
}
DATABASE_ROUTERS = ["django_rls.maintenance.BypassRouter"]
# Django's own pages ask django.contrib.sites for the current site (the admin's login page does), by the
# request's host unless SITE_ID is set; the demo is served on 127.0.0.1, which no Site row names (the
# companies are Site rows chosen by the URL, not the host). Nothing of django_rls reads it here: the site
# of a request is the one shop.middleware finds.
SITE_ID = 1
DJANGO_RLS = {
    # set by shop.middleware from the URL (/admin/: from the logged-in user's company)
    "SITE_RESOLVER": from_attribute("site"),
    "OWNER_DATABASE": "owner",
    "BYPASS_DATABASE": "maintenance",
    "SIGNING_KEY": os.environ.get("DJANGO_RLS_SIGNING_KEY"),
}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
