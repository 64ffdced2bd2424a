"""The audit trail as an attacker sees it: who reads which entries, which context is recorded, what the capture runs.

Every read runs as the app role (no superuser, no BYPASSRLS, owns nothing), the
table owner's view as the owner role; the superuser only sets up and checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from django_rls.planner import audit_read_rule
from django_rls.policies import ByOwner, BySite, Custom, Declaration, Membership, OwnerOrShared, Shared
from django_rls.tokens import sign_context
from tests.roles import APP_ROLE, OWNER_ROLE
from tests.test_statement_context import MARKER, Text, TextDumper, unsigned

TABLES = ("audit_owned", "audit_members", "audit_nogrant", "audit_sites")


START = {"id": 0}  # entries older than the current test's tables are not looked at


@pytest.fixture
def audited(owner_conn: psycopg.Connection, admin_conn: psycopg.Connection) -> Iterator[None]:
    """Four audited tables of the owner, each protected and granted differently."""
    START["id"] = admin_conn.execute("SELECT coalesce(max(id), 0) FROM rls_audit.log").fetchone()[0]
    admin_conn.commit()
    app = sql.Identifier(APP_ROLE)
    for table in TABLES:
        owner_conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        owner_conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, site_id bigint, user_id bigint, body text)").format(
                sql.Identifier(table)
            )
        )
        owner_conn.execute("SELECT rls_audit.enable(%s::regclass)", (table,))
    owner_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON audit_owned, audit_members, audit_sites TO {}").format(app)
    )
    owner_conn.execute(sql.SQL("GRANT INSERT ON audit_nogrant TO {}").format(app))
    owner_conn.execute("SELECT rls.protect_by_site_and_owner('audit_owned', to_role => %s)", (APP_ROLE,))
    owner_conn.execute(
        "SELECT rls.protect('audit_members', 'membership', 'site_id IN (SELECT 1)', to_role => %s)", (APP_ROLE,)
    )
    owner_conn.execute("SELECT rls.protect_by_site('audit_sites', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("SELECT rls.protect_by_site('audit_nogrant', to_role => %s)", (APP_ROLE,))
    # What rls_apply records for these kinds (see test_read_rules_mirror_only_what_can_be_mirrored).
    owner_conn.execute("SELECT rls_audit.set_read_rule('audit_owned', 'site_id', 'user_id')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('audit_sites', 'site_id')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('audit_nogrant', 'site_id')")
    owner_conn.commit()
    yield
    for table in TABLES:
        owner_conn.execute("SELECT rls_audit.disable(%s::regclass)", (table,))
        owner_conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    owner_conn.commit()


def write_as(conn: psycopg.Connection, site: int, user: int, statement: str) -> None:
    with conn.transaction():
        conn.execute("SELECT rls.set_context(%s, %s)", (str(site), str(user)))
        conn.execute(statement)


def visible(conn: psycopg.Connection, site: int | None, user: int | None, table: str) -> list[tuple[str, str]]:
    with conn.transaction():
        if site is not None or user is not None:
            conn.execute("SELECT rls.set_context(%s, %s)", (str(site or ""), str(user or "")))
        return conn.execute(
            "SELECT operation, row_key FROM rls_audit.log WHERE table_name = %s AND id > %s ORDER BY id",
            (f"public.{table}", START["id"]),
        ).fetchall()


@pytest.mark.usefixtures("audited")
def test_owner_protected_entries_only_for_their_owner(app_conn):
    write_as(app_conn, 1, 7, "INSERT INTO audit_owned VALUES (1, 1, 7, 'private note of 7')")
    write_as(app_conn, 1, 8, "INSERT INTO audit_owned VALUES (2, 1, 8, 'note of 8')")
    assert visible(app_conn, 1, 8, "audit_owned") == [("INSERT", "2")]
    assert visible(app_conn, 1, 7, "audit_owned") == [("INSERT", "1")]
    assert visible(app_conn, 2, 7, "audit_owned") == []  # user 7 in another site
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '8')")
        history = app_conn.execute("SELECT count(*) FROM rls_audit.history('audit_owned', '1')").fetchone()[0]
        bodies = app_conn.execute(
            "SELECT new_values->>'body' FROM rls_audit.log WHERE id > %s", (START["id"],)
        ).fetchall()
    assert history == 0 and ("private note of 7",) not in bodies


@pytest.mark.usefixtures("audited")
def test_one_statement_of_two_owners_shows_each_only_their_own(app_conn, admin_conn):
    """Both rows are stored in one statement row of rls_audit.statements: the app role reads neither that
    row nor, through the view or rls_audit.statements_of(), anything of the other owner's entry."""
    with admin_conn.transaction():
        admin_conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")  # a superuser, writing test data
        admin_conn.execute("SELECT rls.set_context('1', '7')")
        admin_conn.execute("INSERT INTO audit_owned VALUES (1, 1, 7, 'private note of 7'), (2, 1, 8, 'note of 8')")
        one_row = admin_conn.execute(
            "SELECT count(DISTINCT statement_id) FROM rls_audit.log WHERE table_name = 'public.audit_owned' AND id > %s",
            (START["id"],),
        ).fetchone()
    assert one_row == (1,)
    assert visible(app_conn, 1, 8, "audit_owned") == [("INSERT", "2")]
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '8')")
        assert app_conn.execute("SELECT rls_audit.statements_of('audit_owned', '1')").fetchone() == ([],)
        (mine,) = app_conn.execute("SELECT rls_audit.statements_of('audit_owned', '2')").fetchone()
        assert len(mine) == 1
        rows = app_conn.execute(
            "SELECT row_key, new_values->>'body' FROM rls_audit.log WHERE statement_id = ANY (%s)", (mine,)
        ).fetchall()
        assert rows == [("2", "note of 8")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
        app_conn.execute("SELECT new_values FROM rls_audit.statements")


@pytest.mark.usefixtures("audited")
def test_unmirrored_kinds_and_ungranted_tables_are_owner_only(app_conn, owner_conn):
    write_as(app_conn, 1, 7, "INSERT INTO audit_members VALUES (1, 1, 7, 'member row')")
    write_as(app_conn, 1, 7, "INSERT INTO audit_nogrant VALUES (1, 1, 7, 'write only')")
    assert visible(app_conn, 1, 7, "audit_members") == []
    assert visible(app_conn, 1, 7, "audit_nogrant") == []
    # The table owner reads both (the bypass alias too: it skips row level security).
    assert visible(owner_conn, None, None, "audit_members") == [("INSERT", "1")]
    assert visible(owner_conn, None, None, "audit_nogrant") == [("INSERT", "1")]


@pytest.mark.usefixtures("audited")
def test_other_sites_entries_are_invisible(app_conn):
    write_as(app_conn, 1, 7, "INSERT INTO audit_sites VALUES (1, 1, 7, 'a')")
    write_as(app_conn, 2, 7, "INSERT INTO audit_sites VALUES (2, 2, 7, 'b')")
    assert visible(app_conn, 1, None, "audit_sites") == [("INSERT", "1")]
    assert visible(app_conn, 2, None, "audit_sites") == [("INSERT", "2")]
    assert visible(app_conn, None, None, "audit_sites") == []


@pytest.mark.usefixtures("audited")
def test_moved_row_is_readable_by_both_sites(app_conn, admin_conn):
    write_as(app_conn, 1, 7, "INSERT INTO audit_sites VALUES (1, 1, 7, 'a')")
    admin_conn.execute("UPDATE audit_sites SET site_id = 2 WHERE id = 1")
    admin_conn.commit()
    assert ("UPDATE", "1") in visible(app_conn, 1, None, "audit_sites")
    assert ("UPDATE", "1") in visible(app_conn, 2, None, "audit_sites")
    assert ("UPDATE", "1") not in visible(app_conn, 3, None, "audit_sites")


def test_read_rules_mirror_only_what_can_be_mirrored(live_db):
    def rule(model: str, *policies: object) -> object:
        return audit_read_rule(Declaration(model, tuple(policies), True))  # type: ignore[arg-type]

    assert rule("testapp.Note", BySite("site")) == ("site_id", None, False)
    assert rule("testapp.Task", BySite("site"), ByOwner("owner")) == ("site_id", "owner_id", False)
    assert rule("testapp.Category", Shared("site")) == ("site_id", None, True)
    assert rule("testapp.Bookmark", OwnerOrShared("owner")) == (None, "owner_id", True)
    # Not mirrored: only the owner (and the bypass alias) read these tables' entries.
    assert rule("testapp.Bookmark", OwnerOrShared("owner", shared_field="is_public")) is None
    assert rule("testapp.Project", Membership("testapp.SiteMembership", field="site")) is None
    assert rule("testapp.Note", BySite("site"), Custom("extra", "true")) is None
    assert rule("testapp.Category", Shared("site"), ByOwner("site")) is None


@pytest.mark.usefixtures("audited")
def test_context_is_the_one_the_statement_started_with(app_conn, admin_conn):
    write_as(app_conn, 1, 7, "INSERT INTO audit_sites VALUES (1, 1, 7, 'a')")
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute(
            "WITH u AS (UPDATE audit_sites SET body = 'x' RETURNING id) "
            "SELECT (SELECT count(*) FROM u), rls.clear_context()"
        )
    row = admin_conn.execute(
        "SELECT site_id, user_id FROM rls_audit.log WHERE table_name = 'public.audit_sites' AND operation = 'UPDATE' AND id > %s",
        (START["id"],),
    ).fetchall()
    assert row == [(1, 7)]


@pytest.mark.usefixtures("audited")
def test_context_of_a_signed_statement(app_conn, admin_conn, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=7)
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
        app_conn.execute(
            "WITH u AS (INSERT INTO audit_sites VALUES (5, 1, 7, 'signed') RETURNING id) "
            "SELECT (SELECT count(*) FROM u), rls.clear_context()"
        )
    row = admin_conn.execute(
        "SELECT site_id, user_id FROM rls_audit.log WHERE table_name = 'public.audit_sites' AND row_key = '5' AND id > %s",
        (START["id"],),
    ).fetchall()
    assert row == [(1, 7)]


@pytest.mark.usefixtures("audited")
def test_a_function_records_the_context_it_wrote_with(app_conn, admin_conn, owner_conn):
    owner_conn.execute(
        """
        CREATE OR REPLACE FUNCTION audit_write_as(site text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM rls.set_context(site, '9');
            INSERT INTO audit_sites VALUES (6, site::int, 9, 'from a function');
        END $$
        """
    )
    owner_conn.commit()
    try:
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '7')")
            app_conn.execute("SELECT audit_write_as('2')")
        row = admin_conn.execute(
            "SELECT site_id, user_id FROM rls_audit.log WHERE table_name = 'public.audit_sites' AND row_key = '6' AND id > %s",
            (START["id"],),
        ).fetchall()
        assert row == [(2, 9)]
    finally:
        owner_conn.execute("DROP FUNCTION audit_write_as(text)")
        owner_conn.commit()


