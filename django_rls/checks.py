"""System checks. Every ID is listed in docs/checks.md; database checks run with ``check --database``."""

from __future__ import annotations

from typing import Any

import psycopg
from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.utils.module_loading import import_string

from django_rls.citus_checks import CitusTables, check_session_scope, citus_tables, declared_citus_tables
from django_rls.sqlonly import installed_mode, installed_version

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
    # Without django.contrib.auth its middleware cannot even be imported (its models are not installed).
    auth = _middleware_index(AUTH_MIDDLEWARE) if apps.is_installed("django.contrib.auth") else None
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
    messages.extend(_check_recursion(declarations))
    messages.extend(_check_member_lookups(declarations))
    messages.extend(_check_null_parents(declarations))
    return messages


def _admits_own_rows(policy: Any, user_field: str) -> bool | None:
    """Whether a membership model's policy shows a user their own rows: True, False, or None for cannot tell."""
    from django_rls import policies

    if isinstance(policy, policies.Custom):
        return None
    if "select" not in getattr(policy, "commands", ("select",)):
        return True
    if isinstance(policy, policies.Members):
        return policy.user_field == user_field
    if isinstance(policy, policies.ByOwner | policies.OwnerOrShared):
        return policy.field == user_field
    return False


def _check_member_lookups(declarations: Any) -> list[CheckMessage]:
    """E023: OwnerOrMember reads memberships with rls.member_of(), which needs the user's own rows to be visible."""
    from django_rls import policies

    messages: list[CheckMessage] = []
    for label, declaration in sorted(declarations.items()):
        for policy in declaration.policies:
            if not isinstance(policy, policies.OwnerOrMember) or policy.through not in declarations:
                continue
            through = declarations[policy.through]
            refusing = [p for p in through.policies if _admits_own_rows(p, policy.user_field) is False]
            if refusing:
                messages.append(
                    Error(
                        f"{label} is protected with OwnerOrMember through {policy.through}, whose policy "
                        f"{refusing[0]!r} does not show a user the rows whose {policy.user_field!r} is that user: "
                        "rls.member_of() reads only rows its caller may read itself, so every query on "
                        f"{label} would fail.",
                        hint=f'Protect {policy.through} with Members("{policy.user_field}", "{policy.member_field}") '
                        f"(add parent=True to show every member of the {label} rows a user sees).",
                        id="django_rls.E023",
                    )
                )
    return messages


def _check_null_parents(declarations: Any) -> list[CheckMessage]:
    """W010: a nullable parent key under ThroughParent's default hides its NULL rows from every request."""
    from django.core.exceptions import FieldDoesNotExist

    from django_rls import policies

    messages: list[CheckMessage] = []
    for label, declaration in sorted(declarations.items()):
        try:
            model = declaration.model_class()
        except LookupError:
            continue  # reported by E005
        for policy in declaration.policies:
            if not isinstance(policy, policies.ThroughParent) or policy.null_parent is not None:
                continue
            for name in policy.fields:
                try:
                    field = model._meta.get_field(name)
                except FieldDoesNotExist:
                    continue  # reported by E006
                if getattr(field, "null", False):
                    messages.append(
                        Warning(
                            f"{label}.{name} may be NULL, and ThroughParent shows rows whose parent key is NULL to "
                            "no request (not even to write them): they can only be read with bypass().",
                            hint='Say what you mean: null_parent="hide" keeps them hidden, "read" shows them to '
                            'every request (written by none), "write" lets every request read and write them.',
                            obj=model,
                            id="django_rls.W010",
                        )
                    )
    return messages


def _check_recursion(declarations: Any) -> list[CheckMessage]:
    """E020: policies that read each other's tables in a circle fail every query on them."""
    from django_rls.policies import policy_cycles

    messages: list[CheckMessage] = []
    for cycle in policy_cycles(declarations):
        if len(cycle) == 2:
            what = f"the policy of {cycle[0]} reads its own table"
            hint = (
                "On a membership model, declare Members(user_field, site_field) (a user's own memberships and the "
                "current site's members), not Membership() through itself; on a model whose foreign key points at "
                "the model itself (a tree), protect each row by its own site (BySite) instead of ThroughParent."
            )
        else:
            what = f"the policies of {' -> '.join(cycle)} read each other's tables in a circle"
            hint = (
                "Break the circle: protect one of these models by its own columns (BySite, ByOwner, Members) "
                "instead of through another protected model; for owners and members, protect the parent with "
                "OwnerOrMember, which reads memberships with rls.member_of() instead of a query."
            )
        messages.append(
            Error(
                f"{what}: PostgreSQL applies a table's policies to the policies' own reads too, so every query on "
                "it would fail with 'infinite recursion detected in policy for relation'.",
                hint=hint,
                id="django_rls.E020",
            )
        )
    return messages


