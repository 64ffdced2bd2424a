"""Settings of the second test project. The server and the roles come from the environment
tests/test_tenant_project.py sets (TENANTPROJECT_* and DATABASE_URL)."""

from __future__ import annotations

import os
from urllib.parse import urlparse

_server = urlparse(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
_NAME = os.environ.get("TENANTPROJECT_DB", "tenantproject")


def _database(user: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _NAME,
        "USER": user,
        "PASSWORD": os.environ.get("TENANTPROJECT_PASSWORD", "x"),
        "HOST": _server.hostname or "127.0.0.1",
        "PORT": str(_server.port or 5432),
        "TEST": {"NAME": f"test_{_NAME}", "TEMPLATE": os.environ.get("TENANTPROJECT_TEMPLATE", "template1")},
    }


SECRET_KEY = "django_rls tenant project tests only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.tenantproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.postgres",
    "allauth",
    "allauth.account",
    "rest_framework",
    "rest_framework.authtoken",
    "treebeard",
    "django_rls",
    "tests.tenantproject.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_rls.middleware.RlsMiddleware",
    # The app's own tenant middleware, after RlsMiddleware: it queries (the company by host)
    # before it enters the django-scopes scope that gives the site.
    "tests.tenantproject.shop.middleware.CompanyMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ADAPTER = "tests.tenantproject.shop.accounts.AccountAdapter"  # docs/testing.md: signup as the new user
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test logins

DATABASES = {
    "default": _database(os.environ.get("TENANTPROJECT_APP", "tenantproject_app")),
    "owner": _database(os.environ.get("TENANTPROJECT_OWNER", "tenantproject_owner")),
}
DJANGO_RLS = {
    "OWNER_DATABASE": "owner",
    "APPLY_AFTER_MIGRATE": True,
    "DJANGO_SCOPES_SITE": "company",
    "TEST_BYPASS_ROLE": os.environ.get("TENANTPROJECT_TEST_BYPASS", "tenantproject_test_bypass"),
    # A third-party model: a user's own email addresses only.
    "MODELS": {"account.EmailAddress": {"policy": "owner", "field": "user"}},
}
