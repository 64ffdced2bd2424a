"""The SQL-only mode itself: installed without the library or a superuser, and the holes its context must not have.

These run in the SQL-only pass of ``make test`` (DJANGO_RLS_TEST_MODE=sql, a server
without the django_rls library), but for the ones that show what the installer
refuses where the C extension is installed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls import sqlonly
from django_rls.checks import check_database
from django_rls.tokens import sign_context
from tests.modes import SQL_MODE
from tests.roles import APP_ROLE, BYPASS_ROLE, OWNER_ROLE, TEST_DB

sql_mode_only = pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode (DJANGO_RLS_TEST_MODE=sql)")


def _flip_last(token: str) -> str:
    """The token with another signature: its last character changed to another valid one."""
    return token[:-1] + ("E" if token.endswith("A") else "A")


def context_of(conn: psycopg.Connection) -> dict:
    return conn.execute("SELECT rls.context()").fetchone()[0]


def test_the_installer_refuses_where_the_extension_is(database):
    if SQL_MODE:
        pytest.skip("the C extension is not installed in the SQL-only pass")
    with database.connect("owner") as conn, conn.cursor() as cursor:
        with pytest.raises(sqlonly.InstallError, match="the C library\\) is installed in this database"):
            sqlonly.install(cursor, [])


def test_e029_and_e027_for_a_sql_only_database_on_a_server_with_the_library(admin_conn, extra_alias):
    """The C pass's server preloads the library: a database there with the SQL-only mode is E029;
    one whose SQL-only version differs from the package's is E027."""
    if SQL_MODE:
        pytest.skip("the SQL-only pass's server does not preload the library")
    admin_conn.execute("DROP DATABASE IF EXISTS django_rls_mixed")
    admin_conn.execute("CREATE DATABASE django_rls_mixed")
    try:
        with psycopg.connect(make_conninfo(admin_conn.info.dsn, dbname="django_rls_mixed")) as conn:
            with conn.cursor() as cursor:
                sqlonly.install(cursor, [])
                cursor.execute(
                    "CREATE OR REPLACE FUNCTION rls._sqlonly_version() RETURNS text LANGUAGE sql IMMUTABLE "
                    "AS $$ SELECT '0.0.1'::text $$"
                )
            conn.commit()
        alias = extra_alias("mixed", dbname="django_rls_mixed", user=admin_conn.info.user)
        ids = {m.id for m in check_database(databases=[alias])}
        assert {"django_rls.E029", "django_rls.E027", "django_rls.W012"} <= ids, ids
    finally:
        from django.db import connections

        if "mixed" in connections.settings:
            connections["mixed"].close()
        admin_conn.execute("DROP DATABASE IF EXISTS django_rls_mixed WITH (FORCE)")
        # created by the install, used nowhere else
        admin_conn.execute("DROP ROLE IF EXISTS django_rls_context, django_rls_member")


