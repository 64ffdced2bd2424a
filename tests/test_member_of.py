"""rls.member_of(): owner-or-member policies without recursion, as the app role, and nothing of the owner's runs.

Projects are visible to their owner and their members; memberships to their user and to everyone who
sees the project. Written with two EXISTS subqueries, each policy expands into the other and PostgreSQL
refuses every query; with rls.member_of() on the project side the same rules answer.

Every test runs in both modes (tests/modes.py). In the SQL-only mode the membership table's owner first
lets rls.member_of() read it (rls.allow_member_of(), which rls_apply runs for OwnerOrMember): there the
read runs as the role django_rls_member under a policy of its own (sql/sqlonly/27_membership.sql).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.modes import SQL_MODE
from tests.roles import APP_ROLE, OWNER_ROLE

PROJECT_SEES_MEMBERS = "owner_id = rls.user_id() OR rls.member_of('kinds_memb', 'proj_id', 'user_id', id)"
MEMBERS_SEE_PROJECT = "user_id = rls.user_id() OR EXISTS (SELECT 1 FROM kinds_proj p WHERE p.id = proj_id)"


@pytest.fixture
def tables(owner_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Projects 1 (owner 10; members 11, 12) and 2 (owner 20; member 12); the app role may SELECT both."""
    owner_conn.execute("DROP TABLE IF EXISTS kinds_memb, kinds_proj, kinds_part CASCADE")
    owner_conn.execute("CREATE TABLE kinds_proj (id bigint PRIMARY KEY, owner_id bigint NOT NULL)")
    owner_conn.execute("CREATE TABLE kinds_memb (id serial PRIMARY KEY, proj_id bigint NOT NULL, user_id bigint)")
    owner_conn.execute("INSERT INTO kinds_proj VALUES (1, 10), (2, 20)")
    owner_conn.execute("INSERT INTO kinds_memb (proj_id, user_id) VALUES (1, 11), (1, 12), (2, 12)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON kinds_proj, kinds_memb TO {}").format(sql.Identifier(APP_ROLE)))
    allow_member_reads(owner_conn, "kinds_memb")
    try:
        yield owner_conn
    finally:
        owner_conn.execute("DROP TABLE IF EXISTS kinds_memb, kinds_proj, kinds_part CASCADE")


def allow_member_reads(conn: psycopg.Connection, table: str) -> None:
    """The SQL-only mode's one extra step, as the table's owner; the C library reads any table it is given."""
    if SQL_MODE:
        conn.execute("SELECT rls.allow_member_of(%s, 'proj_id', 'user_id')", (table,))


def protect(conn: psycopg.Connection, table: str, using: str) -> None:
    conn.execute("SELECT rls.unprotect(%s)", (table,))
    conn.execute("SELECT rls.protect(%s, 'g', %s, to_role => %s)", (table, using, APP_ROLE))


def as_user(conn: psycopg.Connection, user: int) -> None:
    conn.execute("SELECT rls.set_context(NULL, %s, is_local => false)", (str(user),))


