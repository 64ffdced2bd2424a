"""Upgrading the SQL-only mode in place: rls_apply --install over an older installation.

An "older installation" is this version's, made to look like the previous release's: without
rls.member_of() and rls_audit.count_entries() / entry_times() (which came later), with a function
the new version no longer has, and with another version number. Contexts, policies, signing keys, spent tokens and the audit trail
must come through.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import django_rls
from django_rls import sqlonly
from django_rls.tokens import sign_context
from tests.modes import SQL_MODE
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

pytestmark = pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode (DJANGO_RLS_TEST_MODE=sql)")

DB = "django_rls_upgrade"
KEY = secrets.token_urlsafe(48)


# The context functions of the releases that kept the transaction's context in an ON COMMIT DELETE
# ROWS table, pg_temp.django_rls_context, that every role could read (trimmed of their checks).
OLDER_CONTEXT_FUNCTIONS = """
CREATE OR REPLACE FUNCTION rls._held(OUT site text, OUT "user" text, OUT claims jsonb)
RETURNS record LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
BEGIN
    IF pg_catalog.to_regclass('pg_temp.django_rls_context') IS NULL THEN RETURN; END IF;
    SELECT c.site, c."user", c.claims INTO site, "user", claims FROM pg_temp.django_rls_context c;
    IF NOT FOUND THEN
        SELECT c.site, c."user", c.claims INTO site, "user", claims FROM pg_temp.django_rls_session_context c;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION rls._ensure_context_tables() RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    CREATE TEMPORARY TABLE IF NOT EXISTS django_rls_context (
        site text NOT NULL, "user" text NOT NULL, claims jsonb,
        genuine rls._genuine NOT NULL DEFAULT 'django_rls') ON COMMIT DELETE ROWS;
    CREATE TEMPORARY TABLE IF NOT EXISTS django_rls_session_context (
        site text NOT NULL, "user" text NOT NULL, claims jsonb,
        genuine rls._genuine NOT NULL DEFAULT 'django_rls');
    GRANT SELECT ON pg_temp.django_rls_context, pg_temp.django_rls_session_context TO PUBLIC;
