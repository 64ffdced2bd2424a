"""django_rls on a real Citus cluster (issue 17): what the application role sees today.

A coordinator and two workers on loopback (tests/harness/citus_cluster.py). The table
``items`` is distributed by site_id and protected with rls.protect_by_site for the app
role; site 3 owns 6 of its 110 rows. Every assertion about rows runs as the app role,
through the coordinator, and states what must hold; where Citus breaks it today the
test is marked xfail(strict=True) with the cause, so it flips when issue 17 is fixed:

- Citus copies policies to the shards without ``AS RESTRICTIVE``
  (commands/policy.c: CreatePolicyCommandForPolicy). The table does not fail open for
  it: beside the group rls_site_<command>, rls.protect() creates a permissive
  rls_base_<command> that carries the same expression, so on the shards the permissive
  copy of the group is OR'd with an identical expression. No context, or another site,
  reads and writes nothing.
- The context reaches the worker backends that run the shard queries as a credential the
  coordinator's setter forwards with SET LOCAL (ext/citus.c): signed with the key every node
  shares, bound to the database and the distributed transaction, verified by the workers at first
  use. Only a transaction block carries it: an autocommit statement (a session-scoped context,
  the statement marker) opens no transaction on the workers, and reads and writes nothing there.
- rls.problems on the coordinator reports the distributed table, and compares every
  shard placement's policies with the table's; rls_roles revokes Citus's
  run-on-other-nodes functions from PUBLIC.

Without Citus in the server's pkglibdir every test here skips (docs/scale-out.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.string import StrDumper

from django_rls import roles as rls_roles
from django_rls.citus_checks import citus_tables
from tests.harness import citus_fixtures
from tests.harness.citus_cluster import CitusCluster, citus_missing, create_role, on_placements, running_cluster
from tests.harness.citus_cluster import move_shard as move_shard_to_other_worker
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

MISSING = citus_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

SITE = 3
OTHER_SITE = 5
SITE_ROWS = set(range(1, 7))  # ids 1-6 belong to site 3
TOTAL_ROWS = 110
NEW_ID = 1000  # rows the tests write have ids from here on, and are removed after each test

RESTRICTIVE_DROPPED = (
    "issue 17: Citus copies the RESTRICTIVE site policies to the shards as permissive ones "
    "(CreatePolicyCommandForPolicy never writes AS RESTRICTIVE); rls_base_<command> carries the "
    "same expression, so the shards do not fail open for it, but the flag is lost"
)
AUTOCOMMIT_NOT_CARRIED = (
    "issue 17: an autocommit statement opens no transaction on the workers for the forwarded SET LOCAL to "
    "ride on, so a session-scoped context or one the statement marker carries never reaches the shards "
    "(the Django bridge sends each autocommit query in a transaction of its own on a coordinator)"
)

# A test marked xfail must fail on its assertion, never on an unrelated error.
NOT_AS_REQUIRED = (AssertionError, pytest.fail.Exception)
restrictive_dropped = pytest.mark.xfail(strict=True, raises=NOT_AS_REQUIRED, reason=RESTRICTIVE_DROPPED)
autocommit_lost = pytest.mark.xfail(strict=True, raises=NOT_AS_REQUIRED, reason=AUTOCOMMIT_NOT_CARRIED)

TABLES = ("items", "items_protected_first", "items_repaired", "items_moved")


class Text(str):
    """A str bound as type text: the marker's $1 is never referenced, so its type cannot be inferred."""


class TextDumper(StrDumper):
    oid = psycopg.adapters.types["text"].oid


def _shard_policies(admin: psycopg.Connection, table: str) -> list[tuple[str, bool]]:
    """(policy, permissive) for the site policies of every shard placement of ``table``."""
    results = on_placements(
        admin,
        table,
        "SELECT string_agg(polname || ':' || polpermissive, ',' ORDER BY polname) FROM pg_catalog.pg_policy "
        "WHERE polrelid = '%s'::regclass AND polname LIKE 'rls\\_site\\_%%'",
    )
    return [
        (name, permissive == "true")
        for result in results
        for name, permissive in (item.split(":") for item in result.split(","))
    ]


def _restore_restrictive_on_shards(admin: psycopg.Connection, table: str) -> None:
    """As a superuser, re-create every shard's copy of the table's restrictive policies as RESTRICTIVE."""
    policies = admin.execute(
        """
        SELECT polname,
               CASE polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                           WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
               (SELECT string_agg(quote_ident(r::regrole::text), ', ') FROM unnest(polroles) AS r),
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
          FROM pg_catalog.pg_policy
         WHERE polrelid = %s::regclass AND NOT polpermissive
        """,
        (table,),
    ).fetchall()
    assert policies
    for name, command, roles, using, check in policies:
        create = f"CREATE POLICY {sql.Identifier(name).as_string(admin)} ON %s AS RESTRICTIVE FOR {command} TO {roles}"
        if using is not None:
            create += f" USING ({using})"
        if check is not None:
            create += f" WITH CHECK ({check})"
        on_placements(admin, table, f"DROP POLICY {sql.Identifier(name).as_string(admin)} ON %s")
        on_placements(admin, table, create)


@pytest.fixture(scope="module")
def citus() -> Iterator[CitusCluster]:
    """The cluster, with the owner and app roles and the protected, distributed tables."""
    with running_cluster() as cluster:
        with cluster.connect() as admin:
            for role in (OWNER_ROLE, APP_ROLE):
                create_role(admin, role, "NOSUPERUSER NOBYPASSRLS", PASSWORD)
            for table in TABLES:
                ident = sql.Identifier(table)
                admin.execute(
                    sql.SQL(
                        "CREATE TABLE {} (id bigint NOT NULL, site_id int NOT NULL, title text, "
                        "PRIMARY KEY (site_id, id))"
                    ).format(ident)
                )
                admin.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident, sql.Identifier(OWNER_ROLE)))
                if table == "items_protected_first":
                    admin.execute("SELECT rls.protect_by_site(%s, to_role => %s)", (table, APP_ROLE))
                    admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
                else:
                    admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
                    admin.execute("SELECT rls.protect_by_site(%s, to_role => %s)", (table, APP_ROLE))
                admin.execute(
                    sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(ident, sql.Identifier(APP_ROLE))
                )
                # Site 3 owns ids 1-6; the other 104 rows spread over sites 4-11.
                admin.execute(
                    sql.SQL(
                        "INSERT INTO {} SELECT g, CASE WHEN g <= 6 THEN 3 ELSE 4 + g %% 8 END, 'row ' || g "
                        "FROM generate_series(1, %s) AS g"
                    ).format(ident),
                    (TOTAL_ROWS,),
                )
            # A shard move creates the table on the target worker as its owner.
            admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
            _restore_restrictive_on_shards(admin, "items_repaired")
            _restore_restrictive_on_shards(admin, "items_moved")
        yield cluster


admin = citus_fixtures.admin  # the superuser on the coordinator (tests/harness/citus_fixtures.py)


@pytest.fixture
def app(citus: CitusCluster) -> Iterator[psycopg.Connection]:
    """The app role on the coordinator; whatever a test wrote is removed afterwards."""
    with citus.connect(APP_ROLE, PASSWORD) as conn:
        conn.adapters.register_dumper(Text, TextDumper)
        yield conn
    with citus.connect() as admin:
        for table in TABLES:
            admin.execute(sql.SQL("DELETE FROM {} WHERE id >= %s").format(sql.Identifier(table)), (NEW_ID,))


@pytest.fixture
def scratch_table(admin: psycopg.Connection) -> Iterator[Callable[..., str]]:
    """``scratch_table(name, columns, owned=False)`` creates a table for one test (owned by the owner role if
    ``owned``); every table it created is dropped afterwards."""
    created: list[str] = []

    def create(name: str, columns: str, owned: bool = False) -> str:
        admin.execute(sql.SQL("CREATE TABLE {} (" + columns + ")").format(sql.Identifier(name)))
        created.append(name)
        if owned:
            admin.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(OWNER_ROLE))
            )
        return name

    yield create
    for name in reversed(created):
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def move_shard(admin: psycopg.Connection) -> Callable[[str, int], int]:
    """``move_shard(table, value)`` moves the shard of ``table`` that holds ``value`` of its distribution column to
    the other worker (citus_move_shard_placement, block_writes), and returns its id."""

    def move(table: str, value: int) -> int:
        shard = admin.execute("SELECT get_shard_id_for_distribution_column(%s, %s)", (table, value)).fetchone()[0]
        move_shard_to_other_worker(admin, shard)
        return shard

    return move


