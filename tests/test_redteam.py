"""Red-team findings against the issue-11 fixes, each as a test that fails until the hole is closed.

Every test is marked xfail(strict=True): the suite stays green while the hole is open, and
turns red (XPASS) the moment a fix closes it, so that the marker is removed with the fix.
Reads and writes run as the app role (no superuser, no BYPASSRLS, owns nothing) or as the
non-superuser table owner; the superuser only sets up and checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import Database
from tests.roles import APP_ROLE, PASSWORD

SECOND_OWNER = "rls_redteam_owner2"


def _drop(owner_conn: psycopg.Connection, *tables: str) -> None:
    """Drop test tables (a dropped table takes its audit registration with it)."""
    for table in tables:
        schema, name = table.split(".")
        if owner_conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone() != (None,):
            owner_conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(schema, name)))


def _drop_role(admin_conn: psycopg.Connection, name: str) -> None:
    if admin_conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _entries(admin_conn: psycopg.Connection, table_name: str) -> list[tuple[str, str | None]]:
    return admin_conn.execute(
        "SELECT operation, row_key FROM rls_audit.log WHERE table_name = %s ORDER BY id", (table_name,)
    ).fetchall()


def _grant_temp(admin_conn: psycopg.Connection, grant: bool) -> None:
    database = sql.Identifier(admin_conn.info.dbname)
    statement = "GRANT TEMPORARY ON DATABASE {} TO {}" if grant else "REVOKE TEMPORARY ON DATABASE {} FROM {}"
    admin_conn.execute(sql.SQL(statement).format(database, sql.Identifier(APP_ROLE)))


# ---------------------------------------------------------------------------------------------
# 1. CREATE SCHEMA ... CREATE TABLE ... INHERITS / PARTITION OF an audited table slips past the
#    guard: the event trigger fires only for the tags it lists, and the command tag is
#    CREATE SCHEMA.  The new child is not audited, rls_audit.status and rls.problems stay silent,
#    and every write that names the child goes unrecorded.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def audited_parent(owner_conn: psycopg.Connection) -> Iterator[None]:
    _drop(owner_conn, "rt_child_schema.rt_note_child", "rt_part_schema.rt_part_2", "public.rt_parts", "public.rt_note")
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_child_schema, rt_part_schema CASCADE")
    owner_conn.execute("CREATE TABLE rt_note (id int PRIMARY KEY, site_id bigint, body text)")
    owner_conn.execute("SELECT rls_audit.enable('rt_note')")
    owner_conn.execute(
        "CREATE TABLE rt_parts (id int, site_id bigint, body text, PRIMARY KEY (id, site_id)) PARTITION BY LIST (site_id)"
    )
    owner_conn.execute("CREATE TABLE rt_part_1 PARTITION OF rt_parts FOR VALUES IN (1)")
    owner_conn.execute("SELECT rls_audit.enable('rt_parts')")
    yield
    _drop(owner_conn, "rt_child_schema.rt_note_child", "rt_part_schema.rt_part_2", "public.rt_parts", "public.rt_note")
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_child_schema, rt_part_schema CASCADE")


@pytest.mark.usefixtures("audited_parent")
def test_inheritance_child_made_inside_create_schema_is_audited(owner_conn, admin_conn):
    owner_conn.execute(
        "CREATE SCHEMA rt_child_schema CREATE TABLE rt_note_child (PRIMARY KEY (id)) INHERITS (public.rt_note)"
    )
    owner_conn.execute("INSERT INTO rt_child_schema.rt_note_child VALUES (1, 1, 'written past the trail')")
    assert _entries(admin_conn, "rt_child_schema.rt_note_child") == [("INSERT", "1")]


@pytest.mark.usefixtures("audited_parent")
def test_partition_made_inside_create_schema_is_audited(owner_conn, admin_conn):
    owner_conn.execute(
        "CREATE SCHEMA rt_part_schema CREATE TABLE rt_part_2 PARTITION OF public.rt_parts FOR VALUES IN (2)"
    )
    owner_conn.execute("INSERT INTO rt_part_schema.rt_part_2 VALUES (1, 2, 'written past the trail')")
    assert _entries(admin_conn, "rt_part_schema.rt_part_2") == [("INSERT", '{"id": 1, "site_id": 2}')]


# ---------------------------------------------------------------------------------------------
# 2. rls_audit._may_read finds the table by the name the entry recorded.  After the audited
#    table is renamed (docs/audit.md: "harmless") or dropped, whoever creates a table under the
#    old name owns every old entry -- owner-only ones (no read rule, TRUNCATE, Membership,
#    Custom) included -- while the real owner no longer reads them.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def second_owner(
    database: Database, admin_conn: psycopg.Connection, owner_conn: psycopg.Connection
) -> Iterator[psycopg.Connection]:
    """Another non-superuser role that may create tables in public (a second app's owner, say)."""
    _drop(owner_conn, "public.rt_secret_renamed", "public.rt_secret")
    role = sql.Identifier(SECOND_OWNER)
    _drop_role(admin_conn, SECOND_OWNER)
    admin_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(role, sql.Literal(PASSWORD))
    )
    admin_conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(role))
    with psycopg.connect(make_conninfo(database.admin, user=SECOND_OWNER, password=PASSWORD), autocommit=True) as conn:
        yield conn
    _drop(owner_conn, "public.rt_secret_renamed", "public.rt_secret")
    _drop_role(admin_conn, SECOND_OWNER)