@sql_mode_only
class TestInstalledWithoutTheLibrary:
    def test_by_a_non_superuser_with_createrole_and_no_library(self, admin_conn, owner_conn):
        assert owner_conn.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (
            False,
            True,
        )
        assert admin_conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'django_rls'").fetchone() == (0,)
        c_functions = admin_conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.pronamespace = 'rls'::regnamespace AND l.lanname = 'c'"
        ).fetchone()
        assert c_functions == (0,)
        assert admin_conn.execute("SELECT current_setting('django_rls.preloaded', true)").fetchone() == (None,)
        assert admin_conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'rls'"
        ).fetchone() == (OWNER_ROLE,)

    def test_the_mode_is_reported(self, app_conn):
        info = app_conn.execute("SELECT rls.extension_info()").fetchone()[0]
        assert (info["mode"], info["library_version"], info["statement_bound"]) == ("sql", None, False)

    def test_rls_verify_names_the_mode(self, live_db):
        out = io.StringIO()
        try:
            call_command("rls_verify", stdout=out)
        except SystemExit:
            pass  # the verdict is rls_verify's own tests' business; the mode line comes first either way
        assert (
            out.getvalue().splitlines()[0].strip()
            == "mode  the SQL-only mode (no library; weaker where docs/security.md says)"
        )

    def test_install_again_changes_nothing_and_adds_a_key_once(self, database):
        with database.connect("owner") as conn, conn.cursor() as cursor:
            key = "k" * 48
            first = sqlonly.install(cursor, [key], APP_ROLE)
            again = sqlonly.install(cursor, [key], APP_ROLE)
            assert "added a signing key" in first and again == []
            cursor.execute(
                "SELECT rls.remove_signing_key(%s), rls.require_signature(%s::regrole, false)", (key, APP_ROLE)
            )

    def test_rls_apply_install_on_a_fresh_database_as_a_createrole_administrator(self, admin_conn, extra_alias):
        """The hosted path: the provider's administrator (CREATEROLE, owner of the database, no superuser)."""
        admin_conn.execute("DROP DATABASE IF EXISTS django_rls_hosted")
        admin_conn.execute("DROP ROLE IF EXISTS hosted_app")
        admin_conn.execute("DROP ROLE IF EXISTS hosted_admin")
        admin_conn.execute("CREATE ROLE hosted_admin LOGIN CREATEROLE PASSWORD 'hosted-password'")
        admin_conn.execute("CREATE DATABASE django_rls_hosted OWNER hosted_admin")
        alias = extra_alias("hosted", dbname="django_rls_hosted", user="hosted_admin", password="hosted-password")
        if admin_conn.info.server_version >= 160000:
            # From PostgreSQL 16 a role cannot make others members of itself, so the administrator cannot put the
            # maintenance role (BYPASSRLS: made by the provider's own mechanism) in itself either; the provider
            # does both. rls_roles then finds the membership in place.
            admin_conn.execute(sql.SQL("GRANT hosted_admin TO {}").format(sql.Identifier(BYPASS_ROLE)))
            # The mode's roles exist already (the test database's owner created them), and only their creator
            # holds the ADMIN option on them, which a second administrator needs to make itself a member.
            from django.db import connections

            with connections[alias].cursor() as cursor, pytest.raises(sqlonly.InstallError, match="WITH ADMIN OPTION"):
                sqlonly.install(cursor, [])
            connections[alias].close()
            admin_conn.execute(
                "GRANT django_rls_context, django_rls_member, django_rls_audit TO hosted_admin WITH ADMIN OPTION"
            )
        out = io.StringIO()
        try:
            call_command(
                "rls_roles", database=alias, app_role="hosted_app", owner_role="hosted_admin", stdout=io.StringIO()
            )
            assert admin_conn.execute(
                "SELECT rolcanlogin, rolbypassrls, rolsuper, has_database_privilege(oid, 'django_rls_hosted', 'TEMP') "
                "FROM pg_roles WHERE rolname = 'hosted_app'"
            ).fetchone() == (True, False, False, False)
            settings = admin_conn.execute(
                "SELECT array_agg(c) FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setrole = 'hosted_app'::regrole"
            ).fetchone()[0]
            assert settings == ["search_path=public, pg_temp"]  # no statement_bound: nothing would read it
            with pytest.raises(CommandError, match="migrate"):  # installed first; the tables come with migrate
                call_command("rls_apply", database=alias, install=True, stdout=out)
            from django.db import connections

            with connections[alias].cursor() as cursor:
                assert sqlonly.installed_mode(cursor) == "sql"
                cursor.execute("SELECT rls.extension_info() ->> 'mode', current_user")
                assert cursor.fetchone() == ("sql", "hosted_admin")
            assert "installed the SQL-only mode" in out.getvalue()
        finally:
            from django.db import connections

            connections[alias].close()
            admin_conn.execute("DROP DATABASE IF EXISTS django_rls_hosted WITH (FORCE)")
            admin_conn.execute("DROP OWNED BY hosted_admin")
            admin_conn.execute("DROP ROLE IF EXISTS hosted_app")
            admin_conn.execute("DROP ROLE IF EXISTS hosted_admin")

    def test_rls_apply_audits_and_leaves_audit_out_only_when_told(self, live_db, admin_conn):
        audited = "SELECT array_agg(table_oid::text ORDER BY 1) FROM rls_audit.audited_tables"
        assert "testapp_note" in admin_conn.execute(audited).fetchone()[0]
        out = io.StringIO()
        call_command("rls_apply", database="owner", check=True, stdout=out)  # nothing left to do
        err = io.StringIO()
        call_command("rls_apply", database="owner", without_audit=True, stdout=io.StringIO(), stderr=err)
        assert "Not audited (--without-audit)" in err.getvalue() and "testapp.Note" in err.getvalue()
        assert "testapp_note" in admin_conn.execute(audited).fetchone()[0]  # left as it was, not disabled

    def test_rls_apply_lets_owner_or_member_read_its_membership_table(self, live_db, admin_conn):
        """OwnerOrMember (testapp.Team) needs one more step in this mode, which rls_apply plans and keeps."""
        call_command("rls_apply", database="owner", stdout=io.StringIO())
        assert admin_conn.execute(
            "SELECT rls.member_of_allowed('testapp_teammember', 'team_id', 'user_id')"
        ).fetchone() == (True,)
        admin_conn.execute("DROP POLICY django_rls_member_of ON testapp_teammember")
        out = io.StringIO()
        with pytest.raises(SystemExit):
            call_command("rls_apply", database="owner", check=True, stdout=out)
        assert "let rls.member_of() read testapp_teammember (team_id, user_id) as django_rls_member" in out.getvalue()
        call_command("rls_apply", database="owner", stdout=io.StringIO())
        call_command("rls_apply", database="owner", check=True, stdout=io.StringIO())

    def test_ids_are_read_as_the_library_and_python_read_them(self, app_conn):
        cases = json.loads((Path(__file__).parent / "id_vectors.json").read_text())["cases"]
        for text, expected in cases:
            try:
                got = app_conn.execute("SELECT rls._canonical_id(%s, 'site')", (text,)).fetchone()[0]
            except psycopg.errors.InvalidParameterValue:
                got = None
            assert got == expected, text