END $$;
CREATE OR REPLACE FUNCTION rls._store(site text, "user" text, claims jsonb, is_local boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM rls._ensure_context_tables();
    DELETE FROM pg_temp.django_rls_context;
    IF is_local THEN
        INSERT INTO pg_temp.django_rls_context (site, "user", claims) VALUES (site, "user", claims);
    ELSE
        DELETE FROM pg_temp.django_rls_session_context;
        INSERT INTO pg_temp.django_rls_session_context (site, "user", claims) VALUES (site, "user", claims);
    END IF;
END $$;
"""


def _install(conn: psycopg.Connection) -> list[str]:
    with conn.cursor() as cursor:
        done = sqlonly.install(cursor, [KEY], APP_ROLE)
    conn.commit()
    return done


@pytest.fixture
def older(admin_conn) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """(owner, app) connections to a database with an older SQL-only installation, a protected table, a spent token."""
    admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB), sql.Identifier(OWNER_ROLE)))
    dsn = make_conninfo(admin_conn.info.dsn, dbname=DB)
    try:
        with (
            psycopg.connect(make_conninfo(dsn, user=OWNER_ROLE, password=PASSWORD)) as owner,
            psycopg.connect(make_conninfo(dsn, user=APP_ROLE, password=PASSWORD), autocommit=True) as app,
        ):
            _install(owner)
            for (function,) in owner.execute(
                "SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'rls'::regnamespace "
                "AND proname ~ 'member' ORDER BY proname DESC"
            ).fetchall():
                owner.execute(f"DROP FUNCTION {function}")
            # nor rls_audit.count_entries() and entry_times() (the admin's count and date hierarchy)
            owner.execute("DROP FUNCTION rls_audit.count_entries, rls_audit.entry_times")
            owner.execute(
                "CREATE OR REPLACE FUNCTION rls._sqlonly_version() RETURNS text LANGUAGE sql IMMUTABLE "
                "SET search_path = pg_catalog, pg_temp AS $$ SELECT '0.0.1'::text $$"
            )
            owner.execute("CREATE FUNCTION rls._only_in_the_older() RETURNS boolean LANGUAGE sql AS 'SELECT true'")
            owner.execute(OLDER_CONTEXT_FUNCTIONS)
            owner.execute("CREATE TABLE notes (id int PRIMARY KEY, site_id bigint NOT NULL)")
            owner.execute("SELECT rls_audit.enable('notes')")
            # As an older generator made it: without a setting this version's captures pin.
            owner.execute(
                f"ALTER FUNCTION rls_audit.capture_{_oid(owner, 'notes')}() RESET standard_conforming_strings"
            )
            owner.execute("INSERT INTO notes VALUES (1, 1), (2, 2), (3, 2)")
            owner.execute(sql.SQL("GRANT SELECT ON notes TO {}").format(sql.Identifier(APP_ROLE)))
            owner.execute("SELECT rls.protect_by_site('notes', to_role => %s)", (APP_ROLE,))
            owner.commit()
            with app.transaction():
                app.execute("SELECT rls.set_context_signed(%s)", (sign_context(KEY, site=1, user=None, database=DB),))
                assert app.execute("SELECT array_agg(id) FROM notes").fetchone() == ([1],)
            yield owner, app
    finally:
        admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


def _oid(conn: psycopg.Connection, table: str) -> int:
    return conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]


def _capture_settings(conn: psycopg.Connection) -> list[str]:
    return conn.execute(
        "SELECT proconfig FROM pg_proc WHERE oid = %s::regprocedure",
        (f"rls_audit.capture_{_oid(conn, 'notes')}()",),
    ).fetchone()[0]


def _policies(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return conn.execute(
        "SELECT oid::int, polname::text FROM pg_policy WHERE polrelid = 'notes'::regclass ORDER BY 2"
    ).fetchall()


def test_an_older_installation_is_upgraded_in_place(older):
    owner, app = older
    policies = _policies(owner)
    problems = owner.execute("SELECT problem FROM rls.problems ORDER BY 1").fetchall()
    owner.rollback()
    spent = sign_context(KEY, site=2, user=None, database=DB)
    with app.transaction():
        app.execute("SELECT rls.set_context_signed(%s)", (spent,))

    assert _install(owner) == [f"upgraded the SQL-only mode of django_rls from 0.0.1 to {django_rls.EXTENSION_VERSION}"]

    with owner.cursor() as cursor:
        assert sqlonly.installed_version(cursor) == django_rls.EXTENSION_VERSION
    assert owner.execute("SELECT rls.extension_info() ->> 'sql_version'").fetchone() == (django_rls.EXTENSION_VERSION,)
    assert _policies(owner) == policies  # the same policies, calling the same functions
    assert owner.execute("SELECT to_regprocedure('rls._only_in_the_older()')").fetchone() == (None,)
    assert owner.execute("SELECT problem FROM rls.problems ORDER BY 1").fetchall() == problems  # views made again
    # Signing is still required, with the same key, and the token spent before is still spent.
    with app.transaction():
        app.execute("SELECT rls.set_context_signed(%s)", (sign_context(KEY, site=2, user=None, database=DB),))
        assert app.execute("SELECT array_agg(id ORDER BY id) FROM notes").fetchone() == ([2, 3],)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires a signature"):
        app.execute("SELECT rls.set_context('1', '')")
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
        app.execute("SELECT rls.set_context_signed(%s)", (spent,))
    # What came with the new version works: rls.member_of() and its role.
    assert owner.execute("SELECT rls.member_of_allowed('notes', 'id', 'site_id')").fetchone() == (False,)
    # The audit trail and its capture come through, and the functions the admin counts it with are there.
    assert owner.execute("SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.notes'").fetchone() == (3,)
    assert owner.execute(
        "SELECT rls_audit.count_entries(NULL, table_name => 'public.notes'), rls_audit.count_entries(2), "
        "(SELECT oldest IS NOT NULL FROM rls_audit.entry_times(table_name => 'public.notes'))"
    ).fetchone() == (3, 2, True)
    assert owner.execute("SELECT missing_triggers FROM rls_audit.status").fetchall() == [([],)]
    # The capture is generated again by this version's generator (fixes to it reach existing tables).
    assert "standard_conforming_strings=on" in _capture_settings(owner)
    owner.execute(sql.SQL("GRANT INSERT ON notes TO {}").format(sql.Identifier(APP_ROLE)))
    owner.commit()
    with app.transaction():
        app.execute("SELECT rls.set_context_signed(%s)", (sign_context(KEY, site=1, user=None, database=DB),))
        app.execute("INSERT INTO notes VALUES (4, 1)")
    assert owner.execute("SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.notes'").fetchone() == (4,)
    # And installing the same version again changes nothing.
    assert _install(owner) == []


def test_an_upgrade_that_would_break_a_policy_changes_nothing(older):
    owner, _ = older
    owner.execute("SELECT rls.protect('notes', 'extra', 'rls._only_in_the_older()', to_role => %s)", (APP_ROLE,))
    owner.commit()
    with owner.cursor() as cursor, pytest.raises(sqlonly.InstallError) as excinfo:
        sqlonly.install(cursor, [KEY], APP_ROLE)
    owner.rollback()
    assert "cannot upgrade the SQL-only mode of django_rls 0.0.1" in str(excinfo.value)
    assert "rls._only_in_the_older()" in str(excinfo.value) and "Nothing was changed" in str(excinfo.value)
    with owner.cursor() as cursor:
        assert sqlonly.installed_version(cursor) == "0.0.1"


def test_a_newer_installation_is_refused(older):
    owner, _ = older
    owner.execute(
        "CREATE OR REPLACE FUNCTION rls._sqlonly_version() RETURNS text LANGUAGE sql IMMUTABLE "
        "AS $$ SELECT '99.0.0'::text $$"
    )
    owner.commit()
    with owner.cursor() as cursor, pytest.raises(sqlonly.InstallError, match=r"99\.0\.0 is installed, newer than"):
        sqlonly.install(cursor, [KEY], APP_ROLE)


def test_sessions_opened_before_the_upgrade_carry_over(older):
    """A session that holds the older tables keeps its session context through the upgrade, never
    sees another transaction's context, and moves to the new table at its next setter call, which
    drops the older ON COMMIT DELETE ROWS table (truncated at every commit while it exists)."""
    owner, app = older
    app.execute("SELECT rls.set_context_signed(%s, false)", (sign_context(KEY, site=2, user=None, database=DB),))
    assert app.execute("SELECT array_agg(id ORDER BY id) FROM notes").fetchone() == ([2, 3],)
    assert app.execute("SELECT to_regclass('pg_temp.django_rls_context') IS NOT NULL").fetchone() == (True,)

    _install(owner)

    assert app.execute("SELECT rls.site_id(), array_agg(id ORDER BY id) FROM notes").fetchone() == (2, [2, 3])
    with app.transaction():
        app.execute("SELECT rls.set_context_signed(%s)", (sign_context(KEY, site=1, user=None, database=DB),))
        assert app.execute("SELECT array_agg(id) FROM notes").fetchone() == ([1],)
        assert app.execute("SELECT to_regclass('pg_temp.django_rls_context')").fetchone() == (None,)
    assert app.execute("SELECT rls.site_id(), array_agg(id ORDER BY id) FROM notes").fetchone() == (2, [2, 3])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("SELECT * FROM pg_temp.django_rls_session_context")  # its older grant is taken back
    app.execute("SELECT rls.clear_context()")
    assert app.execute("SELECT rls.site_id(), array_agg(id) FROM notes").fetchone() == (None, None)


# The read behind rls.member_of() as earlier versions made it: SECURITY DEFINER, executable by
# PUBLIC, and with none of the caller's checks (trimmed to the read itself).
UNCHECKED_MEMBER_READ = """
CREATE OR REPLACE FUNCTION rls._member_rows(membership regclass, key_column name, user_column name)
RETURNS text[] LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text[];
BEGIN
    EXECUTE format('SELECT array_agg(DISTINCT m.%I::pg_catalog.text) FROM %s m WHERE m.%I OPERATOR(pg_catalog.=) (SELECT %s)',
                   key_column, membership, user_column, rls._accessor_for(membership, user_column, 'user'))
       INTO keys;
    RETURN coalesce(keys, '{}');
END $$;
DROP FUNCTION rls._member_reader_checked(oid, regclass, name, name), rls._session_role();
"""


def test_an_upgrade_closes_the_unchecked_member_read(admin_conn):
    """An installation whose rls._member_rows() trusted its caller (the read of the user's memberships
    of other sites, called directly) gets the checked one from rls_apply --install."""
    admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB), sql.Identifier(OWNER_ROLE)))
    dsn = make_conninfo(admin_conn.info.dsn, dbname=DB)
    direct = "SELECT rls._member_rows('memb', 'proj_id', 'user_id')"
    try:
        with (
            psycopg.connect(make_conninfo(dsn, user=OWNER_ROLE, password=PASSWORD)) as owner,
            psycopg.connect(make_conninfo(dsn, user=APP_ROLE, password=PASSWORD), autocommit=True) as app,
        ):
            _install(owner)
            owner.execute(UNCHECKED_MEMBER_READ)
            owner.execute(
                "CREATE OR REPLACE FUNCTION rls._sqlonly_version() RETURNS text LANGUAGE sql IMMUTABLE "
                "SET search_path = pg_catalog, pg_temp AS $$ SELECT '0.0.1'::text $$"
            )
            owner.execute(
                "CREATE TABLE memb (id serial PRIMARY KEY, site_id bigint NOT NULL, proj_id bigint NOT NULL,"
                " user_id bigint NOT NULL)"
            )
            owner.execute("INSERT INTO memb (site_id, proj_id, user_id) VALUES (1, 1, 12), (2, 2, 12)")
            owner.execute(sql.SQL("GRANT SELECT ON memb TO {}").format(sql.Identifier(APP_ROLE)))
            owner.execute("SELECT rls.protect_by_site_and_owner('memb', to_role => %s)", (APP_ROLE,))
            owner.execute("SELECT rls.allow_member_of('memb', 'proj_id', 'user_id')")
            owner.commit()

            def as_site_1_user_12(statement: str) -> list[str]:
                with app.transaction():
                    app.execute("SELECT rls.set_context_signed(%s)", (sign_context(KEY, site=1, user=12, database=DB),))
                    return app.execute(statement).fetchone()[0]

            assert as_site_1_user_12("SELECT array_agg(proj_id::text) FROM memb") == ["1"]
            assert sorted(as_site_1_user_12(direct)) == ["1", "2"]  # the hole: site 2's membership

            assert _install(owner) == [
                f"upgraded the SQL-only mode of django_rls from 0.0.1 to {django_rls.EXTENSION_VERSION}"
            ]
            assert owner.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = %s::regprocedure",
                                 ("rls._member_rows(regclass,name,name)",)).fetchone() == ("django_rls_member",)  # fmt: skip
            owner.commit()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="do not show role"):
                as_site_1_user_12(direct)
            assert as_site_1_user_12("SELECT array_agg(proj_id::text) FROM memb") == ["1"]
    finally:
        admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


# How installations before rls_audit._requests let each table's owner write the registrations itself.
REGISTRATIONS_WRITTEN_BY_THEIR_OWNERS = """
DROP FUNCTION rls_audit._apply_requests(regclass);
DROP TABLE rls_audit._requests;
GRANT INSERT, UPDATE, DELETE ON rls_audit.audited_tables, rls_audit.read_rules TO PUBLIC;
GRANT EXECUTE ON FUNCTION rls_audit._store_read_rule(regclass, name, name, boolean) TO PUBLIC;
ALTER TABLE rls_audit.audited_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable ON rls_audit.audited_tables FOR SELECT USING (true);
CREATE POLICY own_tables ON rls_audit.audited_tables FOR ALL
    USING (rls_audit._owns(table_oid)) WITH CHECK (rls_audit._owns(table_oid));
"""


def test_an_upgrade_takes_back_the_write_on_the_registrations(admin_conn):
    """An installation where every role could UPDATE the registrations (and so LOCK them against every
    audited write) keeps its registrations, and its table owners their auditing, without that grant."""
    admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB), sql.Identifier(OWNER_ROLE)))
    dsn = make_conninfo(admin_conn.info.dsn, dbname=DB)
    writable = (
        "SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c "
        "WHERE c.relnamespace = 'rls_audit'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND has_table_privilege(%s, c.oid, 'UPDATE, DELETE, TRUNCATE')"
    )
    try:
        with psycopg.connect(make_conninfo(dsn, user=OWNER_ROLE, password=PASSWORD)) as owner:
            _install(owner)
            owner.execute("CREATE TABLE notes (id int PRIMARY KEY, site_id bigint NOT NULL)")
            owner.execute("SELECT rls_audit.enable('notes')")
            owner.execute(REGISTRATIONS_WRITTEN_BY_THEIR_OWNERS)
            owner.execute(
                "CREATE OR REPLACE FUNCTION rls._sqlonly_version() RETURNS text LANGUAGE sql IMMUTABLE "
                "SET search_path = pg_catalog, pg_temp AS $$ SELECT '0.0.1'::text $$"
            )
            owner.commit()
            assert owner.execute(writable, (APP_ROLE,)).fetchone() == (["audited_tables", "read_rules"],)

            assert _install(owner) == [
                f"upgraded the SQL-only mode of django_rls from 0.0.1 to {django_rls.EXTENSION_VERSION}"
            ]
            assert owner.execute(writable, (APP_ROLE,)).fetchone() == (None,)
            assert owner.execute(
                "SELECT count(*) FROM pg_policy WHERE polrelid = 'rls_audit.audited_tables'::regclass"
            ).fetchone() == (0,)
            assert owner.execute("SELECT rls_audit.set_read_rule('notes', 'site_id')").fetchone() == (True,)
            assert owner.execute("SELECT table_name::text, missing_triggers FROM rls_audit.status").fetchall() == [
                ("notes", [])
            ]
            assert owner.execute("SELECT rls_audit.disable('notes')").fetchone() == (True,)
            owner.commit()
    finally:
        admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