SITE_RESOLVER_HINT = (
    'Tell django_rls how a request finds its site: DJANGO_RLS["SITE_RESOLVER"] = a function (request) -> your '
    'tenant (or its id), or django_rls.resolvers.from_attribute("tenant") with a middleware that sets '
    'request.tenant; or, to use the default, add "django.contrib.sites" to INSTALLED_APPS with one Site per '
    'domain (docs/getting-started.md, "Choosing the site").'
)


def check_site_resolver(**kwargs: Any) -> list[CheckMessage]:
    """W007/W008: the default site resolver (django.contrib.sites) cannot give this project's sites."""
    from django.apps import apps

    from django_rls import resolvers
    from django_rls.conf import rls_settings
    from django_rls.declarations import all_declarations
    from django_rls.policies import DeclarationError

    try:
        if rls_settings.SITE_RESOLVER is not resolvers.current_site:
            return []
        declarations = all_declarations()
    except (ImproperlyConfigured, DeclarationError):
        return []  # reported by E001 / E004
    if (
        not apps.is_installed("django.contrib.sites")
        and getattr(settings, "SITE_ID", None) is None
        and _keys_rows_by_site(declarations)
    ):
        return [
            Warning(
                "the default SITE_RESOLVER reads django.contrib.sites, which is not installed, and SITE_ID is not "
                "set: every request runs without a site and sees no row of a table protected by site, while check, "
                "rls_apply and rls_verify have nothing to object to.",
                hint=SITE_RESOLVER_HINT,
                id="django_rls.W007",
            )
        ]
    keys = _site_key_targets(declarations)
    others = sorted({target for target in keys.values() if target != "sites.Site"})
    if keys and "sites.Site" not in keys.values() and others:
        fields = ", ".join(f"{field} ({target})" for field, target in sorted(keys.items()))
        return [
            Warning(
                f"the default SITE_RESOLVER gives django.contrib.sites ids, but no protected model keys its rows by "
                f"a Site: {fields}. Requests would look for rows of Site ids in columns that hold ids of "
                f"{', '.join(others)}, and see none (or another tenant's).",
                hint=SITE_RESOLVER_HINT,
                id="django_rls.W008",
            )
        ]
    return []


def check_django_scopes(**kwargs: Any) -> list[CheckMessage]:
    """E021: DJANGO_SCOPES_SITE is set but django-scopes cannot be imported."""
    from django_rls.conf import rls_settings

    try:
        keyword = rls_settings.DJANGO_SCOPES_SITE
    except ImproperlyConfigured:
        return []  # reported by E001
    if keyword is None:
        return []
    try:
        import django_scopes  # noqa: F401
    except ImportError as exc:
        return [
            Error(
                f'DJANGO_RLS["DJANGO_SCOPES_SITE"] = {keyword!r} takes the site from django-scopes, which cannot be '
                f"imported ({exc}): every query of a request would fail.",
                hint='pip install django-scopes, or remove DJANGO_RLS["DJANGO_SCOPES_SITE"] and set a SITE_RESOLVER.',
                id="django_rls.E021",
            )
        ]
    return []


def _lookup_resolvers(resolver: Any) -> list[Any]:
    from django_rls.resolvers import LookupResolver

    if isinstance(resolver, LookupResolver):
        return [resolver]
    return [found for inner in getattr(resolver, "resolvers", ()) for found in _lookup_resolvers(inner)]


