"""A context carried by the statement itself: the /*django_rls:$1*/ marker, as the app role.

The marker lets an autocommit query carry its own context in bound parameter $1, instead
of BEGIN, rls.set_context(), the query and COMMIT (ext/statement.c).
"""

from __future__ import annotations

import json
import re
import tempfile
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.string import StrDumper

from django_rls.tokens import sign_context
from tests.conftest import APP_ROLE

MARKER = "/*django_rls:%s*/ "


class Text(str):
    """A str bound as type text (plain str goes as 'unknown', which an unused $1 cannot be)."""


class TextDumper(StrDumper):
    oid = psycopg.adapters.types["text"].oid


@pytest.fixture
def conn(app_conn: psycopg.Connection) -> psycopg.Connection:
    app_conn.adapters.register_dumper(Text, TextDumper)
    return app_conn


def unsigned(site=None, user=None, claims=None) -> Text:
    return Text(json.dumps({"site": site, "user": user, "claims": claims}))


def carried(conn: psycopg.Connection, parameter: str, query: str, params: tuple = ()) -> list[tuple]:
    return conn.execute(MARKER + query, (parameter, *params)).fetchall()


def test_autocommit_statement_runs_with_its_context_and_leaves_nothing(conn, sites_table):
    rows = carried(conn, unsigned(site=2, user=7), f"SELECT DISTINCT site_id, rls.user_id() FROM {sites_table}")
    assert rows == [(2, 7)]
    assert conn.execute("SELECT rls.context()").fetchone()[0] == {"site": None, "user": None, "claims": None}


