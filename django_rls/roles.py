"""The database roles django_rls expects, and the statements that create or fix them (``manage.py rls_roles``).

- the application role: logs in, no superuser, no BYPASSRLS, cannot create roles,
  databases or objects in the schema, cannot create temporary objects in the database,
  starts with a search_path that searches pg_temp last, is statement-bound where the C
  library is (it can receive a context only from the statement marker the bridge binds,
  never from ``rls.set_context()``, so injected SQL cannot choose one), and is no member of the owner
  or maintenance role, nor of any role through which it could SET ROLE to a
  superuser or BYPASSRLS role;
- the owner role: owns the tables, runs migrate and rls_apply; no superuser, no BYPASSRLS;
  CREATEDB when it creates the test databases (``rls_roles --owner-createdb``); no
  CREATEROLE where the C library is (without it, the SQL-only mode's owner keeps it);
- the maintenance role (optional): BYPASSRLS and a member of the owner role, used only
  inside django_rls.bypass();
- a backup role (optional): BYPASSRLS and pg_read_all_data, for pg_dump.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from psycopg import sql

from django_rls.sqlonly import installed_mode

ROLE_FLAGS = ("rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb", "rolcanlogin", "rolreplication")
KEYWORDS = {
    "rolsuper": ("SUPERUSER", "NOSUPERUSER"),
    "rolbypassrls": ("BYPASSRLS", "NOBYPASSRLS"),
    "rolcreaterole": ("CREATEROLE", "NOCREATEROLE"),
    "rolcreatedb": ("CREATEDB", "NOCREATEDB"),
    "rolcanlogin": ("LOGIN", "NOLOGIN"),
    "rolreplication": ("REPLICATION", "NOREPLICATION"),
}


class RolesError(Exception):
    """The roles cannot be brought in line by rls_roles; the message says what to do."""


_OPTION = {"application": "app-role", "owner": "owner-role", "maintenance": "maintenance-role", "backup": "backup-role"}


@dataclass(frozen=True)
class RoleSpec:
    kind: str
    name: str
    flags: dict[str, bool]
    password: str | None = None
    member_of: tuple[str, ...] = ()
    not_member_of: tuple[str, ...] = ()


def specs(
    app: str,
    owner: str | None,
    maintenance: str | None,
    backup: str | None,
    passwords: dict[str, str],
    *,
    owner_createdb: bool | None = None,
) -> list[RoleSpec]:
    """The roles wanted. ``owner_createdb``: True gives the owner CREATEDB, None leaves it as it is.

    The owner is the role the test runner creates test databases as (pytest-django,
    ``manage.py test``), which needs CREATEDB; nothing else django_rls does needs it,
    and it never lets the owner read or change rows another way.
    """
    plain = {
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolcanlogin": True,
        "rolreplication": False,
    }
    result = []
    if owner:
        owner_flags = {**plain, "rolbypassrls": False}
        if owner_createdb is None:
            del owner_flags["rolcreatedb"]
        else:
            owner_flags["rolcreatedb"] = owner_createdb
        result.append(RoleSpec("owner", owner, owner_flags, passwords.get(owner)))
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


def bypassing_roles(cursor: Any) -> list[tuple[str, str]]:
    """(role, why) for every other role the connection's role can SET ROLE to that bypasses row level security."""
    cursor.execute(
        """
        SELECT b.rolname, CASE WHEN b.rolsuper THEN 'a superuser' ELSE 'has BYPASSRLS' END
          FROM pg_roles b
         WHERE b.rolname <> current_user AND (b.rolsuper OR b.rolbypassrls)
           AND pg_has_role(current_user, b.oid, 'MEMBER')
         ORDER BY 1
        """
    )
    return [(name, why) for name, why in cursor.fetchall()]


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
        # Demoting a superuser can leave a cluster with none (the only one is often the role connected here),
        # and changing the role this command runs as can take away the rights it needs: refuse both, and
        # point at another role instead.
        if current["rolsuper"] and not spec.flags["rolsuper"]:
            raise RolesError(
                f"the {spec.kind} role {spec.name} is a superuser; rls_roles does not demote superusers (it may be "
                f"the only one the server has): name another role for the {spec.kind} (--{_OPTION[spec.kind]}), "
                "which rls_roles creates, and connect the application as that role"
            )
        cursor.execute("SELECT current_user = %s", [spec.name])
        if cursor.fetchone()[0] and [f for f, v in spec.flags.items() if current[f] != v]:
            raise RolesError(
                f"rls_roles is connected as {spec.name}, the {spec.kind} role it would change: run it as another "
                "role with CREATEROLE (--database), or name another role for the "
                f"{spec.kind} (--{_OPTION[spec.kind]})"
            )
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
    not_member_of = list(spec.not_member_of)
    if spec.kind == "application" and row is not None:
        not_member_of += [name for name in _escape_parents(cursor, spec.name) if name not in not_member_of]
    for parent in not_member_of:
        if row is not None and _is_member(cursor, spec.name, parent):
            steps.append(
                (
                    f"take the {spec.kind} role {spec.name} out of {parent}",
                    sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(parent), sql.Identifier(spec.name)),
                )
            )
    return steps