def _reload(conn: psycopg.Connection, name: str, shown: str) -> None:
    """Reload the node's configuration and wait until ``SHOW name`` gives ``shown``."""
    conn.execute("SELECT pg_reload_conf()")
    for _ in range(100):
        if conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(*name.split(".")))).fetchone()[0] == shown:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not reload its configuration")


@pytest.fixture
def system_setting(citus: CitusCluster) -> Iterator[Callable[[Any, str, str, str], None]]:
    """``system_setting(node, name, value, shown)``: ALTER SYSTEM SET on one node, waiting until SHOW gives
    ``shown``; every setting changed is reset afterwards, waiting for the value it had."""
    changed: list[tuple[Any, str, str]] = []

    def change(node: Any, name: str, value: str, shown: str) -> None:
        with citus.connect(node=node) as conn:
            original = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(*name.split(".")))).fetchone()[0]
            changed.append((node, name, original))
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value))
            )
            _reload(conn, name, shown)

    yield change
    for node, name, original in reversed(changed):
        with citus.connect(node=node) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(*name.split("."))))
            _reload(conn, name, original)


@contextmanager
def remote_commands(app: psycopg.Connection) -> Iterator[list[str]]:
    """The commands Citus sends to the workers while the block runs, as the app role reads them itself
    (citus.log_remote_commands, which any role may set)."""
    sent: list[str] = []

    def handler(notice: psycopg.errors.Diagnostic) -> None:
        sent.append(notice.message_primary or "")

    app.add_notice_handler(handler)
    app.execute("SET citus.log_remote_commands = on")
    try:
        yield sent
    finally:
        app.execute("RESET citus.log_remote_commands")
        app.remove_notice_handler(handler)


def run_as_site(conn: psycopg.Connection, mode: str, query: str, params: tuple = ()) -> psycopg.Cursor:
    """Run one statement as the app role with site 3's context, set the way ``mode`` says.

    transaction: BEGIN, rls.set_context() (transaction scope), the statement, COMMIT.
    session: rls.set_context(..., is_local => false), then the statement in autocommit.
    marker: the statement alone in autocommit, carrying its context as $1 (/*django_rls:$1*/).
    marker in a transaction: the same statement in a transaction block, as the Django bridge sends it
    under ATOMIC_REQUESTS, and on a coordinator in autocommit too (in a transaction of its own).
    """
    if mode == "transaction":
        with conn.transaction():
            conn.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
            return conn.execute(query, params)
    if mode == "session":
        conn.execute("SELECT rls.set_context(%s, NULL, NULL, false)", (str(SITE),))
        return conn.execute(query, params)
    parameter = Text(json.dumps({"site": SITE, "user": None, "claims": None}))
    if mode == "marker in a transaction":
        with conn.transaction():
            return conn.execute("/*django_rls:%s*/ " + query, (parameter, *params))
    assert mode == "marker"
    return conn.execute("/*django_rls:%s*/ " + query, (parameter, *params))


def run_without_context(conn: psycopg.Connection, mode: str, query: str, params: tuple = ()) -> psycopg.Cursor:
    if mode == "transaction":
        with conn.transaction():
            return conn.execute(query, params)
    assert mode == "autocommit"
    return conn.execute(query, params)


CONTEXT_MODES = ["transaction", "session", "marker", "marker in a transaction"]
# Where the context must reach the shards: in a transaction block it does, in autocommit it does not.
FORWARDED_MODES = [
    "transaction",
    "marker in a transaction",
    pytest.param("session", marks=autocommit_lost),
    pytest.param("marker", marks=autocommit_lost),
]
NO_CONTEXT_MODES = ["transaction", "autocommit"]


# -- what Citus propagates ------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_every_table_holds_the_rows_the_tests_expect(admin, table):
    """As a superuser (no policies apply): 110 rows on the shards, ids 1-6 of site 3, some of site 5."""
    counts = admin.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE site_id = %s), count(*) FILTER (WHERE site_id = %s) FROM {}"
        ).format(sql.Identifier(table)),
        (SITE, OTHER_SITE),
    ).fetchone()
    assert counts == (TOTAL_ROWS, len(SITE_ROWS), 13)
    ids = admin.execute(
        sql.SQL("SELECT id FROM {} WHERE site_id = %s").format(sql.Identifier(table)), (SITE,)
    ).fetchall()
    assert {id_ for (id_,) in ids} == SITE_ROWS


def test_extension_roles_grants_and_row_security_reach_every_shard(admin):
    """What does survive: django_rls on the workers, ENABLE + FORCE and the app role's grants on every shard."""
    workers = admin.execute(
        "SELECT success, result FROM run_command_on_workers(%s)",
        ("SELECT extversion FROM pg_extension WHERE extname = 'django_rls'",),
    ).fetchall()
    (version,) = admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'django_rls'").fetchone()
    assert workers == [(True, version), (True, version)]
    for table in TABLES:
        flags = on_placements(
            admin,
            table,
            "SELECT relrowsecurity AND relforcerowsecurity "
            f"AND has_table_privilege('{APP_ROLE}', oid, 'SELECT, INSERT, UPDATE, DELETE') "
            "FROM pg_class WHERE oid = '%s'::regclass",
        )
        assert set(flags) == {"t"}, table


@restrictive_dropped
@pytest.mark.parametrize("table", ["items", "items_protected_first"])
def test_shard_policies_stay_restrictive(admin, table):
    """Protected after or before create_distributed_table: each shard should keep the policies as created."""
    coordinator = admin.execute(
        "SELECT polname, polpermissive FROM pg_catalog.pg_policy WHERE polrelid = %s::regclass "
        "AND polname LIKE 'rls\\_site\\_%%' ORDER BY 1",
        (table,),
    ).fetchall()
    assert [permissive for _, permissive in coordinator] == [False] * 4
    shards = _shard_policies(admin, table)
    assert shards and all(not permissive for _, permissive in shards), shards


@pytest.mark.xfail(
    strict=True,
    raises=NOT_AS_REQUIRED,
    reason="issue 17: Citus drops AS RESTRICTIVE from any policy it copies to shards, django_rls or not",
)
def test_minimal_restrictive_policy_survives_distribution(admin, app, scratch_table):
    """The upstream report, without django_rls (docs/scale-out.md): a RESTRICTIVE policy arrives on the
    shards as a permissive one, so a role that should see only k > 0 sees every row."""
    scratch_table("plain_restrictive", "k int")
    for statement in (
        "INSERT INTO plain_restrictive VALUES (-1), (1)",
        "ALTER TABLE plain_restrictive ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY p_all ON plain_restrictive USING (true)",
        "CREATE POLICY p_positive ON plain_restrictive AS RESTRICTIVE USING (k > 0)",
        "SELECT create_distributed_table('plain_restrictive', 'k')",
        f"GRANT SELECT ON plain_restrictive TO {APP_ROLE}",
    ):
        admin.execute(statement)
    assert app.execute("SELECT k FROM plain_restrictive").fetchall() == [(1,)]
    permissive = on_placements(
        admin,
        "plain_restrictive",
        "SELECT polpermissive FROM pg_policy WHERE polrelid = '%s'::regclass AND polname = 'p_positive'",
    )
    assert set(permissive) == {"f"}


def _problems(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT object_name, problem FROM rls.problems WHERE table_name = %s::regclass ORDER BY 1, 2", (table,)
    ).fetchall()


def test_problems_report_the_distributed_table(admin, app):
    """One row per distributed protected table (autocommit carries no context to the workers); the placements
    match the table but for the lost AS RESTRICTIVE, which does not count for a table of one group."""
    assert _problems(admin, "items") == [
        (
            "items",
            "items is distributed by Citus, and the context reaches its shards only from a transaction block on the "
            "coordinator, so an autocommit statement of the application role reads and writes none of its rows",
        )
    ]
    # The app role cannot run the placement commands: it is told that the placements were not compared.
    [(_, problem)] = _problems(app, "items")
    assert problem.endswith("(its shard placements were not compared with its policies: only a superuser can)")


def test_the_checks_find_the_distributed_tables(admin):
    """What E022 and E024 (django_rls.checks.citus_refusals, tests/test_checks.py) are decided on."""
    found = citus_tables(admin.cursor())
    assert {table: found.kinds[table] for table in TABLES} == dict.fromkeys(TABLES, "distributed")
    assert set(TABLES) <= found.protected
    assert found.coordinator


def test_rls_verify_reports_the_distributed_protected_tables(app):
    """rls_verify's catalog pass, as the app role on the coordinator, names every distributed protected table."""
    from django_rls.verify import _citus_failures

    with app.cursor() as cursor:
        failures = _citus_failures(cursor)
    for table in TABLES:
        assert any(
            failure.startswith(f"{table}: ")
            and "is distributed by Citus, and the context reaches its shards only from a transaction block" in failure
            for failure in failures
        ), (table, failures)