def test_planner_sees_the_site(conn, owner_conn):
    """The context is applied before planning: each site gets its own row estimate."""
    owner_conn.execute(
        "CREATE TABLE carried_skew AS SELECT g AS id, CASE WHEN g <= 10 THEN 2 ELSE 1 END AS site_id "
        "FROM generate_series(1, 20000) g"
    )
    owner_conn.execute(sql.SQL("GRANT SELECT ON carried_skew TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute("SELECT rls.protect_by_site('carried_skew', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("ANALYZE carried_skew")
    try:

        def estimate(site: int) -> int:
            [(plan,)] = carried(conn, unsigned(site=site), "EXPLAIN (FORMAT JSON) SELECT * FROM carried_skew")
            return plan[0]["Plan"]["Plan Rows"]

        assert estimate(1) > 15000
        assert estimate(2) < 100
    finally:
        owner_conn.execute("DROP TABLE carried_skew")


def test_the_same_unsigned_context_statement_after_statement(conn, sites_table):
    """The backend keeps the last context it parsed: each statement still gets exactly the context it carries."""
    query = f"SELECT DISTINCT site_id, rls.user_id(), rls.claim('role') FROM {sites_table}"
    first, second = unsigned(site=1, user=7, claims={"role": "a"}), unsigned(site=2, user=8)
    for parameter, expected in [
        (first, (1, 7, "a")),
        (first, (1, 7, "a")),
        (second, (2, 8, None)),
        (first, (1, 7, "a")),
    ]:
        assert carried(conn, parameter, query) == [expected]
        assert conn.execute("SELECT rls.site_id()").fetchone() == (None,)  # and it ends with its statement
    for _ in range(2):  # a parse that failed kept nothing: refused again
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid site identifier"):
            carried(conn, unsigned(site="x", user=7), query)
    assert carried(conn, first, query) == [(1, 7, "a")]
    with conn.transaction():
        assert carried(conn, second, query) == [(2, 8, None)]
        assert carried(conn, first, query) == [(1, 7, "a")]


def test_in_a_transaction_the_context_lasts_until_commit(conn):
    with conn.transaction():
        assert carried(conn, unsigned(site=5, claims={"role": "editor"}), "SELECT rls.site_id()") == [(5,)]
        assert conn.execute("SELECT rls.claim('role')").fetchone() == ("editor",)
    assert conn.execute("SELECT rls.site_id()").fetchone() == (None,)


def test_rollback_to_savepoint_restores_the_earlier_context(conn):
    with conn.transaction():
        carried(conn, unsigned(site=1), "SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            carried(conn, unsigned(site=2), "SELECT 1 / 0")
        assert conn.execute("SELECT rls.site_id()").fetchone() == (1,)


def test_signed_token_is_verified_and_spent_once(conn, signing_keys):
    token = Text(sign_context(signing_keys[0], site=3, user=4))
    assert carried(conn, token, "SELECT rls.site_id(), rls.user_id()") == [(3, 4)]
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
        carried(conn, token, "SELECT rls.site_id()")
    forged = Text(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid django_rls context token"):
        carried(conn, forged, "SELECT 1")


def test_signed_token_with_prepared_generic_plan(conn, signing_keys, sites_table):
    query = MARKER + f"SELECT count(*) FROM {sites_table} WHERE site_id = %s"
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for site in (1, 2, 1, 2, 1, 2):  # prepared after the first run: later runs skip the planner
            token = Text(sign_context(signing_keys[0], site=site, user=None))
            assert conn.execute(query, (token, site), prepare=True).fetchone() == (3,)


def test_a_generic_plan_takes_the_carried_site_for_an_unknown_value_not_null(conn, owner_conn):
    """A client's prepared statement is planned once without its parameters, so before its context.

    Estimated as NULL, the policy's site_id = rls.site_id() would match no row and the site
    index would look as good as the primary key: the cached plan would read a whole site for
    each lookup.  Estimated as any site, the primary key wins.
    """
    owner_conn.execute(
        "CREATE TABLE carried_lookup AS SELECT g AS id, g % 100 + 1 AS site_id, 'item ' || g AS name "
        "FROM generate_series(1, 100000) g"
    )
    owner_conn.execute("ALTER TABLE carried_lookup ADD PRIMARY KEY (id)")
    owner_conn.execute("CREATE INDEX carried_lookup_site ON carried_lookup (site_id)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON carried_lookup TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute("SELECT rls.protect_by_site('carried_lookup', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("ANALYZE carried_lookup")
    scans = (
        "SELECT pg_stat_get_xact_numscans('carried_lookup_pkey'::regclass),"
        " pg_stat_get_xact_numscans('carried_lookup_site'::regclass)"
    )
    query = MARKER + "SELECT name FROM carried_lookup WHERE id = %s"
    try:
        with conn.transaction():
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            for site, row in ((43, 4242), (44, 4243), (43, 4243)):
                found = conn.execute(query, (unsigned(site=site), row), prepare=True).fetchall()
                assert found == ([(f"item {row}",)] if row % 100 + 1 == site else [])
            assert conn.execute(scans).fetchone() == (3, 0)
            [(generic,)] = conn.execute(
                "SELECT generic_plans FROM pg_prepared_statements WHERE statement LIKE %s", ("%carried_lookup%",)
            ).fetchall()
            assert generic == 3
    finally:
        owner_conn.execute("DROP TABLE carried_lookup")


def test_a_generic_plan_reads_each_statements_carried_site_once(conn, sites_table):
    """The policy's rls.site_id() is an initplan the executor runs after applying the marker's context."""
    query = MARKER + f"SELECT count(*), min(site_id), max(site_id) FROM {sites_table}"
    plan = [
        line for (line,) in carried(conn, unsigned(site=1), f"EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM {sites_table}")
    ]
    assert any(line.strip() == "Output: rls.site_id()" for line in plan), plan
    assert not any("Filter" in line and "rls.site_id()" in line for line in plan), plan
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for site in (1, 2, 1, 2):
            assert conn.execute(query, (unsigned(site=site),), prepare=True).fetchone() == (3, site, site)


def test_parallel_workers_get_the_carried_context(conn, owner_conn):
    owner_conn.execute("CREATE TABLE carried_big AS SELECT g AS id, g % 4 AS site_id FROM generate_series(1, 200000) g")
    owner_conn.execute(sql.SQL("GRANT SELECT ON carried_big TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute("SELECT rls.protect_by_site('carried_big', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("ANALYZE carried_big")
    try:
        with conn.transaction():
            for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0"):
                conn.execute(f"SET LOCAL {setting}")
            plan = carried(conn, unsigned(site=3), "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM carried_big")
            assert any("Workers Launched: " in line and "0" not in line.split(":")[1] for (line,) in plan)
        assert carried(conn, unsigned(site=3), "SELECT count(*) FROM carried_big") == [(50000,)]
    finally:
        owner_conn.execute("DROP TABLE carried_big")


def test_queries_inside_functions_cannot_carry_a_context(conn, owner_conn):
    # The app role can create functions nowhere (no CREATE on a schema, no TEMPORARY): the owner does.
    owner_conn.execute(
        "CREATE FUNCTION public.sneak(p text) RETURNS bigint LANGUAGE plpgsql AS $$ "
        "DECLARE r bigint; BEGIN EXECUTE '/*django_rls:$1*/ SELECT rls.site_id()' INTO r USING p; RETURN r; END $$"
    )
    try:
        assert conn.execute("SELECT public.sneak(%s)", (unsigned(site=9),)).fetchone() == (None,)
    finally:
        owner_conn.execute("DROP FUNCTION public.sneak(text)")


def test_unsigned_context_refused_when_signatures_are_required(conn, admin_conn):
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    try:
        fresh = psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)
        fresh.adapters.register_dumper(Text, TextDumper)
        with fresh, pytest.raises(psycopg.errors.InsufficientPrivilege, match="require_signature is on"):
            carried(fresh, unsigned(site=1), "SELECT 1")
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))


@pytest.mark.parametrize(
    ("parameter", "error", "message"),
    [
        (unsigned(site="x"), psycopg.errors.InvalidParameterValue, "invalid site identifier"),
        (Text('{"site": 1, "tenant": 2}'), psycopg.errors.InvalidParameterValue, 'unknown member "tenant"'),
        (Text("[1]"), psycopg.errors.InvalidParameterValue, "must be a JSON object"),
        (Text('{"claims": 3}'), psycopg.errors.InvalidParameterValue, "claims must be a JSON object"),
        (Text('{"site": [1]}'), psycopg.errors.InvalidParameterValue, 'member "site" must be a string'),
    ],
)
def test_bad_unsigned_context_is_an_error(conn, parameter, error, message):
    with pytest.raises(error, match=message) as info:
        carried(conn, parameter, "SELECT 1")
    assert info.value.diag.message_hint


def test_marker_needs_a_text_parameter(conn):
    with pytest.raises(psycopg.errors.DatatypeMismatch, match=r"\$1 must be non-null text"):
        conn.execute(MARKER + "SELECT 1", (42,))
    with pytest.raises(psycopg.errors.UndefinedParameter, match="no bound parameter"):
        conn.execute("/*django_rls:$1*/ SELECT 1")


class TestOnlyTheClientsBindCounts:
    """A marker counts only with the parameters the client bound (ext/statement.c, IsClientBound).

    Each case below runs, as the app role in unsigned mode, server-side text that starts
    with the marker and is equal to the client's statement, with parameters that SQL chose.
    """

    def test_prepare_and_execute_in_one_simple_query(self, conn):
        with pytest.raises(psycopg.errors.UndefinedParameter, match="no bound parameter"):
            conn.execute("/*django_rls:$1*/ PREPARE p(text) AS SELECT rls.site_id(); EXECUTE p('{\"site\": 2}')")
        assert conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    def test_do_block_running_the_query_again_with_using(self, conn):
        with pytest.raises(psycopg.errors.UndefinedParameter, match="no bound parameter"):
            conn.execute(
                "/*django_rls:$1*/ DO $$BEGIN IF current_setting('x.again', true) IS NULL THEN "
                "PERFORM set_config('x.again', '1', true); "
                "EXECUTE current_query() USING '{\"site\": 2}'::text; END IF; END$$; "
                "SELECT rls.site_id()"
            )
        assert conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    def test_bound_do_block_running_its_text_again(self, conn):
        with conn.transaction():
            conn.execute(
                MARKER + "DO $$BEGIN IF current_setting('x.again', true) IS NULL THEN "
                "PERFORM set_config('x.again', '1', true); "
                "EXECUTE current_query() USING '{\"site\": 2}'::text; END IF; END$$",
                (unsigned(site=1),),
            )
            assert conn.execute("SELECT rls.site_id()").fetchone() == (None,)

    @pytest.mark.parametrize(
        "again",
        [
            "EXECUTE current_query() USING p",  # SPI, no portal
            "FOR r IN EXECUTE current_query() USING p LOOP END LOOP",  # SPI cursor: a portal of its own
        ],
    )
    def test_function_running_the_clients_statement_again(self, conn, owner_conn, again):
        """The injection case: code inside a carried statement re-runs that very text with its own $1."""
        owner_conn.execute(
            "CREATE FUNCTION public.run_again(p text) RETURNS bigint LANGUAGE plpgsql AS $$ "
            "DECLARE r record; BEGIN "
            "IF current_setting('x.again', true) IS NULL THEN "
            f"PERFORM set_config('x.again', '1', true); {again}; END IF; "
            "RETURN rls.site_id(); END $$"
        )
        owner_conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION public.run_again(text) TO {}").format(sql.Identifier(APP_ROLE))
        )
        try:
            with conn.transaction():
                rows = carried(conn, unsigned(site=1), "SELECT public.run_again('{\"site\": 2}')")
                assert rows == [(1,)]
                assert conn.execute("SELECT rls.site_id()").fetchone() == (1,)
        finally:
            owner_conn.execute("DROP FUNCTION public.run_again(text)")

    def test_prepared_from_a_bound_statement_then_executed(self, conn):
        with conn.transaction():
            conn.execute(MARKER + "PREPARE again(text) AS SELECT rls.site_id()", (unsigned(site=1),))
            assert conn.execute("EXECUTE again('{\"site\": 2}')").fetchone() == (None,)
            conn.execute("DEALLOCATE again")

    def test_explain_of_a_bound_statement_still_carries(self, conn):
        plan = carried(
            conn, unsigned(site=4), "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT rls.site_id()"
        )
        assert plan and carried(conn, unsigned(site=4), "SELECT rls.site_id()") == [(4,)]


@pytest.mark.django_db
def test_preloaded_server_says_so_and_the_bridge_carries():
    """With the library preloaded (this cluster), the bridge relies on the marker; test_late_load covers the rest."""
    from django.db import connections

    from django_rls.database import marker_supported

    connection = connections["default"]
    connection.ensure_connection()
    assert connection.connection.info.parameter_status("django_rls.preloaded") == "on"
    assert marker_supported(connection) is True


def _statements_sent(connection: Any, run: Any) -> list[str]:
    """The messages with SQL (simple Query, extended Parse) ``run()`` sends on ``connection``, from libpq's trace."""
    from psycopg import pq

    with tempfile.TemporaryFile("w+") as trace:
        pgconn = connection.connection.pgconn
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            run()
        finally:
            pgconn.untrace()
        trace.seek(0)
        return [line for line in trace.read().splitlines() if re.match(r"F\t\d+\t(Query|Parse)\t", line)]


def test_autocommit_queries_without_citus_carry_alone(live_db, monkeypatch):
    """The transaction of its own a Citus coordinator needs (database.py, ``citus_coordinator``) is not taken on a
    server without Citus: each autocommit query carries its context alone. The server reports
    django_rls.citus = off at connection start, so the bridge asks nothing: one query, one statement sent."""
    from django.db import connections

    import django_rls
    from django_rls import database
    from tests.testapp.models import Note

    wrapped: list[str] = []
    original = database.ContextWrapper._execute_in_transaction

    def spy(*args, **kwargs):
        wrapped.append(str(args[4]))
        return original(*args, **kwargs)

    monkeypatch.setattr(database.ContextWrapper, "_execute_in_transaction", staticmethod(spy))
    connection = connections["default"]
    connection.ensure_connection()
    assert connection.connection.info.parameter_status(database.CITUS_SETTING) == "off"
    with django_rls.context(site=2):
        assert connection.get_autocommit()
        sent = _statements_sent(connection, lambda: {note.site_id for note in Note.objects.all()})
        assert len(sent) == 1 and "testapp_note" in sent[0], sent
        asked = getattr(connection, database._CITUS)
        assert Note.objects.filter(site_id=1).count() == 0
        with connection.cursor() as cursor:
            cursor.execute("SELECT rls.site_id()")
            assert cursor.fetchone() == (2,)
    assert wrapped == []
    assert asked == (connection.connection, False)
    assert getattr(connection, database._CITUS) is asked
    # The control: with the answer a coordinator gives, the same query goes in a transaction of its own.
    setattr(connection, database._CITUS, (connection.connection, True))
    with django_rls.context(site=2):
        assert Note.objects.filter(site_id=2).count() == 3
    assert len(wrapped) == 1 and "COUNT(*)" in wrapped[0], wrapped


def test_without_the_citus_report_the_bridge_asks_once_per_connection(live_db, monkeypatch):
    """Where django_rls.citus is not reported (a proxy that drops it, an older library) the bridge reads the
    catalog once per connection: the round trip the report saves, on every new connection (per request with
    CONN_MAX_AGE = 0)."""
    from django.db import connections

    import django_rls
    from django_rls import database
    from tests.testapp.models import Note

    connection = connections["default"]
    connection.ensure_connection()
    status = type(connection.connection.info).parameter_status
    monkeypatch.setattr(
        type(connection.connection.info),
        "parameter_status",
        lambda info, name: None if name == database.CITUS_SETTING else status(info, name),
    )
    with django_rls.context(site=2):
        first = _statements_sent(connection, lambda: list(Note.objects.all()))
        second = _statements_sent(connection, lambda: list(Note.objects.all()))
    assert len(first) == 2 and "pg_extension" in first[0] and "testapp_note" in first[1], first
    assert len(second) == 1, second
    assert getattr(connection, database._CITUS) == (connection.connection, False)


def test_the_citus_report_cannot_be_set_by_a_client(database):
    """django_rls.citus is PGC_INTERNAL where the library is loaded: a client can neither change it in its
    session nor start a connection with it (its own correctness is all a false report could cost: a query
    sent without a transaction of its own on a coordinator reads none of the workers' rows)."""
    with database.connect("app_unbound") as conn:
        assert conn.info.parameter_status("django_rls.citus") == "off"
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
            conn.execute("SET django_rls.citus = on")
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
            conn.execute("SELECT set_config('django_rls.citus', 'on', false)")
    with pytest.raises(psycopg.OperationalError, match=r"django_rls\.citus"):
        database.connect("app", options="-c django_rls.citus=on").close()


def test_transaction_control_inside_a_procedure_leaves_the_marker_working(conn, owner_conn):
    owner_conn.execute(
        "CREATE PROCEDURE public.ends_transactions() LANGUAGE plpgsql AS $$ BEGIN ROLLBACK; COMMIT; END $$"
    )
    owner_conn.execute(
        sql.SQL("GRANT EXECUTE ON PROCEDURE public.ends_transactions() TO {}").format(sql.Identifier(APP_ROLE))
    )
    try:
        conn.execute("CALL public.ends_transactions()")
        assert carried(conn, unsigned(site=6), "SELECT rls.site_id()") == [(6,)]
        with pytest.raises(psycopg.errors.UndefinedParameter):
            conn.execute("/*django_rls:$1*/ SELECT 1")
    finally:
        owner_conn.execute("DROP PROCEDURE public.ends_transactions()")


def test_the_bridge_asks_inside_a_transaction_where_a_proxy_hides_the_report(live_db, monkeypatch):
    """A proxy that does not pass django_rls.preloaded on: the bridge asks, even inside the app's transaction."""
    from django.db import connections, transaction

    import django_rls
    from tests import wire

    reported = psycopg.ConnectionInfo.parameter_status
    monkeypatch.setattr(
        psycopg.ConnectionInfo,
        "parameter_status",
        lambda info, name: None if name == "django_rls.preloaded" else reported(info, name),
    )
    connection = connections["default"]
    connection.close()
    connection.ensure_connection()
    with wire.traced(connection) as log, django_rls.context(site=2), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT site_id FROM testapp_note")
            assert cursor.fetchall() == [(2,)]
    assert log.carried == 1 and log.context_statements == 0
    assert any("current_setting" in line for line in log.sent)
    connection.close()