def _escape_parents(cursor: Any, role: str) -> list[str]:
    """The roles ``role`` is directly a member of through which it can SET ROLE to a superuser or BYPASSRLS role."""
    cursor.execute(
        """
        SELECT p.rolname FROM pg_auth_members m
          JOIN pg_roles p ON p.oid = m.roleid JOIN pg_roles c ON c.oid = m.member
         WHERE c.rolname = %s
           AND EXISTS (SELECT FROM pg_roles b WHERE (b.rolsuper OR b.rolbypassrls) AND pg_has_role(p.oid, b.oid, 'MEMBER'))
         ORDER BY 1
        """,
        [role],
    )
    return [r[0] for r in cursor.fetchall()]


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


def _owner_schema_steps(cursor: Any, owner: str) -> list[tuple[str, sql.Composable]]:
    """Let the owner role create its tables in schema public, as ``rls_migrate`` needs.

    Since PostgreSQL 15 a new database's public schema lets only the database's owner
    create in it, and the database is usually created by a superuser before the owner
    role exists (docs/getting-started.md): its first migration would fail with
    ``permission denied for schema public``. When PUBLIC has the right (PostgreSQL 14,
    or granted by hand) the owner gets it by name too, since ``_schema_steps`` takes it
    from PUBLIC; a role that does not exist yet has no other.
    """
    cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'")
    if cursor.fetchone() is None:
        return []
    if _exists(cursor, owner):
        cursor.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE')"
            " AND NOT has_schema_privilege('public', 'public', 'CREATE')",
            [owner],
        )
        if cursor.fetchone()[0]:
            return []
    return [
        (
            f"let the owner role {owner} create tables in schema public",
            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)),
        )
    ]


def _temp_steps(cursor: Any, wanted: list[RoleSpec]) -> list[tuple[str, sql.Composable]]:
    """Take the TEMPORARY right on this database away from the application role.

    A temporary table (view, function, type) hides the object of the same name
    from every later unqualified query of the same session, and a pooled or
    reused connection serves many requests and sites. PostgreSQL grants
    TEMPORARY on a database to PUBLIC by default, so revoking it from the
    application role alone changes nothing: it is revoked from PUBLIC, and
    granted back by name to the other roles django_rls manages.
    """
    app = next(spec.name for spec in wanted if spec.kind == "application")
    others = [spec.name for spec in wanted if spec.kind != "application"]
    cursor.execute("SELECT current_database()")
    database = cursor.fetchone()[0]
    steps: list[tuple[str, sql.Composable]] = []
    cursor.execute(
        """
        SELECT EXISTS (SELECT FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                        WHERE d.datname = current_database() AND a.privilege_type = 'TEMPORARY'
                          AND a.grantee IN (0, (SELECT oid FROM pg_roles WHERE rolname = %s)))
        """,
        [app],
    )
    if cursor.fetchone()[0]:
        revokees = [sql.SQL("PUBLIC")] + ([sql.Identifier(app)] if _exists(cursor, app) else [])
        steps.append(
            (
                f"stop the application role {app} (and PUBLIC) from creating temporary objects in database {database}",
                sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(
                    sql.Identifier(database), sql.SQL(", ").join(revokees)
                ),
            )
        )
        for other in others:
            cursor.execute(
                """
                SELECT EXISTS (SELECT FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                                WHERE d.datname = current_database() AND a.privilege_type = 'TEMPORARY'
                                  AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s))
                """,
                [other],
            )
            if not cursor.fetchone()[0]:
                steps.append(
                    (
                        f"let {other} keep creating temporary objects in database {database}",
                        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
                            sql.Identifier(database), sql.Identifier(other)
                        ),
                    )
                )
    elif _exists(cursor, app):
        cursor.execute("SELECT has_database_privilege(%s, current_database(), 'TEMPORARY')", [app])
        if cursor.fetchone()[0]:
            # Through a role it is a member of: that membership is what must go.
            cursor.execute(
                """
                SELECT string_agg(quote_ident(p.rolname), ', ' ORDER BY p.rolname) FROM pg_roles p
                 WHERE pg_has_role(%s, p.oid, 'USAGE') AND p.rolname <> %s
                   AND has_database_privilege(p.oid, current_database(), 'TEMPORARY')
                """,
                [app, app],
            )
            raise RolesError(
                f"the application role {app} may create temporary objects in database {database} through its "
                f"membership in {cursor.fetchone()[0]}: revoke that membership, or TEMPORARY from those roles"
            )
    return steps