def test_problems_report_a_drifted_shard_placement(admin):
    shard = admin.execute("SELECT get_shard_id_for_distribution_column('items', %s)", (OTHER_SITE,)).fetchone()[0]
    (shard_name,) = admin.execute("SELECT shard_name('items'::regclass, %s)", (shard,)).fetchone()
    # On the one worker that holds it; Citus copies DDL of the shell table, not of a shard.
    admin.execute(
        "SELECT run_command_on_workers(%s)",
        (
            f"DO $d$ BEGIN IF to_regclass('{shard_name}') IS NOT NULL THEN "
            f"ALTER POLICY rls_base_select ON {shard_name} USING (true); END IF; END $d$",
        ),
    )
    try:
        drifted = [(name, problem) for name, problem in _problems(admin, "items") if name.startswith("shard ")]
        assert len(drifted) == 1, drifted
        assert drifted[0][1].startswith(f"shard {shard} of items on 127.0.0.1:"), drifted
        assert drifted[0][1].endswith("holds other policies than the table"), drifted
    finally:
        on_placements(admin, "items", "ALTER POLICY rls_base_select ON %s USING (site_id = rls.site_id())")
    assert not [name for name, _ in _problems(admin, "items") if name.startswith("shard ")]


def test_problems_report_what_fails_open_on_the_shards(admin, scratch_table):
    """Two groups, or a permissive policy of the user's, would widen the table on the shards."""
    scratch_table("two_groups", "id bigint NOT NULL, site_id int NOT NULL, user_id int NOT NULL")
    admin.execute("SELECT create_distributed_table('two_groups', 'site_id')")
    admin.execute("SELECT rls.protect_by_site_and_owner('two_groups', to_role => %s)", (APP_ROLE,))
    admin.execute(f"CREATE POLICY mine ON two_groups TO {APP_ROLE} USING (user_id = 7)")
    problems = [problem for _, problem in _problems(admin, "two_groups")]
    assert (
        "the select policies of two_groups (rls_owner_select, rls_site_select) arrive on the shards without "
        "AS RESTRICTIVE, so there each admits a row on its own"
    ) in problems
    assert (
        "permissive policy mine of two_groups is OR'd on the shards with the policy groups, which arrive there "
        "without AS RESTRICTIVE, so it widens what they allow"
    ) in problems


RUN_ON_NODES = (
    "master_run_on_worker",
    "run_command_on_workers",
    "run_command_on_all_nodes",
    "run_command_on_coordinator",
    "run_command_on_placements",
    "run_command_on_shards",
)


def test_app_role_cannot_run_statements_on_the_workers(admin, app):
    """Citus grants EXECUTE on its run-on-nodes functions to PUBLIC: rls.problems reports it, rls_roles
    revokes it (django_rls.roles plans the same statements)."""

    def runnable() -> list[str]:
        return [
            name
            for (name,) in app.execute(
                "SELECT p.proname::text FROM pg_proc p WHERE p.proname = ANY (%s) "
                "AND has_function_privilege(p.oid, 'EXECUTE') ORDER BY 1",
                (list(RUN_ON_NODES),),
            ).fetchall()
        ]

    def reported() -> list[str]:
        return [
            problem
            for (problem,) in admin.execute(
                "SELECT problem FROM rls.problems WHERE object_name = %s AND problem LIKE '%%Citus workers%%'",
                (APP_ROLE,),
            ).fetchall()
        ]

    assert sorted(runnable()) == sorted(RUN_ON_NODES)
    assert len(reported()) == 1
    steps = rls_roles._citus_steps(admin.cursor(), APP_ROLE)
    assert len(steps) == 1
    try:
        admin.execute(steps[0][1])
        assert runnable() == []
        assert reported() == []
        assert rls_roles._citus_steps(admin.cursor(), APP_ROLE) == []
    finally:
        functions = admin.execute(
            "SELECT string_agg(oid::regprocedure::text, ', ') FROM pg_proc WHERE proname = ANY (%s)",
            (list(RUN_ON_NODES),),
        ).fetchone()[0]
        admin.execute(f"GRANT EXECUTE ON FUNCTION {functions} TO PUBLIC")


# -- policies that read another table (issue 17, item 4): refused, with the way out -----------------
#
# Citus refuses a sub-select in a policy on any of its tables (distributed, reference): creating one
# fails with an internal error ("unexpected non-SELECT command in SubLink"), distributing a table that
# has one with "cannot create policy". rls.protect() refuses first, with an errcode and a hint.
# rls.member_of() has no sub-select, and Citus takes it, but it reads the membership table's heap,
# which on the workers is the empty shell of a Citus table.

THROUGH_PARENT = "EXISTS (SELECT 1 FROM projects p WHERE p.id = tasks.project_id)"
MEMBERSHIP = "site_id IN (SELECT m.site_id FROM memberships m WHERE m.user_id = rls.user_id())"
MEMBER_OF = "rls.member_of('memberships', 'site_id', 'user_id', site_id)"


@pytest.fixture
def parent_tables(admin: psycopg.Connection) -> Iterator[None]:
    """projects and memberships (distributed by site_id), tasks (id, site_id, project_id), owned by the owner role."""
    for statement in (
        "CREATE TABLE projects (id bigint NOT NULL, site_id int NOT NULL, PRIMARY KEY (site_id, id))",
        "CREATE TABLE memberships (site_id int NOT NULL, user_id int NOT NULL, PRIMARY KEY (site_id, user_id))",
        "CREATE TABLE tasks (id bigint NOT NULL, site_id int NOT NULL, project_id bigint, PRIMARY KEY (site_id, id))",
        "INSERT INTO memberships VALUES (3, 7), (5, 8)",
        "SELECT create_distributed_table('projects', 'site_id')",
        "SELECT create_distributed_table('memberships', 'site_id')",
    ):
        admin.execute(statement)
    for table in ("projects", "memberships", "tasks"):
        admin.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(OWNER_ROLE)))
    yield
    admin.execute("DROP TABLE IF EXISTS tasks, projects, memberships CASCADE")


@pytest.fixture
def owner(citus: CitusCluster) -> Iterator[psycopg.Connection]:
    with citus.connect(OWNER_ROLE, PASSWORD) as conn:
        yield conn


def _task_policies(admin: psycopg.Connection) -> list[str]:
    return [name for (name,) in admin.execute("SELECT polname FROM pg_policy WHERE polrelid = 'tasks'::regclass")]


@pytest.mark.parametrize("how", ["distributed", "reference"])
@pytest.mark.parametrize("expression", [THROUGH_PARENT, MEMBERSHIP], ids=["through-parent", "membership"])
def test_protect_refuses_a_sub_select_on_a_citus_table(admin, owner, parent_tables, how, expression):
    """As the table's owner: refused before anything is created, with the alternative named."""
    if how == "distributed":
        admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    else:
        admin.execute("SELECT create_reference_table('tasks')")
    with pytest.raises(errors.FeatureNotSupported) as excinfo:
        owner.execute("SELECT rls.protect('tasks', 'parent', %s, to_role => %s)", (expression, APP_ROLE))
    error = excinfo.value.diag
    assert error.message_primary == (
        f'policy group "parent" of tasks reads another table in a sub-select, and tasks is a {how} table of '
        "Citus, which does not allow sub-selects in a policy on its tables"
    )
    assert error.message_hint.startswith("Give tasks its own site column")
    assert "SELECT undistribute_table('tasks')" in error.message_hint
    assert _task_policies(admin) == []
    # What Citus itself says, without django_rls: an internal error that names no way out.
    with pytest.raises(errors.InternalError_, match="unexpected non-SELECT command in SubLink"):
        owner.execute(f"CREATE POLICY by_hand ON tasks USING ({expression})")


def test_protect_refuses_member_of_on_a_distributed_table(admin, owner, parent_tables):
    admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    with pytest.raises(errors.FeatureNotSupported) as excinfo:
        owner.execute("SELECT rls.protect('tasks', 'member', %s, to_role => %s)", (MEMBER_OF, APP_ROLE))
    assert "calls rls.member_of(), and tasks is a distributed table of Citus" in excinfo.value.diag.message_primary
    assert excinfo.value.diag.message_hint.startswith("Give tasks its own site column")
    assert _task_policies(admin) == []
    # Why: rls.member_of() reads the table's own heap, and on the workers the membership table's is empty
    # (its rows are in the shards), while the coordinator's shell answers as a superuser through Citus.
    sizes = admin.execute(
        "SELECT result FROM run_command_on_workers($$SELECT pg_relation_size('memberships')$$)"
    ).fetchall()
    assert sizes == [("0",), ("0",)]
    assert admin.execute("SELECT count(*) FROM memberships").fetchone() == (2,)


