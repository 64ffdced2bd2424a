"""System checks. Every ID is listed in docs/checks.md; database checks run with ``check --database``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.utils.module_loading import import_string

MIDDLEWARE = "django_rls.middleware.RlsMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    from django_rls.conf import validate

    try:
        validate(getattr(settings, "DJANGO_RLS", {}))
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/settings.md for every key.", id="django_rls.E001")]
    return []


def _middleware_index(path: str) -> int | None:
    for index, entry in enumerate(settings.MIDDLEWARE):
        if entry == path:
            return index
        try:
            cls = import_string(entry)
            target = import_string(path)
        except ImportError:
            continue
        if isinstance(cls, type) and isinstance(target, type) and issubclass(cls, target):
            return index
    return None


def check_middleware(**kwargs: Any) -> list[CheckMessage]:
    ours = _middleware_index(MIDDLEWARE)
    if ours is None:
        return [
            Error(
                "django_rls.middleware.RlsMiddleware is not in MIDDLEWARE, so requests run without a site and user "
                "and see no protected rows.",
                hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE right after {AUTH_MIDDLEWARE!r}.",
                id="django_rls.E002",
            )
        ]
    auth = _middleware_index(AUTH_MIDDLEWARE)
    if auth is not None and auth > ours:
        return [
            Error(
                "RlsMiddleware comes before AuthenticationMiddleware, so it cannot see request.user.",
                hint=f"Move {MIDDLEWARE!r} after {AUTH_MIDDLEWARE!r}.",
                id="django_rls.E003",
            )
        ]
    return []


def check_declarations(**kwargs: Any) -> list[CheckMessage]:
    from django_rls.declarations import all_declarations
    from django_rls.policies import DeclarationError

    try:
        declarations = all_declarations()
    except DeclarationError as exc:
        return [Error(str(exc), id="django_rls.E004")]
    except ImproperlyConfigured:
        return []  # reported by E001
    messages: list[CheckMessage] = []
    for label, declaration in sorted(declarations.items()):
        try:
            model = declaration.model_class()
        except LookupError:
            messages.append(
                Error(
                    f"{label} is declared at {declaration.origin} but no such model is installed.",
                    hint="Fix the label (app_label.ModelName) or add the app to INSTALLED_APPS.",
                    id="django_rls.E005",
                )
            )
            continue
        try:
            declaration.groups(connections["default"])
        except DeclarationError as exc:
            messages.append(Error(str(exc), obj=model, id="django_rls.E006"))
    return messages


def check_scope(**kwargs: Any) -> list[CheckMessage]:
    from django_rls.conf import rls_settings
    from django_rls.database import protected_aliases

    try:
        if rls_settings.SCOPE != "session":
            return []
        aliases = protected_aliases()
    except ImproperlyConfigured:
        return []  # reported by E001
    messages: list[CheckMessage] = []
    for alias in aliases:
        db = connections.settings[alias] if alias in connections.settings else {}
        if db.get("CONN_MAX_AGE", 0) != 0 or db.get("OPTIONS", {}).get("pool"):
            messages.append(
                Warning(
                    f"SCOPE is 'session' and database {alias!r} reuses connections (CONN_MAX_AGE or pool): "
                    "a context is only cleared when the request finishes normally.",
                    hint='Use DJANGO_RLS["SCOPE"] = "transaction" (the default).',
                    id="django_rls.W001",
                )
            )
        if db.get("DISABLE_SERVER_SIDE_CURSORS"):
            messages.append(
                Warning(
                    f"SCOPE is 'session' and database {alias!r} looks like it is behind PgBouncer "
                    "(DISABLE_SERVER_SIDE_CURSORS): in transaction pooling a session context reaches other clients.",
                    hint='Use DJANGO_RLS["SCOPE"] = "transaction" (the default).',
                    id="django_rls.W002",
                )
            )
    return messages


def check_binding(**kwargs: Any) -> list[CheckMessage]:
    """Either binding carries the context in the query itself (django_rls/wire.py): only W006 is left."""
    from django_rls.database import protected_aliases

    try:
        aliases = protected_aliases()
    except ImproperlyConfigured:
        return []  # reported by E001
    return _check_prepared_statements(aliases)


def _check_prepared_statements(aliases: list[str]) -> list[CheckMessage]:
    """W006: psycopg's automatic prepared statements are switched off on protected aliases."""
    return [
        Warning(
            f"Database {alias!r} sets OPTIONS['prepare_threshold'], which django_rls ignores: psycopg's prepared "
            "statements have names that injected SQL can DEALLOCATE and PREPARE again, and the next request on the "
            "connection, of any site, would run the planted statement with its own context.",
            hint=f'Remove "prepare_threshold" from DATABASES[{alias!r}]["OPTIONS"].',
            id="django_rls.W006",
        )
        for alias in aliases
        if alias in connections.settings
        and connections.settings[alias].get("OPTIONS", {}).get("prepare_threshold") is not None
    ]