# Each route is run as the app role inside a transaction whose context is site 1; none may
# change the context, and each must be refused by PostgreSQL itself.
FORGING_ROUTES = [
    "INSERT INTO pg_temp.django_rls_transaction_context VALUES ('2', '', NULL, pg_current_xact_id())",
    "UPDATE pg_temp.django_rls_transaction_context SET site = '2'",
    "UPDATE pg_temp.django_rls_transaction_context SET xact = NULL",
    "DELETE FROM pg_temp.django_rls_transaction_context",
    "TRUNCATE pg_temp.django_rls_transaction_context",
    "DROP TABLE pg_temp.django_rls_transaction_context",
    "ALTER TABLE pg_temp.django_rls_transaction_context RENAME TO gone",
    "ALTER TABLE pg_temp.django_rls_transaction_context OWNER TO rls_test_app",
    "ALTER TABLE pg_temp.django_rls_transaction_context ALTER xact SET DEFAULT pg_current_xact_id()",
    "CREATE TRIGGER t BEFORE UPDATE ON pg_temp.django_rls_transaction_context FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "CREATE RULE keep AS ON UPDATE TO pg_temp.django_rls_transaction_context DO INSTEAD NOTHING",
    "SELECT * FROM pg_temp.django_rls_transaction_context",
    "SELECT * FROM pg_temp.django_rls_session_context",
    "INSERT INTO pg_temp.django_rls_session_context VALUES ('2', '')",
    'CREATE TEMP TABLE django_rls_session_context (site text, "user" text, claims jsonb)',
    "CREATE TEMP VIEW django_rls_transaction_context AS SELECT '2'::text AS site, ''::text AS \"user\", NULL::jsonb AS claims",
    "CREATE FUNCTION pg_temp._held() RETURNS record LANGUAGE sql AS $$SELECT '2'::text, ''::text, NULL::jsonb$$",
    "CREATE FUNCTION rls.site_id_forged() RETURNS bigint LANGUAGE sql AS 'SELECT 2::bigint'",
    "CREATE OR REPLACE FUNCTION rls.site_id() RETURNS bigint LANGUAGE sql AS 'SELECT 2::bigint'",
    "SELECT rls._store('2', '', NULL, true)",
    "SELECT rls._ensure_context_tables()",
    "SELECT rls._spend_token('v1.x.y')",
    "SELECT * FROM rls._signing_keys",
    "INSERT INTO rls._signing_keys VALUES ('\\x00'::bytea, '\\x00'::bytea, 'mine')",
    "DELETE FROM rls._spent_tokens",
    "SELECT rls.add_signing_key(repeat('k', 48))",
    "SELECT rls.require_signature('rls_test_app', false)",
    "DELETE FROM rls._signing_roles",
    "SET ROLE django_rls_context",
    "SET SESSION AUTHORIZATION django_rls_context",
    "ALTER FUNCTION rls.set_context(text, text, jsonb, boolean) OWNER TO rls_test_app",
    "PREPARE TRANSACTION 'keep'",
]