def test_the_owners_casts_never_run(owner_conn, admin_conn):
    """The issue's repro as the table owner: a permanent enum whose casts to json and text would escalate."""
    owner_conn.execute("DROP TABLE IF EXISTS audit_moods")
    owner_conn.execute("DROP TYPE IF EXISTS audit_mood CASCADE")
    owner_conn.execute("CREATE TYPE audit_mood AS ENUM ('x', 'y')")
    for target, result in (("json", "'\"forged\"'"), ("text", "'forged'")):
        owner_conn.execute(
            sql.SQL(
                "CREATE FUNCTION {name}(audit_mood) RETURNS {target} LANGUAGE plpgsql AS $$ BEGIN "
                "EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN {result}; END $$"
            ).format(
                name=sql.Identifier(f"audit_evil_{target}"),
                target=sql.SQL(target),
                owner=sql.SQL(OWNER_ROLE),
                result=sql.SQL(result),
            )
        )
        owner_conn.execute(
            sql.SQL("CREATE CAST (audit_mood AS {target}) WITH FUNCTION {name}(audit_mood)").format(
                target=sql.SQL(target), name=sql.Identifier(f"audit_evil_{target}")
            )
        )
    owner_conn.execute("CREATE TABLE audit_moods (id audit_mood PRIMARY KEY, v audit_mood)")
    owner_conn.execute("SELECT rls_audit.enable('audit_moods')")
    owner_conn.commit()
    try:
        owner_conn.execute("INSERT INTO audit_moods VALUES ('x', 'x')")
        owner_conn.execute("UPDATE audit_moods SET v = 'y'")
        owner_conn.commit()
        assert admin_conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (OWNER_ROLE,)).fetchone() == (
            False,
        )
        logged = admin_conn.execute(
            "SELECT row_key, new_values FROM rls_audit.log WHERE table_name = 'public.audit_moods' ORDER BY id"
        ).fetchall()
        assert logged == [("x", {"id": "x", "v": "x"}), ("x", {"v": "y"})]
    finally:
        owner_conn.rollback()
        owner_conn.execute("SELECT rls_audit.disable('audit_moods')")
        owner_conn.execute("DROP TABLE audit_moods")
        owner_conn.execute("DROP TYPE audit_mood CASCADE")
        owner_conn.commit()


