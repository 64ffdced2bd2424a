"""The database roles django_rls expects, and the statements that create or fix them (``manage.py rls_roles``).

- the application role: logs in, no superuser, no BYPASSRLS, cannot create roles,
  databases or objects in the schema, and is no member of the owner or maintenance role;
- the owner role: owns the tables, runs migrate and rls_apply; no superuser, no BYPASSRLS;
- the maintenance role (optional): BYPASSRLS and a member of the owner role, used only
  inside django_rls.bypass();
- a backup role (optional): BYPASSRLS and pg_read_all_data, for pg_dump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

ROLE_FLAGS = ("rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb", "rolcanlogin", "rolreplication")
KEYWORDS = {
    "rolsuper": ("SUPERUSER", "NOSUPERUSER"),
    "rolbypassrls": ("BYPASSRLS", "NOBYPASSRLS"),
    "rolcreaterole": ("CREATEROLE", "NOCREATEROLE"),
    "rolcreatedb": ("CREATEDB", "NOCREATEDB"),
    "rolcanlogin": ("LOGIN", "NOLOGIN"),
    "rolreplication": ("REPLICATION", "NOREPLICATION"),
}


@dataclass(frozen=True)
class RoleSpec:
    kind: str
    name: str
    flags: dict[str, bool]
    password: str | None = None
    member_of: tuple[str, ...] = ()
    not_member_of: tuple[str, ...] = ()


def specs(
    app: str, owner: str | None, maintenance: str | None, backup: str | None, passwords: dict[str, str]
) -> list[RoleSpec]:
    plain = {
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolcanlogin": True,
        "rolreplication": False,
    }
    result = []
    if owner:
        result.append(RoleSpec("owner", owner, {**plain, "rolbypassrls": False}, passwords.get(owner)))
    result.append(
        RoleSpec(
            "application",
            app,
            {**plain, "rolbypassrls": False},
            passwords.get(app),
            not_member_of=tuple(r for r in (owner, maintenance, backup) if r),
        )
    )
    if maintenance:
        result.append(
            RoleSpec(
                "maintenance",
                maintenance,
                {**plain, "rolbypassrls": True},
                passwords.get(maintenance),
                member_of=(owner,) if owner else (),
            )
        )
    if backup:
        result.append(
            RoleSpec(
                "backup",
                backup,
                {**plain, "rolbypassrls": True},
                passwords.get(backup),
                member_of=("pg_read_all_data",),
            )
        )
    return result


def _exists(cursor: Any, role: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


def _is_member(cursor: Any, role: str, parent: str) -> bool:
    """Direct membership only: what GRANT and REVOKE change."""
    cursor.execute(
        """
        SELECT 1 FROM pg_auth_members m
          JOIN pg_roles p ON p.oid = m.roleid JOIN pg_roles c ON c.oid = m.member
         WHERE p.rolname = %s AND c.rolname = %s
        """,
        [parent, role],
    )
    return cursor.fetchone() is not None


def _role_steps(cursor: Any, spec: RoleSpec) -> list[tuple[str, sql.Composable]]:
    steps: list[tuple[str, sql.Composable]] = []
    cursor.execute(f"SELECT {', '.join(ROLE_FLAGS)} FROM pg_roles WHERE rolname = %s", [spec.name])
    row = cursor.fetchone()
    if row is None:
        keywords = " ".join(KEYWORDS[flag][0 if value else 1] for flag, value in spec.flags.items())
        statement = sql.SQL("CREATE ROLE {} " + keywords).format(sql.Identifier(spec.name))
        if spec.password:
            statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(spec.password))
        steps.append((f"create the {spec.kind} role {spec.name}", statement))
    else:
        current = dict(zip(ROLE_FLAGS, row, strict=True))
        wrong = [KEYWORDS[flag][0 if value else 1] for flag, value in spec.flags.items() if current[flag] != value]
        if wrong:
            steps.append(
                (
                    f"set {' '.join(wrong)} on the {spec.kind} role {spec.name}",
                    sql.SQL("ALTER ROLE {} " + " ".join(wrong)).format(sql.Identifier(spec.name)),
                )
            )
    for parent in spec.member_of:
        if row is None or not _is_member(cursor, spec.name, parent):
            steps.append(
                (
                    f"make the {spec.kind} role {spec.name} a member of {parent}",
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), sql.Identifier(spec.name)),
                )
            )
    for parent in spec.not_member_of:
        if row is not None and _is_member(cursor, spec.name, parent):
            steps.append(
                (
                    f"take the {spec.kind} role {spec.name} out of {parent}",
                    sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(parent), sql.Identifier(spec.name)),
                )
            )
    return steps


def _schema_steps(cursor: Any, app: str) -> list[tuple[str, sql.Composable]]:
    """Schemas of this database where the application role (or PUBLIC) may create objects."""
    if not _exists(cursor, app):
        cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname = 'public'")
        schemas = [r[0] for r in cursor.fetchall()]
    else:
        cursor.execute(
            """
            SELECT n.nspname FROM pg_namespace n
             WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname NOT IN ('information_schema', 'rls', 'rls_audit')
               AND (has_schema_privilege(%s, n.oid, 'CREATE')
                    OR EXISTS (SELECT FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                                WHERE a.grantee = 0 AND a.privilege_type = 'CREATE'))
             ORDER BY 1
            """,
            [app],
        )
        schemas = [r[0] for r in cursor.fetchall()]
    return [
        (
            f"stop the application role from creating objects in schema {schema}",
            sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {}").format(sql.Identifier(schema), sql.Identifier(app)),
        )
        for schema in schemas
    ]


def plan(cursor: Any, wanted: list[RoleSpec]) -> list[tuple[str, sql.Composable]]:
    """(summary, statement) pairs that bring the roles in line; empty when they already are."""
    steps = [step for spec in wanted for step in _role_steps(cursor, spec)]
    app = next(spec.name for spec in wanted if spec.kind == "application")
    return steps + _schema_steps(cursor, app)