@sql_mode_only
class TestTheContextCannotBeForged:
    @pytest.mark.parametrize("route", FORGING_ROUTES)
    def test_route_is_refused(self, app_conn, route):
        with pytest.raises(psycopg.Error):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context('1', '', NULL)")
                app_conn.execute(route)
                # Reached only if the route ran: it must not have changed the context.
                assert context_of(app_conn)["site"] == 1
                raise psycopg.errors.RaiseException("the route ran (and changed nothing)")
        assert context_of(app_conn)["site"] is None

    def test_a_same_named_temp_table_is_refused_and_never_read(self, database, owner_conn):
        """Should the application role keep TEMPORARY by mistake (E017), a table of its own of the
        name still forges nothing: the setters refuse it and the accessors fail to read it."""
        grant = sql.SQL("{} TEMPORARY ON DATABASE {} {} {}")
        role, name = sql.Identifier(APP_ROLE), sql.Identifier(TEST_DB)
        owner_conn.execute(grant.format(sql.SQL("GRANT"), name, sql.SQL("TO"), role))
        try:
            with database.connect("app_unbound") as app:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for type"):
                    app.execute(
                        "CREATE TEMP TABLE django_rls_transaction_context "
                        '(site text, "user" text, claims jsonb, xact xid8, genuine rls._genuine)'
                    )
                app.execute(
                    "CREATE TEMP TABLE django_rls_transaction_context "
                    '(site text, "user" text, claims jsonb, xact xid8, genuine text)'
                )
                app.execute("GRANT SELECT ON pg_temp.django_rls_transaction_context TO PUBLIC")
                app.execute("BEGIN")
                app.execute(
                    "INSERT INTO pg_temp.django_rls_transaction_context VALUES ('2', '', NULL, pg_current_xact_id(), 'django_rls')"
                )
                with pytest.raises(psycopg.errors.UndefinedFunction, match="operator does not exist"):
                    app.execute("SELECT rls.site_id()")
                app.execute("ROLLBACK")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="that django_rls did not create"):
                    with app.transaction():
                        app.execute("SELECT rls.set_context('1', '')")
        finally:
            owner_conn.execute(grant.format(sql.SQL("REVOKE"), name, sql.SQL("FROM"), role))

    def test_discard_and_rollback_only_take_the_context_away(self, app_conn):
        app_conn.execute("SELECT rls.set_context('1', '7', NULL, false)")
        assert context_of(app_conn)["site"] == 1
        app_conn.execute("DISCARD ALL")  # drops the temporary tables: fail closed
        assert context_of(app_conn) == {"site": None, "user": None, "claims": None}
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context('2', '')")
            assert context_of(app_conn)["site"] == 2
        assert context_of(app_conn)["site"] is None

    def test_transaction_scope_ends_at_commit_and_session_scope_at_clear(self, app_conn):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (1,)
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
        app_conn.execute("SELECT rls.set_context('2', '', '{\"role\": \"editor\"}', false)")
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            assert app_conn.execute("SELECT rls.site_id(), rls.claim('role')").fetchone() == (1, None)
        assert app_conn.execute("SELECT rls.site_id(), rls.claim('role')").fetchone() == (2, "editor")
        app_conn.execute("SELECT rls.clear_context()")
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    def test_a_transaction_scoped_context_outside_a_block_lasts_one_statement(self, app_conn):
        app_conn.execute("SELECT rls.set_context('1', '')")  # autocommit: its own transaction
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    def test_the_keys_are_readable_by_the_owner_only_among_these_roles(self, owner_conn, app_conn):
        owner_conn.execute("SELECT count(*) FROM rls._signing_keys")  # a member of django_rls_context
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute("SELECT count(*) FROM rls._signing_keys")

    def test_accessors_refuse_the_wrong_kind_and_strict_raises(self, app_conn):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '')")
            assert (
                str(app_conn.execute("SELECT rls.site_uuid()").fetchone()[0]) == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
            )
            with pytest.raises(psycopg.errors.DatatypeMismatch, match="is a UUID, not an integer"):
                app_conn.execute("SELECT rls.site_id()")
        app_conn.execute("SET django_rls.strict = on")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no site is set"):
            app_conn.execute("SELECT rls.site_id()")