def check_lookups(**kwargs: Any) -> list[CheckMessage]:
    """E025: a by_lookup() site resolver names a model or field that declares no Lookup."""
    from django.apps import apps

    from django_rls.conf import rls_settings
    from django_rls.lookups import declared_lookup
    from django_rls.policies import DeclarationError

    try:
        resolvers = _lookup_resolvers(rls_settings.SITE_RESOLVER)
    except ImproperlyConfigured:
        return []  # reported by E001
    messages: list[CheckMessage] = []
    for resolver in resolvers:
        try:
            declared_lookup(apps.get_model(resolver.model), resolver.field)
        except (LookupError, ValueError):
            problem = f"names model {resolver.model!r}, which is not installed"
            hint = 'Name the model as "app_label.ModelName".'
        except DeclarationError as exc:
            problem, hint = "finds nothing", str(exc)
        else:
            continue
        messages.append(
            Error(
                f"the site resolver {resolver.__name__} {problem}: every request it serves would run without a site.",
                hint=hint,
                id="django_rls.E025",
            )
        )
    return messages


SITE_ACCESSORS = ("rls.site_id()", "rls.site_uuid()")


def _keys_rows_by_site(declarations: Any) -> bool:
    """Whether a declared model's policies compare anything with the context's site (W007 is moot otherwise).

    Read from the policies' SQL, as rls_apply would write it: BySite, Shared, Members and the like, a
    Custom condition on CurrentSite(), and ThroughParent with a parent that keys its rows by site
    (whose condition it copies or reads). Declarations that do not compile are reported by E005/E006.
    """
    from django_rls.policies import DeclarationError

    for declaration in declarations.values():
        try:
            groups = declaration.groups(connections["default"])
        except (LookupError, DeclarationError):
            continue
        for group in groups:
            if any(accessor in (group.using or "") + (group.check or "") for accessor in SITE_ACCESSORS):
                return True
    return False


def _site_key_targets(declarations: Any) -> dict[str, str]:
    """Map "app.Model.field" to what its site key holds: the label of the model it points at, or "UUID"."""
    from django.core.exceptions import FieldDoesNotExist
    from django.db import models

    from django_rls import policies

    found: dict[str, str] = {}
    for label, declaration in declarations.items():
        try:
            model = declaration.model_class()
        except LookupError:
            continue  # reported by E005
        for policy in declaration.policies:
            if isinstance(policy, policies.BySite | policies.Shared | policies.Membership):
                names = [policy.field]
            elif isinstance(policy, policies.BySiteAndOwner | policies.Members):
                names = [policy.site_field]
            else:
                continue
            for name in names:
                try:
                    field = model._meta.get_field(name)
                except FieldDoesNotExist:
                    continue  # reported by E006
                target = getattr(field, "related_model", None)
                if target is not None and not isinstance(target, str):
                    found[f"{label}.{name}"] = target._meta.label
                elif isinstance(field, models.UUIDField):
                    found[f"{label}.{name}"] = "UUID"
    return found


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
        mode = installed_mode(cursor)
        version = installed_version(cursor)
        if mode is None:
            return [
                Error(
                    f"the django_rls extension is not installed in database {alias!r}.",
                    hint="As a superuser: CREATE EXTENSION django_rls (and preload the library). On hosted PostgreSQL, "
                    "where the library cannot be loaded: manage.py rls_apply --install as the owner (the SQL-only "
                    "mode, docs/getting-started.md).",
                    id="django_rls.E011",
                )
            ]
        if mode == "c" and version != django_rls.EXTENSION_VERSION:
            messages.append(
                Error(
                    f"database {alias!r} has django_rls extension {version}; this package needs "
                    f"{django_rls.EXTENSION_VERSION}.",
                    hint=f"As a superuser: ALTER EXTENSION django_rls UPDATE TO '{django_rls.EXTENSION_VERSION}'.",
                    id="django_rls.E012",
                )
            )
        if mode == "sql":
            messages.extend(_check_sql_mode(alias, cursor, version))
        in_citus = citus_tables(cursor)
        messages.extend(citus_refusals(in_citus, connections[alias], mode))
        if mode == "c":
            messages.extend(check_session_scope(alias, in_citus))
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
        if not is_super and not bypass:
            messages.extend(_check_set_role(alias, cursor))
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
            messages.extend(_check_signing(alias, cursor))
        cursor.execute("SELECT object_name, problem, hint, current_user FROM rls.problems ORDER BY 1, 2")
        maintenance_role = _bypass_role()
        for object_name, problem, hint, role in cursor.fetchall():
            if object_name == maintenance_role and "BYPASSRLS" in problem:
                continue  # the role behind django_rls.bypass() is meant to bypass
            if object_name == role and ("temporary tables" in problem or "search_path" in problem):
                continue  # reported for this connection by E017 and E018
            if object_name == role and "can SET ROLE to" in problem:
                continue  # reported for this connection by E015 and E019
            if object_name == role and ("not required to sign" in problem or "django_rls_context" in problem):
                continue  # reported for this connection by W012 and E028
            messages.append(Warning(f"{object_name}: {problem}", hint=hint, id="django_rls.W003"))
    return messages