def test_the_sql_only_mode_is_refused_on_a_citus_table(admin, parent_tables):
    """The SQL-only mode's accessors are sub-selects: its rls._policy_text, put in for one rolled-back
    transaction, makes even the plainest site policy one that rls.protect() refuses, naming the library."""
    from pathlib import Path

    source = (Path(__file__).parent.parent / "sql" / "sqlonly" / "10_context.sql").read_text()
    [definition] = re.findall(r"CREATE FUNCTION rls\._policy_text\(expr text\).*?\$\$;", source, re.S)
    admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    with admin.transaction():
        admin.execute(definition.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
        with pytest.raises(errors.FeatureNotSupported) as excinfo:
            admin.execute("SELECT rls.protect_by_site('tasks', to_role => %s)", (APP_ROLE,))
        raise psycopg.Rollback
    assert excinfo.value.diag.message_primary.startswith(
        "cannot protect tasks with the SQL-only mode of django_rls: it is a distributed table of Citus"
    )
    assert "shared_preload_libraries = 'citus, django_rls'" in excinfo.value.diag.message_hint
    assert _task_policies(admin) == []


def test_a_site_column_of_its_own_is_taken(admin, owner, parent_tables):
    """The alternative the hint names: the table's own site column, no sub-select."""
    admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    assert owner.execute("SELECT rls.protect_by_site('tasks', to_role => %s)", (APP_ROLE,)).fetchone() == (True,)
    assert "rls_site_select" in _task_policies(admin)


def test_distributing_a_table_protected_with_a_sub_select_is_refused(admin, owner, parent_tables):
    """Protected first: create_distributed_table is Citus's own call, which refuses (with its own message)."""
    owner.execute("SELECT rls.protect('tasks', 'parent', %s, to_role => %s)", (THROUGH_PARENT, APP_ROLE))
    with pytest.raises(errors.FeatureNotSupported, match="cannot create policy") as excinfo:
        admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    assert excinfo.value.diag.message_detail == "Subqueries are not supported in policies on distributed tables"
    assert admin.execute(
        "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'tasks'::regclass"
    ).fetchone() == (0,)


def test_problems_name_a_member_of_policy_that_was_distributed(admin, owner, app, parent_tables):
    """Protected with rls.member_of() first: Citus distributes it; rls.problems, rls_verify name the policy."""
    from django_rls.verify import _citus_failures

    owner.execute("SELECT rls.protect('tasks', 'member', %s, to_role => %s)", (MEMBER_OF, APP_ROLE))
    admin.execute("SELECT create_distributed_table('tasks', 'site_id')")
    expected = (
        "policy rls_member_select of tasks reads another table with rls.member_of(), which on the workers reads "
        "the membership table's empty shell, so no member sees a row"
    )
    assert ("rls_member_select", expected) in _problems(admin, "tasks")
    with app.cursor() as cursor:
        assert f"rls_member_select: {expected}" in _citus_failures(cursor)


# -- audited tables (rls_audit) on tables of Citus ---------------------------------------------------

MAKE_CITUS_TABLE = {
    "distributed": "SELECT create_distributed_table(%s, 'site_id')",
    "reference": "SELECT create_reference_table(%s)",
    "local": "SELECT citus_add_local_table_to_metadata(%s)",
}
CITUS_TABLE_WORDS = {
    "distributed": "a distributed table of Citus",
    "reference": "a reference table of Citus",
    "local": "a Citus local table",
}


def _audit_triggers(admin: psycopg.Connection, table: str) -> list[str]:
    return [
        name
        for (name,) in admin.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname LIKE 'rls\\_audit\\_%%'", (table,)
        ).fetchall()
    ]


@pytest.mark.parametrize("kind", list(MAKE_CITUS_TABLE))
def test_audit_enable_refuses_a_table_of_citus(admin, owner, scratch_table, kind):
    """Its writes happen in the shard placements, apart from the coordinator's audit log: rls_audit.enable() (the
    table's owner calls it, as rls_apply does) refuses with feature_not_supported and a hint, and leaves nothing."""
    table = scratch_table(
        f"audited_{kind}", "id bigint NOT NULL, site_id int NOT NULL, PRIMARY KEY (site_id, id)", True
    )
    admin.execute(MAKE_CITUS_TABLE[kind], (table,))
    found = citus_tables(admin.cursor())
    assert found.kinds[table] == kind
    with pytest.raises(errors.FeatureNotSupported) as refused:
        owner.execute("SELECT rls_audit.enable(%s)", (table,))
    diag = refused.value.diag
    assert diag.message_primary == f"public.{table} is {CITUS_TABLE_WORDS[kind]}, which django_rls cannot audit"
    assert "undistribute_table()" in (diag.message_hint or "") and "audit=False" in (diag.message_hint or "")
    assert admin.execute(
        "SELECT count(*) FROM rls_audit.audited_tables WHERE table_oid = %s::regclass", (table,)
    ).fetchone() == (0,)
    assert _audit_triggers(admin, table) == []


def test_a_table_audited_before_it_is_distributed_stays_local(admin, owner, scratch_table):
    """The other order: an audited table cannot be distributed. Citus refuses a table with triggers (without
    citus.enable_unsafe_triggers); with it on, the audit guard on the workers refuses Citus's copies of the audit
    triggers on the shards, saying why and what to do. Either way the table stays a plain, audited table on the
    coordinator."""
    table = scratch_table("audited_first", "id bigint NOT NULL, site_id int NOT NULL, PRIMARY KEY (site_id, id)", True)
    owner.execute("SELECT rls_audit.enable(%s)", (table,))
    admin.execute("SET citus.enable_unsafe_triggers = off")
    with pytest.raises(errors.InternalError_, match=f'cannot distribute relation "{table}" because it has triggers'):
        admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    assert table not in citus_tables(admin.cursor())
    admin.execute("SET citus.enable_unsafe_triggers = on")
    with pytest.raises(errors.FeatureNotSupported) as by_guard:
        admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    admin.execute("RESET citus.enable_unsafe_triggers")
    diag = by_guard.value.diag
    assert re.fullmatch(
        rf"public\.{table}_\d+ is a shard of an audited table, and django_rls cannot audit a table of Citus",
        diag.message_primary or "",
    ), diag.message_primary
    assert "rls_audit.disable()" in (diag.message_hint or "") and "audit=False" in (diag.message_hint or "")
    assert table not in citus_tables(admin.cursor())
    assert len(_audit_triggers(admin, table)) == 4


def test_problems_report_an_audited_table_of_citus(admin, app, scratch_table):
    """Should a superuser step around both refusals (here: the registry written by hand), rls.problems names the
    table; the checks' E033 says it for declared models before rls_apply (tests/test_checks.py)."""
    table = scratch_table(
        "audited_by_hand", "id bigint NOT NULL, site_id int NOT NULL, PRIMARY KEY (site_id, id)", True
    )
    admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    admin.execute("INSERT INTO rls_audit.audited_tables (table_oid) VALUES (%s::regclass)", (table,))
    try:
        expected = (
            f"{table} is audited and a distributed table of Citus, so its writes are captured in its shard "
            "placements, apart from the audit log of the coordinator (where they are captured at all)"
        )
        for conn in (admin, app):
            rows = conn.execute(
                "SELECT problem, hint FROM rls.problems WHERE object_name = %s AND problem LIKE '%%audited%%'",
                (table,),
            ).fetchall()
            assert [problem for problem, _ in rows] == [expected]
            assert "undistribute_table()" in rows[0][1] and "rls_audit.disable()" in rows[0][1]
    finally:
        admin.execute("DELETE FROM rls_audit.audited_tables WHERE table_oid = %s::regclass", (table,))


# -- raw SQL off Django on a coordinator: autocommit fails closed, a transaction block works ----------


@pytest.mark.parametrize("mode", ["session", "marker"])
def test_raw_sql_in_autocommit_fails_closed_without_an_error_and_a_transaction_block_works(app, admin, mode):
    """What a raw-SQL user of the coordinator sees (docs/scale-out.md): the context set in autocommit (session-scoped
    setter, the statement marker) reaches no worker, and nothing says so: reads return no row, an update changes
    none, only an insert is refused (its WITH CHECK sees no site). The same statements in a transaction block that
    sets the context first (BEGIN; rls.set_context(); ...; COMMIT, or the marker inside BEGIN ... COMMIT) see and
    change exactly site 3's rows."""
    assert run_as_site(app, mode, "SELECT id FROM items").fetchall() == []
    assert run_as_site(app, mode, "SELECT count(*) FROM items WHERE site_id = %s", (SITE,)).fetchone() == (0,)
    assert run_as_site(app, mode, "UPDATE items SET title = 'touched'").rowcount == 0
    with pytest.raises(errors.InsufficientPrivilege, match="new row violates row-level security policy"):
        run_as_site(app, mode, "INSERT INTO items VALUES (%s, %s, 'own')", (NEW_ID, SITE))
    assert app.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if mode == "session":
        app.execute("SELECT rls.clear_context()")

    working = "transaction" if mode == "session" else "marker in a transaction"
    assert {row for (row,) in run_as_site(app, working, "SELECT id FROM items").fetchall()} == SITE_ROWS
    assert run_as_site(app, working, "UPDATE items SET title = 'touched'").rowcount == len(SITE_ROWS)
    run_as_site(app, working, "INSERT INTO items VALUES (%s, %s, 'own')", (NEW_ID, SITE))
    touched = admin.execute("SELECT count(*) FROM items WHERE title = 'touched'").fetchone()[0]
    admin.execute("UPDATE items SET title = 'row ' || id::text WHERE title = 'touched'")
    assert touched == len(SITE_ROWS)