def _table_read_refused(app: psycopg.Connection) -> bool:
    """Whether the app role's direct read of the transaction's context table is refused (it must be, always)."""
    try:
        with app.transaction():
            app.execute("SELECT * FROM pg_temp.django_rls_transaction_context")
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


@sql_mode_only
class TestATransactionContextEndsWithItsTransaction:
    """The transaction's context is a row tagged with its transaction id (sql/sqlonly/10_context.sql,
    rls._held()), not an ON COMMIT DELETE ROWS table: whatever ends the transaction, no later
    transaction of the session sees it, and the app role can neither read the row left behind nor
    keep it alive. Every case runs as the app role."""

    @pytest.fixture
    def deferred(self, owner_conn):
        """A table with a constraint checked at commit, that the app role may write."""
        owner_conn.execute(
            "CREATE TABLE ctx_deferred (id int CONSTRAINT ctx_deferred_once UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )
        owner_conn.execute(sql.SQL("GRANT INSERT, DELETE ON ctx_deferred TO {}").format(sql.Identifier(APP_ROLE)))
        yield "ctx_deferred"
        owner_conn.execute("DROP TABLE ctx_deferred")

    def test_commit_and_rollback(self, app_conn):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '7', '{\"role\": \"editor\"}')")
            assert context_of(app_conn) == {"site": 1, "user": 7, "claims": {"role": "editor"}}
        assert context_of(app_conn) == {"site": None, "user": None, "claims": None}
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context('2', '')")
        assert context_of(app_conn)["site"] is None
        assert _table_read_refused(app_conn)  # the row left behind is nobody's to read

    def test_savepoints_and_subtransactions(self, app_conn):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            with app_conn.transaction(force_rollback=True):  # SAVEPOINT ... ROLLBACK TO SAVEPOINT
                app_conn.execute("SELECT rls.set_context('2', '')")
                assert app_conn.execute("SELECT rls.site_id()").fetchone() == (2,)
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (1,)  # the context before it
            with app_conn.transaction():  # RELEASE SAVEPOINT keeps it
                app_conn.execute("SELECT rls.set_context('3', '')")
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (3,)
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
        with app_conn.transaction():
            with app_conn.transaction(force_rollback=True):
                app_conn.execute("SELECT rls.set_context('2', '')")
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
            # A PL/pgSQL exception block is a subtransaction too.
            app_conn.execute(
                "DO $$BEGIN PERFORM rls.set_context('2', ''); RAISE EXCEPTION 'undo'; "
                "EXCEPTION WHEN raise_exception THEN NULL; END$$"
            )
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    def test_an_error_at_commit(self, app_conn, deferred):
        with pytest.raises(psycopg.errors.UniqueViolation):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context('1', '')")
                app_conn.execute("INSERT INTO ctx_deferred VALUES (1), (1)")  # refused only at COMMIT
                assert app_conn.execute("SELECT rls.site_id()").fetchone() == (1,)
        assert context_of(app_conn)["site"] is None

    def test_set_constraints_all_immediate_neither_ends_nor_keeps_it(self, app_conn, deferred):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            app_conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            app_conn.execute("INSERT INTO ctx_deferred VALUES (1)")
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (1,)
            app_conn.execute("SET CONSTRAINTS ALL DEFERRED")
            app_conn.execute("DELETE FROM ctx_deferred")
        assert context_of(app_conn)["site"] is None

    def test_implicit_transactions(self, app_conn):
        # Autocommit: a statement is a transaction.
        app_conn.execute("SELECT rls.set_context('1', '')")
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
        # A simple query of several statements is one implicit transaction, and only that one.
        cursor = app_conn.execute("SELECT rls.set_context('1', ''); SELECT rls.site_id()")
        assert cursor.nextset() and cursor.fetchone() == (1,)
        assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)
        # Pipeline mode (extended protocol): the statements up to a Sync are one implicit transaction.
        with app_conn.pipeline() as pipeline:
            app_conn.execute("SELECT rls.set_context('1', '')")
            inside = app_conn.execute("SELECT rls.site_id()")
            pipeline.sync()
            after = app_conn.execute("SELECT rls.site_id()")
        assert inside.fetchone() == (1,)
        assert after.fetchone() == (None,)

    def test_discard_temp_and_all(self, app_conn):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            app_conn.execute("DISCARD TEMP")  # drops the tables: fail closed
            assert context_of(app_conn)["site"] is None
            app_conn.execute("SELECT rls.set_context('2', '')")  # made again
            assert context_of(app_conn)["site"] == 2
        assert context_of(app_conn)["site"] is None
        app_conn.execute("SELECT rls.set_context('1', '', NULL, false)")
        app_conn.execute("DISCARD ALL")
        assert context_of(app_conn)["site"] is None
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('2', '')")
            assert context_of(app_conn)["site"] == 2
        assert context_of(app_conn)["site"] is None

    def test_prepare_transaction_is_refused(self, app_conn):
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="operated on temporary objects"):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context('1', '')")
                app_conn.execute("PREPARE TRANSACTION 'keep_the_context'")
        assert context_of(app_conn)["site"] is None

    def test_a_pooled_connections_next_request_sees_none(self, app_conn, deferred):
        """The next request's transaction has a transaction id of its own (it writes) and sets no
        context: it reads none, directly or through the accessors, and the session's own one again
        once the request that set a transaction context over it has ended."""
        app_conn.execute("SELECT rls.set_context('5', '', NULL, false)")
        for site in (1, 2):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context(%s, '9')", (str(site),))
                app_conn.execute("INSERT INTO ctx_deferred VALUES (%s)", (site,))
                assert context_of(app_conn) == {"site": site, "user": 9, "claims": None}
            with app_conn.transaction():
                app_conn.execute("INSERT INTO ctx_deferred VALUES (%s)", (site + 10,))
                assert app_conn.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone() == (True,)
                assert context_of(app_conn) == {"site": 5, "user": None, "claims": None}
        app_conn.execute("SELECT rls.clear_context()")
        with app_conn.transaction():
            app_conn.execute("INSERT INTO ctx_deferred VALUES (100)")
            assert context_of(app_conn) == {"site": None, "user": None, "claims": None}
        assert _table_read_refused(app_conn)

    def test_the_tables_stay_one_page(self, app_conn):
        """The setters update one row in place (HOT, pruned as it goes): a long-lived session's tables
        do not grow with the transactions or requests it ran."""
        for site in range(1, 1001):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context(%s, '')", (str(site),))
        # SCOPE = "session": set and cleared per request.
        for site in range(1, 1001):
            app_conn.execute("SELECT rls.set_context(%s, '', NULL, false)", (str(site),))
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (site,)
            app_conn.execute("SELECT rls.clear_context()")
        assert context_of(app_conn) == {"site": None, "user": None, "claims": None}
        sizes = app_conn.execute(
            "SELECT pg_relation_size('pg_temp.django_rls_transaction_context'), "
            "pg_relation_size('pg_temp.django_rls_session_context')"
        ).fetchone()
        assert sizes == (8192, 8192)


