"""Red team, session 8: the server's refusal of a context to table owners, and locks one site's request can take.

- ext/bypassing_roles.c refused a context to the owner of a protected table, but knew a protected
  table only by the name of its permissive policy (rls_base_select, or rls_base): an owner that
  renamed it (ALTER POLICY ... RENAME, which the owner may run) was given a context again, as
  if it owned nothing django_rls protects (a hole, fixed: a policy is django_rls's by its name,
  by the mark in its comment, or by its reading the context through a function of schema rls,
  which renaming and stripping the comment keep).
- LOCK TABLE needs only UPDATE or DELETE, which the application role has on every table it
  serves: SQL injected into one site's request could LOCK testapp_note IN ACCESS EXCLUSIVE MODE
  (also from a DO block) and stop every other site's reads of the table until its transaction
  ended, SHARE and stronger their writes (a hole, fixed in the library: ext/table_locks.c refuses
  modes stronger than ROW EXCLUSIVE to a statement-bound or signing non-superuser; the SQL-only
  mode cannot see LOCK, docs/security.md says so).
- The audit trail with the library: the application role's rights on rls_audit are SELECT on the
  log and the registrations only, so it takes no lock there beyond a reader's ACCESS SHARE (LOCK
  in SHARE or EXCLUSIVE mode, FOR UPDATE and FOR KEY SHARE are refused), and it cannot read or
  lock the chain's heads or seals: a request holds only its own site's head (no hole found). In
  the SQL-only mode every role may write the registrations rls_audit.audited_tables and
  read_rules (their row level security keeps each table owner to its own rows), so one site's
  request can LOCK them IN ACCESS EXCLUSIVE MODE, and every audited write of every site, whose
  capture reads them, waits until that request ends (a hole, open: strict xfail; closing it
  needs the registrations written without UPDATE and DELETE granted to every role).

Already covered by earlier sessions and not repeated here: pg_stats_ext and EXPLAIN estimates
(session 4), the access counters (session 6, strict xfail), ON CONFLICT on a hidden row
(session 5). Every read of rows runs as the application role; the superuser only sets up. The
file is in the Makefile's SQLONLY_SUITES: what only the library does is marked library_only.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import Database
from tests.modes import library_only
from tests.roles import APP_ROLE, PASSWORD

APP = sql.Identifier(APP_ROLE)
OWNER8 = "rt8_owner"


@pytest.fixture
def own_table_owner(database: Database, admin_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A login role that owns one protected table and nothing else django_rls protects."""
    admin_conn.execute("DROP TABLE IF EXISTS rt8_notes")
    admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(OWNER8)))
    admin_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(OWNER8), sql.Literal(PASSWORD))
    )
    admin_conn.execute("CREATE TABLE rt8_notes (id int PRIMARY KEY, site_id bigint NOT NULL, body text)")
    admin_conn.execute("INSERT INTO rt8_notes VALUES (1, 1, 'mine'), (2, 2, 'theirs')")
    admin_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON rt8_notes TO {}").format(APP))
    admin_conn.execute("SELECT rls.protect_by_site('rt8_notes', to_role => %s)", (APP_ROLE,))
    admin_conn.execute(sql.SQL("ALTER TABLE rt8_notes OWNER TO {}").format(sql.Identifier(OWNER8)))
    with psycopg.connect(make_conninfo(database.owner, user=OWNER8, password=PASSWORD), autocommit=True) as conn:
        yield conn
    admin_conn.execute("DROP TABLE rt8_notes")
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(OWNER8)))


def _set_context_as(conn: psycopg.Connection) -> str:
    with conn.transaction(force_rollback=True):
        try:
            conn.execute("SELECT rls.set_context('1', NULL)")
        except psycopg.Error as exc:
            return exc.sqlstate or "?"
    return "accepted"


@library_only("the server refuses a context to roles the policies do not limit (ext/bypassing_roles.c)")
@pytest.mark.parametrize("disguise", ["renamed", "renamed, comment stripped", "every policy renamed and stripped"])
def test_an_owner_who_renamed_the_policies_is_still_refused_a_context(own_table_owner, disguise):
    owner = own_table_owner
    assert _set_context_as(owner) == "42501"
    names = [row[0] for row in owner.execute("SELECT polname FROM pg_policy WHERE polrelid = 'rt8_notes'::regclass")]
    renamed = names if disguise.startswith("every") else ["rls_base_select"]
    for name in renamed:
        owner.execute(
            sql.SQL("ALTER POLICY {} ON rt8_notes RENAME TO {}").format(
                sql.Identifier(name), sql.Identifier(f"x_{name}")
            )
        )
        if "stripped" in disguise:
            owner.execute(sql.SQL("COMMENT ON POLICY {} ON rt8_notes IS NULL").format(sql.Identifier(f"x_{name}")))
    assert _set_context_as(owner) == "42501"


