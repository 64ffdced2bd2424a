"""The audit trail of the SQL-only mode (sql/sqlonly/21-23_audit_*.sql): capture, reads, guards.

Runs in the SQL-only pass only (the C capture has its own suites). Writes and reads run as
the app role (no superuser, no BYPASSRLS, owns nothing); the table owner is the installing
role, or a second owner that is no member of django_rls_audit for the malicious-owner cases;
the superuser only sets up and checks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.modes import SQL_MODE
from tests.roles import APP_ROLE

pytestmark = pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode's audit trail (DJANGO_RLS_TEST_MODE=sql)")

APP = sql.Identifier(APP_ROLE)
EVIL = "rls_test_evil_owner"


def entries(conn: psycopg.Connection, table: str, since: int = 0) -> list[tuple]:
    return conn.execute(
        "SELECT operation, row_key, old_values, new_values, changed_columns FROM rls_audit.log "
        "WHERE table_name = %s AND id > %s ORDER BY id",
        (f"public.{table}", since),
    ).fetchall()


def last_id(admin_conn: psycopg.Connection) -> int:
    return admin_conn.execute("SELECT coalesce(max(id), 0) FROM rls_audit.log").fetchone()[0]


@pytest.fixture
def accounts(owner_conn: psycopg.Connection) -> Iterator[str]:
    """A site-protected audited table of the owner, with one excluded and one masked column."""
    owner_conn.execute("DROP TABLE IF EXISTS sq_accounts")
    owner_conn.execute(
        "CREATE TABLE sq_accounts (id int PRIMARY KEY, site_id bigint NOT NULL, name text, score float8, "
        "at timestamptz, doc json, blob bytea, cache text, password text)"
    )
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON sq_accounts TO {}").format(APP))
    owner_conn.execute("SELECT rls.protect_by_site('sq_accounts', to_role => %s)", (APP_ROLE,))
    assert owner_conn.execute(
        "SELECT rls_audit.enable('sq_accounts', excluded_columns => '{cache}', masked_columns => '{password}')"
    ).fetchone() == (True,)
    owner_conn.execute("SELECT rls_audit.set_read_rule('sq_accounts', site_column => 'site_id')")
    owner_conn.commit()
    yield "sq_accounts"
    owner_conn.rollback()
    owner_conn.execute("SELECT rls_audit.disable('sq_accounts')")
    owner_conn.execute("DROP TABLE sq_accounts")
    owner_conn.commit()


def as_site(conn: psycopg.Connection, site: int, user: int = 7) -> None:
    conn.execute("SELECT rls.set_context(%s, %s, NULL, false)", (str(site), str(user)))


@pytest.mark.usefixtures("accounts")
def test_every_write_path_is_recorded_as_the_c_capture_records_it(app_conn, owner_conn, admin_conn):
    since = last_id(admin_conn)
    admin_conn.commit()
    as_site(app_conn, 1)
    app_conn.execute(
        "INSERT INTO sq_accounts VALUES (1, 1, 'a', 0.1, '2024-01-02 03:04:05+02', '{\"k\": [1, \"\\u0000\"]}', "
        "'\\x0102', 'c', 'secret')"
    )
    app_conn.execute(
        "INSERT INTO sq_accounts (id, site_id, name) VALUES (1, 1, 'b'), (2, 1, 'n') "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    app_conn.execute("INSERT INTO sq_accounts (id, site_id, name, score) VALUES (3, 1, 'copied', 'NaN')")
    if app_conn.info.server_version >= 150000:
        app_conn.execute(
            "MERGE INTO sq_accounts t USING (VALUES (3, 'merged'), (4, 'new')) v(id, name) ON t.id = v.id "
            "WHEN MATCHED THEN UPDATE SET name = v.name WHEN NOT MATCHED THEN INSERT (id, site_id, name) "
            "VALUES (v.id, 1, v.name)"
        )
    app_conn.execute("UPDATE sq_accounts SET password = 'new', cache = 'x' WHERE id = 1")  # masked + excluded
    app_conn.execute("UPDATE sq_accounts SET cache = 'y' WHERE id = 1")  # only excluded: nothing recorded
    app_conn.execute("UPDATE sq_accounts SET id = 20 WHERE id = 2")  # key change: two entries
    app_conn.execute("DELETE FROM sq_accounts WHERE id = 20")
    app_conn.execute("TRUNCATE sq_accounts")
    got = entries(owner_conn, "sq_accounts", since)  # a TRUNCATE entry is the owner's only
    first = got[0]
    assert first[:2] == ("INSERT", "1")
    assert first[3] == {
        "id": 1,
        "site_id": 1,
        "name": "a",
        "score": 0.1,
        "at": "2024-01-02T01:04:05+00:00",  # UTC, whatever the session's zone
        "doc": '{"k": [1, "\\u0000"]}',  # json holding \u0000 is kept as its text
        "blob": "\\x0102",
    }  # no cache (excluded), no password (masked)
    ops = [(op, key) for op, key, *_ in got]
    merge = [("UPDATE", "3"), ("INSERT", "4")] if app_conn.info.server_version >= 150000 else []
    assert ops == [
        ("INSERT", "1"),
        ("UPDATE", "1"),  # ON CONFLICT: its UPDATE's statement triggers fire before its INSERT's
        ("INSERT", "2"),
        ("INSERT", "3"),
        *merge,
        ("UPDATE", "1"),
        ("UPDATE", "2"),
        ("UPDATE", "20"),
        ("DELETE", "20"),
        ("TRUNCATE", None),
    ]
    assert got[1][2:] == ({"name": "a"}, {"name": "b"}, ["name"])  # ON CONFLICT's update
    assert got[3][3]["score"] == "NaN"
    masked = got[4 + len(merge)]
    assert masked[2:] == ({}, {}, ["password"])  # changed, listed, never stored
    old, new = got[5 + len(merge)], got[6 + len(merge)]
    assert old[2]["id"] == 2 and old[3] is None and old[4] == ["id"]
    assert new[2] is None and new[3]["id"] == 20 and new[4] == ["id"]
    row = admin_conn.execute(
        "SELECT site_id, user_id, db_role, read_rule, read_keys FROM rls_audit.log WHERE id > %s ORDER BY id LIMIT 1",
        (since,),
    ).fetchone()
    assert row == (1, 7, APP_ROLE, "site", ["1"])


def test_copy_is_recorded(app_conn, owner_conn, admin_conn):
    """COPY FROM refuses tables under row level security, so on an audited table without it."""
    owner_conn.execute("CREATE TABLE sq_copied (id int PRIMARY KEY, name text)")
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT ON sq_copied TO {}").format(APP))
    owner_conn.execute("SELECT rls_audit.enable('sq_copied')")
    owner_conn.commit()
    try:
        since = last_id(admin_conn)
        admin_conn.commit()
        as_site(app_conn, 3)
        with app_conn.cursor().copy("COPY sq_copied FROM STDIN") as copy:
            copy.write_row((1, "one"))
            copy.write_row((2, None))
        assert entries(owner_conn, "sq_copied", since) == [
            ("INSERT", "1", None, {"id": 1, "name": "one"}, None),
            ("INSERT", "2", None, {"id": 2, "name": None}, None),
        ]
        assert entries(app_conn, "sq_copied", since) == []  # no read rule: the owner's only
    finally:
        owner_conn.rollback()
        owner_conn.execute("DROP TABLE sq_copied")
        owner_conn.commit()


@pytest.mark.usefixtures("accounts")
def test_a_large_statement_is_stored_in_chunks_of_1000(app_conn, admin_conn):
    since = last_id(admin_conn)
    admin_conn.commit()
    as_site(app_conn, 1)
    app_conn.execute("INSERT INTO sq_accounts (id, site_id) SELECT g, 1 FROM generate_series(1, 2500) g")
    assert app_conn.execute(
        "SELECT count(*), count(DISTINCT statement_id) FROM rls_audit.log WHERE table_name = 'public.sq_accounts' "
        "AND id > %s",
        (since,),
    ).fetchone() == (2500, 3)
    assert app_conn.execute("SELECT count(*) FROM rls_audit.history('sq_accounts', '2042')").fetchone() == (1,)
    assert len(app_conn.execute("SELECT rls_audit.statements_of('sq_accounts', '2042')").fetchone()[0]) == 1


@pytest.mark.usefixtures("accounts")
def test_reads_follow_the_read_rule(app_conn, owner_conn, admin_conn):
    since = last_id(admin_conn)
    admin_conn.commit()
    as_site(app_conn, 1)
    app_conn.execute("INSERT INTO sq_accounts (id, site_id) VALUES (1, 1)")
    as_site(app_conn, 2)
    app_conn.execute("INSERT INTO sq_accounts (id, site_id) VALUES (2, 2)")
    assert [k for _, k, *_ in entries(app_conn, "sq_accounts", since)] == ["2"]
    assert app_conn.execute("SELECT count(*) FROM rls_audit.history('sq_accounts', '1')").fetchone() == (0,)
    assert app_conn.execute("SELECT rls_audit.statements_of('sq_accounts', '1')").fetchone() == ([],)
    as_site(app_conn, 1)
    assert [k for _, k, *_ in entries(app_conn, "sq_accounts", since)] == ["1"]
    app_conn.execute("SELECT rls.clear_context()")
    assert entries(app_conn, "sq_accounts", since) == []
    # The owner reads every entry of its table; the statement rows themselves are granted to nobody.
    assert len(entries(owner_conn, "sq_accounts", since)) == 2
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("SELECT * FROM rls_audit.statements")


def test_owner_rule_shows_user_8_none_of_user_7s_entries(app_conn, owner_conn, admin_conn):
    owner_conn.execute("CREATE TABLE sq_notes (id int PRIMARY KEY, user_id bigint, body text)")
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT ON sq_notes TO {}").format(APP))
    owner_conn.execute("SELECT rls.protect_by_owner('sq_notes', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("SELECT rls_audit.enable('sq_notes')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('sq_notes', owner_column => 'user_id')")
    owner_conn.commit()
    try:
        since = last_id(admin_conn)
        admin_conn.commit()
        as_site(app_conn, 1, 7)
        app_conn.execute("INSERT INTO sq_notes VALUES (1, 7, 'mine')")
        assert len(entries(app_conn, "sq_notes", since)) == 1
        as_site(app_conn, 1, 8)
        assert entries(app_conn, "sq_notes", since) == []
    finally:
        owner_conn.execute("DROP TABLE sq_notes")
        owner_conn.commit()


@pytest.mark.usefixtures("accounts")
def test_the_app_role_can_neither_write_nor_change_the_log(app_conn):
    as_site(app_conn, 1)
    attempts = [
        "INSERT INTO rls_audit.statements (table_oid, table_name, operation, db_role, row_keys) "
        "VALUES (1, 'x', 'INSERT', 'x', '{1}')",
        "UPDATE rls_audit.statements SET operation = 'x'",
        "DELETE FROM rls_audit.statements",
        "TRUNCATE rls_audit.statements",
        "ALTER TABLE rls_audit.statements DISABLE ROW LEVEL SECURITY",
        "CREATE RULE r AS ON INSERT TO rls_audit.statements DO INSTEAD NOTHING",
        "INSERT INTO rls_audit.trails VALUES ('sq_accounts', gen_random_uuid())",
        "UPDATE rls_audit.trails SET trail_id = gen_random_uuid()",
        "UPDATE rls_audit.captures SET signature = ''",
        "SELECT rls_audit.enable('sq_accounts')",
        "SELECT rls_audit.disable('sq_accounts')",
        "SELECT rls_audit.set_read_rule('sq_accounts')",
        # The registrations are django_rls_audit's to write (a role with UPDATE or DELETE could LOCK them).
        "UPDATE rls_audit.audited_tables SET operations = '{INSERT}'",
        "DELETE FROM rls_audit.read_rules",
        "INSERT INTO rls_audit.audited_tables (table_oid) VALUES ('sq_accounts')",
        "LOCK TABLE rls_audit.audited_tables IN SHARE MODE",
        "LOCK TABLE rls_audit.read_rules IN SHARE MODE",
        # A request for a table it does not own is refused by the requests' policy.
        "INSERT INTO rls_audit._requests (table_oid, action) VALUES ('sq_accounts', 'disable')",
        "LOCK TABLE rls_audit._requests IN SHARE MODE",
        "SELECT * FROM rls_audit._requests",
        "SELECT rls_audit.ensure_partitions(1)",
        "SELECT rls_audit.drop_partitions_before(now() - interval '1 year')",
    ]
    for statement in attempts:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with app_conn.transaction():
                app_conn.execute(statement)
    # Anyone may carry out pending requests: only a table's owner can have made them.
    with app_conn.transaction():
        assert app_conn.execute("SELECT rls_audit._apply_requests('sq_accounts')").fetchone() == (False,)
    # Its capture function refuses to run but as the table's own audit trigger.
    with pytest.raises(psycopg.errors.FeatureNotSupported):  # "trigger functions can only be called as triggers"
        with app_conn.transaction():
            oid = app_conn.execute("SELECT 'sq_accounts'::regclass::oid").fetchone()[0]
            app_conn.execute(f"SELECT rls_audit.capture_{oid}()")
    # Anyone may regenerate a capture from the registration: it changes nothing the owner did not ask for.
    with app_conn.transaction():
        app_conn.execute("SELECT rls_audit._build_capture('sq_accounts')")
        app_conn.execute("INSERT INTO sq_accounts (id, site_id) VALUES (99, 1)")
        assert entries(app_conn, "sq_accounts")[-1][:2] == ("INSERT", "99")


@pytest.mark.usefixtures("accounts")
def test_a_changed_table_is_refused_until_enabled_again(app_conn, owner_conn):
    owner_conn.execute("ALTER TABLE sq_accounts ADD COLUMN extra int")
    owner_conn.commit()
    assert owner_conn.execute(
        "SELECT missing_triggers FROM rls_audit.status WHERE table_name = 'sq_accounts'::regclass"
    ).fetchone() == (["DELETE", "INSERT", "TRUNCATE", "UPDATE"],)
    problems = owner_conn.execute("SELECT problem FROM rls.problems WHERE table_name = 'sq_accounts'::regclass")
    assert any("changed since rls_audit.enable()" in p for (p,) in problems.fetchall())
    as_site(app_conn, 1)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=r"changed since rls_audit\.enable"):
        with app_conn.transaction():
            app_conn.execute("INSERT INTO sq_accounts (id, site_id, extra) VALUES (5, 1, 1)")
    assert app_conn.execute("SELECT count(*) FROM sq_accounts WHERE id = 5").fetchone() == (0,)
    owner_conn.execute("SELECT rls_audit.enable('sq_accounts', '{cache}', '{password}')")
    owner_conn.commit()
    app_conn.execute("INSERT INTO sq_accounts (id, site_id, extra) VALUES (5, 1, 1)")
    assert entries(app_conn, "sq_accounts")[-1][3]["extra"] == 1
    # A dropped audit trigger is reported, and enable() puts it back.
    owner_conn.execute("DROP TRIGGER rls_audit_delete ON sq_accounts")
    owner_conn.commit()
    assert owner_conn.execute(
        "SELECT missing_triggers FROM rls_audit.status WHERE table_name = 'sq_accounts'::regclass"
    ).fetchone() == (["DELETE"],)
    assert owner_conn.execute("SELECT rls_audit.enable('sq_accounts', '{cache}', '{password}')").fetchone() == (True,)
    owner_conn.commit()


SECOND = "rls_test_second_owner"


@pytest.fixture
def second_owner(admin_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The superuser's connection as a second table owner, no member of django_rls_audit, owning sq_second."""
    role = sql.Identifier(SECOND)
    admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    admin_conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))
    admin_conn.execute(sql.SQL("SET ROLE {}").format(role))
    admin_conn.execute("CREATE TABLE public.sq_second (id int PRIMARY KEY, site_id bigint, owner_id bigint)")
    admin_conn.commit()
    yield admin_conn
    admin_conn.rollback()
    admin_conn.execute("RESET ROLE")
    admin_conn.execute("SELECT rls_audit.disable('public.sq_second')")
    admin_conn.execute("DROP TABLE public.sq_second")
    admin_conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role))
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(role))
    admin_conn.commit()