def check_database(databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Catalog checks on the application's own connections (run by ``check --database default``)."""
    from django_rls.conf import rls_settings
    from django_rls.database import protected_aliases

    if not databases:
        return []
    messages: list[CheckMessage] = []
    try:
        aliases = [a for a in protected_aliases() if a in databases]
    except ImproperlyConfigured:
        return []
    for alias in aliases:
        try:
            messages.extend(_check_alias(alias))
        except DatabaseError as exc:
            messages.append(Error(f"could not inspect database {alias!r}: {exc}".strip(), id="django_rls.E010"))
    owner = rls_settings.OWNER_DATABASE
    if owner and owner in databases:
        messages.extend(_check_drift(owner))
    return messages


def _check_alias(alias: str) -> list[CheckMessage]:
    import django_rls

    messages: list[CheckMessage] = []
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'django_rls'")
        row = cursor.fetchone()
        if row is None:
            return [
                Error(
                    f"the django_rls extension is not installed in database {alias!r}.",
                    hint="As a superuser: CREATE EXTENSION django_rls (and preload the library).",
                    id="django_rls.E011",
                )
            ]
        if row[0] != django_rls.EXTENSION_VERSION:
            messages.append(
                Error(
                    f"database {alias!r} has django_rls extension {row[0]}; this package needs "
                    f"{django_rls.EXTENSION_VERSION}.",
                    hint=f"As a superuser: ALTER EXTENSION django_rls UPDATE TO '{django_rls.EXTENSION_VERSION}'.",
                    id="django_rls.E012",
                )
            )
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        is_super, bypass = cursor.fetchone()
        # Never advise demoting the role this alias connects as: it may be the only superuser of the cluster,
        # or the maintenance role another alias needs. The way out is always another role.
        if is_super:
            messages.append(
                Error(
                    f"database {alias!r} connects as a superuser, which bypasses every policy.",
                    hint="Connect the application as another role, one with NOSUPERUSER NOBYPASSRLS that owns no table "
                    "(manage.py rls_roles --app-role <name> creates it), and set that role as the alias's USER. "
                    "Do not demote the superuser itself: it may be the only one the server has.",
                    id="django_rls.E013",
                )
            )
        elif bypass:
            messages.append(
                Error(
                    f"database {alias!r} connects as a role with BYPASSRLS, which bypasses every policy.",
                    hint="Connect the application as another role, one with NOBYPASSRLS that owns no table "
                    "(manage.py rls_roles --app-role <name> creates it). Keep BYPASSRLS roles for maintenance "
                    '(DJANGO_RLS["BYPASS_DATABASE"]) and backups only.',
                    id="django_rls.E014",
                )
            )
        cursor.execute(
            """
            SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY 1)
              FROM pg_class c
             WHERE c.relrowsecurity AND pg_has_role(current_user, c.relowner, 'MEMBER')
            """
        )
        owned = cursor.fetchone()[0]
        if owned and not is_super:
            messages.append(
                Error(
                    f"database {alias!r} connects as the owner of protected tables ({owned}); an owner can switch "
                    "row level security off.",
                    hint="Run migrations as a separate owner role and connect the application as another role.",
                    id="django_rls.E015",
                )
            )
        if not is_super:
            messages.extend(_check_session_state(alias, cursor))
        cursor.execute("SELECT object_name, problem, hint, current_user FROM rls.problems ORDER BY 1, 2")
        maintenance_role = _bypass_role()
        for object_name, problem, hint, role in cursor.fetchall():
            if object_name == maintenance_role and "BYPASSRLS" in problem:
                continue  # the role behind django_rls.bypass() is meant to bypass
            if object_name == role and ("temporary tables" in problem or "search_path" in problem):
                continue  # reported for this connection by E017 and E018
            messages.append(Warning(f"{object_name}: {problem}", hint=hint, id="django_rls.W003"))
    return messages


def _check_session_state(alias: str, cursor: Any) -> list[CheckMessage]:
    """E017/E018: what lets a request leave a temporary object that hides a table from the next request."""
    from django_rls.roles import search_path_schemas

    cursor.execute(
        "SELECT current_user, current_database(), has_database_privilege(current_user, current_database(), "
        "'TEMPORARY'), current_setting('search_path')"
    )
    role, database, temp, search_path = cursor.fetchone()
    messages: list[CheckMessage] = []
    if temp:
        messages.append(
            Error(
                f"database {alias!r} connects as {role}, which may create temporary tables in {database}: one "
                "request's temporary table hides the real table of the same name from every later request on the "
                "same connection (CONN_MAX_AGE, a pool, PgBouncer), whatever site it serves.",
                hint="Run manage.py rls_roles: it revokes TEMPORARY on the database from PUBLIC (which has it by "
                "default) and from the application role, and grants it back to the owner and maintenance roles.",
                id="django_rls.E017",
            )
        )
    if search_path_schemas(search_path)[-1:] != ["pg_temp"]:
        messages.append(
            Error(
                f"database {alias!r} connects with search_path {search_path!r}, which does not end with pg_temp, so "
                "temporary objects are searched before the real ones.",
                hint="Run manage.py rls_roles: it pins the application role's search_path in this database with "
                "pg_temp last (ALTER ROLE ... IN DATABASE ... SET search_path = public, pg_temp).",
                id="django_rls.E018",
            )
        )
    return messages


def _bypass_role() -> str | None:
    from django_rls.conf import rls_settings

    alias = rls_settings.BYPASS_DATABASE
    return settings.DATABASES.get(alias, {}).get("USER") if alias else None


def _check_drift(alias: str) -> list[CheckMessage]:
    from django_rls.planner import PlanError, TablesMissing, make_plan
    from django_rls.policies import DeclarationError

    try:
        plan = make_plan(connections[alias])
    except TablesMissing:
        return []  # before the first migrate: nothing to compare yet, and migrate must not be blocked
    except (PlanError, DeclarationError) as exc:
        return [Error(str(exc), id="django_rls.E016")]
    if plan.in_sync:
        return []
    summary = "; ".join(step.summary for step in plan.steps[:5])
    more = f" and {len(plan.steps) - 5} more" if len(plan.steps) > 5 else ""
    return [
        Warning(
            f"the database differs from the declarations: {summary}{more}.",
            hint="Run manage.py rls_apply (rls_apply --check shows the full difference).",
            id="django_rls.W004",
        )
    ]