STRONG_MODES = ["SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"]
WEAK_MODES = ["ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE"]


def _read_as_site_2(app_conn: psycopg.Connection) -> str:
    """What a site-2 request gets from testapp_note while the lock is held: its rows, or the lock wait's end."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SET LOCAL lock_timeout = '200ms'")
        app_conn.execute("SELECT rls.set_context('2', NULL)")
        try:
            count = app_conn.execute("SELECT count(*) FROM testapp_note").fetchone()[0]
            return f"read {count} rows"
        except psycopg.errors.LockNotAvailable:
            return "blocked"


@library_only(
    "the LOCK refusal is a ProcessUtility hook (ext/table_locks.c); docs/security.md says what the SQL-only mode leaves"
)
@pytest.mark.parametrize(
    "route", ["LOCK TABLE testapp_note IN {} MODE", "DO $$BEGIN LOCK TABLE testapp_note IN {} MODE; END$$"]
)
@pytest.mark.parametrize("mode", STRONG_MODES)
def test_one_sites_request_cannot_lock_a_table_against_the_other_sites(live_db, bound_app_conn, app_conn, route, mode):
    with bound_app_conn.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            bound_app_conn.execute(route.format(mode))
        assert "stronger than ROW EXCLUSIVE" in str(refused.value)
        assert "FOR UPDATE" in refused.value.diag.message_hint
        assert _read_as_site_2(app_conn).startswith("read ")


@pytest.mark.parametrize("mode", WEAK_MODES)
def test_the_row_level_lock_modes_stay_allowed_and_block_no_site(live_db, bound_app_conn, app_conn, mode):
    with bound_app_conn.transaction(force_rollback=True):
        bound_app_conn.execute(f"LOCK TABLE testapp_note IN {mode} MODE")
        assert _read_as_site_2(app_conn).startswith("read ")


@pytest.mark.parametrize("registration", ["rls_audit.audited_tables", "rls_audit.read_rules"])
def test_one_sites_request_cannot_lock_the_audit_registrations_against_every_audited_write(
    live_db, database, app_conn, registration
):
    with database.connect("app") as locker, locker.transaction(force_rollback=True):
        try:
            locker.execute(f"LOCK TABLE {registration} IN ACCESS EXCLUSIVE MODE")
            locked = True
        except psycopg.errors.InsufficientPrivilege:
            locked = False
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SET LOCAL lock_timeout = '200ms'")
            app_conn.execute("SELECT rls.set_context('2', NULL)")
            app_conn.execute("INSERT INTO testapp_note (site_id, body) VALUES (2, 'audited write of site 2')")
        assert not locked


@library_only(
    "the SQL-only mode grants every role INSERT on rls_audit._requests, a table owner's requests to change "
    "its auditing (LOCK: ROW EXCLUSIVE at most); test_sqlonly_audit.py checks its rights there"
)
def test_the_app_role_takes_no_lock_on_the_audit_trail_beyond_reading_it(bound_app_conn, admin_conn):
    """Its only rights on rls_audit are SELECT on the views and the registrations: ACCESS SHARE, as any reader.
    The chain's heads and seals are not even readable, so no request can lock another site's head."""
    writable = admin_conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('rls', 'rls_audit') AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
        "AND (has_table_privilege(%s, c.oid, 'UPDATE, DELETE, TRUNCATE, INSERT, REFERENCES, TRIGGER') "
        "     OR (c.relname IN ('chain_heads', 'seals') AND has_table_privilege(%s, c.oid, 'SELECT')))",
        (APP_ROLE, APP_ROLE),
    ).fetchall()
    assert writable == []
    for statement in [
        "LOCK TABLE rls_audit.log IN SHARE MODE",
        "LOCK TABLE rls_audit.audited_tables IN EXCLUSIVE MODE",
        "SELECT 1 FROM rls_audit.log FOR KEY SHARE",
        "SELECT 1 FROM rls_audit.trails FOR UPDATE",
    ]:
        with bound_app_conn.transaction(force_rollback=True), pytest.raises(psycopg.errors.InsufficientPrivilege):
            bound_app_conn.execute(statement)
