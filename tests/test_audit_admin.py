"""Who reads an audited table's entries, who may change its auditing, and what its trees may hold.

- Readers (rls_audit._may_read): the table's owner reads every entry; any other role only when
  the table's row level security constrains it as it constrains the roles its policies name
  (every SELECT policy applies to it, one of them permissive), with USAGE on the schema, SELECT
  on the table and a matching context.  Roles the policies leave out -- a reporting role with
  SELECT, a pg_read_all_data member -- read nothing, shared rows included.
- Administration (enable, disable, set_read_rule): the role checked is the one calling, which
  inside another role's SECURITY DEFINER function is that function's owner; the internal
  functions doing the work cannot be called from SQL.
- Trees: a partition or child of an audited table that is not audited is flagged by
  rls_audit.status and rls.problems; the rows a populated table brings into an audited tree
  when attached are not recorded (a documented limit), later writes are.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from tests.conftest import Database
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

READER = "rls_audit_admin_reader"
OTHER = "rls_audit_admin_other"


def _role(admin_conn: psycopg.Connection, name: str, create: bool) -> None:
    if admin_conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    if create:
        admin_conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )


def _connect(database: Database, role: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(database.admin, user=role, password=PASSWORD), autocommit=True)


@pytest.fixture
def readers_table(database: Database, admin_conn, owner_conn) -> Iterator[psycopg.Connection]:
    """rt_reads in schema rt_reads_s: protected by site for the app role, audited with a site rule
    (NULL site: shared), one entry of site 1, one of site 2, one shared; and a reader role."""
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_reads_s CASCADE")
    _role(admin_conn, READER, create=True)
    owner_conn.execute("CREATE SCHEMA rt_reads_s")
    owner_conn.execute("CREATE TABLE rt_reads_s.rt_reads (id int PRIMARY KEY, site_id bigint, body text)")
    owner_conn.execute("SELECT rls.protect_by_site('rt_reads_s.rt_reads', to_role => %s)", (APP_ROLE,))
    for role in (APP_ROLE, READER):
        owner_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA rt_reads_s TO {}").format(sql.Identifier(role)))
        owner_conn.execute(sql.SQL("GRANT SELECT ON rt_reads_s.rt_reads TO {}").format(sql.Identifier(role)))
    owner_conn.execute("SELECT rls_audit.enable('rt_reads_s.rt_reads')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('rt_reads_s.rt_reads', 'site_id', null_is_shared => true)")
    owner_conn.execute("ALTER TABLE rt_reads_s.rt_reads NO FORCE ROW LEVEL SECURITY")  # the owner writes freely
    owner_conn.execute("INSERT INTO rt_reads_s.rt_reads VALUES (1, 1, 'site 1'), (2, 2, 'site 2'), (3, NULL, 'shared')")
    owner_conn.execute("ALTER TABLE rt_reads_s.rt_reads FORCE ROW LEVEL SECURITY")
    with _connect(database, READER) as conn:
        yield conn
    owner_conn.execute("DROP SCHEMA rt_reads_s CASCADE")
    _role(admin_conn, READER, create=False)


def _read(conn: psycopg.Connection, site: str | None) -> list[str]:
    with conn.transaction():
        conn.execute("SELECT rls.set_context(%s, NULL)", (site,))
        return [
            body
            for (body,) in conn.execute(
                "SELECT new_values->>'body' FROM rls_audit.log WHERE table_name = 'rt_reads_s.rt_reads' ORDER BY id"
            ).fetchall()
        ]


def test_the_app_role_reads_its_sites_entries_and_the_shared_ones(readers_table, app_conn):
    assert _read(app_conn, "1") == ["site 1", "shared"]
    assert _read(app_conn, "2") == ["site 2", "shared"]


def test_the_read_policy_runs_in_parallel_workers(readers_table, app_conn):
    """_may_read looks the trail up under the query's snapshot, which parallel workers share."""
    for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
        app_conn.execute(sql.SQL("SET {} = 0").format(sql.Identifier(setting)))
    app_conn.execute("SET max_parallel_workers_per_gather = 2")
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        plan = "\n".join(
            line for (line,) in app_conn.execute("EXPLAIN (COSTS OFF) SELECT count(*) FROM rls_audit.log").fetchall()
        )
        count = app_conn.execute(
            "SELECT count(*) FROM rls_audit.log WHERE table_name = 'rt_reads_s.rt_reads'"
        ).fetchone()
    assert "Parallel Seq Scan" in plan and "_may_read" in plan
    assert count == (2,)


def test_the_owner_reads_every_entry(readers_table, owner_conn):
    assert _read(owner_conn, None) == ["site 1", "site 2", "shared"]


def test_a_role_the_policies_leave_out_reads_nothing_not_even_shared_rows(readers_table):
    for site in ("1", "2", None):
        assert _read(readers_table, site) == []


