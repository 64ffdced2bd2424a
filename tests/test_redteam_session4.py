"""Red team, session 4: what other sites' requests leave where injected SQL can read it.

Each attack runs as the application role: SQL injected into a request of site 1
(the deliberately injectable view of tests/views.py), statement-bound with no key
and in signed mode (the SQL-only mode: signed only, tests/modes.py), while a
request of site 2 runs on another connection, as Django runs it, through either
binding. The holes PostgreSQL leaves open to every session of one role, and that
django_rls cannot close from the application, are strict xfails whose reasons say
what leaks; docs/security.md ("What the context does not protect") says the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.db import connections, transaction
from psycopg import sql

import django_rls
from tests.conftest import wait_for
from tests.modes import SQL_MODE, library_only
from tests.roles import APP_ROLE, PASSWORD

H1 = "megacorp1.test"


def inject(client, sql: str, alias: str = "default") -> dict:
    return client.get("/inject/", {"sql": sql, "alias": alias}, HTTP_HOST=H1).json()


class Site2Request:
    """Run ``work`` as a request of site 2 would, on its own thread and connection, until it returns."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with django_rls.context(site=2):
                self.work()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            connections.close_all()

    def __enter__(self) -> Site2Request:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the site-2 request did not finish"
        if self.error is not None:
            raise self.error


class LockedSite2Note:
    """A site-2 note whose row a superuser session holds locked (FOR UPDATE) until release()."""

    def __init__(self, database) -> None:
        self.conn = psycopg.connect(database.admin)
        self.id = self.conn.execute("SELECT min(id) FROM testapp_note WHERE site_id = 2").fetchone()[0]
        self.conn.execute("SELECT 1 FROM testapp_note WHERE id = %s FOR UPDATE", (self.id,))

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


@pytest.fixture
def locked_site2_note(database) -> Iterator[LockedSite2Note]:
    locked = LockedSite2Note(database)
    yield locked
    locked.release()


def wait_until_waiting(admin_conn: psycopg.Connection, text: str) -> None:
    """Wait until a session of the application role waits for a lock in a statement containing text."""

    def seen() -> None:
        row = admin_conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock' AND query LIKE %s",
            (APP_ROLE, f"%{text}%"),
        ).fetchone()
        assert row is not None

    wait_for(seen)


CLIENT_SIDE_VALUES_SHOW = pytest.mark.xfail(
    strict=True,
    reason=(
        "open: with Django's default client-side binding a query's values are part of its text, and "
        "PostgreSQL shows every session of a role the statements its other sessions run (pg_stat_activity.query): "
        "SQL injected into a request of site 1 reads the values of site 2's statements while they run; "
        "server-side binding sends them apart from the text"
    ),
)


@pytest.mark.parametrize(
    "alias",
    [
        pytest.param("default", id="client-side binding", marks=CLIENT_SIDE_VALUES_SHOW),
        pytest.param("replica", id="server-side binding"),
    ],
)
def test_a_running_request_of_another_site_shows_no_values_in_pg_stat_activity(
    injection_mode, client, admin_conn, locked_site2_note, alias
):
    from tests.testapp.models import Note

    secret = "site2 secret s4a"

    def site2() -> None:
        with transaction.atomic(using=alias):
            notes = Note.objects.using(alias).select_for_update()
            list(notes.filter(pk=locked_site2_note.id).exclude(body=secret))

    with Site2Request(site2):
        try:
            wait_until_waiting(admin_conn, "FOR UPDATE")
            result = inject(
                client,
                "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%FOR UPDATE%'",
            )
        finally:
            locked_site2_note.release()
    assert "FOR UPDATE" in result["outcome"], result  # the attacker sees the other request's statement
    assert secret not in result["outcome"], result


@pytest.fixture
def pg_stat_statements(admin_conn: psycopg.Connection) -> None:
    if not admin_conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone():
        pytest.skip("pg_stat_statements is not installed on this server")


# PostgreSQL 16 and later replace the constants of utility statements too (a DECLARE's as well).
DECLARE_VALUES_KEPT = (
    "open before PostgreSQL 16: pg_stat_statements keeps utility statements as sent (it replaces no constant in "
    "them), and Django's client-side binding writes a named cursor's values into its DECLARE: every later session "
    "of the application role reads them (pg_stat_statements shows a role its own statements), long after site 2's "
    "request ended"
)


@pytest.mark.parametrize(
    "alias", [pytest.param("default", id="client-side binding"), pytest.param("replica", id="server-side binding")]
)
def test_finished_requests_of_another_site_leave_no_values_in_pg_stat_statements(
    injection_mode, client, admin_conn, pg_stat_statements, alias, request
):
    if alias == "default" and admin_conn.info.server_version < 160000:
        request.applymarker(pytest.mark.xfail(strict=True, reason=DECLARE_VALUES_KEPT))
    from tests.testapp.models import Note

    secret = f"site2 secret s4b {alias}"
    admin_conn.execute("SELECT pg_stat_statements_reset()")

    def site2() -> None:
        Note.objects.using(alias).filter(body=secret).count()  # a planned statement: its constants are replaced
        with transaction.atomic(using=alias):  # a named cursor: DECLARE … FOR SELECT …
            list(Note.objects.using(alias).filter(body=secret).iterator(chunk_size=10))

    with Site2Request(site2):
        pass
    result = inject(client, "SELECT query FROM pg_stat_statements WHERE query LIKE '%testapp_note%'")
    assert "DECLARE" in result["outcome"], result  # the attacker reads site 2's statements
    assert secret not in result["outcome"], result


