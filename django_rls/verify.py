"""A live self-test of the protection, as the application role (``manage.py rls_verify``).

It reads the catalog for every known reason rows could leak (a superuser or
BYPASSRLS connection, table ownership, row level security off or not forced,
policies that differ from the declarations, views that bypass them) and then
proves isolation by behaviour: inside a transaction that is rolled back, it
creates a probe row for a throwaway site (or user), and checks that another
throwaway site cannot read, change or delete it, that no context sees it, and
that its own context does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections, models, transaction

from django_rls import policies, probes
from django_rls.conf import rls_settings
from django_rls.declarations import all_declarations
from django_rls.planner import groups_in_sync, resolve_tables
from django_rls.policies import Declaration
from django_rls.sqlonly import installed_mode
from django_rls.state import context


@dataclass
class Report:
    mode: str | None = None  # "c" (the extension) or "sql" (the SQL-only mode)
    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _catalog_failures(alias: str, declarations: dict[str, Declaration]) -> list[str]:
    failures: list[str] = []
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls, current_user FROM pg_roles WHERE rolname = current_user")
        is_super, bypass, role = cursor.fetchone()
        wrong_alias = _not_the_application(alias, role)
        if wrong_alias:
            return [wrong_alias]
        if is_super:
            return [f"the connection's role {role} is a superuser: every policy is bypassed"]
        if bypass:
            return [f"the connection's role {role} has BYPASSRLS: every policy is bypassed"]
        from django_rls.roles import bypassing_roles

        escapes = bypassing_roles(cursor)
        if escapes:
            listed = ", ".join(f"{name} ({why})" for name, why in escapes)
            return [
                f"the connection's role {role} can SET ROLE to {listed}: one statement bypasses every policy "
                "(run manage.py rls_roles)"
            ]
        mode = installed_mode(cursor)
        if mode is None:
            return [
                "django_rls is not installed in this database (neither the extension nor the SQL-only mode: "
                "rls_apply --install)"
            ]
        cursor.execute("SELECT (rls.extension_info() ->> 'require_signature')::boolean")
        if cursor.fetchone()[0] and not rls_settings.SIGNING_KEY:
            switch = (
                "rls.require_signature() was called for it" if mode == "sql" else "django_rls.require_signature = on"
            )
            return [
                f"the server requires signed contexts from {role} ({switch}) but "
                'DJANGO_RLS["SIGNING_KEY"] is not set, so every query in a context is refused: set the key the '
                "server holds (manage.py rls_keygen makes a pair)"
            ]
        failures.extend(_session_failures(cursor, role))
        names = sorted({d.model_class()._meta.db_table for d in declarations.values()})
        tables = resolve_tables(cursor, names)
        found = {t: table for t, table in tables.items() if table is not None}
        failures.extend(f"{t}: the table does not exist (run migrate)" for t in names if t not in found)
        cursor.execute(
            """
            SELECT t, c.relrowsecurity, c.relforcerowsecurity, pg_has_role(current_user, c.relowner, 'MEMBER')
              FROM unnest(%s::text[], %s::oid[]) AS x(t, o) JOIN pg_class c ON c.oid = o
             ORDER BY 1
            """,
            [list(found), [table.oid for table in found.values()]],
        )
        owned_tables: set[str] = set()
        for name, enabled, forced, owned in cursor.fetchall():
            table = found[name].display
            if owned:
                owned_tables.add(name)
            if not enabled:
                failures.append(f"{table}: row level security is disabled")
            elif owned:
                failures.append(
                    f"{table}: the connection's role owns the table and can switch row level security off (run "
                    "migrations as a separate owner role, transfer the table to it, and connect the application as "
                    "a role that owns nothing)"
                )
            elif not forced:
                failures.append(f"{table}: FORCE ROW LEVEL SECURITY is off, so the table's owner bypasses it")
        checked = []
        for declaration in declarations.values():
            name = declaration.model_class()._meta.db_table
            if name not in found or name in owned_tables:
                continue  # an owner is not what the policies are for: rls_apply is not the fix
            checked.extend((found[name], group) for group in declaration.groups(connections[alias]))
        for (table, group), ok in zip(checked, groups_in_sync(cursor, checked, role), strict=True):
            if not ok:
                failures.append(
                    f"{table.display}: policy group {group.name!r} is missing or differs from the declaration "
                    "(run rls_apply)"
                )
        cursor.execute(
            "SELECT object_name, problem FROM rls.problems WHERE problem LIKE 'view %%' OR problem LIKE 'materialized view %%'"
        )
        failures.extend(f"{name}: {problem}" for name, problem in cursor.fetchall())
        failures.extend(_citus_failures(cursor))
    return failures


def _citus_failures(cursor: Any) -> list[str]:
    """What rls.problems reports about protected tables Citus distributes (docs/scale-out.md); none without Citus.

    The context reaches the workers only from a transaction block (issue 17), so such a table shows
    an autocommit statement of the application none of its rows; rls.problems also names policies
    that fail open on the shards.
    """
    cursor.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return []
    cursor.execute(
        "SELECT object_name, problem FROM rls.problems "
        "WHERE table_name IN (SELECT logicalrelid FROM pg_catalog.pg_dist_partition) ORDER BY 1, 2"
    )
    return [f"{name}: {problem}" for name, problem in cursor.fetchall()]


def _not_the_application(alias: str, role: str) -> str | None:
    """The owner or maintenance alias is not what rls_verify tests: say which command to run instead."""
    from django_rls.database import protected_aliases

    if alias in protected_aliases():
        return None  # an application alias, whatever its role: the other checks say what is wrong with it
    for kind, other in (("owner", rls_settings.OWNER_DATABASE), ("maintenance", rls_settings.BYPASS_DATABASE)):
        user = connections.settings[other].get("USER") if other in connections.settings else None
        if other and (alias == other or role == user):
            return (
                f"rls_verify is connected as {role}, the {kind} role (alias {other!r}), which policies do not limit: "
                "it proves what the application sees, so run it as the application, "
                "manage.py rls_verify --database default (or the alias your site connects as)"
            )
    return None


def _session_failures(cursor: Any, role: str) -> list[str]:
    """What lets one request's session hide tables from the next one on a reused connection."""
    from django_rls.roles import search_path_schemas

    cursor.execute("SELECT has_database_privilege(current_user, current_database(), 'TEMPORARY'), current_database()")
    temp, database = cursor.fetchone()
    cursor.execute("SELECT current_setting('search_path')")
    search_path = cursor.fetchone()[0]
    failures = []
    if temp:
        failures.append(
            f"the connection's role {role} may create temporary tables in database {database}: one request's "
            "temporary table would hide the real table from every later request on the same connection "
            "(run manage.py rls_roles)"
        )
    if search_path_schemas(search_path)[-1:] != ["pg_temp"]:
        failures.append(
            f"the connection's search_path ({search_path}) does not end with pg_temp, so temporary objects are "
            "searched before the real ones (run manage.py rls_roles)"
        )
    return failures


