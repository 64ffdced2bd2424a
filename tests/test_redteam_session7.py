"""Red team, session 7: the Citus autocommit wrapping and rls.problems' view of django_rls's policies, attacked.

- django_rls/database.py ``_execute_in_transaction``: on a Citus coordinator an autocommit query
  goes as ``BEGIN``, a statement that carries the context (or the setter, without the library),
  the query, ``COMMIT``, pipelined. Every injection of tests/test_attacks.py, and injections that
  end or chain that transaction (``COMMIT``, ``ROLLBACK``, ``COMMIT AND CHAIN``, ``PREPARE
  TRANSACTION``, a savepoint rolled back past the context), run through that path with the
  coordinator's answer forced (as tests/test_statement_context.py does), statement-bound with no
  key and signed, through both bindings: none shows or changes another site's rows, and a query
  after a broken-out transaction runs with no context (no rows), never another one (no hole
  found). In the SQL-only mode every autocommit query takes that path through the setter.
- rls.problems reports "policy … was changed outside django_rls" only for policies named as
  django_rls names them: a table owner who renamed rls_base_select and the groups' SELECT policies
  and then widened them to ``true`` opened every site's rows to the application role while
  rls.problems said nothing about the table (a detection hole, fixed: a policy that carries
  django_rls's mark is checked whatever its name, and a renamed one is reported).

Every read of rows runs as the application role; the superuser only sets up and checks. The file
is in the Makefile's SQLONLY_SUITES.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connections
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls import sqlonly
from tests.conftest import Database, unbound_session
from tests.modes import SQL_MODE
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD
from tests.site_tables import site_table
from tests.test_attacks import ATTACKS, SITE2_NOTE, site2_state

# Injections aimed at the transaction the wrapper opens around the query.
BREAKOUTS = [
    "COMMIT",
    "ROLLBACK",
    "END",
    "ABORT",
    "COMMIT AND CHAIN",
    "ROLLBACK AND CHAIN",
    "PREPARE TRANSACTION 'rt7'",
    "COMMIT; SELECT body FROM testapp_note",
    "COMMIT; SELECT rls.set_context('2', NULL); SELECT body FROM testapp_note",
    "COMMIT AND CHAIN; SELECT body FROM testapp_note",
    "SAVEPOINT s; ROLLBACK TO SAVEPOINT s; SELECT body FROM testapp_note",
    "ROLLBACK; BEGIN; SELECT body FROM testapp_note",
    "SELECT body FROM testapp_note WHERE site_id = 2; COMMIT",
]


@pytest.fixture(params=["default", "replica"], ids=["client-side binding", "server-side binding"])
def binding(request):
    return request.param


def _inject_in_autocommit(alias_name: str, attack: str) -> tuple[str, list[int]]:
    """As the inject view does, but in autocommit on a connection the bridge takes for a Citus coordinator."""
    import django_rls
    from django_rls import database

    connection = connections[alias_name]
    connection.ensure_connection()
    assert connection.get_autocommit()
    setattr(connection, database._CITUS, (connection.connection, True))
    outcome = "ok"
    with django_rls.context(site=1):
        try:
            with connection.cursor() as cursor:
                cursor.execute(attack)
                rows: list = []
                while True:
                    if cursor.description:
                        rows = cursor.fetchall()
                    if not cursor.nextset():
                        break
                outcome = repr(rows)
        except Exception as exc:  # the attacker sees the error text too
            outcome = f"error: {exc}"
        try:
            sites = _sites(connection)
        except Exception:
            # cursor.execute() of a COPY leaves psycopg's connection in the COPY (with Django alone too):
            # unusable, as Django finds it at the end of the request. The next connection reads site 1.
            assert "COPY" in attack, attack
            connection.close()
            sites = _sites(connection)
    return outcome, sites


def _sites(connection) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT site_id FROM testapp_note ORDER BY 1")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("attack", ATTACKS + BREAKOUTS)
def test_injections_through_the_coordinators_autocommit_wrapping_stay_inside_site_1(
    injection_mode, binding, admin_conn, attack
):
    from django_rls import database

    wrapped: list[str] = []
    original = database.ContextWrapper._execute_in_transaction

    def spy(*args, **kwargs):
        wrapped.append(str(args[4]))
        return original(*args, **kwargs)

    before = site2_state(admin_conn)
    try:
        database.ContextWrapper._execute_in_transaction = staticmethod(spy)
        outcome, sites = _inject_in_autocommit(binding, attack)
    finally:
        database.ContextWrapper._execute_in_transaction = staticmethod(original)
    assert wrapped[:1] == [attack], wrapped  # the injection itself ran in the wrapper's transaction
    assert sites == [1], (outcome, sites)
    assert SITE2_NOTE not in outcome, outcome
    after = site2_state(admin_conn)
    assert after[:2] == before[:2], "site 2's notes changed"
    assert after[2] >= before[2], "audit rows disappeared"
    # max_prepared_transactions is 0 on the test server: nothing is left prepared
    assert admin_conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)


def test_a_query_after_a_broken_out_transaction_runs_with_no_context(injection_mode):
    """What follows the injected COMMIT is no longer in the wrapper's transaction: it has no context at all."""
    outcome, sites = _inject_in_autocommit("replica", "COMMIT; SELECT count(*) FROM testapp_note; SELECT rls.site_id()")
    if outcome.startswith("error: "):  # one statement per query through the extended protocol: nothing ran
        assert "multiple commands" in outcome or "cannot" in outcome, outcome
    else:
        assert outcome == "[(None,)]", outcome
    assert sites == [1]


