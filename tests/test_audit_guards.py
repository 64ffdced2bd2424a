"""The audit guards beyond one session: temp tables of other sessions, every write path through
partitioned and inheritance parents (as the app role), dump and restore of audited trees, and
rls_apply leaving partitions to their parent."""

from __future__ import annotations

import io
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import call_command
from psycopg import errors, sql

from tests.conftest import Database
from tests.dumps import dump_and_restore
from tests.roles import APP_ROLE


def log_rows(conn: psycopg.Connection, since: int, tables: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    return [
        (table, operation, key)
        for table, operation, key in conn.execute(
            "SELECT table_name, operation, row_key FROM rls_audit.log WHERE id > %s AND table_name = ANY(%s) ORDER BY id",
            (since, list(tables)),
        ).fetchall()
    ]


def newest_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM rls_audit.log").fetchone()[0]


@pytest.fixture
def trees(owner_conn: psycopg.Connection, admin_conn: psycopg.Connection) -> Iterator[None]:
    """An audited partitioned table (two levels) and an audited inheritance tree, owned by the owner."""
    owner_conn.execute("DROP TABLE IF EXISTS guard_part, guard_inh CASCADE")
    owner_conn.execute(
        "CREATE TABLE guard_part (id int, site_id int, v text, PRIMARY KEY (id, site_id)) PARTITION BY LIST (site_id)"
    )
    owner_conn.execute("CREATE TABLE guard_part_1 PARTITION OF guard_part FOR VALUES IN (1)")
    owner_conn.execute(
        "CREATE TABLE guard_part_2 PARTITION OF guard_part FOR VALUES IN (2, 3) PARTITION BY LIST (site_id)"
    )
    owner_conn.execute("CREATE TABLE guard_part_2a PARTITION OF guard_part_2 FOR VALUES IN (2)")
    owner_conn.execute("CREATE TABLE guard_inh (id int PRIMARY KEY, site_id int, v text)")
    owner_conn.execute("CREATE TABLE guard_inh_child (PRIMARY KEY (id), extra text) INHERITS (guard_inh)")
    owner_conn.execute("SELECT rls_audit.enable('guard_part')")
    owner_conn.execute("SELECT rls_audit.enable('guard_inh')")
    owner_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.SQL(", ").join(
                sql.Identifier(t)
                for t in ("guard_part", "guard_part_1", "guard_part_2", "guard_part_2a", "guard_inh", "guard_inh_child")
            ),
            sql.Identifier(APP_ROLE),
        )
    )
    yield
    owner_conn.execute("DROP TABLE IF EXISTS guard_part, guard_inh CASCADE")


def test_enable_refuses_a_temp_table_of_another_session(database: Database) -> None:
    """Whoever owns a temp table (the owner; the app role while it has TEMP), no session can audit it."""
    for role in ("owner", "app"):
        with database.connect(role) as creator, database.connect(role) as other:
            try:
                creator.execute("CREATE TEMP TABLE guard_temp (id int PRIMARY KEY)")
            except errors.InsufficientPrivilege:
                assert role == "app"  # the app role without TEMP cannot make one at all
                continue
            oid = creator.execute("SELECT 'guard_temp'::regclass::oid").fetchone()[0]
            for conn in (creator, other):
                with pytest.raises(errors.WrongObjectType, match="is a temporary table") as caught:
                    conn.execute("SELECT rls_audit.enable(%s::oid::regclass)", (oid,))
                assert caught.value.diag.message_hint == "Audit permanent tables only."
            audited = creator.execute("SELECT count(*) FROM rls_audit.audited_tables WHERE table_oid = %s::oid", (oid,))
            assert audited.fetchone() == (0,)
            assert creator.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::oid", (oid,)).fetchone() == (0,)


