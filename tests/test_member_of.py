"""rls.member_of(): owner-or-member policies without recursion, as the app role, and nothing of the owner's runs.

Projects are visible to their owner and their members; memberships to their user and to everyone who
sees the project. Written with two EXISTS subqueries, each policy expands into the other and PostgreSQL
refuses every query; with rls.member_of() on the project side the same rules answer.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

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
    try:
        yield owner_conn
    finally:
        owner_conn.execute("DROP TABLE IF EXISTS kinds_memb, kinds_proj, kinds_part CASCADE")


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
        assert projects(app_conn) == [1, 2]
        with pytest.raises(psycopg.errors.RaiseException, match="the owner's code ran as rls_test_app"):
            app_conn.execute("SELECT count(*) FROM kinds_memb WHERE user_id + 0 = 12")
    finally:
        owner_conn.execute("DROP FUNCTION kinds_trap() CASCADE")


def test_it_is_not_security_definer(admin_conn):
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