def projects(conn: psycopg.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM kinds_proj ORDER BY id")]


def members(conn: psycopg.Connection) -> list[tuple[int, int]]:
    return conn.execute("SELECT proj_id, user_id FROM kinds_memb ORDER BY 1, 2").fetchall()


def test_two_exists_recurse_and_member_of_does_not(tables, app_conn):
    protect(tables, "kinds_memb", MEMBERS_SEE_PROJECT)
    protect(tables, "kinds_proj", "owner_id = rls.user_id() OR EXISTS (SELECT 1 FROM kinds_memb m "
            "WHERE m.proj_id = id AND m.user_id = rls.user_id())")  # fmt: skip
    as_user(app_conn, 11)
    with pytest.raises(psycopg.errors.InvalidObjectDefinition, match="infinite recursion detected in policy"):
        projects(app_conn)

    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    assert (projects(app_conn), members(app_conn)) == ([1], [(1, 11), (1, 12)])  # a member sees the team
    as_user(app_conn, 20)
    assert (projects(app_conn), members(app_conn)) == ([2], [(2, 12)])  # the owner sees the members
    as_user(app_conn, 12)
    assert (projects(app_conn), members(app_conn)) == ([1, 2], [(1, 11), (1, 12), (2, 12)])
    as_user(app_conn, 99)
    assert (projects(app_conn), members(app_conn)) == ([], [])
    app_conn.execute("SELECT rls.clear_context()")
    assert projects(app_conn) == []


@pytest.mark.parametrize(
    "index",
    [None, "(proj_id)", "(user_id)", "(proj_id, user_id)", "(user_id, proj_id)", "(id, proj_id)"],
)
def test_every_index_shape_gives_the_same_answers(tables, app_conn, index):
    if index:
        tables.execute(f"CREATE INDEX ON kinds_memb {index}")
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    for user, expected in ((10, [1]), (11, [1]), (12, [1, 2]), (20, [2]), (21, [])):
        as_user(app_conn, user)
        assert projects(app_conn) == expected, user


def test_it_refuses_a_table_whose_policies_hide_the_users_own_rows(tables, app_conn):
    """Reading past such policies would reveal rows the caller may not read: refused, with what to do."""
    protect(tables, "kinds_memb", "proj_id = rls.site_id()")
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    as_user(app_conn, 11)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as excinfo:
        projects(app_conn)
    assert 'do not show role rls_test_app the rows whose "user_id" is its user' in str(excinfo.value)
    assert excinfo.value.diag.message_detail.startswith('Policy "rls_g_select" has no OR-branch')
    assert "Members()" in excinfo.value.diag.message_hint
    # A second, restrictive policy without the branch is refused too, though the first one has it.
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    tables.execute("SELECT rls.protect('kinds_memb', 'extra', 'proj_id > 0', to_role => %s)", (APP_ROLE,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rls_extra_select"):
        projects(app_conn)


def test_a_table_without_row_level_security_is_read_as_is(tables, app_conn):
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    as_user(app_conn, 11)
    assert projects(app_conn) == [1]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ("rls.member_of('kinds_view', 'proj_id', 'user_id', 1::bigint)", psycopg.errors.WrongObjectType, "plain"),
        ("rls.member_of('kinds_part', 'proj_id', 'user_id', 1::bigint)", psycopg.errors.WrongObjectType, "plain"),
        ("rls.member_of('kinds_memb', 'nope', 'user_id', 1::bigint)", psycopg.errors.UndefinedColumn, '"nope"'),
        (
            "rls.member_of('kinds_memb', 'proj_id', 'user_id', 1)",
            psycopg.errors.DatatypeMismatch,
            "a key of type integer",
        ),
        (
            "rls.member_of('kinds_proj', 'id', 'owner_id', 1::bigint)",
            psycopg.errors.InsufficientPrivilege,
            "permission",
        ),
    ],
)
def test_bad_calls_say_what_is_wrong(tables, app_conn, call, error, message):
    tables.execute("CREATE VIEW kinds_view AS SELECT * FROM kinds_memb")
    tables.execute("CREATE TABLE kinds_part (proj_id bigint, user_id bigint) PARTITION BY RANGE (proj_id)")
    tables.execute(sql.SQL("GRANT SELECT ON kinds_part TO {}").format(sql.Identifier(APP_ROLE)))
    tables.execute(sql.SQL("GRANT SELECT ON kinds_view TO {}").format(sql.Identifier(APP_ROLE)))
    tables.execute(sql.SQL("REVOKE SELECT ON kinds_proj FROM {}").format(sql.Identifier(APP_ROLE)))
    as_user(app_conn, 11)
    with pytest.raises(error, match=message):
        app_conn.execute(f"SELECT {call}")


def test_none_of_the_owners_code_runs(tables, app_conn, owner_conn):
    """The owner's expression and partial indexes never run inside rls.member_of() (no planner there).

    A plain query of the app role plans with them, so the trap is real: the same function raises there.
    The SQL-only mode's read is a query, planned as django_rls_member: the owner's partial index predicate
    runs there, as that role (whose rights are a part of the owner's), never as the caller.
    """
    owner_conn.execute(
        f"""
        CREATE FUNCTION kinds_trap() RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            IF current_user <> '{OWNER_ROLE}' THEN
                RAISE EXCEPTION 'the owner''s code ran as %', current_user;
            END IF;
            RETURN 0;
        END $$
        """
    )
    try:
        owner_conn.execute("CREATE INDEX kinds_expr ON kinds_memb ((user_id + kinds_trap()))")
        owner_conn.execute("CREATE INDEX kinds_partial ON kinds_memb (proj_id, user_id) WHERE kinds_trap() = 0")
        owner_conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION kinds_trap() TO {}").format(sql.Identifier(APP_ROLE)))
        protect(tables, "kinds_memb", "user_id = rls.user_id()")
        protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
        as_user(app_conn, 12)
        if SQL_MODE:
            with pytest.raises(psycopg.errors.RaiseException, match="the owner's code ran as django_rls_member\n"):
                projects(app_conn)
        else:
            assert projects(app_conn) == [1, 2]
        with pytest.raises(psycopg.errors.RaiseException, match="the owner's code ran as rls_test_app"):
            app_conn.execute("SELECT count(*) FROM kinds_memb WHERE user_id + 0 = 12")
    finally:
        owner_conn.execute("DROP FUNCTION kinds_trap() CASCADE")


def test_it_is_not_security_definer(admin_conn):
    """Nor is what it calls in the SQL-only mode, but for the read itself (test_the_sql_only_read_below)."""
    (definer,) = admin_conn.execute(
        "SELECT prosecdef FROM pg_proc WHERE oid = 'rls.member_of(regclass, name, name, anyelement)'::regprocedure"
    ).fetchone()
    assert definer is False


def test_the_owners_delete_cascades_only_when_the_members_are_visible(tables, app_conn):
    """With memberships visible to their user alone, the owner's cascade misses the others' rows and the
    deferred foreign key fails at commit; shown the members of visible projects, it deletes them all."""
    tables.execute(
        "ALTER TABLE kinds_memb ADD FOREIGN KEY (proj_id) REFERENCES kinds_proj DEFERRABLE INITIALLY DEFERRED"
    )
    tables.execute(sql.SQL("GRANT DELETE ON kinds_proj, kinds_memb TO {}").format(sql.Identifier(APP_ROLE)))
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)

    def owner_deletes_project_2() -> int:
        with app_conn.transaction():
            removed = app_conn.execute("DELETE FROM kinds_memb WHERE proj_id = 2").rowcount
            app_conn.execute("DELETE FROM kinds_proj WHERE id = 2")
        return removed

    as_user(app_conn, 20)
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        owner_deletes_project_2()
    protect(tables, "kinds_memb", MEMBERS_SEE_PROJECT)
    assert owner_deletes_project_2() == 1


