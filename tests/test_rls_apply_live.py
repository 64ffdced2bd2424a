"""rls_apply on a busy table (issue 16): bounded lock waits, a clear give-up, no lapse in protection.

A long report holds an ordinary read (ACCESS SHARE) on testapp_note while
rls_apply must replace the table's policies, which needs ACCESS EXCLUSIVE.
Meanwhile quick reads run as the application role in both sites. The quick
reads may wait at most the lock timeout (plus slack for a loaded machine, never
a tighter timing); rls_apply either finishes once the report ends or gives up
naming the report's session; and no read, at any moment, sees a row of
another site or misses one of its own.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connections
from psycopg import sql

from django_rls.conf import validate
from django_rls.ddl import Bounds
from django_rls.planner import Unit, apply_plan
from tests.roles import APP_ROLE, OWNER_ROLE

LOCK_TIMEOUT = 0.5
SLACK = 1.5  # two shared cores: scheduling, not lock waits
STRICTER = "site_id = rls.site_id() AND id > 0"  # same rows as the declaration: the change is invisible to readers
ROWS_PER_SITE = 3  # tests/seed.py


def run(*args: str, **options: object) -> str:
    out = io.StringIO()
    call_command("rls_apply", *args, stdout=out, **options)
    return out.getvalue()


def in_sync() -> bool:
    try:
        call_command("rls_apply", "--check", stdout=io.StringIO())
    except SystemExit:
        return False
    return True


@pytest.fixture
def restore(live_db: None) -> Iterator[None]:
    yield
    run("--prune")
    assert in_sync()


@pytest.fixture
def drifted(restore: None, owner_conn: psycopg.Connection) -> None:
    """testapp_note protected by an equivalent but different expression, so rls_apply must replace its policies."""
    owner_conn.execute("SELECT rls.protect('testapp_note', 'site', %s, to_role => %s)", (STRICTER, APP_ROLE))
    assert not in_sync()


@pytest.fixture
def owner_reads_stats(admin_conn: psycopg.Connection) -> Iterator[None]:
    """The deploy recipe: the owner role may read other sessions' queries (docs/operating.md)."""
    admin_conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(OWNER_ROLE)))
    yield
    admin_conn.execute(sql.SQL("REVOKE pg_read_all_stats FROM {}").format(sql.Identifier(OWNER_ROLE)))


class LongReader:
    """A report as the app role: one transaction whose SELECT keeps ACCESS SHARE on testapp_note until released."""

    def __init__(self, database, hold_at_most: float) -> None:
        self.conn = database.connect("app_unbound", application_name="long report")
        self.conn.execute("SELECT rls.set_context('1', NULL, is_local => false)")
        self.pid = self.conn.info.backend_pid
        self.release = threading.Event()
        self.ended_at: float | None = None
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT count(*) FROM testapp_note").fetchone()
        self.thread = threading.Thread(target=self._hold, args=(hold_at_most,), daemon=True)
        self.thread.start()

    def _hold(self, hold_at_most: float) -> None:
        self.release.wait(hold_at_most)
        self.conn.execute("COMMIT")
        self.ended_at = time.monotonic()

    def end(self) -> None:
        self.release.set()
        self.thread.join()
        self.conn.close()