def test_a_table_created_under_an_audited_tables_old_name_reads_none_of_its_entries(owner_conn, second_owner):
    owner_conn.execute("CREATE TABLE rt_secret (id int PRIMARY KEY, body text)")
    owner_conn.execute("SELECT rls_audit.enable('rt_secret')")  # no read rule: owner only
    owner_conn.execute("INSERT INTO rt_secret VALUES (1, 'the owner''s secret')")
    assert second_owner.execute(
        "SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.rt_secret'"
    ).fetchone() == (0,)
    owner_conn.execute("ALTER TABLE rt_secret RENAME TO rt_secret_renamed")
    second_owner.execute("CREATE TABLE public.rt_secret (id int PRIMARY KEY)")
    leaked = second_owner.execute(
        "SELECT new_values->>'body' FROM rls_audit.log WHERE table_name = 'public.rt_secret'"
    ).fetchall()
    second_owner.execute("DROP TABLE public.rt_secret")
    assert leaked == []


def test_the_owner_still_reads_its_entries_after_renaming_the_table(owner_conn):
    _drop(owner_conn, "public.rt_renamed_hist", "public.rt_hist")
    owner_conn.execute("CREATE TABLE rt_hist (id int PRIMARY KEY, body text)")
    owner_conn.execute("SELECT rls_audit.enable('rt_hist')")
    owner_conn.execute("INSERT INTO rt_hist VALUES (1, 'before the rename')")
    owner_conn.execute("ALTER TABLE rt_hist RENAME TO rt_renamed_hist")
    try:
        # docs/audit.md: the table's owner reads every entry of the table.
        mine = owner_conn.execute(
            "SELECT operation FROM rls_audit.log WHERE table_oid = 'rt_renamed_hist'::regclass"
        ).fetchall()
        assert mine == [("INSERT",)]
    finally:
        _drop(owner_conn, "public.rt_renamed_hist")


# ---------------------------------------------------------------------------------------------
# 3. The UPDATE diff falls back to comparing output texts when the bytes differ.  Output texts
#    depend on session settings the app role may SET: with extra_float_digits = -15 a point,
#    a float8[] or a composite with a float field prints rounded, so a real change compares
#    equal and the UPDATE is not recorded at all; the images of float columns are rounded too.
#    Left on a pooled connection, the setting rounds the entries of every later request.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def float_table(owner_conn: psycopg.Connection) -> Iterator[None]:
    _drop(owner_conn, "public.rt_floats")
    owner_conn.execute(
        "CREATE TABLE rt_floats (id int PRIMARY KEY, site_id bigint, amount float8, pos point, amounts float8[])"
    )
    owner_conn.execute("SELECT rls.protect_by_site('rt_floats', to_role => %s)", (APP_ROLE,))
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON rt_floats TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute("SELECT rls_audit.enable('rt_floats')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('rt_floats', 'site_id')")
    yield
    _drop(owner_conn, "public.rt_floats")


def _write(app_conn: psycopg.Connection, statement: str) -> None:
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute(statement)