def test_a_pg_read_all_data_member_the_policies_leave_out_reads_nothing(readers_table, admin_conn, owner_conn):
    owner_conn.execute(sql.SQL("REVOKE SELECT ON rt_reads_s.rt_reads FROM {}").format(sql.Identifier(READER)))
    admin_conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(READER)))
    assert readers_table.execute("SELECT count(*) FROM rt_reads_s.rt_reads").fetchone() == (0,)  # the table: nothing
    assert _read(readers_table, "1") == []


def test_a_role_the_policies_name_through_public_reads_like_the_app_role(readers_table, owner_conn, app_conn):
    owner_conn.execute("SELECT rls.protect_by_site('rt_reads_s.rt_reads', to_role => 'public')")
    assert owner_conn.execute(
        "SELECT bool_and(polroles = '{0}') FROM pg_policy WHERE polrelid = 'rt_reads_s.rt_reads'::regclass"
    ).fetchone() == (True,)
    assert _read(readers_table, "1") == ["site 1", "shared"]
    assert _read(readers_table, "2") == ["site 2", "shared"]
    assert _read(app_conn, "2") == ["site 2", "shared"]


def test_no_usage_on_the_schema_no_entries(readers_table, owner_conn, app_conn):
    owner_conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA rt_reads_s FROM {}").format(sql.Identifier(APP_ROLE)))
    assert _read(app_conn, "1") == []


def test_a_policy_for_another_role_makes_the_entries_the_owners_alone(readers_table, owner_conn, app_conn):
    """The read rule mirrors a policy set every reader is under; a table whose SELECT policies name
    different roles (here a reporting role's own) has no such set: only the owner reads."""
    owner_conn.execute(
        sql.SQL("CREATE POLICY reporting ON rt_reads_s.rt_reads FOR SELECT TO {} USING (true)").format(
            sql.Identifier(READER)
        )
    )
    assert _read(readers_table, "1") == []
    assert _read(app_conn, "1") == []


# ---------------------------------------------------------------------------------------------
# enable / disable / set_read_rule: the role calling, not the session's role
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def other_owner(database: Database, admin_conn, owner_conn) -> Iterator[psycopg.Connection]:
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_admin")
    _role(admin_conn, OTHER, create=True)
    admin_conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(OTHER)))
    owner_conn.execute("CREATE TABLE public.rt_admin (id int PRIMARY KEY, site_id bigint)")
    owner_conn.execute("SELECT rls_audit.enable('public.rt_admin')")
    with _connect(database, OTHER) as conn:
        yield conn
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_admin")
    _role(admin_conn, OTHER, create=False)


def _audited(conn: psycopg.Connection) -> bool:
    return conn.execute(
        "SELECT count(*) FROM rls_audit.audited_tables WHERE table_oid = 'public.rt_admin'::regclass"
    ).fetchone() == (1,)


@pytest.mark.parametrize(
    "call",
    [
        "rls_audit.disable('public.rt_admin')",
        "rls_audit.enable('public.rt_admin', operations => '{TRUNCATE}')",
        "rls_audit.set_read_rule('public.rt_admin', 'site_id')",
    ],
)
def test_another_roles_definer_code_acts_with_its_owners_rights_only(other_owner, owner_conn, admin_conn, call):
    other_owner.execute(
        sql.SQL(
            "CREATE FUNCTION public.rt_admin_helper() RETURNS int LANGUAGE plpgsql SECURITY DEFINER "
            "SET search_path = pg_catalog AS $$BEGIN PERFORM {}; RETURN 1; END$$"
        ).format(sql.SQL(call))
    )
    for caller in (owner_conn, admin_conn):  # the table's owner, and a superuser
        with pytest.raises(errors.InsufficientPrivilege, match=f"role calling is {OTHER}"):
            caller.execute("SELECT public.rt_admin_helper()")
    assert _audited(owner_conn)
    assert owner_conn.execute(
        "SELECT count(*) FROM rls_audit.read_rules WHERE table_oid = 'public.rt_admin'::regclass"
    ).fetchone() == (0,)
    assert owner_conn.execute(
        "SELECT operations FROM rls_audit.audited_tables WHERE table_oid = 'public.rt_admin'::regclass"
    ).fetchone() == (["DELETE", "INSERT", "TRUNCATE", "UPDATE"],)