@sql_mode_only
class TestSignedContexts:
    @pytest.fixture
    def signing(self, database, signing_keys):
        with database.connect("owner") as conn:
            conn.execute("SELECT rls.require_signature(%s::regrole)", (APP_ROLE,))
        yield signing_keys[0]
        with database.connect("owner") as conn:
            conn.execute("SELECT rls.require_signature(%s::regrole, false)", (APP_ROLE,))

    def test_a_token_is_accepted_once_on_any_connection(self, database, signing):
        token = sign_context(signing, site=2, user=5)
        with database.connect("app") as first, database.connect("app") as second:
            with first.transaction():
                first.execute("SELECT rls.set_context_signed(%s)", (token,))
                assert first.execute("SELECT rls.site_id(), rls.user_id()").fetchone() == (2, 5)
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                with second.transaction():
                    second.execute("SELECT rls.set_context_signed(%s)", (token,))

    def test_a_token_spent_in_a_rolled_back_transaction_is_not_spent(self, app_conn, signing):
        """A documented limit (docs/security.md): the spend is a row of the transaction that sets the context."""
        token = sign_context(signing, site=2, user=None)
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (2,)

    @pytest.mark.parametrize(
        "forge, detail",
        [
            (lambda key: sign_context("x" * 48, site=2, user=None), "does not match any configured key"),
            (lambda key: _flip_last(sign_context(key, site=2, user=None)), "does not match any configured key"),
            (
                lambda key: sign_context(key, site=2, user=None, now=time.time() - 100, lifetime=30),
                "exp is in the past",
            ),
            (lambda key: sign_context(key, site=2, user=None, lifetime=360), "more than 300 seconds"),
            (lambda key: sign_context(key, site=2, user=None, database="elsewhere"), "another database"),
            (lambda key: "v1.e30." + "A" * 43, "does not match"),
        ],
    )
    def test_forged_or_stale_tokens_are_refused(self, app_conn, signing, forge, detail):
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as refused:
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context_signed(%s)", (forge(signing),))
        assert detail in (refused.value.diag.message_detail or "")
        assert context_of(app_conn)["site"] is None

    def test_a_database_bound_token_works_in_its_database(self, app_conn, signing):
        with app_conn.transaction():
            app_conn.execute(
                "SELECT rls.set_context_signed(%s)", (sign_context(signing, site=1, user=None, database=TEST_DB),)
            )
            assert app_conn.execute("SELECT rls.site_id()").fetchone() == (1,)

    def test_the_unsigned_setter_is_refused_to_a_role_that_must_sign(self, app_conn, signing):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires a signature of this role"):
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context('2', '')")
        assert app_conn.execute("SELECT rls.extension_info() ->> 'require_signature'").fetchone() == ("true",)