def test_the_apps_temp_cast_never_runs(app_conn, admin_conn):
    """The issue's repro as the app role: pg_temp enum, cast to json, temporary table.

    The hardened app role (rls_roles) cannot even start it; with TEMP granted back, as on a
    site that skipped rls_roles, the capture must still run none of the role's code.
    """
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("CREATE TYPE pg_temp.e AS ENUM ('x')")
    app_conn.rollback()
    database = sql.Identifier(admin_conn.info.dbname)
    admin_conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(database, sql.Identifier(APP_ROLE)))
    admin_conn.commit()
    try:
        _run_the_temp_cast_repro(app_conn, admin_conn)
    finally:
        admin_conn.execute(
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(database, sql.Identifier(APP_ROLE))
        )
        admin_conn.commit()


def _run_the_temp_cast_repro(app_conn, admin_conn):
    app_conn.execute("CREATE TYPE pg_temp.e AS ENUM ('x')")
    app_conn.execute(
        sql.SQL(
            "CREATE FUNCTION pg_temp.evil(pg_temp.e) RETURNS json LANGUAGE plpgsql AS "
            "$$BEGIN EXECUTE 'ALTER ROLE {} SUPERUSER'; RETURN '\"x\"'; END$$"
        ).format(sql.SQL(APP_ROLE))
    )
    app_conn.execute("CREATE CAST (pg_temp.e AS json) WITH FUNCTION pg_temp.evil(pg_temp.e)")
    app_conn.execute("CREATE TEMP TABLE x (id int PRIMARY KEY, v pg_temp.e)")
    app_conn.commit()
    try:
        app_conn.execute("SELECT rls_audit.enable('pg_temp.x')")
        app_conn.commit()
    except psycopg.Error:
        app_conn.rollback()  # enable() may refuse temporary tables; the capture must be safe either way
    try:
        app_conn.execute("INSERT INTO x VALUES (1, 'x')")
        app_conn.commit()
    except psycopg.errors.FeatureNotSupported:
        app_conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(
            "CREATE TRIGGER t AFTER INSERT ON x REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()"
        )
    app_conn.rollback()
    # Dropped explicitly: a temporary table gone with its session takes no registration with it.
    app_conn.execute("DROP TABLE x")
    app_conn.commit()
    assert admin_conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() == (False,)
    assert admin_conn.execute("SELECT count(*) FROM rls_audit.log WHERE table_name LIKE 'pg\\_temp%'").fetchone() == (
        0,
    )


