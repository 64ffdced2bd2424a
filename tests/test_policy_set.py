"""The policy set rls.protect() creates holds without AS RESTRICTIVE (issue 17).

Beside each group's restrictive rls_<group>_<command>, every protected table has one permissive
rls_base_<command> that carries the conjunction of the groups' expressions for that command. So a
copy of the table's policies that loses AS RESTRICTIVE (Citus's shards: docs/scale-out.md) ORs each
group with an expression no wider than all groups together: for a table of one group per command,
nothing changes. Here the loss is simulated on one server by re-creating the group's policies as
permissive ones, the way Citus copies them. Every assertion about rows runs as the app role.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

COMMANDS = ("select", "insert", "update", "delete")


@pytest.fixture
def table(owner_conn: psycopg.Connection) -> Iterator[str]:
    """policy_set (id, site_id): sites 1 and 2, two rows each, protected by site for the app role."""
    owner_conn.execute("DROP TABLE IF EXISTS policy_set")
    owner_conn.execute("CREATE TABLE policy_set (id int PRIMARY KEY, site_id bigint NOT NULL)")
    owner_conn.execute("INSERT INTO policy_set VALUES (1, 1), (2, 1), (3, 2), (4, 2)")
    owner_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON policy_set TO {}").format(sql.Identifier(APP_ROLE))
    )
    owner_conn.execute("SELECT rls.protect_by_site('policy_set', to_role => %s)", (APP_ROLE,))
    yield "policy_set"
    owner_conn.execute("DROP TABLE policy_set")


def _as_permissive_copy(owner_conn: psycopg.Connection, policy: str) -> None:
    """Re-create a restrictive policy as the permissive one Citus's copy of it is."""
    command, roles, using, check = owner_conn.execute(
        """
        SELECT CASE polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' ELSE 'DELETE' END,
               (SELECT string_agg(quote_ident(r::regrole::text), ', ') FROM unnest(polroles) AS r),
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
          FROM pg_policy WHERE polrelid = 'policy_set'::regclass AND polname = %s AND NOT polpermissive
        """,
        (policy,),
    ).fetchone()
    owner_conn.execute(sql.SQL("DROP POLICY {} ON policy_set").format(sql.Identifier(policy)))
    create = f"CREATE POLICY {sql.Identifier(policy).as_string(owner_conn)} ON policy_set FOR {command} TO {roles}"
    create += f" USING ({using})" if using else ""
    create += f" WITH CHECK ({check})" if check else ""
    owner_conn.execute(create)


def _holds(app_conn: psycopg.Connection) -> None:
    """Site 1 reads, changes and deletes its own rows only, and writes rows of site 1 only; no context, nothing."""
    with app_conn.transaction(force_rollback=True):
        assert app_conn.execute("SELECT count(*) FROM policy_set").fetchone() == (0,)
        assert app_conn.execute("UPDATE policy_set SET id = id").rowcount == 0
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            app_conn.execute("INSERT INTO policy_set VALUES (10, 1)")
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        assert [r for (r,) in app_conn.execute("SELECT id FROM policy_set ORDER BY 1")] == [1, 2]
        assert app_conn.execute("SELECT count(*) FROM policy_set WHERE site_id = 2").fetchone() == (0,)
        assert app_conn.execute("UPDATE policy_set SET id = id + 100").rowcount == 2
        assert app_conn.execute("DELETE FROM policy_set").rowcount == 2
        app_conn.execute("INSERT INTO policy_set VALUES (10, 1)")
    for statement in ("INSERT INTO policy_set VALUES (10, 2)", "UPDATE policy_set SET site_id = 2 WHERE id = 1"):
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context('1', NULL)")
            with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
                app_conn.execute(statement)


def test_each_permissive_policy_carries_the_groups_expression(owner_conn, table):
    policies = owner_conn.execute(
        "SELECT polname, polcmd, polpermissive, pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
        "FROM pg_policy WHERE polrelid = 'policy_set'::regclass ORDER BY 1"
    ).fetchall()
    own = "(site_id = rls.site_id())"
    assert policies == [
        ("rls_base_delete", "d", True, own, None),
        ("rls_base_insert", "a", True, None, own),
        ("rls_base_select", "r", True, own, None),
        ("rls_base_update", "w", True, own, own),
        ("rls_site_delete", "d", False, own, None),
        ("rls_site_insert", "a", False, None, own),
        ("rls_site_select", "r", False, own, None),
        ("rls_site_update", "w", False, own, own),
    ]


