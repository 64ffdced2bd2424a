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
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone():
                cursor.execute(f"DROP OWNED BY {role}")  # the TEMPORARY right rls_roles grants on the database
                cursor.execute(f"DROP ROLE {role}")


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


def temp_and_search_path(alias: str, role: str) -> tuple:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT has_database_privilege(%s, current_database(), 'TEMPORARY'),
                   (SELECT s.setconfig FROM pg_db_role_setting s
                     WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = %s)
                       AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))
            """,
            [role, role],
        )
        return cursor.fetchone()


@pytest.fixture
def public_temp(superuser_alias):
    """PUBLIC's default TEMPORARY right on the test database, as on a fresh database; restored afterwards."""
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
        cursor.execute(f'GRANT TEMPORARY ON DATABASE "{database}" TO PUBLIC')
    yield database
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC')


def test_takes_temp_away_and_pins_search_path(superuser_alias, public_temp):
    printed = run(superuser_alias, "--dry-run")
    # TEMPORARY is PUBLIC's by default: revoking it from the app role alone would change nothing.
    assert f'REVOKE TEMPORARY ON DATABASE "{public_temp}" FROM PUBLIC;' in printed
    for role in ("rls_t_owner", "rls_t_maint", "rls_t_backup"):
        assert f'GRANT TEMPORARY ON DATABASE "{public_temp}" TO "{role}";' in printed
    assert f'ALTER ROLE "rls_t_app" IN DATABASE "{public_temp}" SET search_path = "public", "pg_temp";' in printed

    output = run(superuser_alias)
    assert "stop the application role rls_t_app (and PUBLIC) from creating temporary objects" in output
    assert (
        f"pin the search_path of the application role rls_t_app in database {public_temp} to public, pg_temp" in output
    )
    assert temp_and_search_path(superuser_alias, "rls_t_app") == (False, ["search_path=public, pg_temp"])
    assert temp_and_search_path(superuser_alias, "rls_t_owner") == (True, None)
    assert run(superuser_alias).startswith("Nothing to do")

    # A search_path set by hand that does not end with pg_temp is pinned again, keeping its schemas.
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute(f'ALTER ROLE rls_t_app IN DATABASE "{public_temp}" SET search_path = "$user", public, extra')
    assert "to public, extra, pg_temp" in run(superuser_alias)


def test_the_app_role_cannot_create_temporary_objects_after_rls_roles(superuser_alias, public_temp, database):
    import psycopg

    run(superuser_alias)
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("ALTER ROLE rls_t_app PASSWORD 'x'")
    dsn = psycopg.conninfo.make_conninfo(database.admin, user="rls_t_app", password="x")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("public, pg_temp",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="temporary tables"):
            conn.execute("CREATE TEMP TABLE testapp_note (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="temporary tables"):
            conn.execute("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'")


def test_refuses_to_demote_a_superuser(superuser_alias):
    """Run as written, the old advice removed the only superuser of a cluster: rls_roles names another role."""
    server = urlparse(os.environ["DATABASE_URL"])
    superuser = server.username or "postgres"
    out = io.StringIO()
    with pytest.raises(CommandError, match=rf"application role {superuser} is a superuser; rls_roles does not demote"):
        call_command("rls_roles", "--database", superuser_alias, "--app-role", superuser, "--dry-run", stdout=out)
    assert attributes(superuser_alias, superuser)[0] is True
    with pytest.raises(CommandError, match="--owner-role"):
        call_command("rls_roles", "--database", superuser_alias, *ARGS[:2], "--owner-role", superuser, stdout=out)
    assert attributes(superuser_alias, superuser)[0] is True


def test_temporary_right_through_a_membership_is_reported(superuser_alias):
    """TEMPORARY inherited from another role cannot be revoked from PUBLIC: rls_roles says which membership."""
    run(superuser_alias)
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
        cursor.execute("CREATE ROLE rls_t_tempers")
        cursor.execute(f'GRANT TEMPORARY ON DATABASE "{database}" TO rls_t_tempers')
        cursor.execute("GRANT rls_t_tempers TO rls_t_app")
    try:
        with pytest.raises(CommandError, match="through its membership in rls_t_tempers"):
            run(superuser_alias)
    finally:
        with connections[superuser_alias].cursor() as cursor:
            cursor.execute("DROP OWNED BY rls_t_tempers")
            cursor.execute("DROP ROLE rls_t_tempers")


def test_takes_the_app_role_out_of_roles_that_lead_to_a_bypassing_role(superuser_alias):
    """A membership through which the application role can SET ROLE to a superuser or BYPASSRLS role goes."""
    run(superuser_alias)
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("CREATE ROLE rls_t_bypasser NOLOGIN BYPASSRLS")
        cursor.execute("CREATE ROLE rls_t_middle NOLOGIN")
        cursor.execute("CREATE ROLE rls_t_harmless NOLOGIN")
        cursor.execute("GRANT rls_t_bypasser TO rls_t_middle")
        cursor.execute("GRANT rls_t_middle, rls_t_harmless TO rls_t_app")
    try:
        output = run(superuser_alias)
        assert "take the application role rls_t_app out of rls_t_middle" in output
        assert not member(superuser_alias, "rls_t_app", "rls_t_bypasser")
        assert member(superuser_alias, "rls_t_app", "rls_t_harmless")  # leads nowhere: left alone
        assert run(superuser_alias).startswith("Nothing to do")
    finally:
        with connections[superuser_alias].cursor() as cursor:
            cursor.execute("DROP ROLE rls_t_middle, rls_t_bypasser, rls_t_harmless")


def test_the_owner_may_create_the_test_database(superuser_alias):
    """pytest-django creates the test database as the owner: rls_roles never takes CREATEDB from it, and grants it
    with --owner-createdb; the application role never gets it."""
    printed = run(superuser_alias, "--dry-run", "--owner-createdb")
    assert 'CREATE ROLE "rls_t_owner" NOSUPERUSER NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS;' in printed
    run(superuser_alias)
    assert attributes(superuser_alias, "rls_t_owner")[3] is False  # created without CREATEDB by default
    assert "set CREATEDB on the owner role rls_t_owner" in run(superuser_alias, "--owner-createdb")
    assert attributes(superuser_alias, "rls_t_owner")[3] is True
    # A later plain run leaves it: the role setup and the test setup agree.
    assert run(superuser_alias).startswith("Nothing to do")
    assert run(superuser_alias, "--dry-run") == run(superuser_alias, "--dry-run", "--owner-createdb")
    assert attributes(superuser_alias, "rls_t_app")[3] is False


def test_first_setup_says_to_connect_as_an_administrator(live_db, extra_alias, settings):
    """On a first setup the owner role does not exist yet: even --dry-run cannot connect as it."""
    alias = extra_alias("future_owner", user="rls_t_not_created_yet")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "OWNER_DATABASE": alias}
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("rls_roles", "--dry-run", stdout=out)
    message = str(raised.value)
    assert "cannot connect through database alias 'future_owner' as rls_t_not_created_yet" in message
    assert "does not exist yet on a first setup" in message
    assert "manage.py rls_roles --database admin" in message