@pytest.mark.usefixtures("audited")
def test_context_carried_by_the_statement(app_conn, admin_conn):
    """A statement carrying its context (/*django_rls:$1*/) is recorded with it, even if it clears it."""
    app_conn.adapters.register_dumper(Text, TextDumper)
    app_conn.execute(
        MARKER + "WITH u AS (INSERT INTO audit_sites VALUES (7, 2, 5, 'carried') RETURNING id) "
        "SELECT (SELECT count(*) FROM u), rls.clear_context()",
        (unsigned(site=2, user=5),),
    )
    app_conn.commit()
    row = admin_conn.execute(
        "SELECT site_id, user_id FROM rls_audit.log WHERE table_name = 'public.audit_sites' AND row_key = '7' AND id > %s",
        (START["id"],),
    ).fetchall()
    assert row == [(2, 5)]


def _newest(conn: psycopg.Connection, count: int, conditions: dict[str, object]) -> tuple[list, list]:
    """The caller's newest `count` entries matching conditions: narrowed by rls_audit.newest_statements(),
    and by the plain ORDER BY/LIMIT over the view (which reads every statement row), as (row_key, id) lists."""
    where = sql.SQL(" AND ").join(
        [sql.SQL("id > {}").format(sql.Literal(START["id"]))]
        + [
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value))
            for column, value in conditions.items()
        ]
    )
    names = sql.SQL("").join(
        sql.SQL(", {} => {}").format(sql.Identifier(column), sql.Literal(value)) for column, value in conditions.items()
    )
    newest = sql.SQL(
        "SELECT row_key, id FROM rls_audit.log WHERE statement_id = ANY (rls_audit.newest_statements({n}{names})) "
        "AND {where} ORDER BY logged_at DESC, id DESC LIMIT {n}"
    ).format(n=sql.Literal(count), names=names, where=where)
    plain = sql.SQL("SELECT row_key, id FROM rls_audit.log WHERE {where} ORDER BY logged_at DESC, id DESC LIMIT {n}")
    return (
        conn.execute(newest).fetchall(),
        conn.execute(plain.format(where=where, n=sql.Literal(count))).fetchall(),
    )