@pytest.mark.usefixtures("accounts")
def test_an_owner_changes_the_auditing_of_its_own_tables_only(second_owner):
    """Without write privileges on the registrations, through requests django_rls_audit carries out."""
    conn = second_owner
    assert conn.execute("SELECT rls_audit.enable('sq_second', masked_columns => '{owner_id}')").fetchone() == (True,)
    assert conn.execute("SELECT rls_audit.set_read_rule('sq_second', site_column => 'site_id')").fetchone() == (True,)
    assert conn.execute(
        "SELECT masked_columns, missing_triggers FROM rls_audit.status WHERE table_name = 'sq_second'::regclass"
    ).fetchone() == (["owner_id"], [])
    assert conn.execute(
        "SELECT site_column FROM rls_audit.read_rules WHERE table_oid = 'sq_second'::regclass"
    ).fetchone() == ("site_id",)
    conn.execute("INSERT INTO sq_second VALUES (1, 1, 7)")
    assert entries(conn, "sq_second") == [("INSERT", "1", None, {"id": 1, "site_id": 1}, None)]
    assert conn.execute("SELECT rls_audit.disable('sq_second')").fetchone() == (True,)
    assert conn.execute(
        "SELECT count(*) FROM rls_audit.audited_tables WHERE table_oid = 'sq_second'::regclass"
    ).fetchone() == (0,)
    conn.commit()
    for call, message in [
        ("SELECT rls_audit.enable('sq_accounts')", "permission denied to audit"),
        ("SELECT rls_audit.disable('sq_accounts')", "permission denied to audit"),
        ("SELECT rls_audit.set_read_rule('sq_accounts')", "permission denied to set the audit read rule"),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message) as refused:
            conn.execute(call)
        assert "owner" in refused.value.diag.message_hint
        conn.rollback()
    # A request of its own table is carried out only in the transaction that made it.
    conn.execute("INSERT INTO rls_audit._requests (table_oid, action) VALUES ('sq_second', 'disable')")
    conn.commit()
    assert conn.execute("SELECT rls_audit.enable('sq_second')").fetchone() == (True,)
    assert conn.execute("SELECT rls_audit._apply_requests('sq_second')").fetchone() == (False,)
    conn.commit()
    for statement in [
        "INSERT INTO rls_audit._requests (table_oid, action) VALUES ('sq_accounts', 'disable')",
        "INSERT INTO rls_audit._requests (table_oid, action, made_in) VALUES ('sq_second', 'disable', '1')",
        "UPDATE rls_audit.audited_tables SET operations = '{INSERT}' WHERE table_oid = 'sq_second'::regclass",
        "DELETE FROM rls_audit.read_rules WHERE table_oid = 'sq_second'::regclass",
        "SELECT rls_audit._store_read_rule('sq_accounts', NULL, NULL, false)",
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        conn.rollback()
    assert conn.execute(
        "SELECT operations FROM rls_audit.audited_tables WHERE table_oid = 'sq_accounts'::regclass"
    ).fetchone() == (["DELETE", "INSERT", "TRUNCATE", "UPDATE"],)


def test_what_the_sql_mode_does_not_audit(owner_conn):
    owner_conn.execute("CREATE TABLE sq_parted (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="does not audit"):
        owner_conn.execute("SELECT rls_audit.enable('sq_parted')")
    owner_conn.rollback()
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="hash chain"):
        owner_conn.execute("SELECT * FROM rls_audit.verify()")
    owner_conn.rollback()


@pytest.fixture
def evil_owner(admin_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A second table owner, no member of django_rls_audit, with types, casts and operators of its own."""
    role = sql.Identifier(EVIL)
    admin_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS evil CASCADE"))
    admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    admin_conn.execute(sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(role))
    admin_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA evil TO {}").format(APP))
    admin_conn.commit()
    admin_conn.execute(sql.SQL("SET ROLE {}").format(role))
    admin_conn.execute("SET search_path = evil, pg_catalog")
    admin_conn.execute("CREATE TABLE evil.ran (who name, what text)")
    admin_conn.execute("GRANT INSERT, SELECT ON evil.ran TO PUBLIC")
    admin_conn.execute("CREATE TYPE evil.mood AS ENUM ('ok', 'sad')")
    admin_conn.execute("CREATE TYPE evil.pair AS (a evil.mood, b int)")
    for target in ("json", "jsonb", "text"):
        admin_conn.execute(
            f"CREATE FUNCTION evil.mood_{target}(evil.mood) RETURNS {target} LANGUAGE sql VOLATILE AS "
            f"$$ INSERT INTO evil.ran VALUES (current_user, 'cast to {target}'); SELECT '\"x\"'::{target} $$"
        )
        admin_conn.execute(f"CREATE CAST (evil.mood AS {target}) WITH FUNCTION evil.mood_{target}(evil.mood)")
    admin_conn.execute(
        "CREATE FUNCTION evil.spy(text, text) RETURNS boolean LANGUAGE sql VOLATILE AS "
        "$$ INSERT INTO evil.ran VALUES (current_user, 'operator'); SELECT $1 OPERATOR(pg_catalog.<>) $2 $$"
    )
    admin_conn.execute("CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.spy)")
    admin_conn.execute(
        "CREATE FUNCTION evil.num_nulls(VARIADIC anyarray) RETURNS int LANGUAGE sql VOLATILE AS "
        "$$ INSERT INTO evil.ran VALUES (current_user, 'num_nulls'); SELECT 0 $$"
    )
    admin_conn.execute(
        "CREATE FUNCTION evil.checked(text) RETURNS boolean LANGUAGE sql VOLATILE AS "
        "$$ INSERT INTO evil.ran VALUES (current_user, 'domain check'); SELECT true $$"
    )
    admin_conn.execute("CREATE DOMAIN evil.label AS text CHECK (evil.checked(VALUE))")
    admin_conn.execute(
        "CREATE FUNCTION evil.policy() RETURNS boolean LANGUAGE sql VOLATILE AS "
        "$$ INSERT INTO evil.ran VALUES (current_user, 'policy'); SELECT true $$"
    )
    admin_conn.execute(
        "CREATE TABLE evil.t (id int PRIMARY KEY, m evil.mood, p evil.pair, l evil.label, ms evil.mood[], n numeric)"
    )
    admin_conn.execute("ALTER TABLE evil.t ENABLE ROW LEVEL SECURITY")
    admin_conn.execute("ALTER TABLE evil.t FORCE ROW LEVEL SECURITY")
    admin_conn.execute("CREATE POLICY p ON evil.t USING (evil.policy()) WITH CHECK (evil.policy())")
    admin_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON evil.t TO {}").format(APP))
    admin_conn.execute("SELECT rls_audit.enable('evil.t')")
    admin_conn.execute("RESET ROLE")
    admin_conn.execute("RESET search_path")
    admin_conn.commit()
    yield admin_conn
    admin_conn.rollback()
    admin_conn.execute("RESET ROLE")
    admin_conn.execute("DROP SCHEMA evil CASCADE")
    admin_conn.execute("SELECT rls_audit._build_capture(table_oid) FROM rls_audit.audited_tables")  # forget evil.t
    admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(role))
    admin_conn.commit()


def test_no_code_of_a_table_owner_runs_as_the_log_owner(evil_owner, app_conn):
    admin_conn = evil_owner
    # The attack is live: a naive capture converting with to_jsonb() or ::text runs the owner's cast.
    with admin_conn.transaction():
        admin_conn.execute("SELECT to_jsonb('ok'::evil.mood), 'ok'::evil.mood::text")
        assert admin_conn.execute("SELECT count(*) FROM evil.ran WHERE what LIKE 'cast%'").fetchone()[0] == 2
        raise psycopg.Rollback()
    as_site(app_conn, 1)
    app_conn.execute("SET search_path = evil, pg_catalog")  # the writer's path reaches the owner's functions
    app_conn.execute("INSERT INTO evil.t VALUES (1, 'ok', ROW('sad', 2), 'hi', '{ok,sad}', 1.5)")
    app_conn.execute("UPDATE evil.t SET m = 'sad', p = ROW('ok', 3), l = 'ho' WHERE id = 1")
    app_conn.execute("DELETE FROM evil.t")
    app_conn.execute("RESET search_path")
    ran = admin_conn.execute("SELECT DISTINCT who::text, what FROM evil.ran ORDER BY 1, 2").fetchall()
    assert ("django_rls_audit",) not in {(who,) for who, _ in ran}, ran
    assert {who for who, _ in ran} <= {APP_ROLE}  # the writer's own policy and domain checks, as the writer
    got = admin_conn.execute(
        "SELECT operation, new_values, old_values FROM rls_audit.log WHERE table_name = 'evil.t' ORDER BY id"
    ).fetchall()
    assert got[0] == (
        "INSERT",
        {"id": 1, "m": "ok", "p": "(sad,2)", "l": "hi", "ms": "{ok,sad}", "n": 1.5},
        None,
    )
    assert got[1] == ("UPDATE", {"m": "sad", "p": "(ok,3)", "l": "ho"}, {"m": "ok", "p": "(sad,2)", "l": "hi"})
    assert got[2][0] == "DELETE"


def test_the_log_owner_rights_stay_with_the_generated_trigger(evil_owner, app_conn, owner_conn):
    """An owner attaching a capture function to another table, or the log's objects, gets nothing."""
    admin_conn = evil_owner
    admin_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(EVIL)))
    capture = admin_conn.execute("SELECT function::text FROM rls_audit.captures WHERE table_oid = 'evil.t'::regclass")
    function = capture.fetchone()[0]
    admin_conn.execute("CREATE TABLE evil.other (id int PRIMARY KEY)")
    admin_conn.execute(
        f"CREATE TRIGGER rls_audit_insert AFTER INSERT ON evil.other REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}"
    )
    with pytest.raises(psycopg.errors.TriggerProtocolViolated, match="fires only as its rls_audit triggers"):
        admin_conn.execute("INSERT INTO evil.other VALUES (1)")
    admin_conn.rollback()
    admin_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(EVIL)))
    for statement in (
        "CREATE TRIGGER x AFTER INSERT ON rls_audit.statements FOR EACH STATEMENT EXECUTE FUNCTION evil.policy()",
        "CREATE RULE x AS ON INSERT TO rls_audit.statements DO ALSO NOTHING",
        "CREATE FUNCTION rls_audit.x() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with admin_conn.transaction():
                admin_conn.execute(statement)
    admin_conn.rollback()


def test_rls_apply_audits_the_declared_models(live_db, admin_conn):
    from django.core.management import call_command

    audited = admin_conn.execute(
        "SELECT a.table_oid::text, r.site_column FROM rls_audit.audited_tables a "
        "LEFT JOIN rls_audit.read_rules r USING (table_oid) WHERE a.table_oid = 'testapp_note'::regclass"
    ).fetchall()
    assert audited == [("testapp_note", "site_id")]
    out = io.StringIO()
    call_command("rls_apply", database="owner", check=True, stdout=out)
    assert "In sync" in out.getvalue()


def test_checks_say_what_the_trail_lacks(live_db):
    from django_rls.checks import check_database

    warning = next(m for m in check_database(databases=["default"]) if m.id == "django_rls.W014")
    assert "testapp.Note" in warning.msg and "no hash chain" in warning.msg


@pytest.mark.parametrize("name", ["django_rls_transaction_context", "django_rls_session_context"])
def test_a_forged_context_table_is_not_read_as_the_log_owner(evil_owner, database, name):
    """A writer with TEMP making its own context table of either name gets its write refused, its code never run."""
    admin_conn = evil_owner
    admin_conn.execute(
        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(admin_conn.info.dbname), sql.Identifier(EVIL)
        )
    )
    admin_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(EVIL)))
    admin_conn.execute(
        sql.SQL(
            "CREATE TEMPORARY VIEW {} AS SELECT '1'::text AS site, '2'::text AS \"user\", "
            "NULL::jsonb AS claims, NULL::xid8 AS xact, evil.policy() AS genuine"
        ).format(sql.Identifier(name))
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="did not create"):
        admin_conn.execute("INSERT INTO evil.t (id) VALUES (7)")
    admin_conn.rollback()
    assert admin_conn.execute("SELECT count(*) FROM evil.ran WHERE who = 'django_rls_audit'").fetchone() == (0,)
