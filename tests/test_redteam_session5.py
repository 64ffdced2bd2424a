"""Red team, session 5: the changes merged since session 4, attacked.

- The policy set (sql/install/20_policies.sql): every write path against a table of two groups,
  one of them an OR (INSERT ... ON CONFLICT, MERGE, DELETE ... RETURNING, UPDATE's USING against
  its WITH CHECK, COPY FROM); the permissive rls_base_<command> policies alone, as if every
  restrictive group were lost, admit no more than the groups (the conjunction keeps each group's
  OR inside its parentheses); an edited rls_base_<command> is reported; removing one group leaves
  the groups whose names begin with its name (a hole, fixed: rls.unprotect took them too).
- One initplan per plan (ext/accessor_params.c): a context changed inside a statement, a cursor
  kept past its transaction and a generic plan each read one context per execution.
- ext/own_role.c: the statement-bound application role cannot change its own password, role
  defaults, validity or connection limit by any spelling of the role, any scope of the setting,
  a DO block or a subtransaction; ALTER ROLE ALL and ALTER DATABASE stay refused by PostgreSQL.
- django_rls/database.py ReusableTokens: threads racing on the lock-free last-token shortcut
  each get a use of their own context's token, with a sequence number no other use has.

Every assertion about rows runs as the application role; the superuser only reads the catalog
(passwords, role settings) and the rows' state after an attack. The file is in the Makefile's
SQLONLY_SUITES: what only the C library does is marked library_only (tests/modes.py), and the
SQL-only mode's rls.member_of() read is attacked there (a hole, fixed: its SECURITY DEFINER read now
makes the caller's checks itself).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from tests.modes import SQL_MODE, library_only
from tests.roles import APP_ROLE, PASSWORD

APP = sql.Identifier(APP_ROLE)
COMMANDS = ("select", "insert", "update", "delete")

# ---------------------------------------------------------------------------------------------
# The policy set: two groups, one of them an OR.
# ---------------------------------------------------------------------------------------------

# id, site, user, hidden: site 1 user 10 reads 1 (shown) and 3 (hidden, but its own); not 2
# (hidden, user 11), 4 and 5 (site 2, whatever their user).
ROWS = "(1, 1, 10, false, 'a'), (2, 1, 11, true, 'b'), (3, 1, 10, true, 'c'), (4, 2, 10, false, 'd'), (5, 2, 11, false, 'e')"
SHOWN = "NOT hidden OR user_id = rls.user_id()"


@pytest.fixture
def two_groups(owner_conn: psycopg.Connection) -> Iterator[str]:
    """rt5_notes protected by site and by a group "shown" whose expression is an OR."""
    owner_conn.execute("DROP TABLE IF EXISTS rt5_notes")
    owner_conn.execute(
        "CREATE TABLE rt5_notes (id int PRIMARY KEY, site_id bigint NOT NULL, user_id bigint,"
        " hidden boolean NOT NULL DEFAULT false, body text)"
    )
    owner_conn.execute(f"INSERT INTO rt5_notes VALUES {ROWS}")
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON rt5_notes TO {}").format(APP))
    owner_conn.execute("SELECT rls.protect_by_site('rt5_notes', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("SELECT rls.protect('rt5_notes', 'shown', %s, to_role => %s)", (SHOWN, APP_ROLE))
    yield "rt5_notes"
    owner_conn.execute("DROP TABLE rt5_notes")


def _state(admin_conn: psycopg.Connection) -> list[tuple]:
    return admin_conn.execute("SELECT * FROM rt5_notes ORDER BY id").fetchall()


def _as_site_1_user_10(app_conn: psycopg.Connection, statement: str) -> list[tuple] | int:
    """Run one statement as site 1, user 10, and roll it back: its rows, or its row count."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', '10')")
        cur = app_conn.execute(statement)
        return cur.fetchall() if cur.description else cur.rowcount