@pytest.mark.usefixtures("audited")
def test_newest_statements_finds_what_the_plain_query_finds(app_conn, admin_conn, owner_conn):
    """rls_audit.newest_statements() walks the statement rows newest first and counts only the entries the
    caller may read: the narrowed query lists the same newest entries as the plain one, for each reader and
    filter, across statement rows holding several owners' rows and more statement rows than one batch."""
    with admin_conn.transaction():
        admin_conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")  # a superuser, writing test data
        admin_conn.execute("SELECT rls.set_context('1', '7')")
        # one statement row of 300 rows of owners 7 and 8 in site 1, and of owner 7 in site 2
        admin_conn.execute(
            "INSERT INTO audit_owned SELECT g, 1 + (g % 5 = 0)::int, 7 + (g % 3 = 0)::int, 'bulk' "
            "FROM generate_series(1, 300) g"
        )
    for n in range(301, 401):  # 100 single-row statements, more than the first batch of 64
        write_as(
            app_conn,
            1 + n % 2,
            7 + n % 3 % 2,
            f"INSERT INTO audit_owned VALUES ({n}, {1 + n % 2}, {7 + n % 3 % 2}, 'one')",
        )
    write_as(app_conn, 1, 7, "UPDATE audit_owned SET body = 'again' WHERE id % 7 = 0")
    for site, user in ((1, 7), (1, 8), (2, 7), (2, 8), (3, 7)):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context(%s, %s)", (str(site), str(user)))
            for count in (0, 1, 10, 50, 250, 1000):
                for conditions in ({}, {"site_id": site}, {"site_id": 1, "user_id": 8}, {"operation": "INSERT"}):
                    narrowed, plain = _newest(app_conn, count, conditions)
                    assert narrowed == plain, (site, user, count, conditions)
            # none of the statement rows it returns is one the caller reads nothing of
            (ids,) = app_conn.execute("SELECT rls_audit.newest_statements(1000)").fetchone()
            readable = app_conn.execute(
                "SELECT count(DISTINCT statement_id) FROM rls_audit.log WHERE statement_id = ANY (%s)", (ids,)
            ).fetchone()[0]
            assert readable == len(ids)
    assert _newest(app_conn, 50, {})[0] == []  # no context: nothing
    narrowed, plain = _newest(owner_conn, 120, {"table_name": "public.audit_owned"})
    assert narrowed == plain and len(plain) == 120  # the owner reads every entry


def test_newest_statements_refuses_a_negative_count(app_conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused, app_conn.transaction():
        app_conn.execute("SELECT rls_audit.newest_statements(-1)")
    assert refused.value.diag.message_hint