# -- the table on the cluster: each site exactly its rows, from a transaction block ----------------


@pytest.mark.parametrize("mode", FORWARDED_MODES)
def test_site_reads_exactly_its_rows(app, mode):
    ids = {id_ for (id_,) in run_as_site(app, mode, "SELECT id FROM items").fetchall()}
    assert ids == SITE_ROWS


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_site_reads_no_other_site_even_when_asking(app, mode):
    assert run_as_site(app, mode, "SELECT count(*) FROM items WHERE site_id = %s", (OTHER_SITE,)).fetchone() == (0,)


@pytest.mark.parametrize("mode", NO_CONTEXT_MODES)
def test_no_context_reads_nothing(app, mode):
    assert run_without_context(app, mode, "SELECT count(*) FROM items").fetchone() == (0,)


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_cross_site_insert_is_refused(app, mode):
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as_site(app, mode, "INSERT INTO items VALUES (%s, %s, 'cross-site')", (NEW_ID, OTHER_SITE))


@pytest.mark.parametrize("mode", NO_CONTEXT_MODES)
def test_insert_without_context_is_refused(app, mode):
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_without_context(app, mode, "INSERT INTO items VALUES (%s, %s, 'no context')", (NEW_ID, SITE))


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_cross_site_update_changes_nothing(app, admin, mode):
    cursor = run_as_site(app, mode, "UPDATE items SET title = 'taken' WHERE site_id = %s", (OTHER_SITE,))
    changed = admin.execute("SELECT count(*) FROM items WHERE title = 'taken'").fetchone()[0]
    admin.execute("UPDATE items SET title = 'row ' || id::text WHERE title = 'taken'")
    assert (cursor.rowcount, changed) == (0, 0)


@pytest.mark.parametrize("mode", FORWARDED_MODES)
def test_unfiltered_update_changes_only_the_sites_rows(app, admin, mode):
    run_as_site(app, mode, "UPDATE items SET title = 'touched'")
    touched = {id_ for (id_,) in admin.execute("SELECT id FROM items WHERE title = 'touched'").fetchall()}
    admin.execute("UPDATE items SET title = 'row ' || id::text WHERE title = 'touched'")
    assert touched == SITE_ROWS


@pytest.mark.parametrize("mode", FORWARDED_MODES)
def test_shard_queries_see_the_context(app, mode):
    """rls.site_id() in the target list is evaluated on the workers: there it is 3 too, from the forwarded context."""
    assert run_as_site(app, mode, "SELECT DISTINCT rls.site_id() FROM items").fetchall() == [(SITE,)]


def test_the_coordinator_holds_the_context(app):
    """The coordinator's own backend does have the context: the loss is on the way to the workers."""
    assert run_as_site(app, "transaction", "SELECT rls.site_id()").fetchone() == (SITE,)
    parameter = Text(json.dumps({"site": SITE, "user": None, "claims": None}))
    assert app.execute("/*django_rls:%s*/ SELECT rls.site_id()", (parameter,)).fetchone() == (SITE,)


# -- shard policies put back as RESTRICTIVE by hand: the same ---------------------------------------


def test_repaired_shards_are_restrictive(admin):
    assert all(not permissive for _, permissive in _shard_policies(admin, "items_repaired"))


@pytest.mark.parametrize("mode", NO_CONTEXT_MODES)
def test_repaired_no_context_reads_nothing(app, mode):
    assert run_without_context(app, mode, "SELECT count(*) FROM items_repaired").fetchone() == (0,)


@pytest.mark.parametrize("mode", NO_CONTEXT_MODES)
def test_repaired_insert_without_context_is_refused(app, mode):
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_without_context(app, mode, "INSERT INTO items_repaired VALUES (%s, %s, 'no context')", (NEW_ID, SITE))


@pytest.mark.parametrize("mode", CONTEXT_MODES)
def test_repaired_cross_site_reads_and_writes_are_refused(app, admin, mode):
    assert run_as_site(
        app, mode, "SELECT count(*) FROM items_repaired WHERE site_id = %s", (OTHER_SITE,)
    ).fetchone() == (0,)
    cursor = run_as_site(app, mode, "UPDATE items_repaired SET title = 'taken' WHERE site_id = %s", (OTHER_SITE,))
    assert cursor.rowcount == 0
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as_site(app, mode, "INSERT INTO items_repaired VALUES (%s, %s, 'cross-site')", (NEW_ID, OTHER_SITE))
    assert admin.execute(
        "SELECT count(*) FROM items_repaired WHERE id >= %s OR title = 'taken'", (NEW_ID,)
    ).fetchone() == (0,)


@pytest.mark.parametrize("mode", FORWARDED_MODES)
def test_repaired_site_reads_exactly_its_rows(app, mode):
    ids = {id_ for (id_,) in run_as_site(app, mode, "SELECT id FROM items_repaired").fetchall()}
    assert ids == SITE_ROWS


@pytest.mark.parametrize("mode", FORWARDED_MODES)
def test_repaired_site_writes_its_own_rows(app, admin, mode):
    try:
        run_as_site(app, mode, "INSERT INTO items_repaired VALUES (%s, %s, 'own')", (NEW_ID, SITE))
    except errors.InsufficientPrivilege as exc:
        pytest.fail(f"site {SITE} may not insert its own row: {exc}")
    assert admin.execute("SELECT site_id FROM items_repaired WHERE id = %s", (NEW_ID,)).fetchall() == [(SITE,)]


def test_repaired_context_reaches_the_shards_with_propagation_on_too(app):
    """The user's own citus.propagate_set_commands = 'local' changes nothing: the setter sets it anyway."""
    app.execute("SET citus.propagate_set_commands = 'local'")
    ids = {id_ for (id_,) in run_as_site(app, "transaction", "SELECT id FROM items_repaired").fetchall()}
    assert ids == SITE_ROWS


def test_a_shard_move_drops_restrictive_again_and_the_table_stays_closed(admin, app, move_shard):
    """A repair by hand does not last: the move copies the policies without AS RESTRICTIVE again. The
    table does not depend on it: without a context the app role still reads nothing, and with site 3's
    context it reads and writes site 3's rows on the moved placement, and no other site's."""
    assert run_without_context(app, "autocommit", "SELECT count(*) FROM items_moved").fetchone() == (0,)
    move_shard("items_moved", SITE)
    assert run_without_context(app, "autocommit", "SELECT count(*) FROM items_moved").fetchone() == (0,)
    # The context reaches the moved placement too: site 3 sees its rows and writes only its own.
    assert {id_ for (id_,) in run_as_site(app, "transaction", "SELECT id FROM items_moved").fetchall()} == SITE_ROWS
    run_as_site(app, "transaction", "INSERT INTO items_moved VALUES (%s, %s, 'own')", (NEW_ID, SITE))
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as_site(app, "transaction", "INSERT INTO items_moved VALUES (%s, %s, 'cross')", (NEW_ID + 1, OTHER_SITE))
    assert (
        run_as_site(
            app, "transaction", "UPDATE items_moved SET title = title WHERE site_id = %s", (OTHER_SITE,)
        ).rowcount
        == 0
    )
    moved = on_placements(
        admin,
        "items_moved",
        "SELECT bool_or(polpermissive) FROM pg_policy WHERE polrelid = '%s'::regclass AND polname LIKE 'rls\\_site\\_%%'",
    )
    assert "t" in moved, moved


# -- a policy structure that does not depend on RESTRICTIVE surviving a copy ----------------------
#
# Investigation for issue 17. rls.protect() gives the permissive side (rls_base_<command>) the
# conjunction of the groups, but keeps one RESTRICTIVE policy per group, so a table of two groups
# still widens on the shards (rls.problems reports it). Here every policy of the table, the
# permissive one per command and the RESTRICTIVE guard per command, carries the conjunction of all
# groups for that command. On one server the guard keeps any other permissive policy from widening
# it; where a copy loses RESTRICTIVE the guard becomes a permissive policy with the same expression,
# and OR-ing identical expressions changes nothing. Literal stand-ins (site 3, user 7) replace the
# accessors, so that what is shown is the policy structure alone.