def test_another_roles_definer_trigger_on_the_owners_writes_cannot_disable_its_audit(other_owner, owner_conn):
    """A SECURITY DEFINER trigger function of another role fires on the owner's write into that
    role's table: it acts with its definer's rights, so disable() refuses it."""
    other_owner.execute("CREATE TABLE public.rt_admin_inbox (id int PRIMARY KEY)")
    other_owner.execute(
        "CREATE FUNCTION public.rt_admin_sneak() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog AS $$BEGIN PERFORM rls_audit.disable('public.rt_admin'); RETURN NULL; END$$"
    )
    other_owner.execute(
        "CREATE TRIGGER sneak AFTER INSERT ON public.rt_admin_inbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION public.rt_admin_sneak()"
    )
    other_owner.execute(sql.SQL("GRANT INSERT ON public.rt_admin_inbox TO {}").format(sql.Identifier(OWNER_ROLE)))
    with pytest.raises(errors.InsufficientPrivilege, match=f"role calling is {OTHER}"):
        owner_conn.execute("INSERT INTO public.rt_admin_inbox VALUES (1)")
    assert _audited(owner_conn)


def test_the_owners_own_definer_code_and_invoker_code_may_manage_its_audit(other_owner, owner_conn):
    owner_conn.execute("DROP FUNCTION IF EXISTS public.rt_admin_mine()")
    owner_conn.execute(
        "CREATE FUNCTION public.rt_admin_mine() RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog AS $$BEGIN RETURN rls_audit.disable('public.rt_admin'); END$$"
    )
    try:
        assert other_owner.execute("SELECT public.rt_admin_mine()").fetchone() == (True,)
        assert not _audited(owner_conn)
    finally:
        owner_conn.execute("DROP FUNCTION public.rt_admin_mine()")
    other_owner.execute(
        "CREATE FUNCTION public.rt_admin_invoker() RETURNS boolean LANGUAGE sql "
        "AS $$SELECT rls_audit.enable('public.rt_admin')$$"
    )
    assert owner_conn.execute("SELECT public.rt_admin_invoker()").fetchone() == (True,)  # runs as the owner
    assert _audited(owner_conn)


@pytest.mark.parametrize(
    "call",
    [
        "rls_audit._enable('public.rt_admin', '{}', '{}', '{INSERT}')",
        "rls_audit._disable('public.rt_admin')",
        "rls_audit._set_read_rule('public.rt_admin', 'site_id', NULL, false)",
        "rls_audit._store_read_rule('public.rt_admin', 'site_id', NULL, false)",
    ],
)
def test_the_internal_functions_cannot_be_called(other_owner, owner_conn, app_conn, call):
    for conn in (owner_conn, app_conn, other_owner):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
            conn.execute(sql.SQL("SELECT {}").format(sql.SQL(call)))
    assert _audited(owner_conn)


# ---------------------------------------------------------------------------------------------
# trees: unaudited descendants are flagged; attached rows are not recorded
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def audited_parent(owner_conn) -> Iterator[None]:
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_tree, public.rt_tree_loaded CASCADE")
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_tree_s CASCADE")
    owner_conn.execute(
        "CREATE TABLE public.rt_tree (id int, site_id bigint, body text, PRIMARY KEY (id, site_id)) "
        "PARTITION BY LIST (site_id)"
    )
    owner_conn.execute("CREATE TABLE public.rt_tree_1 PARTITION OF public.rt_tree FOR VALUES IN (1)")
    owner_conn.execute("SELECT rls_audit.enable('public.rt_tree')")
    yield
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_tree, public.rt_tree_loaded CASCADE")
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_tree_s CASCADE")


def _unaudited(conn: psycopg.Connection) -> tuple[list[str], list[str]]:
    status = conn.execute(
        "SELECT unaudited_children::text[] FROM rls_audit.status WHERE table_name = 'public.rt_tree'::regclass"
    ).fetchone()[0]
    problems = [
        p
        for (p,) in conn.execute(
            "SELECT problem FROM rls.problems WHERE table_name = 'public.rt_tree'::regclass ORDER BY 1"
        ).fetchall()
    ]
    return status, problems


@pytest.mark.usefixtures("audited_parent")
def test_an_unaudited_partition_is_flagged(owner_conn, admin_conn):
    assert _unaudited(owner_conn) == ([], [])
    # Only with the guard off (a superuser) can one arise.
    admin_conn.execute("ALTER EVENT TRIGGER rls_audit_guard DISABLE")
    try:
        owner_conn.execute("CREATE TABLE public.rt_tree_2 PARTITION OF public.rt_tree FOR VALUES IN (2)")
    finally:
        admin_conn.execute("ALTER EVENT TRIGGER rls_audit_guard ENABLE ALWAYS")
    status, problems = _unaudited(owner_conn)
    assert status == ["rt_tree_2"]
    assert problems == [
        "rt_tree_2 is a partition or child of audited table rt_tree but is not audited, "
        "so writes that name it go unrecorded"
    ]
    owner_conn.execute("SELECT rls_audit.enable('public.rt_tree')")  # the hint: audits it
    assert _unaudited(owner_conn) == ([], [])