def test_the_table_holds_as_protected(owner_conn, app_conn, table):
    _holds(app_conn)


def test_the_table_holds_when_the_group_loses_restrictive(owner_conn, app_conn, table):
    for command in COMMANDS:
        _as_permissive_copy(owner_conn, f"rls_site_{command}")
    assert owner_conn.execute(
        "SELECT bool_and(polpermissive) FROM pg_policy WHERE polrelid = 'policy_set'::regclass"
    ).fetchone() == (True,)
    _holds(app_conn)


def test_a_permissive_policy_of_the_users_does_not_widen_the_groups(owner_conn, app_conn, table):
    """On one server the restrictive group still bounds every permissive policy."""
    owner_conn.execute(
        sql.SQL("CREATE POLICY everything ON policy_set TO {} USING (true) WITH CHECK (true)").format(
            sql.Identifier(APP_ROLE)
        )
    )
    _holds(app_conn)


def test_a_command_no_group_covers_stays_open(owner_conn, app_conn, table):
    """A group for some commands only: the others are not restricted, as with the former rls_base."""
    owner_conn.execute("SELECT rls.unprotect('policy_set')")
    owner_conn.execute(
        "SELECT rls.protect('policy_set', 'site', 'site_id = rls.site_id()', commands => '{select}', to_role => %s)",
        (APP_ROLE,),
    )
    bases = owner_conn.execute(
        "SELECT polname, pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) FROM pg_policy "
        "WHERE polrelid = 'policy_set'::regclass AND polname LIKE 'rls\\_base\\_%%' ORDER BY 1"
    ).fetchall()
    assert bases == [
        ("rls_base_delete", "true", None),
        ("rls_base_insert", None, "true"),
        ("rls_base_select", "(site_id = rls.site_id())", None),
        ("rls_base_update", "true", "true"),
    ]
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        app_conn.execute("INSERT INTO policy_set VALUES (10, 2)")
        assert app_conn.execute("SELECT count(*) FROM policy_set").fetchone() == (2,)


def test_a_table_protected_with_rls_base_is_brought_to_the_new_set(database, admin_conn, owner_conn, app_conn, table):
    """A table protected before rls_base_<command> (one rls_base FOR ALL USING (true)) is out of sync until
    rls.protect() (rls_apply) runs again, which replaces rls_base; the extension still treats it as protected.
    (A dump of a database protected before this change, restored where this version is installed.)"""
    for command in COMMANDS:
        owner_conn.execute(sql.SQL("DROP POLICY {} ON policy_set").format(sql.Identifier(f"rls_base_{command}")))
    owner_conn.execute(
        sql.SQL("CREATE POLICY rls_base ON policy_set TO {} USING (true) WITH CHECK (true)").format(
            sql.Identifier(APP_ROLE)
        )
    )
    in_sync = "SELECT rls.group_in_sync('policy_set', 'site', 'site_id = rls.site_id()', to_role => %s)"
    assert owner_conn.execute(in_sync, (APP_ROLE,)).fetchone() == (False,)
    # A role that owns only this table may not set a context: it is still protected (ext/bypassing_roles.c).
    admin_conn.execute(sql.SQL("CREATE ROLE rls_policy_set_owner LOGIN PASSWORD {}").format(sql.Literal(PASSWORD)))
    try:
        admin_conn.execute("ALTER TABLE policy_set OWNER TO rls_policy_set_owner")
        dsn = make_conninfo(database.admin, user="rls_policy_set_owner", password=PASSWORD)
        with psycopg.connect(dsn, autocommit=True) as only_owner:
            with pytest.raises(errors.InsufficientPrivilege, match="refuses to set a context"):
                only_owner.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    finally:
        admin_conn.execute(sql.SQL("ALTER TABLE policy_set OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
        admin_conn.execute("DROP ROLE rls_policy_set_owner")
    assert owner_conn.execute("SELECT rls.protect_by_site('policy_set', to_role => %s)", (APP_ROLE,)).fetchone() == (
        True,
    )
    names = [n for (n,) in owner_conn.execute("SELECT polname FROM pg_policy WHERE polrelid = 'policy_set'::regclass")]
    assert "rls_base" not in names and {f"rls_base_{c}" for c in COMMANDS} <= set(names)
    assert owner_conn.execute(in_sync, (APP_ROLE,)).fetchone() == (True,)
    _holds(app_conn)