def _refused(app_conn: psycopg.Connection, statement: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        _as_site_1_user_10(app_conn, statement)


def _holds_as_both_groups(app_conn: psycopg.Connection) -> None:
    assert _as_site_1_user_10(app_conn, "SELECT id FROM rt5_notes ORDER BY id") == [(1,), (3,)]
    assert _as_site_1_user_10(app_conn, "DELETE FROM rt5_notes RETURNING id") == [(1,), (3,)]
    assert _as_site_1_user_10(app_conn, "UPDATE rt5_notes SET body = 'u' RETURNING id") == [(1,), (3,)]
    # ON CONFLICT on a row the groups hide (another site's; a hidden row of another user) is refused,
    # DO NOTHING changes nothing, and neither UPDATE path may move a row out of the groups.
    for hidden_id in (4, 2):
        _refused(
            app_conn,
            f"INSERT INTO rt5_notes VALUES ({hidden_id}, 1, 10, false, 'x') ON CONFLICT (id) DO UPDATE SET body = 'x'",
        )
    assert (
        _as_site_1_user_10(app_conn, "INSERT INTO rt5_notes VALUES (4, 1, 10, false, 'x') ON CONFLICT DO NOTHING") == 0
    )
    _refused(app_conn, "INSERT INTO rt5_notes VALUES (1, 1, 10, false, 'x') ON CONFLICT (id) DO UPDATE SET site_id = 2")
    _refused(app_conn, "UPDATE rt5_notes SET user_id = 11, hidden = true WHERE id = 1")  # passes USING, not CHECK
    assert _as_site_1_user_10(app_conn, "UPDATE rt5_notes SET hidden = true WHERE id = 1 RETURNING id") == [(1,)]
    # MERGE (PostgreSQL 15+): the hidden rows do not match; no action writes outside the groups.
    if app_conn.info.server_version >= 150000:
        merge = "MERGE INTO rt5_notes USING (VALUES (1), (2), (4), (5)) v(id) ON rt5_notes.id = v.id "
        assert _as_site_1_user_10(app_conn, merge + "WHEN MATCHED THEN UPDATE SET body = 'm'") == 1
        assert _as_site_1_user_10(app_conn, merge + "WHEN MATCHED THEN DELETE") == 1
        _refused(app_conn, merge + "WHEN MATCHED THEN UPDATE SET user_id = 11, hidden = true")
        merge_new = "MERGE INTO rt5_notes USING (VALUES (9)) v(id) ON rt5_notes.id = v.id WHEN NOT MATCHED THEN "
        _refused(app_conn, merge_new + "INSERT VALUES (9, 2, 10, false, 'm')")
        _refused(app_conn, merge_new + "INSERT VALUES (9, 1, 11, true, 'm')")
        assert _as_site_1_user_10(app_conn, merge_new + "INSERT VALUES (9, 1, 11, false, 'm')") == 1
    # COPY FROM a protected table is refused outright.
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', '10')")
        with pytest.raises(errors.FeatureNotSupported, match="row-level security"):
            with app_conn.cursor().copy("COPY rt5_notes FROM STDIN") as copy:
                copy.write_row((8, 2, 10, False, "copied"))


def test_every_write_path_stays_inside_both_groups(app_conn, admin_conn, two_groups):
    before = _state(admin_conn)
    _holds_as_both_groups(app_conn)
    assert _state(admin_conn) == before


def test_the_permissive_base_policies_alone_admit_no_more_than_the_groups(owner_conn, app_conn, admin_conn, two_groups):
    """Every restrictive policy gone (more than Citus's copy loses): rls_base_<command> alone holds the
    table to both groups. Joined without its parentheses, "site_id = rls.site_id() AND NOT hidden OR
    user_id = rls.user_id()" would show user 10 its row 4 of site 2."""
    for command in COMMANDS:
        for group in ("site", "shown"):
            owner_conn.execute(sql.SQL("DROP POLICY {} ON rt5_notes").format(sql.Identifier(f"rls_{group}_{command}")))
    assert owner_conn.execute(
        "SELECT bool_and(polpermissive), count(*) FROM pg_policy WHERE polrelid = 'rt5_notes'::regclass"
    ).fetchone() == (True, 4)
    before = _state(admin_conn)
    _holds_as_both_groups(app_conn)
    assert _state(admin_conn) == before


@pytest.mark.parametrize(
    "edit",
    [
        "ALTER POLICY rls_base_update ON rt5_notes WITH CHECK (true)",
        "ALTER POLICY rls_base_select ON rt5_notes USING (site_id = rls.site_id())",  # one group dropped
        "ALTER POLICY rls_base_delete ON rt5_notes TO PUBLIC",
    ],
)
def test_an_edited_base_policy_is_reported(owner_conn, two_groups, edit):
    in_sync = "SELECT rls.group_in_sync('rt5_notes', %s, %s, to_role => %s)"
    assert owner_conn.execute(in_sync, ("shown", SHOWN, APP_ROLE)).fetchone() == (True,)
    owner_conn.execute(edit)
    for group, expression in (("site", "site_id = rls.site_id()"), ("shown", SHOWN)):
        assert owner_conn.execute(in_sync, (group, expression, APP_ROLE)).fetchone() == (False,)
    edited = edit.split()[2]
    problems = owner_conn.execute(
        "SELECT problem FROM rls.problems WHERE table_name = 'rt5_notes'::regclass AND object_name = %s", (edited,)
    ).fetchall()
    assert problems == [(f"policy {edited} was changed outside django_rls",)]


def test_removing_a_group_keeps_the_groups_its_name_prefixes(owner_conn, app_conn, admin_conn):
    """rls.unprotect(t, 'site') matched rls\\_site\\_%: it also dropped the policies of a group named
    site_archive, and with no policy left switched row level security off, so that the app role,
    without any context, read every row (rls_apply --prune removes a group this way)."""
    owner_conn.execute("DROP TABLE IF EXISTS rt5_groups")
    owner_conn.execute("CREATE TABLE rt5_groups (id int, site_id bigint NOT NULL)")
    owner_conn.execute("INSERT INTO rt5_groups VALUES (1, 1), (2, 2)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON rt5_groups TO {}").format(APP))
    try:
        owner_conn.execute(
            "SELECT rls.protect('rt5_groups', 'site_archive', 'site_id = rls.site_id()', to_role => %s)", (APP_ROLE,)
        )
        owner_conn.execute("SELECT rls.protect('rt5_groups', 'site', 'site_id > 0', to_role => %s)", (APP_ROLE,))
        assert owner_conn.execute("SELECT rls.unprotect('rt5_groups', 'site')").fetchone() == (True,)
        names = owner_conn.execute(
            "SELECT array_agg(polname::text ORDER BY polname) FROM pg_policy WHERE polrelid = 'rt5_groups'::regclass"
        ).fetchone()[0]
        assert names == sorted([f"rls_base_{c}" for c in COMMANDS] + [f"rls_site_archive_{c}" for c in COMMANDS])
        assert owner_conn.execute(
            "SELECT rls.group_in_sync('rt5_groups', 'site_archive', 'site_id = rls.site_id()', to_role => %s)",
            (APP_ROLE,),
        ).fetchone() == (True,)
        assert app_conn.execute("SELECT count(*) FROM rt5_groups").fetchone() == (0,)
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context('1', NULL)")
            assert app_conn.execute("SELECT id FROM rt5_groups").fetchall() == [(1,)]
        # Removing every group still removes them all.
        assert owner_conn.execute("SELECT rls.unprotect('rt5_groups')").fetchone() == (True,)
        assert owner_conn.execute(
            "SELECT count(*) FROM pg_policy WHERE polrelid = 'rt5_groups'::regclass"
        ).fetchone() == (0,)
    finally:
        owner_conn.execute("DROP TABLE rt5_groups")