@pytest.mark.usefixtures("audited_parent")
@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE SCHEMA rt_tree_s CREATE TABLE rt_tree_2 PARTITION OF public.rt_tree FOR VALUES IN (2)",
        "CREATE SCHEMA rt_tree_s CREATE TABLE rt_tree_2 PARTITION OF public.rt_tree FOR VALUES IN (2) "
        "CREATE TABLE rt_tree_other (id int PRIMARY KEY)",
    ],
)
def test_partitions_made_by_any_command_are_audited(owner_conn, admin_conn, ddl):
    owner_conn.execute(ddl)
    assert _unaudited(owner_conn) == ([], [])
    owner_conn.execute("INSERT INTO rt_tree_s.rt_tree_2 VALUES (1, 2, 'x')")
    assert admin_conn.execute(
        "SELECT operation FROM rls_audit.log WHERE table_oid = 'rt_tree_s.rt_tree_2'::regclass"
    ).fetchall() == [("INSERT",)]


@pytest.mark.usefixtures("audited_parent")
def test_commands_that_create_standalone_tables_pass_the_guard(owner_conn):
    owner_conn.execute("CREATE TABLE public.rt_tree_ctas AS SELECT 1 AS id")
    owner_conn.execute("SELECT 1 AS id INTO public.rt_tree_into")
    owner_conn.execute("DROP TABLE public.rt_tree_ctas, public.rt_tree_into")


@pytest.mark.usefixtures("audited_parent")
def test_rows_an_attached_table_brings_are_not_recorded_later_writes_are(owner_conn, admin_conn):
    """Documented limit (docs/audit.md): ATTACH PARTITION / INHERIT is DDL, not a row write."""
    owner_conn.execute("CREATE TABLE public.rt_tree_loaded (id int NOT NULL, site_id bigint NOT NULL, body text)")
    owner_conn.execute("ALTER TABLE public.rt_tree_loaded ADD PRIMARY KEY (id, site_id)")
    owner_conn.execute("INSERT INTO public.rt_tree_loaded VALUES (1, 3, 'brought along')")
    owner_conn.execute("ALTER TABLE public.rt_tree ATTACH PARTITION public.rt_tree_loaded FOR VALUES IN (3)")
    entries = "SELECT operation FROM rls_audit.log WHERE table_oid = ANY (%s::regclass[]) ORDER BY id"
    tables = ["public.rt_tree", "public.rt_tree_loaded"]
    assert admin_conn.execute(entries, (tables,)).fetchall() == []
    owner_conn.execute("UPDATE public.rt_tree SET body = 'changed' WHERE id = 1 AND site_id = 3")
    assert admin_conn.execute(entries, (tables,)).fetchall() == [("UPDATE",)]


def test_history_follows_a_renamed_table(owner_conn):
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_hist_a, public.rt_hist_b")
    owner_conn.execute("CREATE TABLE public.rt_hist_a (id int PRIMARY KEY, body text)")
    owner_conn.execute("SELECT rls_audit.enable('public.rt_hist_a')")
    owner_conn.execute("INSERT INTO public.rt_hist_a VALUES (1, 'before')")
    owner_conn.execute("ALTER TABLE public.rt_hist_a RENAME TO rt_hist_b")
    owner_conn.execute("UPDATE public.rt_hist_b SET body = 'after'")
    try:
        history = owner_conn.execute(
            "SELECT operation, table_name FROM rls_audit.history('public.rt_hist_b', '1')"
        ).fetchall()
        assert history == [("INSERT", "public.rt_hist_a"), ("UPDATE", "public.rt_hist_b")]
    finally:
        owner_conn.execute("DROP TABLE public.rt_hist_b")


def test_a_table_made_under_a_dropped_tables_name_reads_none_of_its_entries(other_owner, owner_conn):
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_reborn")
    owner_conn.execute("CREATE TABLE public.rt_reborn (id int PRIMARY KEY, body text)")
    owner_conn.execute("SELECT rls_audit.enable('public.rt_reborn')")
    owner_conn.execute("INSERT INTO public.rt_reborn VALUES (1, 'the first owner''s')")
    owner_conn.execute("DROP TABLE public.rt_reborn")
    other_owner.execute("CREATE TABLE public.rt_reborn (id int PRIMARY KEY, body text)")
    other_owner.execute("SELECT rls_audit.enable('public.rt_reborn')")
    other_owner.execute("INSERT INTO public.rt_reborn VALUES (2, 'mine')")
    try:
        read = other_owner.execute(
            "SELECT new_values->>'body' FROM rls_audit.log WHERE table_name = 'public.rt_reborn' ORDER BY id"
        ).fetchall()
        assert read == [("mine",)]
    finally:
        other_owner.execute("DROP TABLE public.rt_reborn")