CONJUNCTION = "site_id = 3 AND user_id = 7"
STRUCTURE = [
    f"CREATE POLICY rls_select ON {{table}} FOR SELECT TO {APP_ROLE} USING ({CONJUNCTION})",
    f"CREATE POLICY rls_insert ON {{table}} FOR INSERT TO {APP_ROLE} WITH CHECK ({CONJUNCTION})",
    f"CREATE POLICY rls_update ON {{table}} FOR UPDATE TO {APP_ROLE} USING ({CONJUNCTION}) WITH CHECK ({CONJUNCTION})",
    f"CREATE POLICY rls_delete ON {{table}} FOR DELETE TO {APP_ROLE} USING ({CONJUNCTION})",
    f"CREATE POLICY rls_guard_select ON {{table}} AS RESTRICTIVE FOR SELECT TO {APP_ROLE} USING ({CONJUNCTION})",
    f"CREATE POLICY rls_guard_insert ON {{table}} AS RESTRICTIVE FOR INSERT TO {APP_ROLE} WITH CHECK ({CONJUNCTION})",
    f"CREATE POLICY rls_guard_update ON {{table}} AS RESTRICTIVE FOR UPDATE TO {APP_ROLE} "
    f"USING ({CONJUNCTION}) WITH CHECK ({CONJUNCTION})",
    f"CREATE POLICY rls_guard_delete ON {{table}} AS RESTRICTIVE FOR DELETE TO {APP_ROLE} USING ({CONJUNCTION})",
]


@pytest.mark.parametrize("order", ["policies first", "distributed first"])
def test_conjunction_in_every_policy_holds_on_shards_and_after_a_move(admin, app, order, scratch_table, move_shard):
    table = scratch_table(
        f"conjunction_{order.split()[0]}",
        "id bigint NOT NULL, site_id int NOT NULL, user_id int NOT NULL, PRIMARY KEY (site_id, id)",
    )
    # Sites 3 and 4 times users 7 and 8, five rows each: site 3's user 7 owns ids 1-5.
    admin.execute(
        f"INSERT INTO {table} SELECT g, 3 + (g - 1) / 10, 7 + ((g - 1) / 5) %% 2 FROM generate_series(1, %s) g",
        (20,),
    )
    admin.execute(f"ALTER TABLE {table} OWNER TO {OWNER_ROLE}")
    admin.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")
    if order == "distributed first":
        admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    for statement in STRUCTURE:
        admin.execute(statement.format(table=table))
    if order == "policies first":
        admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    # The guards did lose RESTRICTIVE on the shards: what follows holds without it.
    guards = on_placements(
        admin,
        table,
        "SELECT bool_or(NOT polpermissive) FROM pg_policy WHERE polrelid = '%s'::regclass AND polname LIKE 'rls\\_guard\\_%%'",
    )
    assert set(guards) == {"f"}

    def holds() -> None:
        assert {id_ for (id_,) in app.execute(f"SELECT id FROM {table}").fetchall()} == {1, 2, 3, 4, 5}
        for site, user in ((3, 8), (4, 7)):
            with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
                app.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (NEW_ID, site, user))
        assert app.execute(f"UPDATE {table} SET id = id WHERE site_id = 3").rowcount == 5
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            app.execute(f"UPDATE {table} SET user_id = 8 WHERE id = 1")
        with app.transaction():
            assert app.execute(f"DELETE FROM {table}").rowcount == 5
            raise psycopg.Rollback

    holds()
    move_shard(table, 3)
    holds()


# -- DJANGO_RLS["FILTER_BY_SITE"]: router planning (issue 17 item 3) ------------------------------


@pytest.fixture
def note_table(admin: psycopg.Connection) -> Iterator[str]:
    """testapp.Note's table on the cluster, distributed by site_id and protected for the app role."""
    from tests.testapp.models import Note

    table = Note._meta.db_table
    admin.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint NOT NULL, site_id int NOT NULL, author_id int, body text NOT NULL, "
            "PRIMARY KEY (site_id, id))"
        ).format(sql.Identifier(table))
    )
    admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
    admin.execute("SELECT rls.protect_by_site(%s, to_role => %s)", (table, APP_ROLE))
    admin.execute(
        sql.SQL("GRANT SELECT, UPDATE, DELETE ON {} TO {}").format(sql.Identifier(table), sql.Identifier(APP_ROLE))
    )
    admin.execute(
        sql.SQL("INSERT INTO {} SELECT g, 3 + g % 9, NULL, 'note ' || g FROM generate_series(1, 90) AS g").format(
            sql.Identifier(table)
        )
    )
    yield table
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


def _django_statements() -> dict[str, tuple[str, tuple]]:
    """SQL and parameters Django builds for a read, an aggregate, an update and a delete of notes."""
    from django.db.models import Count
    from django.db.models.sql import DeleteQuery, UpdateQuery

    from tests.testapp.models import Note

    notes = Note.objects.filter(body__startswith="note")
    update = notes.query.chain(UpdateQuery)
    update.add_update_values({"body": "changed"})
    delete = notes.query.chain(DeleteQuery)
    return {
        "select": notes.query.sql_with_params(),
        "aggregate": notes.values("author").annotate(n=Count("id")).query.sql_with_params(),
        "update": update.get_compiler("default").as_sql(),
        "delete": delete.get_compiler("default").as_sql(),
    }


def _task_count(conn: psycopg.Connection, statement: tuple[str, tuple]) -> int:
    text, params = statement
    plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + text, params))
    counts = [int(count) for count in re.findall(r"Task Count: (\d+)", plan)]
    assert counts, plan
    return sum(counts)


def test_filter_by_site_routes_django_queries_to_one_shard(note_table, app, admin, settings):
    """As the app role: with FILTER_BY_SITE and a site in the context, Citus plans each query on one shard."""
    import django_rls

    with django_rls.context(site=SITE):
        unfiltered = _django_statements()
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "FILTER_BY_SITE": True}
        filtered = _django_statements()
    shards = int(admin.execute("SHOW citus.shard_count").fetchone()[0])
    for kind in filtered:
        with app.transaction():
            app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
            assert _task_count(app, unfiltered[kind]) == shards, kind
            assert _task_count(app, filtered[kind]) == 1, kind
    # The same rows as the policies would give (read as the superuser, so that the comparison does not
    # depend on the policies).
    text, params = filtered["select"]
    plain_text, plain_params = unfiltered["select"]
    every_site = admin.execute(plain_text, plain_params).fetchall()
    assert sorted(admin.execute(text, params).fetchall()) == sorted(row for row in every_site if row[1] == SITE)
    assert len(every_site) == 90


# -- what carrying the context to the workers builds on (issue 17, item 2) -----------------------
#
# Citus's behaviour the design in docs/scale-out.md ("Design notes") rests on, pinned here so that a
# Citus release that changes it fails these tests. A plain distributed table and a placeholder setting
# (myapp.site) stand in for a protected table and django_rls.forwarded.


@pytest.fixture
def carrier(admin: psycopg.Connection) -> Iterator[str]:
    """carrier (id, site_id), 40 rows over the 32 shards, read and updated by the app role, and carry(v), a function
    that issues SET LOCAL myapp.site through SPI (the way the extension's setter would)."""
    admin.execute("CREATE TABLE carrier (id int NOT NULL, site_id int NOT NULL)")
    admin.execute("SELECT create_distributed_table('carrier', 'site_id')")
    admin.execute("INSERT INTO carrier SELECT g, g FROM generate_series(1, 40) AS g")
    admin.execute(
        "CREATE FUNCTION carry(v text) RETURNS void LANGUAGE plpgsql "
        "AS $$ BEGIN EXECUTE format('SET LOCAL myapp.site = %L', v); END $$"
    )
    admin.execute(sql.SQL("GRANT SELECT, UPDATE ON carrier TO {}").format(sql.Identifier(APP_ROLE)))
    yield "carrier"
    admin.execute("DROP TABLE carrier")
    admin.execute("DROP FUNCTION carry(text)")


ON_THE_SHARDS = "SELECT DISTINCT current_setting('myapp.site', true) FROM carrier"


def _unset(rows: list[tuple]) -> bool:
    """No worker backend had a value: NULL where the placeholder was never set in it, '' where a SET LOCAL of
    an earlier transaction on the same (cached) connection had created it."""
    return bool(rows) and {value for (value,) in rows} <= {None, ""}