# ---------------------------------------------------------------------------------------------
# One initplan per plan: one execution, one context.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def site_rows(owner_conn: psycopg.Connection) -> Iterator[None]:
    """rt5_sites: rows 1-3 of site 1 and 4-6 of site 2, protected by site."""
    owner_conn.execute("DROP TABLE IF EXISTS rt5_sites")
    owner_conn.execute("CREATE TABLE rt5_sites (id int PRIMARY KEY, site_id bigint NOT NULL)")
    owner_conn.execute("INSERT INTO rt5_sites SELECT i, 1 + (i > 3)::int FROM generate_series(1, 6) i")
    owner_conn.execute(sql.SQL("GRANT SELECT ON rt5_sites TO {}").format(APP))
    owner_conn.execute("SELECT rls.protect_by_site('rt5_sites', to_role => %s)", (APP_ROLE,))
    yield
    owner_conn.execute("DROP TABLE rt5_sites")


@library_only("one initplan per plan sets every accessor parameter (ext/accessor_params.c)")
def test_a_context_changed_inside_a_statement_is_not_read_by_it(app_conn, site_rows):
    """A correlated subquery re-runs its protected scan for every outer row, while the select list
    changes the context between rows: every run reads the context the statement started with."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        rows = app_conn.execute(
            "SELECT g, (SELECT array_agg(site_id ORDER BY id) FROM rt5_sites WHERE id > g - 100),"
            " rls.set_context(CASE WHEN g % 2 = 0 THEN '1' ELSE '2' END, NULL, NULL, true)"
            " FROM generate_series(1, 4) g"
        ).fetchall()
    assert [r[1] for r in rows] == [[1, 1, 1]] * 4


def test_a_cursor_kept_past_its_transaction_holds_its_own_contexts_rows(app_conn, site_rows):
    app_conn.autocommit = False
    try:
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        app_conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT id FROM rt5_sites ORDER BY id")
        first = app_conn.execute("FETCH 1 FROM held").fetchall()
        app_conn.commit()  # the context ends here
        app_conn.execute("SELECT rls.set_context('2', NULL)")
        rest = app_conn.execute("FETCH ALL FROM held").fetchall()
        app_conn.execute("CLOSE held")
        app_conn.commit()
    finally:
        app_conn.rollback()
        app_conn.autocommit = True
    assert first + rest == [(1,), (2,), (3,)]


def test_a_generic_plan_reads_each_executions_context(app_conn, site_rows):
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        app_conn.execute("PREPARE rt5_generic AS SELECT array_agg(id ORDER BY id) FROM rt5_sites")
        try:
            seen = []
            for site in ("1", "2", "1"):
                app_conn.execute("SELECT rls.set_context(%s, NULL)", (site,))
                seen.append(app_conn.execute("EXECUTE rt5_generic").fetchone()[0])
        finally:
            app_conn.execute("DEALLOCATE rt5_generic")
    assert seen == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]


# ---------------------------------------------------------------------------------------------
# ext/own_role.c: the role's own password and defaults.
# ---------------------------------------------------------------------------------------------


def _role_state(admin_conn: psycopg.Connection) -> tuple:
    role = admin_conn.execute(
        "SELECT rolpassword, rolvaliduntil, rolconnlimit FROM pg_authid WHERE rolname = %s", (APP_ROLE,)
    ).fetchone()
    settings = admin_conn.execute(
        "SELECT array_agg(concat(setdatabase, ':', setrole, ':', setconfig::text) ORDER BY 1)"
        " FROM pg_db_role_setting s WHERE setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = %s))"
        "   AND setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))",
        (APP_ROLE,),
    ).fetchone()
    return role + settings


PG_REFUSES = "permission denied|must be"
OWN_ROLE_CHANGES = [
    # Refused by ext/own_role.c, whatever names the role.
    ("ALTER ROLE SESSION_USER PASSWORD 'chosen'", "own password"),
    ("ALTER USER CURRENT_ROLE WITH ENCRYPTED PASSWORD 'chosen'", "own password"),
    (f"ALTER ROLE \"{APP_ROLE}\" PASSWORD 'chosen' VALID UNTIL 'infinity'", "own password"),
    ("ALTER ROLE CURRENT_USER IN DATABASE django_rls_pytest SET extra_float_digits = 0", "own role defaults"),
    ("ALTER ROLE CURRENT_USER IN DATABASE django_rls_pytest RESET search_path", "own role defaults"),
    ("ALTER USER SESSION_USER SET statement_timeout = 1", "own role defaults"),
    ("ALTER ROLE CURRENT_USER RESET ALL", "own role defaults"),
    (
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = public', current_user,"
        " current_database()); END $$",
        "own role defaults",
    ),
    # Refused by PostgreSQL itself: only a superuser, CREATEROLE or the database's owner may make them.
    ("ALTER ROLE CURRENT_USER VALID UNTIL '2000-01-01'", PG_REFUSES),
    ("ALTER ROLE CURRENT_USER CONNECTION LIMIT 0", PG_REFUSES),
    ("ALTER ROLE ALL SET extra_float_digits = 0", PG_REFUSES),
    ("ALTER ROLE ALL IN DATABASE django_rls_pytest SET extra_float_digits = 0", PG_REFUSES),
    (
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0', current_database()); END $$",
        PG_REFUSES,
    ),
]


@library_only("statement-bound roles and ext/own_role.c")
@pytest.mark.parametrize(("attack", "refusal"), OWN_ROLE_CHANGES, ids=[a for a, _ in OWN_ROLE_CHANGES])
def test_the_statement_bound_role_cannot_change_itself(bound_app_conn, admin_conn, app_password, attack, refusal):
    assert bound_app_conn.execute("SELECT current_database()").fetchone() == ("django_rls_pytest",)
    before = _role_state(admin_conn)
    with bound_app_conn.transaction(force_rollback=True):
        with pytest.raises(errors.InsufficientPrivilege, match=refusal):
            with bound_app_conn.transaction():  # a subtransaction changes nothing either
                bound_app_conn.execute(attack)
    assert _role_state(admin_conn) == before


@pytest.fixture
def app_password(admin_conn: psycopg.Connection) -> Iterator[None]:
    """Put the app role's password back, whatever a test did to it."""
    yield
    admin_conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(APP, sql.Literal(PASSWORD)))


