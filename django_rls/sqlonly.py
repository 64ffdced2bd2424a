"""The SQL-only mode: django_rls's SQL objects without the C library, for hosted PostgreSQL.

Where no third-party C library can be loaded (RDS, Cloud SQL, Azure, Supabase,
Neon, ...) and nobody is a superuser, ``manage.py rls_apply --install`` installs
the same SQL names (``rls.set_context()``, ``rls.site_id()``, ``rls.protect()``,
``rls.problems``, ...) from plain SQL files, as the owner role: a role with
CREATEROLE that owns the database, such as RDS's master user. What differs from
the C library, and why, is in docs/security.md ("SQL-only mode").

The files come from ``sql/sqlonly`` (what only this mode has) and ``sql/install``
(what both modes share: the policy helpers, the audit trail's tables, its read rules
and its log view, retention, and the problems both report).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from psycopg import sql

import django_rls

CONTEXT_ROLE = "django_rls_context"
# Owns rls._member_rows(), the read behind rls.member_of() (sql/sqlonly/27_membership.sql).
MEMBER_ROLE = "django_rls_member"
# Owns the audit log and runs the capture functions rls_audit.enable() generates (sql/sqlonly/22_audit_capture.sql).
AUDIT_ROLE = "django_rls_audit"
# In install order: shared files are the C library's own, unchanged.
SCRIPTS = (
    "sqlonly/10_context.sql",
    "sqlonly/11_tokens.sql",
    "install/20_policies.sql",
    "install/21_audit_base.sql",
    "sqlonly/21_audit_log.sql",
    "install/21_audit_read_rules.sql",
    "install/21_audit_view.sql",
    "sqlonly/22_audit_capture.sql",
    "sqlonly/23_audit_admin.sql",
    "install/24_audit_retention.sql",
    "sqlonly/27_membership.sql",
    "install/28_citus.sql",
    "install/29_problems.sql",
    "sqlonly/30_status.sql",
    "install/31_status.sql",
    "sqlonly/90_privileges.sql",
    "sqlonly/95_audit_captures.sql",
)


class InstallError(Exception):
    """The SQL-only mode cannot be installed here; the message says what to do."""


def installed_mode(cursor: Any) -> str | None:
    """The mode installed in the connected database: "c" (the extension), "sql" (SQL-only) or None."""
    cursor.execute(
        """
        SELECT CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'django_rls') THEN 'c'
                    WHEN to_regprocedure('rls._sqlonly_version()') IS NOT NULL THEN 'sql' END
        """
    )
    return cursor.fetchone()[0]


def installed_version(cursor: Any) -> str | None:
    """The django_rls version of the installed mode, or None when neither is installed."""
    mode = installed_mode(cursor)
    if mode == "c":
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'django_rls'")
    elif mode == "sql":
        cursor.execute("SELECT rls._sqlonly_version()")
    else:
        return None
    return cursor.fetchone()[0]


def script_text(upgrade: bool = False) -> str:
    """The SQL the mode installs, in order, with this package's version.

    ``upgrade``: the same SQL made to run over an installation of another version
    (``_upgrade_text``).
    """
    root = resources.files("django_rls") / "sql"
    parts = []
    for name in SCRIPTS:
        source = root / name
        if not source.is_file():
            raise InstallError(
                f"the SQL-only mode's script {name} is missing from this installation of django_rls ({root}): "
                "reinstall the package from a checkout or an sdist"
            )
        parts.append(f"-- {name}\n" + source.read_text(encoding="utf-8"))
    text = "\n".join(parts).replace("@VERSION@", django_rls.EXTENSION_VERSION)
    return _upgrade_text(text) if upgrade else text


def _upgrade_text(text: str) -> str:
    """The install script made to run over an older installation in place.

    Functions are replaced, keeping their oids, so the policies that call them stay as
    they are; tables (the signing keys, spent tokens and roles that must sign, the audit
    trail and its registrations) and the one type are kept with their contents; views
    of schema rls are dropped beforehand (``_upgrade``) and created again, those of
    rls_audit replaced. Everything else the script does (comments, owners, grants) can
    be done twice.
    """
    text = re.sub(r"^CREATE FUNCTION ", "CREATE OR REPLACE FUNCTION ", text, flags=re.MULTILINE)
    # The audit trail's schema and views are kept (the trail, the generated captures, and what
    # depends on the log's row type, such as rls_audit.history()); their views are replaced.
    text = re.sub(r"^CREATE SCHEMA rls_audit;", "CREATE SCHEMA IF NOT EXISTS rls_audit;", text, flags=re.MULTILINE)
    text = re.sub(r"^CREATE VIEW rls_audit\.", "CREATE OR REPLACE VIEW rls_audit.", text, flags=re.MULTILINE)
    text = re.sub(r"^CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", text, flags=re.MULTILINE)
    # The marker type of the context tables: one label, never changed, so an existing one is kept.
    return re.sub(
        r"^CREATE TYPE (rls\.\w+) (AS ENUM \([^;]*\));$",
        r"DO $upgrade$ BEGIN IF to_regtype('\1') IS NULL THEN CREATE TYPE \1 \2; END IF; END $upgrade$;",
        text,
        flags=re.MULTILINE,
    )


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string ("0.2.0rc1" -> (0, 2, 0)), for telling upgrades from downgrades."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()


def _upgrade(cursor: Any, installed: str) -> None:
    """Bring an installation of another, older version to this package's, in place (the caller's transaction).

    What the older version had and this one does not is dropped, unless something of the
    project's uses it (a policy calling a function this version no longer has): then the
    whole upgrade is refused, and nothing has changed.
    """
    cursor.execute(
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'rls' AND c.relkind = 'v'"
    )
    views = cursor.fetchone()[0]
    # Each function's row version before: CREATE OR REPLACE writes a new one, so an unchanged one is a
    # function of the older version that this one did not create again.
    old_functions = "SELECT p.oid, p.xmin::text FROM pg_proc p WHERE p.pronamespace = 'rls'::regnamespace"
    cursor.execute(old_functions)
    before = set(cursor.fetchall())
    cursor.execute("SAVEPOINT django_rls_upgrade")
    try:
        if views:
            cursor.execute(f"DROP VIEW {views}")
        cursor.execute(script_text(upgrade=True))
        cursor.execute(old_functions)
        for oid, _ in sorted(before & set(cursor.fetchall())):
            cursor.execute("SELECT %s::oid::regprocedure::text", [oid])
            cursor.execute(f"DROP FUNCTION {cursor.fetchone()[0]}")
    except Exception as exc:
        cursor.execute("ROLLBACK TO SAVEPOINT django_rls_upgrade")
        raise InstallError(
            f"cannot upgrade the SQL-only mode of django_rls {installed} to {django_rls.EXTENSION_VERSION} in place: "
            f"{str(exc).splitlines()[0]}. Nothing was changed. If an object of the project uses what the new version "
            "no longer has (a view over rls.status, a policy of your own calling a removed function), drop or change "
            'it first and run rls_apply --install again (docs/operating.md, "Upgrading the SQL-only mode")'
        ) from exc
    cursor.execute("RELEASE SAVEPOINT django_rls_upgrade")


def _refuse_unless_able(cursor: Any) -> None:
    """Say what is missing before changing anything: the rights the installation needs."""
    cursor.execute(
        """
        SELECT r.rolsuper, r.rolcreaterole, has_database_privilege(current_database(), 'CREATE'),
               pg_has_role(current_user, d.datdba, 'MEMBER'), current_user, current_database()
          FROM pg_roles r, pg_database d
         WHERE r.rolname = current_user AND d.datname = current_database()
        """
    )
    superuser, createrole, can_create, owns_database, role, database = cursor.fetchone()
    if not superuser and not createrole:
        raise InstallError(
            f"role {role} cannot create the role {CONTEXT_ROLE} the SQL-only mode needs: run rls_apply --install as a "
            "role with CREATEROLE (on hosted PostgreSQL, the administrator role the provider created)"
        )
    if not superuser and not (can_create and owns_database):
        raise InstallError(
            f"role {role} does not own database {database}: run rls_apply --install as the database's owner, or "
            f"ALTER DATABASE {database} OWNER TO {role} first"
        )


def _role_steps(cursor: Any, name: str) -> list[sql.Composable]:
    """Create one of the mode's roles (NOLOGIN, nothing else) and let the installing role act as it."""
    statements: list[sql.Composable] = []
    role = sql.Identifier(name)
    cursor.execute(
        "SELECT rolsuper OR rolbypassrls OR rolcanlogin OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
        [name],
    )
    row = cursor.fetchone()
    if row is None:
        statements.append(
            sql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB").format(role)
        )
    elif row[0]:
        raise InstallError(
            f"role {name} exists and can log in, create roles or databases, or bypasses row level security: "
            f"ALTER ROLE {name} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB, then install again"
        )
    member = False
    if row is not None:
        # PostgreSQL 16 and later give a role's creator only the ADMIN option on it; the installing role must
        # also inherit its rights and be able to SET ROLE to it (ALTER ... OWNER TO it asks for that).
        cursor.execute(
            "SELECT pg_has_role(current_user, %s, 'USAGE') AND (current_setting('server_version_num')::int < 160000 "
            "OR pg_has_role(current_user, %s, 'SET'))",
            [name, name],
        )
        member = cursor.fetchone()[0]
        cursor.execute(
            "SELECT NOT pg_has_role(current_user, %s, 'MEMBER WITH ADMIN OPTION') "
            "AND current_setting('server_version_num')::int >= 160000, current_user",
            [name],
        )
        cannot_grant, installer = cursor.fetchone()
        if not member and cannot_grant:
            raise InstallError(
                f"role {name} exists (another role created it, for another database of this server) and {installer} "
                f"may not grant it to itself: PostgreSQL 16 and later ask for the ADMIN option on it. Have its "
                f"creator or a superuser run GRANT {name} TO {installer} WITH ADMIN OPTION, then install again"
            )
    if not member:
        statements.append(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
    return statements


def install(cursor: Any, signing_keys: list[str], app_role: str | None = None) -> list[str]:
    """Install the SQL-only mode in the connected database (in the caller's transaction); say what was done.

    Idempotent: an installation of this version is kept (only missing signing keys are
    added); an older one is upgraded in place (``_upgrade``); a newer one, or the C
    extension, is refused with what to do. With
    signing keys, ``app_role`` is required to sign from then on (rls.require_signature).
    """
    version = installed_version(cursor)
    mode = installed_mode(cursor) if version is not None else None
    done: list[str] = []
    if mode == "c":
        raise InstallError(
            "the django_rls extension (the C library) is installed in this database, so the SQL-only mode is not "
            "needed: run rls_apply without --install. To move the database to the SQL-only mode (a server without "
            'the library), see docs/operating.md, "Moving between the SQL-only mode and the library"; it drops the '
            "extension's audit log"
        )
    if version is not None and _release(version) > _release(django_rls.EXTENSION_VERSION):
        raise InstallError(
            f"the SQL-only mode of django_rls {version} is installed, newer than this package "
            f"({django_rls.EXTENSION_VERSION}): install django-pg-rls {version} or later; going back to an older "
            "version in place is not supported"
        )
    if version is not None and version != django_rls.EXTENSION_VERSION:
        _refuse_unless_able(cursor)
        role = sql.Identifier(CONTEXT_ROLE)
        member_role = sql.Identifier(MEMBER_ROLE)
        # A role a newer version needs (django_rls_member came with rls.member_of()) is created as in an install.
        for statement in (
            _role_steps(cursor, CONTEXT_ROLE) + _role_steps(cursor, MEMBER_ROLE) + _role_steps(cursor, AUDIT_ROLE)
        ):
            cursor.execute(statement)
        cursor.execute(sql.SQL("GRANT CREATE ON SCHEMA rls TO {}, {}").format(role, member_role))
        _upgrade(cursor, version)
        cursor.execute(sql.SQL("REVOKE CREATE ON SCHEMA rls FROM {}, {}").format(role, member_role))
        done.append(f"upgraded the SQL-only mode of django_rls from {version} to {django_rls.EXTENSION_VERSION}")
    if version is None:
        _refuse_unless_able(cursor)
        role = sql.Identifier(CONTEXT_ROLE)
        member_role = sql.Identifier(MEMBER_ROLE)
        cursor.execute("SELECT current_database()")
        database = sql.Identifier(cursor.fetchone()[0])
        for statement in (
            _role_steps(cursor, CONTEXT_ROLE) + _role_steps(cursor, MEMBER_ROLE) + _role_steps(cursor, AUDIT_ROLE)
        ):
            cursor.execute(statement)
        cursor.execute("CREATE SCHEMA rls")
        cursor.execute("COMMENT ON SCHEMA rls IS 'django_rls: request context and row-level security policy helpers'")
        cursor.execute("GRANT USAGE ON SCHEMA rls TO PUBLIC")
        # Only for the ALTER ... OWNER statements of 90_privileges.sql: PostgreSQL wants the new owner to be
        # able to create in the schema at that moment, not afterwards.
        cursor.execute(sql.SQL("GRANT CREATE ON SCHEMA rls TO {}, {}").format(role, member_role))
        cursor.execute(script_text())
        cursor.execute(sql.SQL("REVOKE CREATE ON SCHEMA rls FROM {}, {}").format(role, member_role))
        cursor.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(database, role))
        done.append(f"installed the SQL-only mode of django_rls {django_rls.EXTENSION_VERSION} (schema rls)")
    for key in signing_keys:
        cursor.execute("SELECT count(*) FROM rls._signing_keys")
        before = cursor.fetchone()[0]
        cursor.execute("SELECT rls.add_signing_key(%s)", [key])
        cursor.execute("SELECT count(*) FROM rls._signing_keys")
        if cursor.fetchone()[0] > before:
            done.append("added a signing key")
    if signing_keys and app_role:
        cursor.execute(
            "SELECT NOT EXISTS (SELECT FROM rls._signing_roles WHERE role_oid = to_regrole(quote_ident(%s)))",
            [app_role],
        )
        if cursor.fetchone()[0]:
            cursor.execute("SELECT rls.require_signature(quote_ident(%s)::regrole)", [app_role])
            done.append(f"required signed contexts of the application role {app_role} (rls.require_signature)")
    return done
