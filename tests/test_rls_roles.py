"""manage.py rls_roles: creates roles as django_rls expects them, fixes drift, and is idempotent."""

from __future__ import annotations

import io
import os
from urllib.parse import urlparse

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

ROLES = ["rls_t_app", "rls_t_owner", "rls_t_maint", "rls_t_backup"]
ARGS = [
    "--app-role",
    "rls_t_app",
    "--owner-role",
    "rls_t_owner",
    "--maintenance-role",
    "rls_t_maint",
    "--backup-role",
    "rls_t_backup",
]


@pytest.fixture
def superuser_alias(extra_alias):
    server = urlparse(os.environ["DATABASE_URL"])
    alias = extra_alias("roles_admin", user=server.username or "postgres", password=server.password or "")
    yield alias
    with connections[alias].cursor() as cursor:
        for role in ROLES:
            cursor.execute(f"DROP ROLE IF EXISTS {role}")


def run(alias: str, *extra: str) -> str:
    out = io.StringIO()
    call_command("rls_roles", "--database", alias, *ARGS, *extra, stdout=out)
    return out.getvalue()


def attributes(alias: str, role: str) -> tuple:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = %s",
            [role],
        )
        return cursor.fetchone()


def member(alias: str, role: str, parent: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [role, parent])
        return cursor.fetchone()[0]


def test_creates_fixes_and_is_idempotent(superuser_alias):
    printed = run(superuser_alias, "--dry-run")
    assert 'CREATE ROLE "rls_t_app" NOSUPERUSER NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;' in printed
    assert attributes(superuser_alias, "rls_t_app") is None  # dry run changed nothing

    output = run(superuser_alias)
    assert "create the application role rls_t_app" in output
    assert attributes(superuser_alias, "rls_t_app") == (False, False, False, False, True)
    assert attributes(superuser_alias, "rls_t_maint") == (False, True, False, False, True)
    assert member(superuser_alias, "rls_t_maint", "rls_t_owner")
    assert member(superuser_alias, "rls_t_backup", "pg_read_all_data")
    assert run(superuser_alias).startswith("Nothing to do: rls_t_owner, rls_t_app, rls_t_maint, rls_t_backup")

    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("ALTER ROLE rls_t_app BYPASSRLS CREATEDB")
        cursor.execute("GRANT rls_t_owner TO rls_t_app")
    output = run(superuser_alias)
    assert "set NOCREATEDB NOBYPASSRLS on the application role rls_t_app" in output
    assert "take the application role rls_t_app out of rls_t_owner" in output
    assert attributes(superuser_alias, "rls_t_app") == (False, False, False, False, True)
    assert not member(superuser_alias, "rls_t_app", "rls_t_owner")


def test_refuses_clearly_without_createrole(live_db):
    with pytest.raises(CommandError, match="needs a role with CREATEROLE"):
        run("owner")