@pytest.fixture
def skewed_table(owner_conn: psycopg.Connection) -> Iterator[str]:
    """Site 1: 1,000 notes, every body different; site 2: 1,000 notes, 400 of them one secret body. Analyzed."""
    owner_conn.execute("DROP TABLE IF EXISTS s4_notes")
    owner_conn.execute("CREATE TABLE s4_notes (id serial PRIMARY KEY, site_id bigint NOT NULL, body text NOT NULL)")
    owner_conn.execute(f"GRANT SELECT ON s4_notes TO {APP_ROLE}")
    owner_conn.execute(
        "INSERT INTO s4_notes (site_id, body) SELECT 1, 'site1 note ' || i FROM generate_series(1, 1000) i "
        "UNION ALL SELECT 2, CASE WHEN i <= 400 THEN 'site2 merger plan' ELSE 'site2 note ' || i END "
        "FROM generate_series(1, 1000) i"
    )
    owner_conn.execute("SELECT rls.protect_by_site('s4_notes', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("ANALYZE s4_notes")
    yield "s4_notes"
    owner_conn.execute("DROP TABLE s4_notes")


@pytest.mark.xfail(
    strict=True,
    reason=(
        "open: the planner estimates a qual with a leakproof operator (text =, integer =) from the column's "
        "statistics of every site's rows, even under row level security, and EXPLAIN shows the estimate: site 1 "
        "learns that a value is frequent among rows it cannot see (a most-common value of site 2) and how many "
        "rows another site has; PostgreSQL offers no setting that hides statistics from a role"
    ),
)
def test_explain_estimates_tell_nothing_of_another_sites_values(app_conn, skewed_table):
    def estimate(body: str) -> float:
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context('1', NULL)")
            plan = app_conn.execute(
                "EXPLAIN (FORMAT JSON) SELECT * FROM s4_notes WHERE body = %s", (body,), prepare=False
            ).fetchone()[0]
        return plan[0]["Plan"]["Plan Rows"]

    assert app_conn.execute("SELECT count(*) FROM s4_notes WHERE body = 'site2 merger plan'").fetchone()[0] == 0
    # Neither body is among site 1's rows: its own view of the table cannot tell them apart.
    assert estimate("site2 merger plan") == estimate("never written anywhere")


SITE2_NOTE = "megacorp2 note"

HELD = [
    # COPY of the table itself (not of a query) and EXPLAIN ANALYZE of writes run under the policies.
    "COPY testapp_note TO STDOUT",
    "EXPLAIN ANALYZE DELETE FROM testapp_note WHERE site_id = 2",
    "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE testapp_note SET body = 'pwned' WHERE site_id = 2 RETURNING body",
    # A marker that is not the first thing of the text, or behind EXPLAIN, carries nothing.
    "/* first */ /*django_rls:$1*/ SELECT body FROM testapp_note WHERE site_id = 2",
    " /*django_rls:$1*/ SELECT body FROM testapp_note WHERE site_id = 2",
    "EXPLAIN ANALYZE /*django_rls:$1*/ SELECT body FROM testapp_note WHERE site_id = 2",
    # Generic plans: planned without the context, they still read it when they run.
    "SET plan_cache_mode = force_generic_plan; SELECT body FROM testapp_note WHERE site_id = 2",
    # A cursor declared in the request keeps the request's site, whatever is cleared after it.
    "DECLARE c CURSOR FOR SELECT body FROM testapp_note; SELECT rls.clear_context(); FETCH ALL FROM c",
    # The audit log's partitions are not granted: only the log, under its policies, is.
    "SELECT count(*) FROM rls_audit.statements_default",
    # Statistics of protected tables are hidden from the role (the estimates are not: see above).
    "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'testapp_note'",
    "SELECT most_common_vals::text FROM pg_stats_ext WHERE tablename = 'testapp_note'",
    # No object of the role's own can reach a policy's quals or a later request: no schema takes it.
    "CREATE OPERATOR public.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
    "CREATE MATERIALIZED VIEW public.everything AS SELECT * FROM testapp_note",
    "CREATE TEMP VIEW everything AS SELECT * FROM testapp_note",
    "CREATE RULE leak AS ON INSERT TO testapp_note DO ALSO NOTHING",
    "CREATE TRIGGER leak BEFORE INSERT ON testapp_note FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "CREATE STATISTICS public.s ON site_id, body FROM testapp_note",
    # Tokens and uses travel as $1 with either binding: none is left in the statistics to replay.
    "SELECT query FROM pg_stat_statements WHERE query LIKE '%v1.%'",
]


@pytest.fixture
def analyzed_notes(owner_conn: psycopg.Connection) -> None:
    """The notes table analyzed by its owner, so that pg_stats has site 2's bodies to hide."""
    owner_conn.execute("ANALYZE testapp_note")


@pytest.mark.parametrize("attack", HELD)
@pytest.mark.parametrize("alias", ["default", "replica"], ids=["client-side binding", "server-side binding"])
def test_held_attack_stays_inside_site_1(injection_mode, alias, client, admin_conn, analyzed_notes, attack):
    from tests.test_attacks import site2_state
    from tests.testapp.models import Note

    # A request of site 2 first, so that its carried context is there to find.
    with Site2Request(lambda: list(Note.objects.using(alias).all())):
        pass
    before = site2_state(admin_conn)
    result = inject(client, attack, alias)
    assert result["sites"] in ([1], []), result
    assert SITE2_NOTE not in result["outcome"], result
    assert "v1." not in result["outcome"], result
    after = site2_state(admin_conn)
    assert after[:2] == before[:2], "site 2's notes changed"
    assert after[2] >= before[2], "audit rows disappeared"


def test_pg_stats_has_site_2s_bodies_to_hide(live_db, admin_conn, analyzed_notes):
    """What the pg_stats attacks above must not read is there (for the superuser the view hides nothing)."""
    row = admin_conn.execute(
        "SELECT concat(most_common_vals::text, histogram_bounds::text) FROM pg_stats"
        " WHERE tablename = 'testapp_note' AND attname = 'body'"
    ).fetchone()
    assert row is not None and SITE2_NOTE in row[0], row


def app_password_verifier(admin_conn: psycopg.Connection) -> str | None:
    return admin_conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (APP_ROLE,)).fetchone()[0]