def _keys(declaration: Declaration) -> dict[str, str]:
    """field name -> "site" or "user", for the policies a probe can exercise."""
    keys: dict[str, str] = {}
    for policy in declaration.policies:
        if isinstance(policy, policies.BySite | policies.Shared):
            keys[policy.field] = "site"
        elif isinstance(policy, policies.ByOwner | policies.OwnerOrShared):
            keys[policy.field] = "user"
        elif isinstance(policy, policies.OwnerOrMember):
            keys[policy.owner_field] = "user"  # a probe row has no members: only its owner may see it
        elif isinstance(policy, policies.BySiteAndOwner):
            keys[policy.site_field] = "site"
            keys[policy.owner_field] = "user"
        elif isinstance(policy, policies.Members):
            keys[policy.site_field] = "site"
            keys[policy.user_field] = "user"
        else:
            raise probes.Unprobeable(f"{type(policy).__name__} policies are checked in the catalog only")
    return keys


def _key_value(model: type[models.Model], name: str, alias: str, protected: set[str]) -> Any:
    key_field = model._meta.get_field(name)
    if key_field.is_relation:
        return probes.parent_row(key_field, alias, protected)
    if isinstance(key_field, models.UUIDField):
        return uuid.uuid4()
    return -int(uuid.uuid4().int % 1_000_000_000) - 1


def _probe(declaration: Declaration, alias: str, protected: set[str]) -> str | None:
    """Returns a failure, or None when the probe proved isolation. Raises Unprobeable."""
    model = declaration.model_class()
    table = model._meta.db_table
    keys = _keys(declaration)
    a = {name: _key_value(model, name, alias, protected) for name in keys}
    b = {name: _key_value(model, name, alias, protected) for name in keys}

    def ctx(values: dict[str, Any]) -> context:
        return context(**{kind: values[name] for name, kind in keys.items()})

    manager = model._base_manager.using(alias)
    with ctx(a):
        row = probes.build(model, alias, protected, a)
        try:
            with transaction.atomic(using=alias):
                probes.insert(row, alias)
        except DatabaseError as exc:
            return f"{table}: a row could not be written in its own context ({str(exc).splitlines()[0]}); is the context sent?"
        if not manager.filter(pk=row.pk).exists():
            return f"{table}: a row is invisible in its own context"
    with ctx(b):
        if manager.filter(pk=row.pk).exists():
            return f"{table}: another site or user can read the row"
        editable = next(f for f in model._meta.concrete_fields if not f.primary_key)
        if manager.filter(pk=row.pk).update(**{editable.attname: models.F(editable.attname)}):
            return f"{table}: another site or user can update the row"
        if manager.filter(pk=row.pk)._raw_delete(alias):
            return f"{table}: another site or user can delete the row"
    with context():
        if manager.filter(pk=row.pk).exists():
            return f"{table}: a request without context can read the row"
    return None


def verify(alias: str = "default") -> Report:
    report = Report()
    declarations = all_declarations()
    try:
        with connections[alias].cursor() as cursor:
            report.mode = installed_mode(cursor)
        report.failures.extend(_catalog_failures(alias, declarations))
    except DatabaseError as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        report.failures.append(f"could not inspect database {alias!r}: {type(exc).__name__}: {first_line}")
    if report.failures:
        return report
    protected = set(declarations)
    for label, declaration in sorted(declarations.items()):
        table = declaration.model_class()._meta.db_table
        try:
            with transaction.atomic(using=alias):
                try:
                    failure = _probe(declaration, alias, protected)
                finally:
                    transaction.set_rollback(True, using=alias)
        except probes.Unprobeable as reason:
            report.skipped.append(f"{table}: not probed: {reason}")
        except Exception as exc:  # whatever the application or the server raises is a finding, not a crash
            first_line = (str(exc).splitlines() or [""])[0]
            report.failures.append(f"{table} ({label}): the probe failed: {type(exc).__name__}: {first_line}")
        else:
            if failure:
                report.failures.append(failure)
            else:
                report.passed.append(f"{table}: another site or user cannot read, change or delete its rows")
    return report
