"""Compare what the declarations want with what the database has, and say how to get there.

``rls_apply`` and the drift check both use :func:`make_plan`. Reading the
catalog takes a fixed number of queries whatever the number of models; nothing
is locked. Tables are looked up once the way Django names them, then named by
oid in queries and by ``psycopg.sql.Identifier`` in statements.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.apps import apps
from django.db import DatabaseError, models
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

import django_rls
from django_rls import conf
from django_rls.ddl import (
    ACCESS_EXCLUSIVE,
    SHARE_ROW_EXCLUSIVE,
    Bounds,
    LockRequest,
    LockWaitExhausted,
    Runner,
    merge_locks,
)
from django_rls.declarations import all_declarations
from django_rls.policies import (
    ByOwner,
    BySite,
    BySiteAndOwner,
    Declaration,
    Group,
    OwnerOrShared,
    Policy,
    Shared,
    key_column,
)
from django_rls.sqlonly import installed_mode, installed_version

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
FORBIDDEN_PRIVILEGES = ("TRUNCATE", "REFERENCES", "TRIGGER")
# A group's policy, rls_<group>_<command>; not rls_base_<command>, the permissive policy every protected table has
# beside its groups (no group may be called "base").
POLICY_NAME = r"^rls_(?!base_(?:select|insert|update|delete)$)(.+)_(select|insert|update|delete)$"
MIGRATIONS_TABLE = "django_migrations"


class PlanError(Exception):
    """The database cannot be brought in line; the message says why and what to do."""


class TablesMissing(PlanError):
    """Declared tables do not exist yet: migrate has not run."""


class ApplyGaveUp(PlanError):
    """A table stayed locked by other sessions for the whole budget; the tables before it were applied."""


@dataclass(frozen=True)
class Step:
    """One change: a human-readable line and the statement that makes it.

    ``unit`` names the table whose transaction the step belongs to (None: the
    closing unit, after every table); ``lock`` is the table lock it needs.
    """

    summary: str
    sql: str
    params: tuple[Any, ...] = ()
    details: tuple[str, ...] = ()
    unit: str | None = None
    lock: LockRequest | None = None

    def composed(self, connection: BaseDatabaseWrapper) -> str:
        """The statement with its parameters in it: what --sql prints, and what a batch sends in one round trip."""
        return connection.ops.compose_sql(self.sql, self.params) if self.params else self.sql


@dataclass(frozen=True)
class Unit:
    """The steps of one table, applied in one transaction that takes its locks first."""

    name: str
    steps: tuple[Step, ...]

    @property
    def locks(self) -> list[LockRequest]:
        return merge_locks([s.lock for s in self.steps if s.lock is not None])


def units(plan: Plan) -> list[Unit]:
    """The plan split into one transaction per table, in plan order, then one for schemas and sequences.

    Tables whose declared policies read one another (ThroughParent, Membership)
    and that both change share one transaction.

    Everything a table needs (its policies, RLS switches, audit triggers and the
    application role's grants on it) commits together, so the table goes from
    its old state to its new one at once: never granted before it is protected,
    never with policies dropped and not yet recreated. USAGE on schemas comes
    last, once every table they hold is protected.
    """
    by_unit: dict[str | None, list[Step]] = {}
    for step in plan.steps:
        by_unit.setdefault(step.unit, []).append(step)
    closing = by_unit.pop(None, [])
    # Tables whose policies read each other's change together: a child protected through its
    # parent must not meet the parent's new policies with its own old ones, or the reverse.
    locking = {name for name, steps in by_unit.items() if any(s.lock is not None for s in steps)}
    root: dict[str, str] = {name: name for name in by_unit if name is not None}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    for reader, read in plan.links:
        if reader in locking and read in locking:
            first, second = sorted((find(reader), find(read)), key=list(root).index)
            root[second] = first
    merged: dict[str, list[str]] = {}
    for name in root:
        merged.setdefault(find(name), []).append(name)
    found = [
        Unit(" + ".join(names), tuple(step for name in names for step in by_unit[name])) for names in merged.values()
    ]
    if closing:
        found.append(Unit("schemas and sequences", tuple(closing)))
    return found


def _policy_lock(table: Table) -> LockRequest:
    # CREATE/ALTER/DROP POLICY and ALTER TABLE ... ROW LEVEL SECURITY take ACCESS EXCLUSIVE on the table alone.
    return LockRequest(table.qualified, table.display, ACCESS_EXCLUSIVE)


@dataclass(frozen=True)
class Table:
    """A table as the catalog names it: its oid for queries, schema and name for statements, regclass text for people.

    Queries use the oid, so that no name is folded or re-parsed, and a role without USAGE on
    the table's schema can still be told what it lacks.
    """

    oid: int
    schema: str
    name: str
    display: str

    @property
    def qualified(self) -> str:
        """The schema-qualified, quoted name, which regclass input reads back exactly."""
        return sql.Identifier(self.schema, self.name).as_string(None)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def resolve_tables(cursor: Any, db_tables: list[str]) -> dict[str, Table | None]:
    """db_table -> the table Django's queries reach (None when it does not exist), in one query.

    Django writes a db_table in quotes unless it is quoted already ('"other"."thing"'), so
    its own quote_name() gives the SQL name; a qualified name is looked up in the catalog
    (which needs no USAGE on the schema), an unqualified one on the search_path.
    """
    cursor.execute(
        """
        SELECT t, c.oid, n.nspname, c.relname, c.oid::regclass::text
          FROM unnest(%s::text[], %s::text[]) AS x(t, q)
          LEFT JOIN LATERAL (SELECT parse_ident(q) AS parts) p ON true
          LEFT JOIN pg_class c
                 ON c.oid = CASE WHEN cardinality(p.parts) = 1 THEN to_regclass(q)
                                 WHEN cardinality(p.parts) = 2
                                 THEN (SELECT k.oid FROM pg_class k JOIN pg_namespace s ON s.oid = k.relnamespace
                                        WHERE s.nspname = p.parts[1] AND k.relname = p.parts[2]) END
          LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
        """,
        [db_tables, [cursor.db.ops.quote_name(t) for t in db_tables]],
    )
    return {
        t: Table(oid, schema, name, display) if oid is not None else None
        for t, oid, schema, name, display in cursor.fetchall()
    }


@dataclass
class Plan:
    app_role: str
    tables: int = 0
    steps: list[Step] = field(default_factory=list)
    # (reader, read): a declared policy of the first table reads the second (ThroughParent, Membership)
    links: list[tuple[str, str]] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)  # stale groups kept because --prune was not given
    left_unaudited: list[str] = field(
        default_factory=list
    )  # audit=True models, with the SQL-only mode's --without-audit

    @property
    def in_sync(self) -> bool:
        return not self.steps


def app_role() -> str:
    role = conf.app_role()
    if not role:
        raise PlanError(
            'cannot tell which role the application connects as: set DJANGO_RLS["APP_ROLE"] '
            'or DATABASES["default"]["USER"]'
        )
    return role


def check_extension(connection: BaseDatabaseWrapper) -> str:
    """The mode django_rls is installed in ("c" or "sql"); an error when missing or of another version."""
    with connection.cursor() as cursor:
        mode = installed_mode(cursor)
        version = installed_version(cursor)
    name = connection.settings_dict["NAME"]
    if mode is None:
        raise PlanError(
            f"the django_rls extension is not installed in database {name!r}: run CREATE EXTENSION django_rls as a "
            "superuser (the library must also be in shared_preload_libraries), or, on hosted PostgreSQL without the "
            "library, rls_apply --install as the owner to install the SQL-only mode (docs/getting-started.md)"
        )
    if version != django_rls.EXTENSION_VERSION:
        if mode == "sql":
            raise PlanError(
                f"the database has the SQL-only mode of django_rls {version}, this package needs "
                f"{django_rls.EXTENSION_VERSION}: run rls_apply --install as the owner to upgrade it in place"
            )
        raise PlanError(
            f"the database has django_rls extension {version}, this package needs {django_rls.EXTENSION_VERSION}: "
            f"run ALTER EXTENSION django_rls UPDATE TO '{django_rls.EXTENSION_VERSION}' as a superuser"
        )
    return mode


def _managed_tables() -> list[type[models.Model]]:
    return [m for m in apps.get_models(include_auto_created=True) if m._meta.managed and not m._meta.proxy]


def _declared_groups(connection: BaseDatabaseWrapper) -> dict[str, list[Group]]:
    desired: dict[str, list[Group]] = {}
    for declaration in all_declarations().values():
        desired[declaration.model_class()._meta.db_table] = declaration.groups(connection)
    return desired


def make_plan(connection: BaseDatabaseWrapper, prune: bool = False, without_audit: bool = False) -> Plan:
    """The steps that bring policies and grants in line with the declarations.

    ``without_audit``: in the SQL-only mode, leave the models declared with
    ``audit=True`` unaudited (listed in ``left_unaudited``), as before that mode
    had an audit trail.
    """
    mode = check_extension(connection)
    role = app_role()
    desired = _declared_groups(connection)
    plan = Plan(app_role=role, tables=len(desired))

    with connection.cursor() as cursor:
        tables = resolve_tables(cursor, sorted(set(desired) | {m._meta.db_table for m in _managed_tables()}))
        _check_roles(cursor, role, tables, list(desired))
        found = {t: table for t, table in tables.items() if table is not None}
        _plan_policies(cursor, plan, {found[t]: groups for t, groups in desired.items()}, role, prune)
        plan.links = _links(found)
        if mode == "sql":
            _plan_member_reads(cursor, plan, found)
        if mode == "sql" and without_audit:
            plan.left_unaudited = sorted(label for label, d in all_declarations().items() if d.audit)
        else:
            _plan_audit(cursor, plan, prune, found)
        _plan_grants(cursor, plan, role, found)
    return plan


def _links(tables: dict[str, Table]) -> list[tuple[str, str]]:
    """Which protected tables' policies read which other tables (Custom SQL is not followed)."""
    links = []
    for declaration in all_declarations().values():
        model = declaration.model_class()
        reader = tables.get(model._meta.db_table)
        for policy in declaration.policies:
            for read in policy.reads(model):
                target = tables.get(read._meta.db_table)
                if reader is not None and target is not None and target != reader:
                    links.append((reader.qualified, target.qualified))
    return sorted(set(links))


ReadRule = tuple[str | None, str | None, bool]  # site column, owner column, NULL means shared


def audit_read_rule(declaration: Declaration) -> ReadRule | None:
    """What the audit log mirrors of a model's policies, so the app role reads only entries of rows it may read.

    Only site and owner comparisons can be mirrored (BySite, ByOwner,
    BySiteAndOwner, and Shared / OwnerOrShared without a flag field, alone);
    any other policy, or two different site or owner columns, gives ``None``:
    the app role then reads none of the table's entries (its owner and the
    bypass alias still do).
    """
    model = declaration.model_class()
    sites: set[str] = set()
    owners: set[str] = set()
    shared = False
    # A Lookup lets find() read one row by its key; audit entries follow the policies it widens.
    policies = [policy for policy in declaration.policies if type(policy).select_also is Policy.select_also]
    for policy in policies:
        if type(policy) is BySite:
            sites.add(key_column(model, policy.field))
        elif type(policy) is ByOwner:
            owners.add(key_column(model, policy.field))
        elif type(policy) is BySiteAndOwner:
            sites.add(key_column(model, policy.site_field))
            owners.add(key_column(model, policy.owner_field))
        elif type(policy) is Shared:
            sites.add(key_column(model, policy.field))
            shared = True
        elif type(policy) is OwnerOrShared and policy.shared_field is None:
            owners.add(key_column(model, policy.field))
            shared = True
        else:
            return None
    if len(sites) > 1 or len(owners) > 1 or (shared and len(policies) > 1) or not (sites or owners):
        return None
    return (next(iter(sites), None), next(iter(owners), None), shared)


def _describe_rule(rule: ReadRule | None) -> str:
    if rule is None:
        return "readable by the table owner only"
    site, owner, shared = rule
    parts = [f"site column {site}" if site else "", f"owner column {owner}" if owner else ""]
    return "by " + " and ".join(p for p in parts if p) + (" (NULL: shared)" if shared else "")


def _plan_member_reads(cursor: Any, plan: Plan, tables: dict[str, Table]) -> None:
    """SQL-only mode: let rls.member_of() read each membership table OwnerOrMember names (rls.allow_member_of)."""
    from django_rls.policies import OwnerOrMember, key_column

    wanted: set[tuple[str, str, str]] = set()
    for declaration in all_declarations().values():
        for policy in declaration.policies:
            if isinstance(policy, OwnerOrMember):
                membership = policy.membership()
                wanted.add(
                    (
                        membership._meta.db_table,
                        key_column(membership, policy.member_field),
                        key_column(membership, policy.user_field),
                    )
                )
    for db_table, key, user in sorted(wanted):
        table = tables.get(db_table)
        if table is None:
            continue  # resolve_tables reported it
        cursor.execute("SELECT rls.member_of_allowed(%s::regclass, %s, %s)", [table.qualified, key, user])
        if cursor.fetchone()[0]:
            continue
        plan.steps.append(
            Step(
                f"let rls.member_of() read {table.display} ({key}, {user}) as django_rls_member",
                "SELECT rls.allow_member_of(%s::regclass, %s, %s)",
                (table.qualified, key, user),
                unit=table.qualified,
                lock=_policy_lock(table),
            )
        )


def _plan_audit(cursor: Any, plan: Plan, prune: bool, tables: dict[str, Table]) -> None:
    """Switch the audit trail on, off or to new options, per the declarations' audit flags.

    Each audited table also gets the read rule that mirrors its policies in
    the log (:func:`audit_read_rule`).
    """
    wanted: dict[str, tuple[list[str], list[str]]] = {}
    qualified: dict[str, str] = {}
    rules: dict[str, ReadRule | None] = {}
    for declaration in all_declarations().values():
        if declaration.audit:
            audited = tables[declaration.model_class()._meta.db_table]
            wanted[audited.display] = declaration.audit_columns()
            qualified[audited.display] = audited.qualified
            rules[audited.display] = audit_read_rule(declaration)
    # Tables are named by their regclass text, schema-qualified when off the search_path.
    cursor.execute(
        """
        SELECT c.oid::regclass::text, a.excluded_columns, a.masked_columns, a.operations,
               cardinality(s.missing_triggers) > 0, n.nspname, c.relname
          FROM rls_audit.audited_tables a
          JOIN pg_class c ON c.oid = a.table_oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN rls_audit.status s ON s.table_name = a.table_oid::regclass
         WHERE (pg_table_is_visible(c.oid) OR c.oid::regclass::text = ANY(%s::text[]))
           AND cardinality(s.audited_through) = 0  -- partitions and children follow their parent
        """,
        [list(wanted)],
    )
    rows = cursor.fetchall()
    for table, *_, schema, name in rows:
        qualified.setdefault(table, sql.Identifier(schema, name).as_string(None))
    current = {
        table: (sorted(excluded), sorted(masked), sorted(ops), broken)
        for table, excluded, masked, ops, broken, _, _ in rows
    }
    cursor.execute(
        """
        SELECT c.oid::regclass::text, r.site_column, r.owner_column, r.null_is_shared
          FROM rls_audit.read_rules r
          JOIN pg_class c ON c.oid = r.table_oid
         WHERE pg_table_is_visible(c.oid) OR c.oid::regclass::text = ANY(%s::text[])
        """,
        [list(wanted)],
    )
    current_rules: dict[str, ReadRule] = {
        table: (site, owner, shared) for table, site, owner, shared in cursor.fetchall()
    }
    all_operations = sorted(["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
    for table, (excluded, masked) in sorted(wanted.items()):
        if current.get(table) != (excluded, masked, all_operations, False):
            detail = f"excluding {', '.join(excluded) or 'nothing'}, masking {', '.join(masked) or 'nothing'}"
            verb = "change the audit options of" if table in current else "audit"
            plan.steps.append(
                Step(
                    f"{verb} {table} ({detail})",
                    "SELECT rls_audit.enable(%s::regclass, %s::text[], %s::text[])",
                    (qualified[table], excluded, masked),
                    unit=qualified[table],
                    # CREATE TRIGGER on the table and its partitions: SHARE ROW EXCLUSIVE (reads go on).
                    lock=LockRequest(qualified[table], table, SHARE_ROW_EXCLUSIVE, only=False),
                )
            )
        rule = rules[table]
        if current_rules.get(table) != rule:
            site, owner, shared = rule if rule is not None else (None, None, False)
            plan.steps.append(
                Step(
                    f"let the app role read the audit trail of {table} {_describe_rule(rule)}",
                    "SELECT rls_audit.set_read_rule(%s::regclass, %s, %s, %s)",
                    (qualified[table], site, owner, shared),
                    unit=qualified[table],
                )
            )
    for table in sorted(set(current) - set(wanted)):
        if prune:
            plan.steps.append(
                Step(
                    f"stop auditing {table} (no declaration wants it)",
                    "SELECT rls_audit.disable(%s::regclass)",
                    (qualified[table],),
                    unit=qualified[table],
                    # DROP TRIGGER on the table and its partitions: ACCESS EXCLUSIVE.
                    lock=LockRequest(qualified[table], table, ACCESS_EXCLUSIVE, only=False),
                )
            )
        else:
            plan.left_alone.append(f"{table}: audited though no declaration asks for it (use --prune to stop)")


def _check_roles(cursor: Any, role: str, tables: dict[str, Table | None], protected: list[str]) -> None:
    cursor.execute(
        """
        SELECT r.rolsuper, r.rolbypassrls, r.rolname = current_user,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
          FROM pg_roles r WHERE r.rolname = %s
        """,
        [role],
    )
    row = cursor.fetchone()
    if row is None:
        raise PlanError(
            f"the application role {role!r} does not exist: create it with manage.py rls_roles "
            "(or as NOSUPERUSER NOBYPASSRLS LOGIN)"
        )
    is_super, bypass, is_me, i_am_super = row
    if is_me:
        raise PlanError(
            f"rls_apply is connected as the application role {role!r}; run it as the role that owns the tables "
            '(DJANGO_RLS["OWNER_DATABASE"] or --database)'
        )
    if is_super or bypass:
        # Never advise demoting this role: it may be the cluster's only superuser, or the maintenance role.
        raise PlanError(
            f"the application connects as {role!r}, which is a superuser or has BYPASSRLS, so no policy would apply "
            "to it: connect the application as another role that is NOSUPERUSER NOBYPASSRLS and owns no table "
            '(manage.py rls_roles --app-role <name> creates one), set DATABASES["default"]["USER"] or '
            f'DJANGO_RLS["APP_ROLE"] to it, and leave {role!r} as it is'
        )
    missing = sorted(t for t in protected if tables[t] is None)
    if missing:
        raise TablesMissing(f"protected tables do not exist yet: {', '.join(missing)}; run migrate first")
    cursor.execute(
        """
        SELECT t, pg_has_role(%s, c.relowner, 'MEMBER'), pg_has_role(current_user, c.relowner, 'MEMBER')
          FROM unnest(%s::text[], %s::oid[]) AS x(t, o)
          JOIN pg_class c ON c.oid = o
        """,
        [role, protected, [tables[t].oid for t in protected]],  # type: ignore[union-attr]
    )
    app_owned, not_mine = [], []
    for table, owned_by_app, mine in cursor.fetchall():
        if owned_by_app:
            app_owned.append(tables[table].display)  # type: ignore[union-attr]
        elif not mine and not i_am_super:
            not_mine.append(tables[table].display)  # type: ignore[union-attr]
    if app_owned:
        raise PlanError(
            f"the application role {role!r} owns {', '.join(sorted(app_owned))}, so it could switch row level "
            "security off: ALTER TABLE ... OWNER TO the owner role, and run migrations as that role"
        )
    if not_mine:
        raise PlanError(
            f"the current role does not own {', '.join(sorted(not_mine))} and cannot change their policies: "
            'run rls_apply as the owner role (DJANGO_RLS["OWNER_DATABASE"] or --database)'
        )


def groups_in_sync(cursor: Any, groups: list[tuple[Table, Group]], role: str) -> list[bool]:
    """For each (table, group), whether rls.protect() would change nothing: rls.group_in_sync() for all at once.

    One statement (rls._groups_in_sync()), which reads each table's policies once and
    compares its rls_base_<command> policies once, however many groups it has.
    """
    if not groups:
        return []
    cursor.execute(
        "SELECT in_sync FROM rls._groups_in_sync(%s::jsonb, %s) ORDER BY ord",
        [
            json.dumps(
                [
                    {
                        "tbl": table.oid,
                        "group_name": group.name,
                        "using_expr": group.using,
                        "check_expr": group.check,
                        "commands": list(group.commands),
                    }
                    for table, group in groups
                ]
            ),
            role,
        ],
    )
    return [ok for (ok,) in cursor.fetchall()]


def _plan_policies(cursor: Any, plan: Plan, desired: dict[Table, list[Group]], role: str, prune: bool) -> None:
    rows = [(table, g) for table, groups in sorted(desired.items(), key=lambda i: i[0].display) for g in groups]
    in_sync: list[bool] = []
    if rows:
        in_sync = groups_in_sync(cursor, [(t, g) for t, g in rows], role)

    # Policies on tables of the search_path, and on every declared table wherever it lives.
    cursor.execute(
        """
        SELECT c.oid, n.nspname, c.relname, c.oid::regclass::text, substring(p.polname from %s), string_agg(
                   format('%%s: %%s', p.polname,
                          coalesce(pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))),
                   '; ' ORDER BY p.polname)
          FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE p.polname ~ %s AND (pg_table_is_visible(c.oid) OR c.oid = ANY(%s::oid[]))
         GROUP BY 1, 2, 3, 4, 5
        """,
        [POLICY_NAME, POLICY_NAME, [t.oid for t in desired]],
    )
    existing: dict[Table, dict[str, str]] = defaultdict(dict)
    for oid, schema, name, display, group, current in cursor.fetchall():
        existing[Table(oid, schema, name, display)][group] = current

    # Groups of one table must all name the same role, so a table protected for another role (the
    # application role was renamed) loses its old groups first, in the same transaction.
    cursor.execute(
        """
        SELECT DISTINCT p.polrelid FROM pg_policy p, unnest(p.polroles) AS r
         WHERE p.polrelid = ANY(%s::oid[]) AND p.polname ~ %s
           AND r IS DISTINCT FROM CASE WHEN %s = 'public' THEN 0 ELSE (SELECT oid FROM pg_roles WHERE rolname = %s) END
        """,
        [[t.oid for t in desired], POLICY_NAME, role, role],
    )
    other_role = {oid for (oid,) in cursor.fetchall()}
    for table in sorted(desired, key=lambda t: t.display):
        if table.oid in other_role:
            plan.steps.append(
                Step(
                    f"unprotect {table.display}: its policies name another role than {role}",
                    "SELECT rls.unprotect(%s::regclass)",
                    (table.qualified,),
                    unit=table.qualified,
                    lock=_policy_lock(table),
                )
            )
            existing.pop(table, None)

    for (table, group), ok in zip(rows, in_sync, strict=True):
        if ok:
            continue
        verb = "replace" if group.name in existing.get(table, {}) else "protect"
        details = [f"want: {', '.join(group.commands)} rows where {group.using}"]
        if group.check:
            details.append(f"      and written rows where {group.check}")
        if verb == "replace":
            details.insert(0, f"now:  {existing[table][group.name]}")
        plan.steps.append(
            Step(
                f"{verb} {table.display}: policy group {group.name!r} for {role}",
                "SELECT rls.protect(%s::regclass, %s, %s, %s, %s::text[], %s)",
                (table.qualified, group.name, group.using, group.check, list(group.commands), role),
                tuple(details),
                unit=table.qualified,
                lock=_policy_lock(table),
            )
        )

    for table, groups in sorted(existing.items(), key=lambda i: i[0].display):
        wanted = {g.name for g in desired.get(table, [])}
        for group_name in sorted(set(groups) - wanted):
            summary = f"remove {table.display}: policy group {group_name!r} (no declaration wants it)"
            if prune:
                plan.steps.append(
                    Step(
                        summary,
                        "SELECT rls.unprotect(%s::regclass, %s)",
                        (table.qualified, group_name),
                        unit=table.qualified,
                        lock=_policy_lock(table),
                    )
                )
            else:
                plan.left_alone.append(f"{table.display}: policy group {group_name!r} (use --prune to remove it)")


def _plan_grants(cursor: Any, plan: Plan, role: str, tables: dict[str, Table]) -> None:
    managed = sorted(
        {tables[m._meta.db_table] for m in _managed_tables() if m._meta.db_table in tables}, key=lambda t: t.display
    )
    # runserver and showmigrations read the migration history; only migrate (as the owner) writes it.
    migrations = tables.get(MIGRATIONS_TABLE)
    if migrations is None:
        resolved = resolve_tables(cursor, [MIGRATIONS_TABLE])[MIGRATIONS_TABLE]
        migrations = resolved
    if migrations is not None:
        cursor.execute("SELECT has_table_privilege(%s, %s::oid, 'SELECT')", [role, migrations.oid])
        if not cursor.fetchone()[0]:
            plan.steps.append(
                Step(
                    f"grant SELECT on {migrations.display} to {role}",
                    _statement("GRANT SELECT ON {} TO {}", migrations.identifier, sql.Identifier(role)),
                    unit=migrations.qualified,
                )
            )
    # A table in a schema of its own is reachable only with USAGE on that schema.
    cursor.execute(
        """
        SELECT DISTINCT s FROM unnest(%s::text[]) AS s
         WHERE NOT has_schema_privilege(%s, s, 'USAGE') ORDER BY 1
        """,
        [sorted({t.schema for t in managed}), role],
    )
    for (schema,) in cursor.fetchall():
        plan.steps.append(
            Step(
                f"grant USAGE on schema {sql.Identifier(schema).as_string(None)} to {role}",
                _statement("GRANT USAGE ON SCHEMA {} TO {}", sql.Identifier(schema), sql.Identifier(role)),
            )
        )
    cursor.execute(
        """
        SELECT i, p, has_table_privilege(%s, t, p)
          FROM unnest(%s::oid[]) WITH ORDINALITY AS x(t, i)
          CROSS JOIN unnest(%s::text[]) AS p
        """,
        [role, [t.oid for t in managed], list(TABLE_PRIVILEGES + FORBIDDEN_PRIVILEGES)],
    )
    grant: dict[Table, list[str]] = defaultdict(list)
    revoke: dict[Table, list[str]] = defaultdict(list)
    for index, privilege, held in cursor.fetchall():
        table = managed[index - 1]
        if privilege in TABLE_PRIVILEGES and not held:
            grant[table].append(privilege)
        elif privilege in FORBIDDEN_PRIVILEGES and held:
            revoke[table].append(privilege)
    for table in managed:
        if table in grant:
            privileges = ", ".join(grant[table])
            plan.steps.append(
                Step(
                    f"grant {privileges} on {table.display} to {role}",
                    _statement(f"GRANT {privileges} ON {{}} TO {{}}", table.identifier, sql.Identifier(role)),
                    unit=table.qualified,
                )
            )
    for table in managed:
        if table in revoke:
            privileges = ", ".join(revoke[table])
            plan.steps.append(
                Step(
                    f"revoke {privileges} on {table.display} from {role}",
                    _statement(f"REVOKE {privileges} ON {{}} FROM {{}}", table.identifier, sql.Identifier(role)),
                    unit=table.qualified,
                )
            )

    # Sequences behind serial and identity columns: nextval() needs USAGE; setval() (UPDATE) is never granted.
    cursor.execute(
        """
        SELECT DISTINCT s.oid::regclass::text, n.nspname, s.relname
          FROM unnest(%s::oid[]) AS t
          JOIN pg_depend d ON d.refobjid = t AND d.classid = 'pg_class'::regclass
                          AND d.deptype IN ('a', 'i')
          JOIN pg_class s ON s.oid = d.objid
          JOIN pg_namespace n ON n.oid = s.relnamespace
         WHERE CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(%s, s.oid, 'USAGE') END
         ORDER BY 1
        """,
        [[t.oid for t in managed], role],
    )
    for display, schema, name in cursor.fetchall():
        plan.steps.append(
            Step(
                f"grant USAGE on sequence {display} to {role}",
                _statement("GRANT USAGE ON SEQUENCE {} TO {}", sql.Identifier(schema, name), sql.Identifier(role)),
            )
        )


def _statement(template: str, *identifiers: sql.Identifier) -> str:
    """A statement with its identifiers quoted by psycopg (the one quoting helper)."""
    return sql.SQL(template).format(*identifiers).as_string(None)


APPLY_LOCK = "django_rls.rls_apply"
# Units tried together in one transaction and one round trip, their locks taken NOWAIT. Their tables stay
# locked until it commits (about 8 ms of DDL a table, so some 0.1 s here): more would hold up other sessions'
# queries longer, fewer would commit more often.
BATCH_UNITS = 16


def apply_plan(
    connection: BaseDatabaseWrapper,
    prune: bool = False,
    bounds: Bounds | None = None,
    progress: Callable[[Unit], None] | None = None,
    without_audit: bool = False,
) -> Plan:
    """Apply the plan table by table, under an advisory lock; returns what was done.

    ``without_audit`` as for :func:`make_plan`.

    Up to :data:`BATCH_UNITS` tables' units are first tried together: one
    transaction, one round trip, every lock taken ``NOWAIT``. When one of
    those tables is busy (or a statement fails), nothing of the batch is kept
    and each of its units runs in its own transaction that first locks its
    table with ``bounds.lock_timeout`` and retries within ``bounds.budget``
    (DJANGO_RLS["LOCK_TIMEOUT"] and ["LOCK_BUDGET"] by default), so a busy
    table delays only itself. ``progress`` is called for each unit once it
    has committed. When the budget runs out,
    :class:`ApplyGaveUp` says which table, which lock and which sessions hold
    it; the tables before it are applied whole, that table and the rest are
    untouched, and a rerun finishes the work.
    """
    from django_rls.ddl import bounds_from

    runner = Runner(connection, bounds or bounds_from(None, None))
    with connection.cursor() as cursor:
        # For the session's whole run (it spans transactions), so that others see who holds their tables.
        cursor.execute(
            "SELECT current_setting('application_name'), set_config('application_name', 'django_rls rls_apply', false)"
        )
        previous_name = cursor.fetchone()[0]
    try:
        runner.advisory_lock("waiting for another rls_apply to finish", APPLY_LOCK)
    except LockWaitExhausted as exc:
        _restore_name(connection, previous_name)
        raise ApplyGaveUp(f"rls_apply {exc}") from exc
    try:
        plan = make_plan(connection, prune=prune, without_audit=without_audit)  # under the lock
        todo = units(plan)
        done = 0
        while done < len(todo):
            batch = todo[done : done + BATCH_UNITS]
            if len(batch) > 1 and runner.run_at_once(
                merge_locks([lock for unit in batch for lock in unit.locks]),
                [step.composed(connection) for unit in batch for step in unit.steps],
            ):
                done += len(batch)
                if progress is not None:
                    for unit in batch:
                        progress(unit)
                continue
            # A table of the batch is busy, or a statement failed: each unit alone, as if no batch had been
            # tried, each waiting for its own locks only and an error naming its own unit.
            for unit in batch:
                try:
                    runner.run(unit.name, unit.locks, partial(_apply_unit, unit=unit))
                except LockWaitExhausted as exc:
                    left = ", ".join(u.name for u in todo[done:])
                    raise ApplyGaveUp(
                        f"rls_apply {exc}. Applied {done} of {len(todo)} table(s), each whole; nothing of {left} "
                        "was changed. Run rls_apply again once that session is done (it carries on where it "
                        "stopped), or allow more time with --lock-budget"
                    ) from exc
                done += 1
                if progress is not None:
                    progress(unit)
    finally:
        try:
            runner.advisory_unlock(APPLY_LOCK)
        except DatabaseError:
            pass  # a broken connection has released its session lock with the session
        _restore_name(connection, previous_name)
    return plan


def _restore_name(connection: BaseDatabaseWrapper, name: str) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('application_name', %s, false)", [name])
    except DatabaseError:
        pass  # as above: the session is gone, and its name with it


def _apply_unit(cursor: Any, *, unit: Unit) -> None:
    for step in unit.steps:
        cursor.execute(step.sql, step.params or None)