# ---------------------------------------------------------------------------------------------
# rls.problems and django_rls's policies under other names.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def renamable(owner_conn: psycopg.Connection) -> Iterator[str]:
    with site_table(
        owner_conn,
        "rt7_notes",
        "id int PRIMARY KEY, site_id bigint NOT NULL, body text",
        "(1, 1, 'mine'), (2, 2, 'theirs')",
    ) as table:
        yield table


def _problems(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT object_name, problem FROM rls.problems WHERE table_name = 'rt7_notes'::regclass AND problem LIKE 'policy %' "
        "ORDER BY 1"
    ).fetchall()


def _app_reads(app_conn: psycopg.Connection) -> list[str]:
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        return [row[0] for row in app_conn.execute("SELECT body FROM rt7_notes ORDER BY id").fetchall()]


def test_django_rls_policies_renamed_and_widened_are_reported(owner_conn, app_conn, renamable):
    assert _problems(owner_conn) == []
    assert _app_reads(app_conn) == ["mine"]
    for name in ("rls_base_select", "rls_site_select"):
        owner_conn.execute(
            sql.SQL("ALTER POLICY {} ON rt7_notes RENAME TO {}").format(
                sql.Identifier(name), sql.Identifier(f"kept_{name}")
            )
        )
        owner_conn.execute(sql.SQL("ALTER POLICY {} ON rt7_notes USING (true)").format(sql.Identifier(f"kept_{name}")))
    owner_conn.commit()
    # What the owner did: every site's rows are open to the application role.
    assert _app_reads(app_conn) == ["mine", "theirs"]
    assert _problems(owner_conn) == [
        (f"kept_{name}", f"policy kept_{name} was renamed and changed outside django_rls")
        for name in ("rls_base_select", "rls_site_select")
    ]


def test_a_django_rls_policy_renamed_alone_is_reported(owner_conn, renamable):
    """Renamed but unchanged, it still filters; but django_rls no longer finds it (rls_apply makes a second one),
    so it is reported too."""
    owner_conn.execute("ALTER POLICY rls_base_select ON rt7_notes RENAME TO quiet")
    owner_conn.commit()
    assert _problems(owner_conn) == [
        ("quiet", "policy quiet was renamed outside django_rls"),
    ]
    # rls.protect puts the one django_rls names back; the renamed copy is still reported until dropped.
    owner_conn.execute("SELECT rls.protect_by_site('rt7_notes', to_role => %s)", (APP_ROLE,))
    assert [row[0] for row in _problems(owner_conn)] == ["quiet"]
    owner_conn.execute("DROP POLICY quiet ON rt7_notes")
    assert _problems(owner_conn) == []


@pytest.mark.skipif(SQL_MODE, reason="the SQL-only mode's membership policy is checked by rls.member_of_allowed()")
def test_the_policies_django_rls_names_are_not_reported_as_renamed(owner_conn, renamable):
    owner_conn.execute("SELECT rls.protect('rt7_notes', 'shown', 'body IS NOT NULL', to_role => %s)", (APP_ROLE,))
    assert _problems(owner_conn) == []