@pytest.fixture
def app_password(admin_conn: psycopg.Connection) -> Iterator[None]:
    """Put the app role's password back, whatever a test did to it."""
    yield
    admin_conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(APP_ROLE), sql.Literal(PASSWORD)))


@library_only("statement-bound and signed roles (the library's settings)")
@pytest.mark.parametrize(
    "attack",
    [
        "ALTER ROLE CURRENT_USER PASSWORD 'the attacker knows it now'",
        f"ALTER ROLE {APP_ROLE} PASSWORD 'the attacker knows it now'",
        "ALTER USER CURRENT_USER ENCRYPTED PASSWORD 'the attacker knows it now'",
        "ALTER ROLE CURRENT_USER PASSWORD NULL",
        "DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''the attacker knows it now'''; END $$",
    ],
)
def test_injected_sql_cannot_change_the_app_roles_password(injection_mode, client, admin_conn, app_password, attack):
    """A password chosen by injected SQL would give the attacker a session of its own (A3), in which a
    statement-bound role with no key accepts any context the attacker binds; PASSWORD NULL, or any new
    password, would also lock the application out at its next connection."""
    before = app_password_verifier(admin_conn)
    result = inject(client, attack)
    assert app_password_verifier(admin_conn) == before, result
    assert "cannot change its own password" in result["outcome"], result
    assert result["sites"] == [1]


@library_only("statement-bound and signed roles (the library's settings)")
def test_the_refusals_say_why_and_leave_other_roles_alone(database, bound_app_conn, owner_conn, admin_conn):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        bound_app_conn.execute("ALTER ROLE CURRENT_USER PASSWORD 'chosen'")
    assert "cannot change its own password" in str(refused.value)
    assert "superuser or a CREATEROLE administrator" in refused.value.diag.message_hint
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        bound_app_conn.execute("ALTER ROLE CURRENT_USER SET extra_float_digits = 0")
    assert "cannot change its own role defaults" in str(refused.value)
    assert "Have a superuser run ALTER ROLE ... SET" in refused.value.diag.message_hint
    # A role neither statement-bound nor signing (the owner here) keeps PostgreSQL's rules.
    owner_conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(PASSWORD)))
    owner_conn.execute("ALTER ROLE CURRENT_USER SET extra_float_digits = 0")
    owner_conn.execute("ALTER ROLE CURRENT_USER RESET extra_float_digits")
    # And a superuser still sets the application role's password (as rls_roles does).
    admin_conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(APP_ROLE), sql.Literal(PASSWORD)))


@pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode: the library refuses it (above)")
@pytest.mark.xfail(
    strict=True,
    reason=(
        "open in the SQL-only mode: without the library nothing refuses ALTER ROLE CURRENT_USER PASSWORD "
        "(PostgreSQL lets every role set its own password, and event triggers do not see roles); signed mode still "
        "refuses every context the attacker's own session binds without the key, but the application's next "
        "connection fails"
    ),
)
def test_sql_only_injected_sql_cannot_change_the_app_roles_password(injection_mode, client, admin_conn, app_password):
    before = app_password_verifier(admin_conn)
    result = inject(client, "ALTER ROLE CURRENT_USER PASSWORD 'the attacker knows it now'")
    assert app_password_verifier(admin_conn) == before, result