def test_a_set_local_issued_through_spi_reaches_every_worker_backend(app, carrier):
    """As the app role, in a transaction block with citus.propagate_set_commands = 'local': SET LOCAL run by a
    function (SPI, so ProcessUtility, so Citus's hook) reaches the backends opened after it and before it."""
    app.execute("SET citus.propagate_set_commands = 'local'")
    with app.transaction():
        app.execute("SELECT carry('3')")
        assert app.execute(ON_THE_SHARDS).fetchall() == [("3",)]
        app.execute("SELECT carry('4')")  # the worker connections are open now: sent to each of them
        assert app.execute(ON_THE_SHARDS).fetchall() == [("4",)]
    # set_config() is not a SET statement: nothing is forwarded.
    with app.transaction():
        app.execute("SELECT set_config('myapp.site', '5', true)")
        assert _unset(app.execute(ON_THE_SHARDS).fetchall())
    app.execute("RESET citus.propagate_set_commands")


def test_autocommit_statements_carry_no_set_local(app, admin, carrier):
    """A multi-shard SELECT in autocommit opens no transaction on the workers: nothing a SET LOCAL could
    ride on, even one issued by the same statement; a multi-shard UPDATE does open one (two-phase commit)."""
    app.execute("SET citus.propagate_set_commands = 'local'")
    admin.execute(
        "CREATE FUNCTION carry_and_read(v text) RETURNS SETOF text LANGUAGE plpgsql AS $$ BEGIN "
        "EXECUTE format('SET LOCAL myapp.site = %L', v); "
        "RETURN QUERY SELECT DISTINCT current_setting('myapp.site', true) FROM carrier; END $$"
    )
    try:
        assert _unset(app.execute("SELECT * FROM carry_and_read('3')").fetchall())
        with remote_commands(app) as sent:
            app.execute("SELECT count(*) FROM carrier")
            assert sent and not any("BEGIN" in command for command in sent), sent
            sent.clear()
            app.execute("UPDATE carrier SET id = id WHERE id < 0")
            assert any(command.startswith("issuing BEGIN") for command in sent), sent
    finally:
        admin.execute("DROP FUNCTION carry_and_read(text)")
        app.execute("RESET citus.propagate_set_commands")


def test_the_app_role_reads_what_is_propagated_and_may_assign_a_transaction_id(citus, app, carrier):
    """Why a credential propagated this way is not secret from the app role, and why binding it to the
    distributed transaction alone does not stop a replay from a session of the app role's own on a worker:
    citus.log_remote_commands (any role may set it) shows the SET LOCAL text, which a new worker connection
    receives before assign_distributed_transaction_id(); and that function is executable by PUBLIC."""
    app.execute("SET citus.propagate_set_commands = 'local'")
    with remote_commands(app) as sent, app.transaction():
        app.execute("SELECT carry('secret-3')")
        app.execute("SELECT count(*) FROM carrier WHERE site_id = 3")
    app.execute("RESET citus.propagate_set_commands")
    [begin] = [command for command in sent if command.startswith("issuing BEGIN")]
    assert begin.index("SET LOCAL myapp.site = 'secret-3'") < begin.index("assign_distributed_transaction_id(")
    with citus.connect(APP_ROLE, PASSWORD, node=citus.workers[0]) as direct:
        with direct.transaction():
            direct.execute("SELECT assign_distributed_transaction_id(0, 424242, now())")
            assert direct.execute(
                "SELECT initiator_node_identifier, transaction_number FROM get_current_transaction_id()"
            ).fetchone() == (0, 424242)


# -- the forwarded context: what a worker accepts (issue 17, item 2) ------------------------------
#
# ext/citus.c: on the coordinator, in a transaction block, the setter runs
# SET LOCAL django_rls.forwarded = 'c1.<mac>.<exp>.<initiator>.<number>.<stamp>.<site>.<user>.<claims>'
# through SPI, which Citus forwards to every worker backend of the transaction. The MAC is HMAC-SHA256
# under the key the nodes share over "c1.<exp>...<claims>", a NUL byte and the database's name. A
# worker verifies it when a policy first reads the context. The sessions "on a worker" below are the
# app role's own, straight to a worker: what pg_hba.conf must refuse in production (docs/scale-out.md).

FORWARDED = re.compile(r"SET LOCAL django_rls\.forwarded = '([^']*)'")


def _captured(app: psycopg.Connection) -> str:
    """The credential of one real transaction of site 3, read the way the app role can: citus.log_remote_commands."""
    with remote_commands(app) as sent, app.transaction():
        app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
        assert app.execute("SELECT count(*) FROM items").fetchone() == (len(SITE_ROWS),)
    values = [value for command in sent for value in FORWARDED.findall(command)]
    assert values and all(value == values[0] for value in values), sent
    return values[0]


def _fields(credential: str) -> list[str]:
    """c1, mac, exp, initiator, number, stamp, site, user, claims."""
    return credential.split(".", 8)


def _signed(key: str, *, database: str, expires_at: int, txn: tuple[int, int, int], site: str = str(SITE)) -> str:
    """A credential made the way the coordinator makes one, with the test's choice of database, expiry, transaction."""
    rest = f"{expires_at}.{txn[0]}.{txn[1]}.{txn[2]}.{site}.."
    mac = hmac.new(key.encode(), b"c1." + rest.encode() + b"\0" + database.encode(), hashlib.sha256).hexdigest()
    return f"c1.{mac}.{rest}"


def _on_worker(citus: CitusCluster, credential: str, txn: tuple[int, int, int] | None) -> int | None:
    """rls.site_id() in the app role's own transaction on a worker, with the credential set and, if txn is
    given, that distributed transaction id assigned (as Citus assigns it on a connection of its own)."""
    with citus.connect(APP_ROLE, PASSWORD, node=citus.workers[0]) as direct:
        with direct.transaction():
            direct.execute("SELECT set_config('django_rls.forwarded', %s, true)", (credential,))
            if txn is not None:
                direct.execute(
                    "SELECT assign_distributed_transaction_id(%s, %s, "
                    "'2000-01-01 00:00:00+00'::timestamptz + (%s || ' microseconds')::interval)",
                    (txn[0], txn[1], str(txn[2])),
                )
            return direct.execute("SELECT rls.site_id()").fetchone()[0]


def _txn(credential: str) -> tuple[int, int, int]:
    fields = _fields(credential)
    return int(fields[3]), int(fields[4]), int(fields[5])


def test_the_forwarded_credential_names_the_distributed_transaction(app):
    """What the app role sees of it: the site in clear, bound to the coordinator's (group 0) transaction."""
    credential = _captured(app)
    fields = _fields(credential)
    assert fields[0] == "c1" and re.fullmatch(r"[0-9a-f]{64}", fields[1])
    assert 0 < int(fields[2]) - time.time() <= 300  # django_rls.max_token_lifetime
    assert fields[3] == "0" and int(fields[4]) > 0
    assert fields[6:] == [str(SITE), "", ""]
    # Every transaction gets its own.
    assert _txn(_captured(app)) != _txn(credential)


def test_the_app_role_cannot_set_the_credential_on_the_coordinator(app):
    """Refused by the check hook, so Citus never carries a captured credential on to the workers
    (the SET is sent to already open connections before it runs locally, and the error then aborts
    the transaction on the workers too)."""
    credential = _captured(app)
    for value in (credential, "c1.nokey"):
        with pytest.raises(errors.InsufficientPrivilege, match="can only be set by the django_rls setter") as excinfo:
            with app.transaction():
                app.execute("SET LOCAL citus.propagate_set_commands = 'local'")
                app.execute(sql.SQL("SET LOCAL django_rls.forwarded = {}").format(sql.Literal(value)))
        assert excinfo.value.diag.message_hint
        with pytest.raises(errors.InsufficientPrivilege, match="can only be set by the django_rls setter"):
            app.execute("SELECT set_config('django_rls.forwarded', %s, false)", (value,))
    with pytest.raises(errors.InsufficientPrivilege, match="can only be set by the django_rls setter"):
        with app.transaction():
            app.execute(sql.SQL("SET LOCAL django_rls.forwarded = {}").format(sql.Literal(credential)))
            app.execute("SELECT count(*) FROM items")
    # Without a context of its own the app role still reads nothing.
    assert run_without_context(app, "transaction", "SELECT count(*) FROM items").fetchone() == (0,)