def test_uuid_keys_and_users(owner_conn, app_conn):
    """UUID projects and users: the key has the column's type, the user comes from rls.user_uuid()."""
    owner_conn.execute("DROP TABLE IF EXISTS kinds_umemb, kinds_uproj")
    owner_conn.execute("CREATE TABLE kinds_uproj (id uuid PRIMARY KEY, owner_id uuid NOT NULL)")
    owner_conn.execute("CREATE TABLE kinds_umemb (proj_id uuid NOT NULL, user_id uuid NOT NULL)")
    owner_conn.execute("CREATE INDEX ON kinds_umemb (user_id)")
    p1, p2, owner, member = (f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 5))
    owner_conn.execute("INSERT INTO kinds_uproj VALUES (%s, %s), (%s, %s)", (p1, owner, p2, owner))
    owner_conn.execute("INSERT INTO kinds_umemb VALUES (%s, %s)", (p2, member))
    owner_conn.execute(sql.SQL("GRANT SELECT ON kinds_uproj, kinds_umemb TO {}").format(sql.Identifier(APP_ROLE)))
    allow_member_reads(owner_conn, "kinds_umemb")
    try:
        protect(owner_conn, "kinds_umemb", "user_id = rls.user_uuid()")
        protect(
            owner_conn,
            "kinds_uproj",
            "owner_id = rls.user_uuid() OR rls.member_of('kinds_umemb', 'proj_id', 'user_id', id)",
        )
        app_conn.execute("SELECT rls.set_context(NULL, %s, is_local => false)", (member,))
        assert [str(row[0]) for row in app_conn.execute("SELECT id FROM kinds_uproj")] == [p2]
        as_user(app_conn, 4)  # an integer user cannot be compared with a uuid column: an error, not a guess
        with pytest.raises(psycopg.errors.DatatypeMismatch, match="the django_rls user is an integer, not a UUID"):
            app_conn.execute("SELECT id FROM kinds_uproj")
    finally:
        owner_conn.execute("DROP TABLE kinds_umemb, kinds_uproj")