@sql_mode_only
class TestPoliciesReadTheContextOncePerStatement:
    def test_accessor_calls_become_sub_selects(self, app_conn):
        rewritten = app_conn.execute(
            "SELECT rls._policy_text($$site_id = rls.site_id() AND owner = rls.user_uuid() AND "
            "rls.claim('role') = 'x' AND \"rls\".user_id() = 1 AND my_rls.site_id() = 2$$)"
        ).fetchone()[0]
        assert rewritten == (
            "site_id = (SELECT rls.site_id()) AND owner = (SELECT rls.user_uuid()) AND "
            "(SELECT rls.claim('role')) = 'x' AND \"rls\".user_id() = 1 AND my_rls.site_id() = 2"
        )

    def test_so_every_policy_of_this_mode_has_a_sub_select(self, owner_conn, sites_table):
        """Why the SQL-only mode can protect no table of Citus's (E030, docs/scale-out.md): Citus refuses a
        sub-select in a policy on its tables, and this mode's plainest policy is parsed into one."""
        assert owner_conn.execute(
            "SELECT rls._policy_reads_tables(%s, rls._policy_text('site_id = rls.site_id()'), NULL), "
            "rls._policy_reads_tables(%s, 'site_id = rls.site_id()', NULL)",
            (sites_table, sites_table),
        ).fetchone() == ("sub-select", None)

    def test_a_callers_planner_setting_does_not_make_every_later_call_jit_compile(self, app_conn):
        """After one transaction with enable_seqscan = off, the accessor's re-planned query looked costly
        enough for JIT, and each later call of the session compiled it again (70 ms instead of microseconds)."""

        def per_call_ms(calls: int = 100) -> float:
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context('42', '')")
                plan = app_conn.execute(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM generate_series(1, {calls}) g "
                    "WHERE g::bigint + rls.site_id() > 0"
                ).fetchone()[0]
            return plan[0]["Execution Time"] / calls

        per_call_ms()
        with app_conn.transaction():
            app_conn.execute("SET LOCAL enable_seqscan = off")
            app_conn.execute("SELECT rls.set_context('42', '')")
            app_conn.execute("SELECT rls.site_id()")
        assert per_call_ms() < 5

    def test_the_plan_evaluates_the_context_in_an_init_plan(self, app_conn, sites_table):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', '')")
            plan = "\n".join(r[0] for r in app_conn.execute("EXPLAIN (COSTS OFF) SELECT * FROM notes").fetchall())
            # PostgreSQL 17 calls the InitPlan's value "(InitPlan 1).col1", earlier majors "$0".
            value = "(InitPlan 1).col1" if app_conn.info.server_version >= 170000 else "$0"
            assert "InitPlan 1" in plan and f"Filter: (site_id = {value})" in plan, plan
            assert app_conn.execute("SELECT count(*), min(site_id) FROM notes").fetchone() == (3, 1)

    def test_a_parallel_scan_keeps_the_init_plan_in_the_leader(self, app_conn, sites_table):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('2', '')")
            for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
                app_conn.execute(sql.SQL("SET LOCAL {} = 0").format(sql.Identifier(setting)))
            plan = "\n".join(r[0] for r in app_conn.execute("EXPLAIN (COSTS OFF) SELECT * FROM notes").fetchall())
            # Gather evaluates the InitPlan in the leader and hands its value to the workers' scan: before 17,
            # EXPLAIN says so as "Params Evaluated"; from 17 on, by listing the InitPlan under Gather itself.
            if app_conn.info.server_version >= 170000:
                assert plan.startswith("Gather") and "Filter: (site_id = (InitPlan 1).col1)" in plan, plan
                assert plan.index("InitPlan 1") < plan.index("Parallel Seq Scan on notes"), plan
            else:
                assert "Params Evaluated: $0" in plan and "Parallel Seq Scan on notes" in plan, plan
            assert app_conn.execute("SELECT count(*), min(site_id) FROM notes").fetchone() == (3, 2)


