"""Run a reusable app's own test suite with django_rls switched on, as docs/testing.md describes.

Not part of ``make test``: the apps' suites come from their PyPI sdists, in a virtualenv of
their own. Inside ``tests/harness/cluster.py run`` (which exports PG* as the superuser):

    python tests/harness/thirdparty.py roles      # the owner and application roles, the extension in template1

and in the suite's settings, after the app's own:

    from thirdparty import switch_on  # with tests/harness on PYTHONPATH (a suite may have a `tests` package)
    switch_on(globals(), models={"app.Model": {"policy": "custom", "using": "..."}})

With ``THIRDPARTY_RLS=0`` in the environment the suite runs without django_rls, as the
superuser on the same server: the baseline every difference is read against.
"""

from __future__ import annotations

import os
import sys
from typing import Any

OWNER, APP, TEST_BYPASS, PASSWORD = "tp_owner", "tp_app", "tp_test_bypass", "tp"


def _server(alias: str, user: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["PGHOST"],
        "PORT": os.environ["PGPORT"],
        "NAME": "tp",
        "USER": user,
        "PASSWORD": password,
        "TEST": {"NAME": f"test_tp_{alias}"},
    }


def switch_on(namespace: dict[str, Any], models: dict[str, Any], aliases: tuple[str, ...] = ("default",)) -> None:
    """Point the suite's settings at PostgreSQL, and (unless THIRDPARTY_RLS=0) switch django_rls on."""
    if os.environ.get("THIRDPARTY_RLS", "1") == "0":
        namespace["DATABASES"] = {alias: _server(alias, os.environ.get("PGUSER", "postgres"), "") for alias in aliases}
        return
    namespace["DATABASES"] = {alias: _server(alias, APP) for alias in aliases}
    namespace["DATABASES"]["owner"] = _server("default", OWNER)
    namespace["INSTALLED_APPS"] = [*namespace["INSTALLED_APPS"], "django_rls"]
    middleware = list(namespace.get("MIDDLEWARE", []))
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    middleware.insert(
        middleware.index(auth) + 1 if auth in middleware else len(middleware), "django_rls.middleware.RlsMiddleware"
    )
    namespace["MIDDLEWARE"] = middleware
    namespace["TEST_RUNNER"] = "django_rls.test_runner.RlsDiscoverRunner"
    namespace["DJANGO_RLS"] = {"OWNER_DATABASE": "owner", "TEST_BYPASS_ROLE": TEST_BYPASS, "MODELS": models}


def make_roles() -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        for role in (TEST_BYPASS, APP, OWNER):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {OWNER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE ROLE {APP} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE ROLE {TEST_BYPASS} NOLOGIN BYPASSRLS")
        conn.execute(f"GRANT {TEST_BYPASS} TO {APP}")
        conn.execute(f"CREATE DATABASE tp OWNER {OWNER}")
    with psycopg.connect(dbname="template1", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS django_rls")


if __name__ == "__main__":
    if sys.argv[1:] != ["roles"]:
        sys.exit(__doc__)
    make_roles()