@pytest.mark.usefixtures("float_table")
def test_an_update_the_session_settings_round_away_is_still_recorded(app_conn, admin_conn):
    _write(app_conn, "INSERT INTO rt_floats VALUES (1, 1, 100.25, point(1.9, 2.9), '{1.9}')")
    app_conn.execute("SET extra_float_digits = -15")
    _write(app_conn, "UPDATE rt_floats SET pos = point(1.7, 2.7), amounts = '{1.7}' WHERE id = 1")
    app_conn.execute("RESET extra_float_digits")
    assert _entries(admin_conn, "public.rt_floats") == [("INSERT", "1"), ("UPDATE", "1")]


@pytest.mark.usefixtures("float_table")
def test_recorded_values_do_not_depend_on_the_writers_settings(app_conn, admin_conn):
    app_conn.execute("SET extra_float_digits = -15")  # e.g. left on a pooled connection by an earlier request
    _write(app_conn, "INSERT INTO rt_floats VALUES (2, 1, 149.99, point(1.5, 2.5), '{0.25}')")
    app_conn.execute("RESET extra_float_digits")
    image = admin_conn.execute(
        "SELECT new_values->>'amount', new_values->>'pos' FROM rls_audit.log "
        "WHERE table_name = 'public.rt_floats' AND row_key = '2'"
    ).fetchone()
    assert image == ("149.99", "(1.5,2.5)")


# ---------------------------------------------------------------------------------------------
# 4. rls_audit.set_read_rule() (SECURITY DEFINER) accepts temporary tables, unlike enable().
#    The app role with TEMP (a site that skipped rls_roles) writes rows into the dumped
#    configuration table rls_audit.read_rules: while its session lives they dump as
#    pg_temp_N.name (the restore of read_rules fails), afterwards as a bare oid that a restore
#    binds to whatever table gets that oid.  Nothing removes them until the next effective
#    set_read_rule() call.
# ---------------------------------------------------------------------------------------------


def test_set_read_rule_refuses_temporary_tables(app_conn, admin_conn, database):
    _grant_temp(admin_conn, True)
    try:
        with psycopg.connect(database.app, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE rt_tmp (id int PRIMARY KEY, site_id bigint)")
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT rls_audit.set_read_rule('pg_temp.rt_tmp', 'site_id')")
    finally:
        dangling = admin_conn.execute(
            "SELECT count(*) FROM rls_audit.read_rules r WHERE NOT EXISTS "
            "(SELECT FROM pg_class c WHERE c.oid = r.table_oid AND c.relpersistence = 'p')"
        ).fetchone()
        admin_conn.execute(
            "DELETE FROM rls_audit.read_rules r WHERE NOT EXISTS "
            "(SELECT FROM pg_class c WHERE c.oid = r.table_oid AND c.relpersistence = 'p')"
        )
        _grant_temp(admin_conn, False)
    assert dangling == (0,)


def test_dropping_an_audited_table_drops_its_read_rule(owner_conn, admin_conn):
    """_guard_drop forgets a dropped table's registration but not its read rule.

    The row stays (dumped as a bare oid) until some later set_read_rule() call happens to
    change a rule; a restore, or oid reuse after wraparound, hands the rule to whatever table
    then has that oid -- e.g. a Membership table whose entries were meant for the owner only.
    """
    _drop(owner_conn, "public.rt_gone")
    owner_conn.execute("CREATE TABLE rt_gone (id int PRIMARY KEY, site_id bigint)")
    owner_conn.execute("SELECT rls_audit.enable('rt_gone')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('rt_gone', 'site_id')")
    oid = owner_conn.execute("SELECT 'rt_gone'::regclass::oid").fetchone()[0]
    owner_conn.execute("DROP TABLE rt_gone")
    left = admin_conn.execute("SELECT count(*) FROM rls_audit.read_rules WHERE table_oid = %s::oid", (oid,)).fetchone()
    admin_conn.execute("DELETE FROM rls_audit.read_rules WHERE table_oid = %s::oid", (oid,))
    assert left == (0,)


# ---------------------------------------------------------------------------------------------
# 5. _may_read asks only "may the reader SELECT the table, and does its context match the row".
#    A role with SELECT to which none of the table's policies apply (they are TO the app role:
#    a reporting role, a pg_read_all_data member) reads no row of the table, yet reads every
#    entry of it whose keys match a context it sets itself (any, in unsigned mode).
# ---------------------------------------------------------------------------------------------

READER = "rls_redteam_reader"


@pytest.fixture
def reader(
    database: Database, admin_conn: psycopg.Connection, owner_conn: psycopg.Connection
) -> Iterator[psycopg.Connection]:
    role = sql.Identifier(READER)
    _drop_role(admin_conn, READER)
    admin_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(role, sql.Literal(PASSWORD))
    )
    admin_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
    _drop(owner_conn, "public.rt_accounts")
    owner_conn.execute("CREATE TABLE rt_accounts (id int PRIMARY KEY, site_id bigint, body text)")
    owner_conn.execute("SELECT rls.protect_by_site('rt_accounts', to_role => %s)", (APP_ROLE,))
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT ON rt_accounts TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute(sql.SQL("GRANT SELECT ON rt_accounts TO {}").format(role))
    owner_conn.execute("SELECT rls_audit.enable('rt_accounts')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('rt_accounts', 'site_id')")
    with psycopg.connect(make_conninfo(database.admin, user=READER, password=PASSWORD), autocommit=True) as conn:
        yield conn
    _drop(owner_conn, "public.rt_accounts")
    _drop_role(admin_conn, READER)