def search_path_schemas(setting: str) -> list[str]:
    """The names of a search_path setting, unquoted."""
    names = []
    for item in setting.split(","):
        name = item.strip()
        if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        if name:
            names.append(name)
    return names


def pinned_search_path(current: str | None) -> list[str]:
    """The schemas of a search_path setting, without "$user" and pg_temp, then pg_temp last.

    "$user" goes because a schema named after the application role would come
    first; pg_temp goes last so that no temporary object hides anything.
    """
    schemas = search_path_schemas(current if current is not None else '"$user", public')
    return [name for name in schemas if name not in ("$user", "pg_temp")] + ["pg_temp"]


def _search_path_steps(cursor: Any, app: str) -> list[tuple[str, sql.Composable]]:
    """Pin the application role's search_path in this database with pg_temp last."""
    cursor.execute(
        """
        SELECT current_database(),
               (SELECT substr(c, length('search_path=') + 1)
                  FROM pg_db_role_setting s, unnest(s.setconfig) AS c
                 WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                   AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = %s))
                   AND c LIKE 'search\\_path=%%'
                 ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
                 LIMIT 1)
        """,
        [app],
    )
    database, current = cursor.fetchone()
    schemas = pinned_search_path(current)
    if current is not None and search_path_schemas(current)[-1:] == ["pg_temp"]:
        return []
    return [
        (
            f"pin the search_path of the application role {app} in database {database} to {', '.join(schemas)}",
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = {}").format(
                sql.Identifier(app), sql.Identifier(database), sql.SQL(", ").join(map(sql.Identifier, schemas))
            ),
        )
    ]


STATEMENT_BOUND = "django_rls.statement_bound"


def library_available(cursor: Any) -> bool:
    """Whether this database uses the C library: its extension is installed, or (before CREATE EXTENSION)
    the server preloads the library. Otherwise it has, or will have, the SQL-only mode."""
    mode = installed_mode(cursor)
    if mode is not None:
        return mode == "c"
    cursor.execute("SELECT current_setting('django_rls.preloaded', true) = 'on'")
    return bool(cursor.fetchone()[0])


def _statement_bound_steps(cursor: Any, app: str) -> list[tuple[str, sql.Composable]]:
    """Make the application role statement-bound in every database, unless it already is.

    Only the C library knows the setting: without it (the SQL-only mode) there is
    nothing to bind, and docs/security.md says what that leaves weaker.
    """
    if not library_available(cursor):
        return []
    cursor.execute(
        """
        SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) AS c
         WHERE s.setdatabase = 0 AND s.setrole = (SELECT oid FROM pg_roles WHERE rolname = %s) AND c = %s
        """,
        [app, f"{STATEMENT_BOUND}=on"],
    )
    if cursor.fetchone() is not None:
        return []
    return [
        (
            f"make the application role {app} statement-bound: it may receive a context only from the statements "
            "the application binds, never from rls.set_context()",
            sql.SQL("ALTER ROLE {} SET {} = on").format(
                sql.Identifier(app), sql.Identifier(*STATEMENT_BOUND.split("."))
            ),
        )
    ]