@dataclass
class Prober:
    """Quick reads as the app role in one site, as fast as they come; records the longest and every wrong answer."""

    database: object
    site: int
    longest: float = 0.0
    reads: int = 0
    wrong: list[list[int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        with self.database.connect("app_unbound", application_name=f"prober site {self.site}") as conn:  # type: ignore[attr-defined]
            conn.execute("SELECT rls.set_context(%s, NULL, is_local => false)", (str(self.site),))
            while not self.stop.is_set():
                started = time.monotonic()
                sites = [r[0] for r in conn.execute("SELECT site_id FROM testapp_note").fetchall()]
                self.longest = max(self.longest, time.monotonic() - started)
                self.reads += 1
                if sites != [self.site] * ROWS_PER_SITE:
                    self.wrong.append(sites)
                time.sleep(0.01)


def note_policy() -> str:
    with connections["owner"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = 'rls_site_select' "
            "AND polrelid = 'testapp_note'::regclass"
        )
        return cursor.fetchone()[0]


def test_gives_up_naming_the_session_in_the_way_and_changes_nothing(drifted, owner_reads_stats, database):
    reader = LongReader(database, hold_at_most=8)
    try:
        with Prober(database, 1) as one, Prober(database, 2) as two:
            started = time.monotonic()
            with pytest.raises(CommandError) as caught:
                run(lock_timeout=LOCK_TIMEOUT, lock_budget=2)
            gave_up_after = time.monotonic() - started
            time.sleep(0.2)  # reads after the last attempt
    finally:
        reader.end()
    message = str(caught.value)
    print(
        f"\ngave up after {gave_up_after:.2f} s; longest quick read {max(one.longest, two.longest):.3f} s "
        f"over {one.reads + two.reads} reads"
    )
    assert 'gave up on "public"."testapp_note"' in message
    assert "it needs an ACCESS EXCLUSIVE lock on testapp_note" in message
    assert (
        f"pid {reader.pid} (application_name 'long report', role {APP_ROLE}, idle in transaction) holds "
        "AccessShareLock on testapp_note" in message
    )
    assert "query: SELECT count(*) FROM testapp_note" in message
    assert "Applied 0 of 1 table(s)" in message and "--lock-budget" in message
    assert reader.ended_at is None or reader.ended_at > started + gave_up_after  # it gave up, not the reader
    assert gave_up_after <= 2 + SLACK  # within its budget: no attempt starts that could overrun it
    # Nothing half done: the old policies are all there, unchanged.
    assert note_policy() == "((site_id = rls.site_id()) AND (id > 0))"
    assert not in_sync()
    # Quick reads never waited longer than one lock wait, and never saw a wrong row.
    assert one.reads > 0 and two.reads > 0
    assert max(one.longest, two.longest) <= LOCK_TIMEOUT + SLACK
    assert one.wrong == [] and two.wrong == []


def test_finishes_once_the_long_reader_ends(drifted, database):
    reader = LongReader(database, hold_at_most=2.5)
    try:
        with Prober(database, 1) as one, Prober(database, 2) as two:
            output = run(lock_timeout=LOCK_TIMEOUT, lock_budget=30)
            finished = time.monotonic()
            time.sleep(0.2)
    finally:
        reader.end()
    print(f"\nlongest quick read {max(one.longest, two.longest):.3f} s over {one.reads + two.reads} reads")
    assert "replace testapp_note: policy group 'site'" in output and "Applied 1 change(s)" in output
    assert reader.ended_at is not None and finished > reader.ended_at
    assert note_policy() == "(site_id = rls.site_id())"
    assert in_sync()
    assert max(one.longest, two.longest) <= LOCK_TIMEOUT + SLACK
    assert one.wrong == [] and two.wrong == []


def test_after_migrate_the_same_bounds_apply(drifted, owner_reads_stats, database, settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APPLY_AFTER_MIGRATE": True, "LOCK_TIMEOUT": 0.3, "LOCK_BUDGET": 1}
    reader = LongReader(database, hold_at_most=8)
    try:
        with pytest.raises(CommandError) as caught:
            call_command("migrate", database="owner", stdout=io.StringIO(), verbosity=0)
    finally:
        reader.end()
    assert f"pid {reader.pid} (application_name 'long report'" in str(caught.value)
    assert not in_sync()


def test_waits_for_another_run_within_the_budget(restore, database):
    with database.connect("owner", application_name="another deploy") as other:
        other.execute("SELECT pg_advisory_lock(hashtext('django_rls.rls_apply'))")
        with pytest.raises(CommandError) as caught:
            run(lock_timeout=LOCK_TIMEOUT, lock_budget=1)
        assert f"pid {other.info.backend_pid} (application_name 'another deploy'" in str(caught.value)
        assert "waiting for another rls_apply to finish" in str(caught.value)
    assert "Nothing to do" in run(lock_timeout=LOCK_TIMEOUT, lock_budget=5)


def test_no_table_is_granted_or_reachable_before_it_is_protected(restore, database, admin_conn, owner_conn):
    """After every transaction rls_apply commits, the app role reads nothing of another site.

    testapp_note and other.thing lose their policies and the app role its grants
    and schema USAGE: the state of a table that migrate just created. Were a
    grant committed before the policies (or USAGE on the schema before the
    tables in it are protected), the probe in between would read site 2.
    """
    admin_conn.execute("INSERT INTO other.thing (site_id, body) VALUES (1, 'one'), (2, 'two')")
    for table in ("testapp_note", "other.thing"):
        owner_conn.execute("SELECT rls.unprotect(%s::regclass)", (table,))
        owner_conn.execute(
            sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(*table.split(".")), sql.Identifier(APP_ROLE))
        )
    owner_conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA other FROM {}").format(sql.Identifier(APP_ROLE)))
    seen: list[tuple[str, str, object]] = []

    def probe(unit: Unit) -> None:
        with database.connect("app_unbound") as conn:
            conn.execute("SELECT rls.set_context('1', NULL, is_local => false)")
            for table in ("testapp_note", "other.thing"):
                try:
                    sites = {r[0] for r in conn.execute(f"SELECT site_id FROM {table}").fetchall()}
                except psycopg.errors.InsufficientPrivilege:
                    sites = "denied"
                seen.append((unit.name, table, sites))

    try:
        with connections["owner"].cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name')")
            before = cursor.fetchone()[0]
            apply_plan(connections["owner"], bounds=Bounds(lock_timeout=LOCK_TIMEOUT, budget=10), progress=probe)
            cursor.execute("SELECT current_setting('application_name')")
            assert cursor.fetchone()[0] == before  # the session is named as it was
        with database.connect("owner") as other:  # and the run's session lock is released
            locked = other.execute("SELECT pg_try_advisory_xact_lock(hashtext('django_rls.rls_apply'))").fetchone()
            assert locked == (True,)
        names = [name for name, _, _ in seen]
        assert '"public"."testapp_note"' in names and '"other"."thing"' in names and "schemas and sequences" in names
        assert all(sites in ("denied", {1}) for _, _, sites in seen), seen
        assert seen[-1][2] == {1} and seen[-2][2] == {1}  # at the end both are readable, in site 1 only
    finally:
        admin_conn.execute("DELETE FROM other.thing WHERE body IN ('one', 'two')")


@pytest.fixture
def partition_job(admin_conn: psycopg.Connection) -> Iterator[str]:
    """The owner alias may run the partition functions; the furthest partition is gone, so there is one to create."""
    functions = "rls_audit.ensure_partitions(integer), rls_audit.drop_partitions_before(timestamptz)"
    admin_conn.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {functions} TO {{}}").format(sql.Identifier(OWNER_ROLE)))
    admin_conn.execute("SELECT rls_audit.ensure_partitions(3)")
    (last,) = admin_conn.execute(
        "SELECT max(part::text) FROM rls_audit._log_partitions() WHERE upper_bound IS NOT NULL"
    ).fetchone()
    admin_conn.execute(f"DROP TABLE {last}")
    yield last
    admin_conn.execute(sql.SQL(f"REVOKE EXECUTE ON FUNCTION {functions} FROM {{}}").format(sql.Identifier(OWNER_ROLE)))
    admin_conn.execute("SELECT rls_audit.ensure_partitions(3)")


def partition_exists(admin_conn: psycopg.Connection, name: str) -> bool:
    return admin_conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def test_partition_upkeep_waits_bounded_for_an_open_audited_write(live_db, partition_job, admin_conn, database):
    """An audited write keeps the log locked until it commits; the partition job gives up on it, then succeeds."""
    with database.connect("app_unbound", application_name="slow import") as writer:
        writer.execute("SELECT rls.set_context('1', NULL, is_local => false)")
        writer.execute("BEGIN")
        writer.execute("""INSERT INTO "MyTable" ("SiteId", body) VALUES (1, 'slow import')""")
        with pytest.raises(CommandError) as caught:
            call_command(
                "rls_audit_partitions", database="owner", lock_timeout=0.3, lock_budget=1, stdout=io.StringIO()
            )
        message = str(caught.value)
        assert "it needs an ACCESS EXCLUSIVE lock on rls_audit.statements and its partitions" in message
        assert f"pid {writer.info.backend_pid} (application_name 'slow import'" in message
        assert "RowExclusiveLock on rls_audit.statements" in message
        assert not partition_exists(admin_conn, partition_job)  # rolled back whole
        writer.execute("ROLLBACK")
    out = io.StringIO()
    call_command("rls_audit_partitions", database="owner", lock_timeout=0.3, lock_budget=5, stdout=out)
    assert "Created 1 partition(s) of rls_audit.statements." in out.getvalue()
    assert partition_exists(admin_conn, partition_job)


LT_ROLES = ["rls_lt_app", "rls_lt_owner", "rls_lt_maint"]


@pytest.fixture
def roles_admin(extra_alias) -> Iterator[str]:
    server = urlparse(os.environ["DATABASE_URL"])
    alias = extra_alias("lt_admin", user=server.username or "postgres", password=server.password or "")
    yield alias
    with connections[alias].cursor() as cursor:
        for role in LT_ROLES:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone():
                cursor.execute(f"DROP OWNED BY {role}")
                cursor.execute(f"DROP ROLE {role}")


def test_rls_roles_waits_bounded_for_a_concurrent_role_change(roles_admin, database):
    args = ["--database", roles_admin, "--app-role", LT_ROLES[0], "--owner-role", LT_ROLES[1]]
    args += ["--maintenance-role", LT_ROLES[2], "--lock-timeout", "0.3"]
    call_command("rls_roles", *args, stdout=io.StringIO())
    with database.connect("admin") as admin:
        admin.execute(f"ALTER ROLE {LT_ROLES[0]} CREATEDB")  # drift rls_roles will repair
    with database.connect("admin", application_name="role tweak") as other:
        other.execute("BEGIN")
        other.execute(f"ALTER ROLE {LT_ROLES[0]} CONNECTION LIMIT 5")  # keeps the role's row until it ends
        with pytest.raises(CommandError) as caught:
            call_command("rls_roles", *args, "--lock-budget", "1", stdout=io.StringIO())
        message = str(caught.value)
        assert "rls_roles gave up on the role changes after" in message and "nothing was changed" in message
        assert f"pid {other.info.backend_pid} (application_name 'role tweak'" in message
        assert f"query: ALTER ROLE {LT_ROLES[0]} CONNECTION LIMIT 5" in message
        other.execute("ROLLBACK")
    out = io.StringIO()
    call_command("rls_roles", *args, stdout=out)
    with connections[roles_admin].cursor() as cursor:
        cursor.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", [LT_ROLES[0]])
        assert cursor.fetchone()[0] is False


@pytest.mark.parametrize("value", [0, -1, "2s", True, None, 86401])
@pytest.mark.parametrize("name", ["LOCK_TIMEOUT", "LOCK_BUDGET"])
def test_lock_settings_are_positive_seconds(name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        validate({name: value})


def test_lock_settings_take_fractions():
    assert validate({"LOCK_TIMEOUT": 0.5, "LOCK_BUDGET": 30})["LOCK_TIMEOUT"] == 0.5
    assert Bounds(lock_timeout=0.5, budget=1).timeout_setting() == "500ms"


def drift(owner_conn: psycopg.Connection, table: str) -> None:
    """Rewrite one of django_rls's select policies of ``table`` into an equivalent one, so rls_apply must replace it."""
    name, expr = owner_conn.execute(
        "SELECT polname, pg_get_expr(polqual, polrelid) FROM pg_policy "
        "WHERE polrelid = %s::regclass AND polname ~ '^rls_.+_select$' ORDER BY polname LIMIT 1",
        (table,),
    ).fetchone()
    owner_conn.execute(
        sql.SQL("ALTER POLICY {} ON {} USING ({} AND true)").format(
            sql.Identifier(name), sql.Identifier(table), sql.SQL(expr)
        )
    )


def test_tables_whose_policies_read_each_other_change_in_one_transaction(restore, owner_conn, database):
    """OrderLine is protected through Order: the two never meet each other's old and new policies."""
    for table in ("testapp_note", "testapp_order", "testapp_orderline"):
        drift(owner_conn, table)
    printed = run("--sql", lock_timeout=LOCK_TIMEOUT)
    pair = '"public"."testapp_order" + "public"."testapp_orderline"'
    assert (
        f"-- {pair}\nBEGIN;\nSET LOCAL lock_timeout = '500ms';\n"
        'LOCK TABLE ONLY "public"."testapp_order", "public"."testapp_orderline" IN ACCESS EXCLUSIVE MODE;\n'
    ) in printed
    assert '-- "public"."testapp_note"\n' in printed

    # A report on the child holds up the pair; the message names the report, and neither table changed.
    reader = database.connect("app_unbound", application_name="order report")
    try:
        reader.execute("SELECT rls.set_context('1', NULL, is_local => false)")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM testapp_orderline").fetchone()
        with pytest.raises(CommandError) as caught:
            run(lock_timeout=0.3, lock_budget=1)
    finally:
        reader.close()
    message = str(caught.value)
    assert f"gave up on {pair} after" in message
    # Reading the child reads the parent too (its policy's EXISTS): the report holds both.
    assert "it needs an ACCESS EXCLUSIVE lock on testapp_order;" in message
    assert "holds AccessShareLock on testapp_order," in message
    assert "application_name 'order report'" in message
    # A lock on the second table of the LOCK statement alone: that is the table the message names.
    with database.connect("owner", application_name="line maintenance") as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE testapp_orderline IN ACCESS SHARE MODE")
        with pytest.raises(CommandError) as caught:
            run(lock_timeout=0.3, lock_budget=1)
        other.execute("ROLLBACK")
    assert "it needs an ACCESS EXCLUSIVE lock on testapp_orderline;" in str(caught.value)
    assert "application_name 'line maintenance'" in str(caught.value)
    out = io.StringIO()
    try:
        call_command("rls_apply", "--check", stdout=out)
    except SystemExit:
        pass
    assert "replace testapp_order:" in out.getvalue() and "replace testapp_orderline:" in out.getvalue()


class Sent:
    """The statements rls_apply sends on the owner alias."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        self.statements.append(sql)
        return execute(sql, params, many, context)


def check_output() -> str:
    out = io.StringIO()
    try:
        call_command("rls_apply", "--check", stdout=out)
    except SystemExit:
        pass
    return out.getvalue()


def test_free_tables_change_together_in_one_transaction(restore, owner_conn):
    """With no table busy, every table's changes go in one statement, locks taken NOWAIT, and commit together."""
    for table in ("testapp_note", "testapp_order", "testapp_orderline"):
        drift(owner_conn, table)
    sent = Sent()
    with connections["owner"].execute_wrapper(sent):
        output = run(lock_timeout=LOCK_TIMEOUT)
    protecting = [s for s in sent.statements if "rls.protect(" in s]
    assert len(protecting) == 1, protecting
    batch = protecting[0]
    assert batch.startswith("SET LOCAL lock_timeout = '500ms';\nLOCK TABLE ONLY ")
    assert "IN ACCESS EXCLUSIVE MODE NOWAIT;\n" in batch
    for table in ("testapp_note", "testapp_order", "testapp_orderline"):
        assert f"""'"public"."{table}"'::regclass""" in batch
        assert f"replace {table}: policy group" in output
    assert in_sync()


def test_a_busy_table_delays_only_itself(restore, owner_conn, database):
    """A table of the batch is busy: nothing of the batch is kept, the free table before it is applied on its own."""
    for table in ("testapp_note", "testapp_order", "testapp_orderline"):
        drift(owner_conn, table)
    sent = Sent()
    with database.connect("owner", application_name="line maintenance") as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE testapp_orderline IN ACCESS SHARE MODE")
        started = time.monotonic()
        with connections["owner"].execute_wrapper(sent), pytest.raises(CommandError) as caught:
            run(lock_timeout=0.3, lock_budget=1)
        gave_up_after = time.monotonic() - started
        other.execute("ROLLBACK")
    message = str(caught.value)
    assert "it needs an ACCESS EXCLUSIVE lock on testapp_orderline;" in message
    assert "Applied 1 of " in message
    assert sum("NOWAIT" in s for s in sent.statements) == 1  # the batch was tried once, and gave way at once
    assert gave_up_after <= 1 + SLACK
    pending = check_output()
    assert "replace testapp_note:" not in pending  # applied alone, not held up by the busy table
    assert "replace testapp_order:" in pending and "replace testapp_orderline:" in pending