sql_mode_only = pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode's read of membership tables")


@sql_mode_only
def test_the_sql_only_read_is_django_rls_members_and_it_has_no_other_right(admin_conn):
    definers = admin_conn.execute(
        "SELECT p.oid::regprocedure::text, p.proowner::regrole::text, p.proconfig FROM pg_proc p "
        "WHERE p.pronamespace = 'rls'::regnamespace AND p.proname ~ 'member' AND p.prosecdef"
    ).fetchall()
    assert definers == [
        ("rls._member_rows(regclass,name,name)", "django_rls_member", ["search_path=pg_catalog, pg_temp"])
    ]
    flags = admin_conn.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, "
        "(SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r "
        "WHERE rolname = 'django_rls_member'"
    ).fetchone()
    assert flags == (False, False, False, False, False, 0)


@sql_mode_only
def test_the_readers_policy_is_no_problem_of_rls_problems(tables, app_conn):
    """django_rls_member is named in a policy, but it is no application role: no search_path or signing problems."""
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    assert app_conn.execute("SELECT count(*) FROM rls.problems WHERE object_name = 'django_rls_member'").fetchone() == (
        0,
    )


@sql_mode_only
def test_injected_sql_learns_only_its_own_users_memberships(tables, app_conn):
    """Called directly, the read answers the context user's keys of an allowed table, and nothing else."""
    protect(tables, "kinds_memb", MEMBERS_SEE_PROJECT)
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    as_user(app_conn, 12)
    rows = "SELECT rls._member_rows('kinds_memb', 'proj_id', 'user_id')"
    assert app_conn.execute(rows).fetchone() == (["1", "2"],)
    as_user(app_conn, 11)
    assert app_conn.execute(rows).fetchone() == (["1"],)
    # Other columns of the table, and tables nobody allowed, are not django_rls_member's to read.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read"):
        app_conn.execute("SELECT rls._member_rows('kinds_memb', 'id', 'user_id')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read"):
        app_conn.execute("SELECT rls._member_rows('kinds_proj', 'id', 'owner_id')")
    # Only the table's owner may allow a table.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("SELECT rls.allow_member_of('kinds_proj', 'id', 'owner_id')")


@sql_mode_only
def test_a_policy_that_would_also_apply_to_the_reader_is_refused(tables, app_conn):
    """A policy TO PUBLIC would apply to django_rls_member's read too, and could recurse or hide rows."""
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    tables.execute("SELECT rls.unprotect('kinds_memb')")
    tables.execute("SELECT rls.protect('kinds_memb', 'g', 'user_id = rls.user_id()')")  # to_role: public
    as_user(app_conn, 11)
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege,
        match=r'policy "rls_base_\w+" of public\.kinds_memb applies to django_rls_member',
    ):
        projects(app_conn)


@sql_mode_only
def test_a_policy_edited_behind_django_rls_back_is_refused(tables, app_conn):
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    tables.execute("ALTER POLICY django_rls_member_of ON kinds_memb USING (true)")
    as_user(app_conn, 11)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"rls\.allow_member_of") as excinfo:
        projects(app_conn)
    assert "rls.allow_member_of('public.kinds_memb', 'proj_id', 'user_id')" in excinfo.value.diag.message_hint
    assert tables.execute("SELECT rls.allow_member_of('kinds_memb', 'proj_id', 'user_id')").fetchone() == (True,)
    assert projects(app_conn) == [1]


@sql_mode_only
def test_policies_look_memberships_up_once_per_statement(tables, app_conn):
    protect(tables, "kinds_memb", "user_id = rls.user_id()")
    protect(tables, "kinds_proj", PROJECT_SEES_MEMBERS)
    as_user(app_conn, 12)
    plan = "\n".join(row[0] for row in app_conn.execute("EXPLAIN (COSTS OFF) SELECT id FROM kinds_proj"))
    assert "InitPlan" in plan and "SubPlan" not in plan, plan