# Citus's functions that send a statement to other nodes (sql/install/28_citus.sql lists the same).
CITUS_REMOTE_FUNCTIONS = (
    "master_run_on_worker",
    "run_command_on_workers",
    "run_command_on_all_nodes",
    "run_command_on_coordinator",
    "run_command_on_placements",
    "run_command_on_shards",
    "run_command_on_colocated_placements",
)


def _citus_steps(cursor: Any, app: str) -> list[tuple[str, sql.Composable]]:
    """Take Citus's run-on-other-nodes functions away from the application role.

    CREATE EXTENSION citus grants EXECUTE on them to PUBLIC, and with them the
    application role sends any statement to the workers itself, past the
    coordinator. Revoking from the role alone changes nothing while PUBLIC holds
    the grant, so it is revoked from PUBLIC (superusers keep them). Nothing to do
    where Citus is not installed.
    """
    cursor.execute(
        """
        SELECT string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid::regprocedure::text)
          FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
          JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
         WHERE e.extname = 'citus' AND p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (%s)
           AND (EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                         WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
                OR (EXISTS (SELECT FROM pg_roles WHERE rolname = %s) AND has_function_privilege(%s, p.oid, 'EXECUTE')))
        """,
        [list(CITUS_REMOTE_FUNCTIONS), app, app],
    )
    functions = cursor.fetchone()[0]
    if not functions:
        return []
    revokees = [sql.SQL("PUBLIC")] + ([sql.Identifier(app)] if _exists(cursor, app) else [])
    return [
        (
            f"stop the application role {app} (and PUBLIC) from running statements on the Citus workers",
            sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(sql.SQL(functions), sql.SQL(", ").join(revokees)),
        )
    ]


def owned_relations(cursor: Any, role: str) -> list[str]:
    """Tables, views and sequences of the connected database that ``role`` owns (none when it does not exist)."""
    cursor.execute(
        """
        SELECT c.oid::regclass::text
          FROM pg_class c
          JOIN pg_roles r ON r.oid = c.relowner
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE r.rolname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
         ORDER BY 1
        """,
        [role],
    )
    return [name for (name,) in cursor.fetchall()]


def owned_relations_warning(app: str, owner: str | None, owned: list[str]) -> str:
    """What to do when the application role still owns relations: usually an existing project that migrated as it."""
    shown = ", ".join(owned[:8]) + (f" and {len(owned) - 8} more" if len(owned) > 8 else "")
    target = owner or "<owner role>"
    return (
        f"the application role {app} owns {len(owned)} relation(s) in this database ({shown}): an owner can switch "
        f"row level security off, and rls_apply refuses to protect its tables. Transfer them to the owner role, as a "
        f"superuser on a quiet database: REASSIGN OWNED BY {app} TO {target}; (or ALTER TABLE ... OWNER TO {target} "
        "table by table), then run migrations as the owner (manage.py rls_migrate)"
    )


def plan(cursor: Any, wanted: list[RoleSpec]) -> list[tuple[str, sql.Composable]]:
    """(summary, statement) pairs that bring the roles in line; empty when they already are.

    Without the library (the SQL-only mode of hosted PostgreSQL) the owner's CREATEROLE
    is left as it is: there the owner is usually the provider's administrator role, and
    installing the mode (rls_apply --install) creates the role django_rls_context.
    """
    if not library_available(cursor):
        wanted = [
            replace(spec, flags={f: v for f, v in spec.flags.items() if f != "rolcreaterole"})
            if spec.kind == "owner"
            else spec
            for spec in wanted
        ]
    steps = [step for spec in wanted for step in _role_steps(cursor, spec)]
    app = next(spec.name for spec in wanted if spec.kind == "application")
    return (
        steps
        + _schema_steps(cursor, app)
        + [step for spec in wanted if spec.kind == "owner" for step in _owner_schema_steps(cursor, spec.name)]
        + _temp_steps(cursor, wanted)
        + _search_path_steps(cursor, app)
        + _statement_bound_steps(cursor, app)
        + _citus_steps(cursor, app)
    )