def test_plain_migrate_as_the_app_role_names_the_command(live_db):
    """migrate through "default" (the app role, which may not create tables) stops before the first migration."""
    with pytest.raises(
        CommandError, match=r"run manage.py rls_migrate, which migrates through 'owner', the owner role"
    ):
        call_command("migrate", "testapp", "zero", database="default", verbosity=0)
    # Nothing to migrate: nothing to say.
    call_command("migrate", database="default", verbosity=0)


def statement_bound(alias: str, role: str) -> list | None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = 0 AND setrole = "
            "(SELECT oid FROM pg_roles WHERE rolname = %s)",
            [role],
        )
        row = cursor.fetchone()
        return row[0] if row else None


def test_makes_the_app_role_statement_bound(superuser_alias):
    assert 'ALTER ROLE "rls_t_app" SET "django_rls"."statement_bound" = on;' in run(superuser_alias, "--dry-run")
    output = run(superuser_alias)
    assert "make the application role rls_t_app statement-bound" in output
    assert statement_bound(superuser_alias, "rls_t_app") == ["django_rls.statement_bound=on"]
    assert statement_bound(superuser_alias, "rls_t_owner") is None  # the owner keeps the setter functions
    assert run(superuser_alias).startswith("Nothing to do")
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("ALTER ROLE rls_t_app SET django_rls.statement_bound = off")
    assert "statement-bound" in run(superuser_alias)
    assert statement_bound(superuser_alias, "rls_t_app") == ["django_rls.statement_bound=on"]


def test_an_app_role_that_owns_tables_is_told_how_to_transfer_them(superuser_alias):
    """An existing project migrated as the role the site connects as: rls_roles says to move the tables."""
    run(superuser_alias)
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("CREATE TABLE rls_t_legacy (id serial PRIMARY KEY)")
        cursor.execute("ALTER TABLE rls_t_legacy OWNER TO rls_t_app")
    try:
        err = io.StringIO()
        call_command("rls_roles", "--database", superuser_alias, *ARGS, stdout=io.StringIO(), stderr=err)
        warning = err.getvalue()
        assert "the application role rls_t_app owns 2 relation(s) in this database" in warning
        assert "rls_t_legacy" in warning and "rls_t_legacy_id_seq" in warning
        assert "REASSIGN OWNED BY rls_t_app TO rls_t_owner;" in warning
        assert "manage.py rls_migrate" in warning
    finally:
        with connections[superuser_alias].cursor() as cursor:
            cursor.execute("DROP TABLE rls_t_legacy")
    err = io.StringIO()
    call_command("rls_roles", "--database", superuser_alias, *ARGS, stdout=io.StringIO(), stderr=err)
    assert err.getvalue() == ""