def test_a_role_no_policy_lets_read_the_table_reads_none_of_its_entries(app_conn, reader):
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute("INSERT INTO rt_accounts VALUES (1, 1, 'site 1 salary')")
    with reader.transaction():
        reader.execute("SELECT rls.set_context('1', NULL)")
        assert reader.execute("SELECT count(*) FROM rt_accounts").fetchone() == (0,)  # the table: nothing
        entries = reader.execute(
            "SELECT new_values->>'body' FROM rls_audit.log WHERE table_name = 'public.rt_accounts'"
        ).fetchall()
    assert entries == []


# ---------------------------------------------------------------------------------------------
# 6. Session state docs/security.md does not list: a setting one request leaves on a kept or
#    pooled connection changes what the next request (another site's) reads, and what the
#    trail records of its writes.  extra_float_digits is USERSET; so are application_name
#    (recorded in every later entry) and synchronous_commit (later commits, audit rows included,
#    can be lost in a crash after being acknowledged).
# ---------------------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (docs/security.md, 'What a request can leave on a connection'): "
    "extra_float_digits left on a connection rounds later requests' reads; the trail is unaffected",
)
@pytest.mark.usefixtures("float_table")
def test_a_setting_left_by_one_request_does_not_change_what_the_next_one_reads(app_conn, admin_conn):
    with app_conn.transaction():  # site 1's request, injected
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute("SET extra_float_digits = -15")  # session-level: outlives the request
    admin_conn.execute("INSERT INTO rt_floats VALUES (3, 2, 149.99, point(0, 0), '{}')")
    with app_conn.transaction():  # site 2's request on the same connection
        app_conn.execute("SELECT rls.set_context('2', '9')")
        amount = app_conn.execute("SELECT amount FROM rt_floats WHERE id = 3").fetchone()
    assert amount == (149.99,)


# ---------------------------------------------------------------------------------------------
# 7. enable(), disable() and set_read_rule() authorise the caller by _invoking_role(), which is
#    GetOuterUserId(): the session's role, not the function that called them.  A SECURITY
#    DEFINER function (or trigger function) of a lesser role, run by a more privileged role
#    (another table owner, a maintenance role, a superuser), acts on django_rls with the
#    caller's rights -- PostgreSQL confines such code to its definer's.
# ---------------------------------------------------------------------------------------------


def test_another_roles_security_definer_code_cannot_disable_the_owners_audit(owner_conn, second_owner):
    _drop(owner_conn, "public.rt_guarded")
    owner_conn.execute("CREATE TABLE rt_guarded (id int PRIMARY KEY)")
    owner_conn.execute("SELECT rls_audit.enable('rt_guarded')")
    second_owner.execute(
        "CREATE FUNCTION public.rt_helper() RETURNS int LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog AS $$BEGIN PERFORM rls_audit.disable('public.rt_guarded'); RETURN 1; END$$"
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        second_owner.execute("SELECT rls_audit.disable('public.rt_guarded')")  # directly: refused
    try:
        owner_conn.execute("SELECT public.rt_helper()")  # the owner runs the other role's helper
    except psycopg.errors.InsufficientPrivilege:
        pass
    audited = owner_conn.execute(
        "SELECT count(*) FROM rls_audit.audited_tables WHERE table_oid = 'rt_guarded'::regclass"
    ).fetchone()
    _drop(owner_conn, "public.rt_guarded")
    assert audited == (1,)