# ---------------------------------------------------------------------------------------------
# ReusableTokens: the lock-free last-token shortcut under threads.
# ---------------------------------------------------------------------------------------------


def _payload(use: str) -> dict:
    encoded = use.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def test_racing_threads_each_get_their_own_contexts_token():
    from django_rls import database as bridge
    from django_rls.state import Values

    cache = bridge.ReusableTokens(size=2)  # small: the dict and the shortcut both turn over
    key = "k" * 48
    uses: dict[int, list[str]] = {n: [] for n in range(6)}
    start = threading.Barrier(len(uses))

    def work(n: int) -> None:
        values = Values(str(n), str(100 + n), None)
        start.wait()
        for _ in range(1500):
            uses[n].append(cache.use(key, 60, values))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in uses]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    sequences = []
    for n, made in uses.items():
        assert len(made) == 1500
        assert {(str(p["site"]), str(p["user"])) for p in map(_payload, made)} == {(str(n), str(100 + n))}
        sequences += [use.split(".")[3] for use in made]
    assert len(set(sequences)) == len(sequences)


# ---------------------------------------------------------------------------------------------
# The SQL-only mode's rls.member_of(): its SECURITY DEFINER read, called directly.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def site_memberships(owner_conn: psycopg.Connection) -> Iterator[None]:
    """User 12 is a member of project 1 in site 1 and of project 2 in site 2; the memberships are
    protected by site and by owner, and rls.member_of() may read them (allowed by hand, as a raw-SQL user does)."""
    owner_conn.execute("DROP TABLE IF EXISTS rt5_memb")
    owner_conn.execute(
        "CREATE TABLE rt5_memb (id serial PRIMARY KEY, site_id bigint NOT NULL, proj_id bigint NOT NULL,"
        " user_id bigint NOT NULL)"
    )
    owner_conn.execute("INSERT INTO rt5_memb (site_id, proj_id, user_id) VALUES (1, 1, 12), (2, 2, 12)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON rt5_memb TO {}").format(APP))
    owner_conn.execute("SELECT rls.protect_by_site_and_owner('rt5_memb', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("SELECT rls.allow_member_of('rt5_memb', 'proj_id', 'user_id')")
    yield
    owner_conn.execute("DROP TABLE rt5_memb")


@pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode: the C library's rls.member_of() has no separate read")
def test_the_member_read_called_directly_shows_no_more_than_the_callers_policies(app_conn, site_memberships):
    """A hole, fixed: rls._member_rows() made none of the caller's checks, so a direct call read the
    keys of the user's memberships of site 2. It now makes them itself, for the session's role."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', '12')")
        visible = app_conn.execute("SELECT array_agg(proj_id::text ORDER BY proj_id) FROM rt5_memb").fetchone()[0]
        assert visible == ["1"]
        for call in (
            "SELECT rls._member_keys('rt5_memb', 'proj_id', 'user_id')",
            "SELECT rls._member_rows('rt5_memb', 'proj_id', 'user_id')",
            "SELECT k FROM unnest(rls._member_rows('rt5_memb'::regclass, 'proj_id'::name, 'user_id'::name)) k",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match=f"do not show role {APP_ROLE} the rows"):
                with app_conn.transaction():
                    app_conn.execute(call)


LOWER = "rt5_lower"


@pytest.fixture
def own_memberships(owner_conn: psycopg.Connection, admin_conn: psycopg.Connection) -> Iterator[None]:
    """User 12 is a member of projects 1 and 2; the app role sees a user's own memberships (one group,
    "user_id = rls.user_id()"), and may SET ROLE rt5_lower, which may SELECT them but has no policy."""
    admin_conn.execute(f"DO $$ BEGIN CREATE ROLE {LOWER} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(LOWER), APP))
    owner_conn.execute("DROP TABLE IF EXISTS rt5_own")
    owner_conn.execute("CREATE TABLE rt5_own (id serial PRIMARY KEY, proj_id bigint NOT NULL, user_id bigint NOT NULL)")
    owner_conn.execute("INSERT INTO rt5_own (proj_id, user_id) VALUES (1, 12), (2, 12), (3, 13)")
    owner_conn.execute(sql.SQL("GRANT SELECT ON rt5_own TO {}, {}").format(APP, sql.Identifier(LOWER)))
    owner_conn.execute("SELECT rls.protect('rt5_own', 'own', 'user_id = rls.user_id()', to_role => %s)", (APP_ROLE,))
    owner_conn.execute("SELECT rls.allow_member_of('rt5_own', 'proj_id', 'user_id')")
    yield
    owner_conn.execute("DROP TABLE rt5_own")
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(LOWER)))


@pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode: the C library's rls.member_of() has no separate read")
def test_the_member_read_checks_the_role_set_role_chose_not_the_login_role(app_conn, own_memberships):
    """The read checks the role the session runs as (SET ROLE's), which no caller can claim: as the
    login role it answers what a plain SELECT shows; after SET ROLE to a role whose policies show
    nothing, both the direct call and rls._member_keys() are refused, though the login role's would pass."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', '12')")
        mine = app_conn.execute("SELECT array_agg(proj_id::text ORDER BY proj_id) FROM rt5_own").fetchone()[0]
        assert mine == ["1", "2"]
        direct = app_conn.execute("SELECT rls._member_rows('rt5_own', 'proj_id', 'user_id')").fetchone()[0]
        assert sorted(direct) == mine
        app_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(LOWER)))
        assert app_conn.execute("SELECT count(*) FROM rt5_own").fetchone()[0] == 0
        for call in ("rls._member_rows", "rls._member_keys"):
            with pytest.raises(errors.InsufficientPrivilege, match=f"do not show role {LOWER} the rows"):
                with app_conn.transaction():
                    app_conn.execute(f"SELECT {call}('rt5_own', 'proj_id', 'user_id')")


@pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode: the C library's rls.member_of() has no separate read")
def test_the_member_read_refuses_when_set_roles_role_was_renamed(app_conn, admin_conn, own_memberships):
    """The setting "role" keeps the name SET ROLE was given: renamed since, the read refuses rather than
    finding no role to check and skipping the checks."""
    with app_conn.transaction(force_rollback=True):
        app_conn.execute("SELECT rls.set_context('1', '12')")
        app_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(LOWER)))
        admin_conn.execute(sql.SQL("ALTER ROLE {} RENAME TO rt5_renamed").format(sql.Identifier(LOWER)))
        try:
            with pytest.raises(errors.InsufficientPrivilege, match="cannot tell which role this session runs as"):
                with app_conn.transaction():
                    app_conn.execute("SELECT rls._member_rows('rt5_own', 'proj_id', 'user_id')")
        finally:
            admin_conn.execute(sql.SQL("ALTER ROLE rt5_renamed RENAME TO {}").format(sql.Identifier(LOWER)))


@pytest.mark.skipif(not SQL_MODE, reason="the SQL-only mode: the C library's rls.member_of() has no separate read")
def test_inside_another_roles_definer_the_member_keys_check_that_role_too(app_conn, admin_conn, own_memberships):
    """As the C function checks GetUserId(): inside a SECURITY DEFINER function of rt5_lower (whom no
    policy shows the rows), rls._member_keys() checks rt5_lower besides the session's role;
    rls._member_rows() called directly there checks the session's role only (docs/security.md)."""
    admin_conn.execute(
        "CREATE FUNCTION rt5_keys_as_lower(direct boolean) RETURNS text[] LANGUAGE sql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS $$ SELECT CASE WHEN direct"
        " THEN rls._member_rows('public.rt5_own', 'proj_id', 'user_id')"
        " ELSE rls._member_keys('public.rt5_own', 'proj_id', 'user_id') END $$"
    )
    admin_conn.execute(sql.SQL("ALTER FUNCTION rt5_keys_as_lower(boolean) OWNER TO {}").format(sql.Identifier(LOWER)))
    try:
        with app_conn.transaction(force_rollback=True):
            app_conn.execute("SELECT rls.set_context('1', '12')")
            with pytest.raises(errors.InsufficientPrivilege, match=f"do not show role {LOWER} the rows"):
                with app_conn.transaction():
                    app_conn.execute("SELECT rt5_keys_as_lower(false)")
            assert sorted(app_conn.execute("SELECT rt5_keys_as_lower(true)").fetchone()[0]) == ["1", "2"]
    finally:
        admin_conn.execute("DROP FUNCTION rt5_keys_as_lower(boolean)")