def citus_refusals(tables: CitusTables, connection: Any, mode: str | None = "c") -> list[CheckMessage]:
    """E022, E024, E026, E030, E033: declarations a table Citus holds cannot hold (issue 17, docs/scale-out.md).

    E033: an audited declaration: rls_audit.enable() refuses a table of Citus (its writes happen in the shard
    placements, apart from the coordinator's audit log).

    E022: a policy that reads another table in a sub-select (ThroughParent, Membership, Members with
    parent=True): Citus refuses such a policy on any of its tables, and rls.protect() refuses it first.
    E026: OwnerOrMember, whose rls.member_of() reads the membership table below Citus: on a worker
    that is an empty shell, so no member would see a row (rls.protect() refuses it too). E030: the
    SQL-only mode (``mode == "sql"``) reads the context in sub-selects, so it can protect no table of
    Citus's. E024: two policy groups for one command: Citus copies them to the shards without
    AS RESTRICTIVE, where each admits a row alone.
    """
    from django_rls.policies import OwnerOrMember

    messages: list[CheckMessage] = []
    for label, declaration, model, table, kind in declared_citus_tables(tables):
        if declaration.audit:
            what = "a Citus local table" if kind == "local" else f"a {kind} table of Citus"
            messages.append(
                Error(
                    f"{label} is declared audited (audit=True), and its table {table} is {what}: its writes happen in "
                    "its shard placements, where the audit triggers would run apart from the audit log and the "
                    "context of the coordinator, so rls_audit.enable() (and so rls_apply) refuses it.",
                    hint=f"Keep {table} out of Citus (undistribute_table(), a plain table on the coordinator) to audit "
                    "it, or declare it with audit=False and record its changes in the application "
                    "(docs/scale-out.md).",
                    obj=model,
                    id="django_rls.E033",
                )
            )
        if mode == "sql":
            messages.append(
                Error(
                    f"{label} is a table of Citus, and the SQL-only mode of django_rls reads the context in "
                    "sub-selects, which Citus does not allow in a policy on its tables: rls_apply cannot protect it.",
                    hint="Use the django_rls library instead of the SQL-only mode, on every node of the cluster "
                    "(shared_preload_libraries = 'citus, django_rls'), or keep the table out of Citus "
                    "(undistribute_table).",
                    obj=model,
                    id="django_rls.E030",
                )
            )
            continue
        for policy in declaration.policies:
            if isinstance(policy, OwnerOrMember):
                messages.append(
                    Error(
                        f"{label} is a table of Citus and protected with {policy!r}: rls.member_of() reads the "
                        "membership table itself, and on the Citus workers that is an empty shell, so no member "
                        "would see a row.",
                        hint=f"Give {table} its own site column and protect it with BySite (kept in step by the "
                        "application or a trigger), or keep it out of Citus (a plain table on the coordinator).",
                        obj=model,
                        id="django_rls.E026",
                    )
                )
                continue
            read = policy.reads(model)
            if read:
                messages.append(
                    Error(
                        f"{label} is distributed by Citus and protected with {policy!r}, whose policy reads "
                        f"{', '.join(sorted(m._meta.db_table for m in read))} in a sub-select: Citus does not run "
                        "sub-selects of policies on its shards.",
                        hint=f"Give {table} its own site column and protect it with BySite (kept in step by the "
                        "application or a trigger), or keep it out of Citus (a plain table on the coordinator: a "
                        "reference table refuses such a policy too).",
                        obj=model,
                        id="django_rls.E022",
                    )
                )
        by_command: dict[str, list[str]] = {}
        for group in declaration.groups(connection):
            for command in group.commands:
                by_command.setdefault(command, []).append(group.name)
        shared = {command: names for command, names in by_command.items() if len(names) > 1}
        if shared:
            listed = "; ".join(f"{command}: {', '.join(names)}" for command, names in sorted(shared.items()))
            messages.append(
                Error(
                    f"{label} is distributed by Citus and has more than one policy group for a command ({listed}): "
                    "Citus copies them to the shards without AS RESTRICTIVE, so there each group admits a row on "
                    "its own.",
                    hint="Protect it with one Custom policy whose condition is the conjunction of the groups' "
                    "conditions (for BySiteAndOwner: site and owner in one expression).",
                    obj=model,
                    id="django_rls.E024",
                )
            )
    return messages