def test_policies_replaced_by_the_owners_own_are_caught_by_rls_verify(live_db):
    """What rls.problems cannot tell (docs/security.md): django_rls's SELECT policies renamed, stripped of their
    mark and widened are the owner's own policies to the catalog; rls_verify compares with the declarations."""
    from django.core.management import call_command

    from tests.test_rls_verify import owner_sql, verify

    try:
        for name in ("rls_base_select", "rls_site_select"):
            owner_sql(f"ALTER POLICY {name} ON testapp_note RENAME TO own_{name}")
            owner_sql(f"COMMENT ON POLICY own_{name} ON testapp_note IS NULL")
            owner_sql(f"ALTER POLICY own_{name} ON testapp_note USING (true)")
        with connections["owner"].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM rls.problems WHERE table_name = 'testapp_note'::regclass AND problem LIKE 'policy %'"
            )
            assert cursor.fetchone() == (0,)
        code, out = verify()
        assert code == 1 and "testapp_note: policy group 'site' is missing or differs" in out, out
    finally:
        for name in ("rls_base_select", "rls_site_select"):
            owner_sql(f"DROP POLICY IF EXISTS own_{name} ON testapp_note")
        call_command("rls_apply", "--prune", verbosity=0)


# ---------------------------------------------------------------------------------------------
# Signed tokens with unusual JSON, signed with a real key: both modes read the same context, or
# both refuse it, with SQLSTATE 28000.
# ---------------------------------------------------------------------------------------------

_SEQUENCE = iter(range(1, 1_000_000))
_ISSUER = secrets.token_urlsafe(16)  # a new issuer for every run: the server remembers what it spent


def _raw_token(key: str, members: str) -> str:
    """A single-use token whose payload is the given JSON text (members, then iat, exp, iss and seq)."""
    import base64
    import hashlib
    import hmac
    import time

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    payload = f'{{{members}, "iat": {now}, "exp": {now + 60}, "iss": "{_ISSUER}", "seq": {next(_SEQUENCE)}}}'
    signed = f"v1.{b64(payload.encode())}"
    return f"{signed}.{b64(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize(
    ("members", "site", "refused"),
    [
        ('"site": 2, "site": 1, "user": 7', "1", None),  # duplicate keys: the last one, as jsonb keeps it
        ('"site": 1e0, "user": 7', "1", None),  # a number is read as jsonb prints it
        ('"site": 12E1, "user": 7', "120", None),
        ('"site": -0, "user": 7', "0", None),
        ('"site": "\\u0032", "user": 7', "2", None),  # an escaped digit is the digit
        ('"site": -9223372036854775808, "user": 7', "-9223372036854775808", None),
        ('"site": 1.0, "user": 7', None, "22023"),  # not an integer
        ('"site": 1.5, "user": 7', None, "22023"),
        ('"site": 9223372036854775808, "user": 7', None, "22023"),  # beyond bigint
        ('"site": -9223372036854775809, "user": 7', None, "22023"),
        ('"site": 1e400, "user": 7', None, "22023"),
        ('"site": true, "user": 7', None, "28000"),
        ('"site": [1], "user": 7', None, "28000"),
        ('"site": {"id": 1}, "user": 7', None, "28000"),
        ('"site": "1 ", "user": 7', None, "22023"),
        ('"site": "\\u0031\\u0000", "user": 7', None, "28000"),  # NUL: jsonb refuses the escape
        ('"site": "\\ud800", "user": 7', None, "28000"),  # an unpaired surrogate
        ('"site": 1, "user": 7, "Site": 2', None, "28000"),  # members are case-sensitive: an unknown one
        ('"site": 1, "user": 7, "claims": [1]', None, "28000"),
        ('"site": 1, "user": 7, "claims": {"a": 1, "a": 2}', "1", None),
    ],
)
def test_unusual_json_in_a_signed_token_reads_the_same_in_both_modes(app_conn, signing_keys, members, site, refused):
    token = _raw_token(signing_keys[0], members)
    if site is None:
        with pytest.raises(psycopg.Error) as error:
            with app_conn.transaction():
                app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
        # 28000 for what only a token holds (a member of the wrong JSON type, JSON jsonb cannot store); an id
        # of the right type but a bad value is refused as rls.set_context() refuses it (22023).
        assert (error.value.sqlstate, bool(error.value.diag.message_hint)) == (refused, True), error.value
    else:
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
            got = app_conn.execute("SELECT rls.site_id()::text, rls.context() -> 'claims'").fetchone()
        assert got[0] == site
        if '"claims"' in members:
            assert got[1] == {"a": 2}
    assert app_conn.execute("SELECT rls.site_id()").fetchone() == (None,)