def test_every_write_path_through_a_parent_is_recorded_once(
    trees: None, app_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> None:
    """As the app role: INSERT, ON CONFLICT, COPY, UPDATE, DELETE through each parent, and directly (MERGE: below)."""
    start = newest_id(admin_conn)
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute("INSERT INTO guard_part VALUES (1, 1, 'a'), (2, 2, 'b')")
        app_conn.execute("INSERT INTO guard_part VALUES (1, 1, 'c') ON CONFLICT (id, site_id) DO UPDATE SET v = 'c'")
        with app_conn.cursor().copy("COPY guard_part (id, site_id, v) FROM STDIN") as copy:
            copy.write_row((3, 2, "copied"))
        app_conn.execute("INSERT INTO guard_part VALUES (4, 1, 'new')")
        app_conn.execute("UPDATE guard_part_2 SET v = 'through the middle' WHERE id = 2")
        app_conn.execute("DELETE FROM guard_part_1 WHERE id = 4")
        app_conn.execute("DELETE FROM guard_part WHERE id = 1")
        app_conn.execute("INSERT INTO guard_inh VALUES (10, 1, 'p')")
        app_conn.execute("INSERT INTO guard_inh_child VALUES (11, 1, 'c', 'x')")
        app_conn.execute("UPDATE guard_inh SET v = v || '!'")
        app_conn.execute("DELETE FROM guard_inh")
    tables = ("public.guard_part", "public.guard_part_1", "public.guard_part_2", "public.guard_part_2a")
    assert log_rows(admin_conn, start, tables) == [
        ("public.guard_part", "INSERT", '{"id": 1, "site_id": 1}'),
        ("public.guard_part", "INSERT", '{"id": 2, "site_id": 2}'),
        ("public.guard_part", "UPDATE", '{"id": 1, "site_id": 1}'),
        ("public.guard_part", "INSERT", '{"id": 3, "site_id": 2}'),
        ("public.guard_part", "INSERT", '{"id": 4, "site_id": 1}'),
        ("public.guard_part_2", "UPDATE", '{"id": 2, "site_id": 2}'),
        ("public.guard_part_1", "DELETE", '{"id": 4, "site_id": 1}'),
        ("public.guard_part", "DELETE", '{"id": 1, "site_id": 1}'),
    ]
    assert log_rows(admin_conn, start, ("public.guard_inh", "public.guard_inh_child")) == [
        ("public.guard_inh", "INSERT", "10"),
        ("public.guard_inh_child", "INSERT", "11"),
        ("public.guard_inh", "UPDATE", "10"),
        ("public.guard_inh", "UPDATE", "11"),
        ("public.guard_inh", "DELETE", "10"),
        ("public.guard_inh", "DELETE", "11"),
    ]


def test_merge_through_a_parent_is_recorded_once(
    trees: None, app_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> None:
    """As the app role: one MERGE that updates a row and inserts another through the partitioned parent."""
    if admin_conn.info.server_version < 150000:
        pytest.skip("MERGE exists from PostgreSQL 15 on")
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute("INSERT INTO guard_part VALUES (3, 2, 'before')")
    start = newest_id(admin_conn)
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute(
            "MERGE INTO guard_part t USING (VALUES (3, 2), (4, 1)) s(id, site_id) ON t.id = s.id AND t.site_id = s.site_id"
            " WHEN MATCHED THEN UPDATE SET v = 'merged' WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.site_id, 'new')"
        )
    tables = ("public.guard_part", "public.guard_part_1", "public.guard_part_2", "public.guard_part_2a")
    assert log_rows(admin_conn, start, tables) == [
        ("public.guard_part", "UPDATE", '{"id": 3, "site_id": 2}'),
        ("public.guard_part", "INSERT", '{"id": 4, "site_id": 1}'),
    ]


def test_truncate_through_a_parent_records_each_table_it_empties_once(
    trees: None, owner_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> None:
    start = newest_id(admin_conn)
    owner_conn.execute("TRUNCATE guard_part")
    tables = ("public.guard_part", "public.guard_part_1", "public.guard_part_2", "public.guard_part_2a")
    assert sorted(log_rows(admin_conn, start, tables)) == [(table, "TRUNCATE", None) for table in tables]


def test_a_partition_created_later_is_audited_and_written_through(
    trees: None, owner_conn: psycopg.Connection, app_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> None:
    owner_conn.execute("CREATE TABLE guard_part_3 PARTITION OF guard_part_2 FOR VALUES IN (3)")
    owner_conn.execute(sql.SQL("GRANT INSERT, UPDATE ON guard_part_3 TO {}").format(sql.Identifier(APP_ROLE)))
    start = newest_id(admin_conn)
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute("INSERT INTO guard_part_3 VALUES (5, 3, 'direct')")
        app_conn.execute("UPDATE guard_part SET v = 'parent' WHERE id = 5")
    assert log_rows(admin_conn, start, ("public.guard_part", "public.guard_part_3")) == [
        ("public.guard_part_3", "INSERT", '{"id": 5, "site_id": 3}'),
        ("public.guard_part", "UPDATE", '{"id": 5, "site_id": 3}'),
    ]


def test_audited_trees_survive_dump_and_restore(database: Database) -> None:
    """pg_restore creates the registrations first and the triggers one by one: the guards let it, and leave them ALWAYS."""

    def prepare(conn: psycopg.Connection) -> None:
        conn.execute("CREATE TABLE p (id int, k int, secret text, PRIMARY KEY (id, k)) PARTITION BY LIST (k)")
        conn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)")
        conn.execute("CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2)")
        conn.execute("CREATE TABLE i (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE ic (PRIMARY KEY (id)) INHERITS (i)")
        conn.execute("SELECT rls_audit.enable('p', masked_columns => '{secret}', operations => '{INSERT,UPDATE}')")
        conn.execute("SELECT rls_audit.enable('i')")
        conn.execute("INSERT INTO p VALUES (1, 1, 's')")

    def check(conn: psycopg.Connection) -> None:
        status = conn.execute(
            "SELECT table_name::text, operations, masked_columns, missing_triggers, audited_through::text[]"
            "  FROM rls_audit.status ORDER BY 1"
        ).fetchall()
        assert status == [
            ("i", ["DELETE", "INSERT", "TRUNCATE", "UPDATE"], [], [], []),
            ("ic", ["DELETE", "INSERT", "TRUNCATE", "UPDATE"], [], [], ["i"]),
            ("p", ["INSERT", "UPDATE"], ["secret"], [], []),
            ("p1", ["INSERT", "UPDATE"], ["secret"], [], ["p"]),
            ("p2", ["INSERT", "UPDATE"], ["secret"], [], ["p"]),
        ]
        assert conn.execute(
            "SELECT count(*), bool_and(rls_audit._trigger_problem(oid) IS NULL) FROM pg_trigger"
            " WHERE tgfoid = 'rls_audit.capture()'::regprocedure"
        ).fetchone() == (2 * 4 + 3 * 2, True)
        with conn.transaction():
            conn.execute("UPDATE p SET secret = 't'")
            conn.execute("INSERT INTO p2 VALUES (2, 2, 'u')")
            written = conn.execute(
                "SELECT table_name, operation, row_key FROM rls_audit.log"
                " WHERE xact_id = pg_current_xact_id() ORDER BY logged_at, id"
            ).fetchall()
        assert written == [
            ("public.p", "UPDATE", '{"k": 1, "id": 1}'),
            ("public.p2", "INSERT", '{"k": 2, "id": 2}'),
        ]

    dump_and_restore(database, prepare, check, names=("django_rls_guard_src", "django_rls_guard_dst"))


@pytest.mark.usefixtures("live_db")
def test_rls_apply_leaves_partitions_to_their_parent(trees: None) -> None:
    """Partitions are audited through their parent: --prune proposes stopping the parent only."""
    out = io.StringIO()
    call_command("rls_apply", "--dry-run", "--prune", database="owner", stdout=out)
    plan = out.getvalue()
    assert """rls_audit.disable('"public"."guard_part"'::regclass)""" in plan
    assert """rls_audit.disable('"public"."guard_inh"'::regclass)""" in plan
    for partition in ("guard_part_1", "guard_part_2", "guard_part_2a", "guard_inh_child"):
        assert f'"{partition}"' not in plan


def test_replica_mode_switches_neither_the_triggers_nor_the_guards_off(
    trees: None, admin_conn: psycopg.Connection, owner_conn: psycopg.Connection
) -> None:
    """A role granted SET on session_replication_role still cannot skip or alter the audit triggers."""
    if admin_conn.info.server_version < 150000:
        pytest.skip("GRANT SET ON PARAMETER exists from PostgreSQL 15 on")
    owner = owner_conn.info.user
    admin_conn.execute(sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(sql.Identifier(owner)))
    try:
        owner_conn.execute("SET session_replication_role = replica")
        with pytest.raises(errors.InsufficientPrivilege, match=r"must stay as rls_audit\.enable") as caught:
            owner_conn.execute("ALTER TABLE guard_inh DISABLE TRIGGER rls_audit_insert")
        assert caught.value.diag.message_hint and "rls_audit.disable()" in caught.value.diag.message_hint
        with pytest.raises(errors.InsufficientPrivilege, match="cannot be dropped"):
            owner_conn.execute("DROP TRIGGER rls_audit_insert ON guard_inh")
        with pytest.raises(errors.InsufficientPrivilege, match="not an audit trigger"):
            owner_conn.execute("ALTER TRIGGER rls_audit_insert ON guard_inh RENAME TO quiet")
        start = newest_id(admin_conn)
        owner_conn.execute("INSERT INTO guard_inh VALUES (20, 1, 'replica')")
        assert log_rows(admin_conn, start, ("public.guard_inh",)) == [("public.guard_inh", "INSERT", "20")]
    finally:
        owner_conn.execute("RESET session_replication_role")
        admin_conn.execute(
            sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {}").format(sql.Identifier(owner))
        )


def test_dropping_the_primary_key_makes_audited_writes_fail(
    trees: None, owner_conn: psycopg.Connection, app_conn: psycopg.Connection
) -> None:
    """Without a key the trail cannot name rows: the write fails rather than pass unrecorded."""
    owner_conn.execute("ALTER TABLE guard_inh_child DROP CONSTRAINT guard_inh_child_pkey")
    with pytest.raises(psycopg.Error):
        app_conn.execute("INSERT INTO guard_inh_child VALUES (30, 1, 'keyless', 'x')")
    assert owner_conn.execute("SELECT count(*) FROM guard_inh_child WHERE id = 30").fetchone() == (0,)


def test_a_renamed_or_moved_table_stays_audited_under_its_new_name(
    trees: None, owner_conn: psycopg.Connection, app_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> None:
    app_conn.execute("INSERT INTO guard_inh VALUES (40, 1, 'before')")  # the backend now holds a prepared capture
    owner_conn.execute("ALTER TABLE guard_inh RENAME TO guard_inh_renamed")
    start = newest_id(admin_conn)
    app_conn.execute("INSERT INTO guard_inh_renamed VALUES (41, 1, 'after')")
    assert log_rows(admin_conn, start, ("public.guard_inh_renamed",)) == [("public.guard_inh_renamed", "INSERT", "41")]
    owner_conn.execute("ALTER TABLE guard_inh_renamed RENAME TO guard_inh")