def _check_sql_mode(alias: str, cursor: Any, version: str) -> list[CheckMessage]:
    """What only the SQL-only mode can get wrong, and what it does weaker than the library (docs/security.md)."""
    import django_rls

    messages: list[CheckMessage] = []
    if version != django_rls.EXTENSION_VERSION:
        messages.append(
            Error(
                f"database {alias!r} has the SQL-only mode of django_rls {version}; this package needs "
                f"{django_rls.EXTENSION_VERSION}.",
                hint="Run manage.py rls_apply --install as the owner: it upgrades an older installation in place "
                "(and refuses a newer one: then install that version of the package). docs/operating.md, "
                '"Upgrading the SQL-only mode".',
                id="django_rls.E027",
            )
        )
    cursor.execute("SELECT pg_has_role(current_user, 'django_rls_context', 'MEMBER'), current_user")
    member, role = cursor.fetchone()
    if member:
        messages.append(
            Error(
                f"database {alias!r} connects as {role}, a member of django_rls_context: it can write any context "
                "directly, without the setter functions or a signed token.",
                hint=f"REVOKE django_rls_context FROM {role} (as a role with CREATEROLE); only the owner that "
                "installed the SQL-only mode belongs in it.",
                id="django_rls.E028",
            )
        )
    cursor.execute("SELECT current_setting('django_rls.preloaded', true)")
    if cursor.fetchone()[0] == "on":
        messages.append(
            Error(
                f"database {alias!r} has the SQL-only mode installed, but the server preloads the django_rls library: "
                "the application carries its context the library's way, which the SQL-only mode does not read, so "
                "every query sees no protected row.",
                hint="Where the library is available, use it: move the database to the extension as docs/operating.md "
                '("Moving between the SQL-only mode and the library") says, then run rls_apply (until then the '
                "protected tables show no row: their policies go with the schema rls).",
                id="django_rls.E029",
            )
        )
    cursor.execute("SELECT (rls.extension_info() ->> 'require_signature')::boolean")
    if not cursor.fetchone()[0]:
        messages.append(
            Warning(
                f"database {alias!r} uses the SQL-only mode and does not require signed contexts of {role}: SQL "
                "injected into the application's statements can call rls.set_context() and read or write another "
                "site's rows (the SQL-only mode has no statement-bound contexts).",
                hint='Set DJANGO_RLS["SIGNING_KEY"] (manage.py rls_keygen) and run manage.py rls_apply --install as '
                "the owner: it adds the key and requires signed contexts of the application role.",
                id="django_rls.W012",
            )
        )
    from django_rls.declarations import all_declarations

    audited = sorted(label for label, declaration in all_declarations().items() if declaration.audit)
    if audited:
        messages.append(
            Warning(
                f"database {alias!r} uses the SQL-only mode, whose audit trail of {', '.join(audited)} is weaker than "
                "the library's: no hash chain (rls_audit.verify() refuses), the context recorded is the one in force "
                "when a statement ends, a table whose columns change has its audited writes refused until rls_apply "
                "runs again, partitioned tables are refused, and nothing stops the table's owner from dropping its "
                "audit triggers (rls.problems reports it).",
                hint='Where the trail must be tamper-evident, use the django_rls extension (docs/audit.md, "The '
                "SQL-only mode's trail\"); otherwise run rls_apply after every migration.",
                id="django_rls.W014",
            )
        )
    cursor.execute(
        r"""
        SELECT string_agg(DISTINCT format('%s (%s)', p.polrelid::regclass, p.polname), ', ')
          FROM pg_policy p,
               LATERAL (SELECT concat_ws(' ', pg_get_expr(p.polqual, p.polrelid),
                                         pg_get_expr(p.polwithcheck, p.polrelid)) AS text) e
         WHERE (SELECT count(*) FROM regexp_matches(e.text, 'rls\.(site_id|user_id|site_uuid|user_uuid|claim|context)\(', 'g'))
             > (SELECT count(*) FROM regexp_matches(e.text, 'SELECT rls\.(site_id|user_id|site_uuid|user_uuid|claim|context)\(', 'g'))
        """
    )
    per_row = cursor.fetchone()[0]
    if per_row:
        messages.append(
            Warning(
                f"database {alias!r} uses the SQL-only mode, and these policies call a context accessor once per row "
                f"instead of once per statement: {per_row}. There each call is a PL/pgSQL lookup, so reads slow down "
                "with the number of rows scanned.",
                hint="Write the accessor as rls.site_id() (unquoted, as rls_apply generates it) so that rls.protect() "
                "turns it into (SELECT rls.site_id()), or write the sub-select yourself; then run rls_apply.",
                id="django_rls.W013",
            )
        )
    return messages