def test_a_worker_refuses_a_credential_replayed_outside_its_transaction(citus, app):
    """Seen in citus.log_remote_commands and replayed in a session of the app role's own on a worker: refused
    without a distributed transaction and in another one. Assigning itself the very transaction id it names
    does get it accepted: why pg_hba.conf must keep the app role off the workers (docs/scale-out.md)."""
    credential = _captured(app)
    txn = _txn(credential)
    with pytest.raises(
        errors.InvalidAuthorizationSpecification, match="invalid django_rls context forwarded"
    ) as excinfo:
        _on_worker(citus, credential, None)
    assert excinfo.value.diag.message_detail == "This backend is not in a distributed transaction of Citus."
    assert excinfo.value.diag.message_hint
    for other in ((txn[0], txn[1] + 1000, txn[2]), (txn[0], txn[1], txn[2] + 1), (txn[0] + 1, txn[1], txn[2])):
        with pytest.raises(errors.InvalidAuthorizationSpecification) as excinfo:
            _on_worker(citus, credential, other)
        assert excinfo.value.diag.message_detail == "It was made for another distributed transaction."
    assert _on_worker(citus, credential, txn) == SITE


def test_a_worker_refuses_a_credential_with_a_bad_mac(citus, app):
    credential = _captured(app)
    fields = _fields(credential)
    flipped = fields[1][:10] + ("0" if fields[1][10] != "0" else "1") + fields[1][11:]
    other_site = ".".join([*fields[:6], str(OTHER_SITE), *fields[7:]])
    for forged in (".".join([fields[0], flipped, *fields[2:]]), other_site):
        with pytest.raises(errors.InvalidAuthorizationSpecification) as excinfo:
            _on_worker(citus, forged, _txn(credential))
        assert excinfo.value.diag.message_detail == (
            "Its MAC does not match any key of this worker's django_rls.signing_key_file for this database."
        )
    # Malformed ones are refused by the check hook already.
    for malformed in ("c1.", "c1.zz", "v1.abc.def", ".".join(fields[:5])):
        with pytest.raises(errors.InvalidParameterValue):
            _on_worker(citus, malformed, None)


def test_a_worker_refuses_a_credential_for_another_database_or_expired(citus, app):
    """Made with the right key (the test's own signing, checked by the control that is accepted)."""
    txn = _txn(_captured(app))
    later = int(time.time()) + 60
    accepted = _signed(citus.signing_key, database="django_rls_citus", expires_at=later, txn=txn)
    assert _on_worker(citus, accepted, txn) == SITE
    other_database = _signed(citus.signing_key, database="postgres", expires_at=later, txn=txn)
    with pytest.raises(errors.InvalidAuthorizationSpecification) as excinfo:
        _on_worker(citus, other_database, txn)
    assert "for this database" in excinfo.value.diag.message_detail
    expired = _signed(citus.signing_key, database="django_rls_citus", expires_at=int(time.time()) - 5, txn=txn)
    with pytest.raises(errors.InvalidAuthorizationSpecification) as excinfo:
        _on_worker(citus, expired, txn)
    assert excinfo.value.diag.message_detail.startswith("It expired ")
    wrong_key = _signed("x" * 48, database="django_rls_citus", expires_at=later, txn=txn)
    with pytest.raises(errors.InvalidAuthorizationSpecification):
        _on_worker(citus, wrong_key, txn)


@pytest.mark.parametrize("where", ["coordinator", "workers"])
def test_without_a_key_the_shards_refuse_with_what_to_configure(citus, system_setting, where):
    """Fail closed, and say so: a key missing on the coordinator or on the workers is an error that names it."""
    for node in [citus.coordinator] if where == "coordinator" else citus.workers:
        system_setting(node, "django_rls.signing_key_file", "", "")
    with citus.connect(APP_ROLE, PASSWORD) as app:
        with pytest.raises(errors.ObjectNotInPrerequisiteState) as excinfo:
            run_as_site(app, "transaction", "SELECT count(*) FROM items")
        expected = "the Citus coordinator has no" if where == "coordinator" else "this Citus worker has no"
        assert excinfo.value.diag.message_primary.startswith(expected)
        assert "django_rls.signing_key_file" in excinfo.value.diag.message_hint
        # The coordinator's own context is there all the same.
        assert run_as_site(app, "transaction", "SELECT rls.site_id()").fetchone() == (SITE,)


def test_a_setter_pushed_down_to_the_shards_does_not_change_their_context(app):
    """rls.set_context() in the target list of a query on a distributed table runs on the workers, beside
    the context the coordinator forwarded: the workers refuse to choose, and no other site's row is read."""
    with pytest.raises(errors.InsufficientPrivilege) as excinfo:
        with app.transaction():
            app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
            pushed = app.execute("SELECT rls.set_context(%s, NULL) FROM items", (str(OTHER_SITE),)).fetchall()
            rows = app.execute("SELECT site_id FROM items").fetchall()
            pytest.fail(f"read {rows} after {len(pushed)} pushed-down setter calls")
    assert excinfo.value.diag.message_primary == (
        "a django_rls context was set on this Citus worker beside the one the coordinator forwarded"
    )
    assert excinfo.value.diag.message_hint


def test_a_session_context_set_in_a_transaction_block_reaches_the_shards_for_that_transaction(app):
    """is_local => false inside a transaction block: forwarded for that transaction, not for the next."""
    with app.transaction():
        app.execute("SELECT rls.set_context(%s, NULL, NULL, false)", (str(SITE),))
        assert {id_ for (id_,) in app.execute("SELECT id FROM items").fetchall()} == SITE_ROWS
    with app.transaction():
        assert app.execute("SELECT rls.site_id()").fetchone() == (SITE,)
        assert app.execute("SELECT count(*) FROM items").fetchone() == (0,)
    app.execute("SELECT rls.clear_context()")


def test_a_worker_connection_opened_after_the_credential_expired_refuses_it(citus, system_setting):
    """The credential lives django_rls.max_token_lifetime (the coordinator's): a transaction that first reaches
    the workers later than that is refused there, and setting the context again carries a fresh one."""
    # Whole seconds: a credential of lifetime N expires within N-1 to N seconds of being made. 3 s leaves the fresh
    # credential below two seconds to reach the workers, which a loaded machine needs (1 s failed under load).
    system_setting(citus.coordinator, "django_rls.max_token_lifetime", "3", "3s")
    with citus.connect(APP_ROLE, PASSWORD) as app:
        with pytest.raises(errors.InvalidAuthorizationSpecification) as excinfo:
            with app.transaction():
                app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
                time.sleep(3.2)
                app.execute("SELECT count(*) FROM items").fetchone()
        assert excinfo.value.diag.message_detail.startswith("It expired ")
        with app.transaction():
            app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
            time.sleep(3.2)
            app.execute("SELECT rls.set_context(%s, NULL)", (str(SITE),))
            assert app.execute("SELECT count(*) FROM items").fetchone() == (len(SITE_ROWS),)


def test_a_protected_reference_table_reads_and_writes_with_the_forwarded_context(admin, app, scratch_table):
    """A reference table has a placement on every node: a write reaches each of them, so each worker must
    hold the context; from a transaction block the site reads and writes its own rows only."""
    scratch_table("ref_items", "id bigint NOT NULL, site_id int NOT NULL, PRIMARY KEY (site_id, id)", owned=True)
    admin.execute("SELECT create_reference_table('ref_items')")
    admin.execute("SELECT rls.protect_by_site('ref_items', to_role => %s)", (APP_ROLE,))
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ref_items TO {APP_ROLE}")
    admin.execute("INSERT INTO ref_items SELECT g, CASE WHEN g <= 6 THEN 3 ELSE 5 END FROM generate_series(1, 20) g")
    ids = {id_ for (id_,) in run_as_site(app, "transaction", "SELECT id FROM ref_items").fetchall()}
    assert ids == SITE_ROWS
    run_as_site(app, "transaction", "INSERT INTO ref_items VALUES (%s, %s)", (NEW_ID, SITE))
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as_site(app, "transaction", "INSERT INTO ref_items VALUES (%s, %s)", (NEW_ID, OTHER_SITE))
    assert (
        run_as_site(app, "transaction", "UPDATE ref_items SET id = id WHERE site_id = %s", (OTHER_SITE,)).rowcount == 0
    )
    assert run_as_site(app, "transaction", "DELETE FROM ref_items WHERE id = %s", (NEW_ID,)).rowcount == 1
    assert run_without_context(app, "autocommit", "SELECT count(*) FROM ref_items").fetchone() == (0,)
    # In autocommit the read is served by the coordinator's own placement, with its own context.
    session = {id_ for (id_,) in run_as_site(app, "session", "SELECT id FROM ref_items").fetchall()}
    app.execute("SELECT rls.clear_context()")
    assert session == SITE_ROWS
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        run_as_site(app, "marker", "INSERT INTO ref_items VALUES (%s, %s)", (NEW_ID, SITE))
    # Every placement holds the same rows: the own-site insert and delete reached each node.
    counts = admin.execute(
        "SELECT DISTINCT result FROM run_command_on_placements('ref_items', 'SELECT count(*) FROM %s')"
    ).fetchall()
    assert counts == [("20",)]