@sql_mode_only
class TestChecks:
    def test_w012_when_the_app_role_need_not_sign(self, live_db):
        ids = [m.id for m in check_database(databases=["default"])]
        assert "django_rls.W012" in ids

    def test_w013_for_a_policy_that_calls_an_accessor_per_row(self, live_db, owner_conn, sites_table):
        owner_conn.execute('CREATE POLICY per_row ON notes AS RESTRICTIVE FOR SELECT USING (site_id = "rls".site_id())')
        try:
            messages = [m for m in check_database(databases=["default"]) if m.id == "django_rls.W013"]
        finally:
            owner_conn.execute("DROP POLICY per_row ON notes")
        assert len(messages) == 1 and "notes (per_row)" in messages[0].msg
        assert not [m for m in check_database(databases=["default"]) if m.id == "django_rls.W013"]

    def test_e028_when_the_app_role_can_act_as_django_rls_context(self, live_db, owner_conn):
        owner_conn.execute(sql.SQL("GRANT django_rls_context TO {}").format(sql.Identifier(APP_ROLE)))
        try:
            ids = [m.id for m in check_database(databases=["default"])]
            problems = owner_conn.execute("SELECT problem FROM rls.problems WHERE object_name = %s", (APP_ROLE,))
            assert any("member of django_rls_context" in p for (p,) in problems.fetchall())
        finally:
            owner_conn.execute(sql.SQL("REVOKE django_rls_context FROM {}").format(sql.Identifier(APP_ROLE)))
        assert "django_rls.E028" in ids
        assert "django_rls.E028" not in [m.id for m in check_database(databases=["default"])]


@sql_mode_only
def test_a_context_role_that_can_log_in_is_a_problem(admin_conn):
    admin_conn.execute("ALTER ROLE django_rls_context LOGIN")
    try:
        rows = admin_conn.execute(
            "SELECT problem FROM rls.problems WHERE object_name = 'django_rls_context'"
        ).fetchall()
    finally:
        admin_conn.execute("ALTER ROLE django_rls_context NOLOGIN")
    assert rows == [("role django_rls_context can log in, bypasses row level security or is a superuser",)]
    assert admin_conn.execute(
        "SELECT count(*) FROM rls.problems WHERE object_name = 'django_rls_context'"
    ).fetchone() == (0,)