def _check_set_role(alias: str, cursor: Any) -> list[CheckMessage]:
    """E019: one SET ROLE away from a role that bypasses every policy."""
    from django_rls.conf import rls_settings
    from django_rls.roles import bypassing_roles
    from django_rls.testing import is_test_database

    roles = bypassing_roles(cursor)
    cursor.execute("SELECT current_user, current_database()")
    role, database = cursor.fetchone()
    test_bypass = rls_settings.TEST_BYPASS_ROLE
    if test_bypass and is_test_database(database):
        # test_bypass() needs exactly this membership, and only a test database may have it.
        roles = [(name, why) for name, why in roles if name != test_bypass]
    if not roles:
        return []
    listed = ", ".join(f"{name} ({why})" for name, why in roles)
    hint = (
        f"Run manage.py rls_roles: it takes the application role out of the roles it is directly a member "
        f"of that lead there; or, as a superuser, REVOKE those memberships from {role}. Keep bypassing roles for "
        "maintenance and backups, with no member that serves requests."
    )
    if test_bypass in {name for name, _ in roles}:
        hint = (
            f'DJANGO_RLS["TEST_BYPASS_ROLE"] ({test_bypass}) is for test databases only, whose names start with '
            f'"test_"; {database} is not one. REVOKE {test_bypass} FROM {role} on any server that serves requests, '
            "and unset TEST_BYPASS_ROLE outside the test settings."
        )
    return [
        Error(
            f"database {alias!r} connects as {role}, which can SET ROLE to {listed}: any SQL the application runs "
            "(an injected statement included) can switch to that role and bypass every policy.",
            hint=hint,
            id="django_rls.E019",
        )
    ]


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


def _check_signing(alias: str, cursor: Any) -> list[CheckMessage]:
    """E031/W015: in signed mode, whether the server accepts what the application signs, and insists on it."""
    from django_rls.conf import rls_settings
    from django_rls.database import CARRIER, context_parameter, marker_supported
    from django_rls.state import EMPTY

    if rls_settings.SIGNING_KEY is None:
        return []
    messages: list[CheckMessage] = []
    cursor.execute("SELECT current_user, current_setting('django_rls.require_signature', true)")
    role, required = cursor.fetchone()
    connection = connections[alias]
    if marker_supported(connection):
        # A use of a reusable token for the empty context, carried by a statement that does nothing
        # else, exactly as a request's first query would send it: the server checks the key, the
        # clocks, the lifetime and its replay memory, and grants nothing.
        try:
            with connection.connection.transaction():
                psycopg.Cursor(connection.connection).execute(CARRIER, (context_parameter(EMPTY),))
        except psycopg.Error as exc:
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
            messages.append(
                Error(
                    f'database {alias!r} refuses the contexts DJANGO_RLS["SIGNING_KEY"] signs: '
                    f"{exc.diag.message_primary}{detail}. Every request that queries it would fail.",
                    hint=exc.diag.message_hint
                    or "Put the same key in the server's django_rls.signing_key_file (docs/security.md).",
                    id="django_rls.E031",
                )
            )
    if required != "on":
        messages.append(
            Warning(
                f'DJANGO_RLS["SIGNING_KEY"] is set, but database {alias!r} does not require signatures of {role}: '
                "a session of its own as that role (a stolen password) can still set any context unsigned.",
                hint=f"As a superuser: ALTER ROLE {role} SET django_rls.require_signature = on, once every "
                "application server signs (docs/operating.md).",
                id="django_rls.W015",
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
    except DeclarationError:
        return []  # a declaration that does not compile is reported by E006 (or E004/E005)
    except PlanError as exc:
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
