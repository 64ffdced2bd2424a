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


def test_the_drift_check_of_many_groups_agrees_with_one_group_at_a_time(owner_conn, table):
    """rls._groups_in_sync() (rls_apply's and rls_verify's one statement) answers as rls.group_in_sync() does for
    each group alone: a table of two groups, one drifted base policy, a group another table lacks, in one call."""
    owner_conn.execute("DROP TABLE IF EXISTS policy_set_other")
    owner_conn.execute("CREATE TABLE policy_set_other (id int PRIMARY KEY, site_id bigint, user_id bigint)")
    try:
        owner_conn.execute("SELECT rls.protect('policy_set', 'archive', 'id > 0', to_role => %s)", (APP_ROLE,))
        owner_conn.execute("SELECT rls.protect_by_site_and_owner('policy_set_other', to_role => %s)", (APP_ROLE,))
        groups = [
            ("policy_set", "site", "site_id = rls.site_id()", None, list(COMMANDS)),
            ("policy_set", "archive", "id > 0", None, list(COMMANDS)),
            ("policy_set", "archive", "id > 1", None, list(COMMANDS)),  # another expression: not in sync
            ("policy_set_other", "site", "site_id = rls.site_id()", None, list(COMMANDS)),
            ("policy_set_other", "owner", "user_id = rls.user_id()", None, ["select"]),  # other commands
            ("policy_set_other", "archive", "id > 0", None, list(COMMANDS)),  # no such group
        ]

        def both() -> tuple[list[bool], list[bool]]:
            one_by_one = [
                owner_conn.execute(
                    "SELECT rls.group_in_sync(%s::regclass, %s, %s, %s, %s::text[], %s)", (*group, APP_ROLE)
                ).fetchone()[0]
                for group in groups
            ]
            at_once = [
                ok
                for (ok,) in owner_conn.execute(
                    """
                    SELECT in_sync FROM rls._groups_in_sync(
                        (SELECT jsonb_agg(jsonb_build_object('tbl', t::regclass::oid, 'group_name', g, 'using_expr', u,
                                                             'check_expr', c, 'commands', string_to_array(m, ','))
                                          ORDER BY i)
                           FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
                                WITH ORDINALITY AS x(t, g, u, c, m, i)),
                        %s) ORDER BY ord
                    """,
                    (
                        *[list(column) for column in zip(*groups, strict=True)][:4],
                        [",".join(group[4]) for group in groups],
                        APP_ROLE,
                    ),
                )
            ]
            return one_by_one, at_once

        one_by_one, at_once = both()
        assert one_by_one == at_once == [True, True, False, True, False, False]

        # An edited base policy puts every group of its table out of sync, and no other table's.
        owner_conn.execute("ALTER POLICY rls_base_update ON policy_set USING (true)")
        one_by_one, at_once = both()
        assert one_by_one == at_once == [False, False, False, True, False, False]
    finally:
        owner_conn.execute("DROP TABLE policy_set_other")


# -- what Citus's shards cannot hold (issue 17, item 4): decided without Citus ----------------------
#
# rls.protect() refuses, on a table Citus holds, a policy group that reads another table (a sub-select,
# or rls.member_of()); tests/test_citus.py shows the refusal on a cluster. What it is decided on runs
# on every server: the expressions as PostgreSQL parses them, never their text.

PARENT_EXISTS = "EXISTS (SELECT 1 FROM policy_parent p WHERE p.id = policy_set.id)"


@pytest.fixture
def parent(owner_conn: psycopg.Connection, table: str) -> Iterator[str]:
    owner_conn.execute("CREATE TABLE policy_parent (id int PRIMARY KEY, user_id bigint)")
    yield "policy_parent"
    owner_conn.execute("DROP TABLE policy_parent CASCADE")  # with the policies of policy_set that read it


@pytest.mark.parametrize(
    ("using", "check", "reads"),
    [
        ("site_id = rls.site_id()", None, None),
        # A literal that says SELECT is not a sub-select: the parse tree decides, not the text.
        ("site_id = rls.site_id() AND 'SELECT 1 FROM x' IS NOT NULL", None, None),
        (PARENT_EXISTS, None, "sub-select"),
        ("true", PARENT_EXISTS, "sub-select"),
        ("site_id IN (SELECT p.id FROM policy_parent p WHERE p.user_id = rls.user_id())", None, "sub-select"),
        ("site_id = ANY (ARRAY(SELECT 1))", None, "sub-select"),
        ("rls.member_of('policy_parent', 'id', 'user_id', id)", None, "rls.member_of()"),
    ],
)
def test_what_reads_another_table_is_found_in_the_parse_tree(owner_conn, parent, using, check, reads):
    assert owner_conn.execute("SELECT rls._policy_reads_tables('policy_set', %s, %s)", (using, check)).fetchone() == (
        reads,
    )


def test_the_probe_leaves_nothing_behind(owner_conn, parent):
    before = owner_conn.execute("SELECT count(*) FROM pg_policy WHERE polrelid = 'policy_set'::regclass").fetchone()
    with owner_conn.transaction():
        owner_conn.execute("SELECT rls._policy_reads_tables('policy_set', %s, NULL)", (PARENT_EXISTS,))
        assert owner_conn.execute("SELECT current_setting('citus.enable_ddl_propagation', true)").fetchone() in (
            (None,),
            ("",),
        )
        assert (
            owner_conn.execute("SELECT count(*) FROM pg_policy WHERE polrelid = 'policy_set'::regclass").fetchone()
            == before
        )
    # An expression that does not parse fails as CREATE POLICY would, and nothing is left either.
    with pytest.raises(errors.UndefinedColumn, match="nope"):
        owner_conn.execute("SELECT rls._policy_reads_tables('policy_set', 'nope = 1', NULL)")


def test_without_citus_a_group_may_read_another_table(owner_conn, app_conn, parent):
    """rls.protect() refuses only on tables Citus holds: a plain table takes a sub-select as before."""
    assert owner_conn.execute("SELECT rls._citus_table_kind('policy_set')").fetchone() == (None,)
    owner_conn.execute("SELECT rls.protect('policy_set', 'parent', %s, to_role => %s)", (PARENT_EXISTS, APP_ROLE))
    owner_conn.execute("INSERT INTO policy_parent VALUES (1, NULL)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON policy_parent TO {}").format(sql.Identifier(APP_ROLE)))
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        assert [r for (r,) in app_conn.execute("SELECT id FROM policy_set ORDER BY 1")] == [1]