# Every SECURITY DEFINER function of the SQL-only mode the application role may execute, and what it
# trusts its caller for (docs/security.md, "SECURITY DEFINER functions of the SQL-only mode"): a new
# one fails this test until it is reviewed and listed there.
REACHABLE_DEFINERS = {
    "rls._held()": "nothing: no arguments; the session's own context",
    "rls._member_rows(regclass,name,name)": "nothing: checks the session's role itself (test above)",
    "rls._session_must_sign()": "nothing: no arguments; decided by session_user",
    "rls._signing_key_configured()": "nothing: no arguments",
    "rls._signing_role_oids()": "nothing: no arguments",
    "rls.clear_context()": "nothing: can only take access away",
    "rls.set_context(text,text,jsonb,boolean)": "the values, unless session_user must sign (then refused)",
    "rls.set_context_signed(text,boolean)": "nothing: the token's signature",
    "rls_audit._build_capture(regclass)": "nothing: the registration the owner wrote and the catalogs",
    "rls_audit._apply_requests(regclass)": "nothing: the requests the owner's privileges let the caller insert",
}


def test_every_definer_the_app_role_may_execute_is_one_reviewed(admin_conn, app_conn):
    """With the library there is none (its SQL definers are revoked from PUBLIC; event-trigger
    functions cannot be called); in the SQL-only mode, those listed above."""
    reachable = {
        name
        for (name,) in admin_conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.prosecdef AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)"
            "   AND p.pronamespace IN ('rls'::regnamespace, 'rls_audit'::regnamespace)"
            "   AND has_function_privilege(%s, p.oid, 'EXECUTE')",
            (APP_ROLE,),
        )
    }
    assert reachable == (set(REACHABLE_DEFINERS) if SQL_MODE else set())
    # Those the app role may not execute stay so: the keys, the roles that must sign, the partitions.
    calls = ["rls_audit.ensure_partitions()"]
    if SQL_MODE:
        calls += ["rls.add_signing_key('x')", f"rls.require_signature('{APP_ROLE}', false)"]
    for call in calls:
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
            with app_conn.transaction():
                app_conn.execute(f"SELECT {call}")