# ---------------------------------------------------------------------------------------------
# Negative ids: a 64-bit integer may be negative (tests/id_vectors.json), in both modes.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def negative_sites(owner_conn: psycopg.Connection) -> Iterator[str]:
    with site_table(
        owner_conn,
        "rt7_negative",
        "id int PRIMARY KEY, site_id bigint NOT NULL, body text",
        "(1, -7, 'minus seven'), (2, 7, 'seven')",
        audited=True,
    ) as table:
        yield table


def test_a_negative_id_is_an_integer_in_both_modes(app_conn, negative_sites):
    """The SQL-only accessors and audit capture took any id holding a '-' for a UUID: rls.site_id() of site -7
    raised "the django_rls site is a UUID", and an audited write failed casting '-7' to uuid (fixed: a held id
    is canonical, and only a UUID is 36 characters long)."""
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('-7', '-9223372036854775808')")
        assert app_conn.execute("SELECT rls.site_id(), rls.user_id()").fetchone() == (-7, -9223372036854775808)
        assert app_conn.execute("SELECT rls.context()").fetchone()[0] == {
            "site": -7,
            "user": -9223372036854775808,
            "claims": None,
        }
        assert app_conn.execute("SELECT body FROM rt7_negative").fetchall() == [("minus seven",)]
        app_conn.execute("UPDATE rt7_negative SET body = 'changed'")
        with pytest.raises(psycopg.errors.DatatypeMismatch) as wrong_kind:
            with app_conn.transaction():
                app_conn.execute("SELECT rls.site_uuid()")
        assert wrong_kind.value.diag.message_hint
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('-7', NULL)")
        entries = app_conn.execute(
            "SELECT site_id, site_uuid, user_id, operation, old_values, new_values FROM rls_audit.log "
            "WHERE table_name = 'public.rt7_negative'"
        ).fetchall()
    assert entries == [(-7, None, -9223372036854775808, "UPDATE", {"body": "minus seven"}, {"body": "changed"})]
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('7', NULL)")
        assert app_conn.execute("SELECT body FROM rt7_negative").fetchall() == [("seven",)]
        assert app_conn.execute(
            "SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.rt7_negative'"
        ).fetchone() == (0,)


# ---------------------------------------------------------------------------------------------
# A token spent in one database, presented in another database of the same server with the same key.
# ---------------------------------------------------------------------------------------------

OTHER_DB = "django_rls_rt7_other"


@pytest.fixture
def other_database(database: Database, signing_keys) -> Iterator[Database]:
    """A second database of the server, set up as the test database is, with the same signing key."""
    name = sql.Identifier(OTHER_DB)
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(OWNER_ROLE)))
    other = Database(
        admin=make_conninfo(database.admin, dbname=OTHER_DB),
        owner=make_conninfo(database.owner, dbname=OTHER_DB),
        app=make_conninfo(database.app, dbname=OTHER_DB),
        name=OTHER_DB,
    )
    try:
        with psycopg.connect(other.admin) as admin:
            if SQL_MODE:
                with admin.cursor() as cursor:
                    sqlonly.install(cursor, [])
            else:
                admin.execute("CREATE EXTENSION django_rls")
            admin.commit()
        if SQL_MODE:  # the keys live in each database (the library's key file is the server's)
            with psycopg.connect(make_conninfo(other.owner, password=PASSWORD), autocommit=True) as owner:
                owner.execute("SELECT rls.add_signing_key(%s)", (signing_keys[0],))
        yield other
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def _spend(conn: psycopg.Connection, token: str) -> object:
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT rls.set_context_signed(%s)", (token,))
        return conn.execute("SELECT rls.site_id()").fetchone()[0]


def test_a_token_spent_in_one_database_and_presented_in_another(database, app_conn, signing_keys, other_database):
    """The library remembers spent tokens per server (shared memory): spent in one database, a token is spent in
    every other. The SQL-only mode remembers them per database (rls._spent_tokens): one that another database
    lists the key of accepts it once more, unless the token names its database ("db"), which the bridge does not
    do (docs/security.md, "Replay")."""
    from django_rls.tokens import sign_context

    token = sign_context(signing_keys[0], site=2, user=7)
    bound = sign_context(signing_keys[0], site=2, user=7, database=database.name)
    assert _spend(app_conn, token) == 2
    assert _spend(app_conn, bound) == 2
    with unbound_session(other_database, lambda: psycopg.connect(other_database.app, autocommit=True)) as other:
        if SQL_MODE:
            assert _spend(other, token) == 2  # the documented limit
        else:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                _spend(other, token)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as refused:
            _spend(other, bound)
        assert refused.value.diag.message_detail == (
            "The token is bound to another database." if SQL_MODE else "The token was signed for another database."
        )
