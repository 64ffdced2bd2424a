"""Red-team attacks on what was merged on the day of issue 14 (bypassing roles, reusable tokens,
accessor initplans, rls.member_of(), declared lookups, the audit chain).

Held attacks stay as regression tests; a hole that is still open is a strict xfail whose reason
says what is wrong, so that the fix turns it into an XPASS. Every read runs as the application
role (statement-bound "app", or "app_unbound" where the attack needs the setter functions) or as
the non-superuser table owner; the superuser only sets up.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from django_rls.tokens import sign_context
from tests.conftest import Database, write_key_file
from tests.roles import APP_ROLE, OWNER_ROLE

APP = sql.Identifier(APP_ROLE)
OWNER = sql.Identifier(OWNER_ROLE)


# ---------------------------------------------------------------------------------------------
# Reusable tokens and key rotation: a backend re-reads the key file when its stat() changes, but
# timestamps count whole seconds; a key file rewritten in place with a key of the same length
# (every `openssl rand -base64 48` key has 64 characters) within the second the backend read it
# kept the removed key working in that backend, for single-use tokens and for kept reusable ones.
# Fixed in ext/keys.c: a file changed in the second it was read is read again at every check.
# ---------------------------------------------------------------------------------------------


def test_a_key_removed_by_a_same_size_rewrite_within_one_second_stops_at_once(
    database: Database, signing_keys: tuple[str, str], admin_conn: psycopg.Connection
) -> None:
    current, previous = signing_keys
    replacement = secrets.token_urlsafe(48)
    assert len(replacement) == len(previous)
    path = write_key_file(admin_conn, current, previous)

    def changed() -> object:
        return admin_conn.execute("SELECT (pg_stat_file(%s)).change", (path,)).fetchone()[0]

    try:
        with database.connect("app_unbound") as conn:
            conn.autocommit = False
            for _ in range(50):
                write_key_file(admin_conn, current, previous)
                before = changed()
                conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(previous, site=1, user=10),))
                conn.rollback()
                write_key_file(admin_conn, current, replacement)
                if changed() == before:
                    break
            else:
                pytest.fail("the key file was never read and rewritten within one second in 50 attempts")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(previous, site=1, user=10),))
            conn.rollback()
            # The key that stayed keeps working.
            conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(current, site=1, user=10),))
            conn.rollback()
    finally:
        write_key_file(admin_conn, current, previous)


# ---------------------------------------------------------------------------------------------
# Accessor initplans: each accessor call becomes its own initplan, evaluated when first needed.
# A cursor whose first FETCH needed only rls.site_id() and whose later FETCH first needs
# rls.user_id() combines the site of the context it was declared under with the user of the
# context current at that FETCH: it returns a row neither context may see. (With the calls left
# in place, django_rls.accessor_initplans = off, every row reads the live context, so this is not
# new; but docs/security.md promised "one statement sees one context".)  Reachable by the Django
# app itself: a named cursor (QuerySet.iterator() in a transaction) iterated across
# switch_context(); SQL injected into a statement-bound request cannot change the context.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def site_and_owner_tables(owner_conn: psycopg.Connection) -> Iterator[None]:
    owner_conn.execute("DROP TABLE IF EXISTS rt_site_rows, rt_owned_rows")
    owner_conn.execute("CREATE TABLE rt_site_rows (site bigint)")
    owner_conn.execute("CREATE TABLE rt_owned_rows (site bigint, owner bigint)")
    owner_conn.execute("INSERT INTO rt_site_rows VALUES (1), (1)")
    owner_conn.execute("INSERT INTO rt_owned_rows VALUES (1, 10), (1, 20), (2, 10), (2, 20)")
    for table in ("rt_site_rows", "rt_owned_rows"):
        owner_conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(table)))
        owner_conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(sql.Identifier(table)))
        owner_conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), APP))
    owner_conn.execute(sql.SQL("CREATE POLICY rt ON rt_site_rows TO {} USING (site = rls.site_id())").format(APP))
    owner_conn.execute(
        sql.SQL(
            "CREATE POLICY rt ON rt_owned_rows TO {} USING (site = rls.site_id() AND owner = rls.user_id())"
        ).format(APP)
    )
    yield
    owner_conn.execute("DROP TABLE IF EXISTS rt_site_rows, rt_owned_rows")


def test_a_cursor_fetched_across_a_context_change_reads_one_context(
    database: Database, site_and_owner_tables: None
) -> None:
    with database.connect("app_unbound") as conn:
        conn.autocommit = False
        conn.execute("SELECT rls.set_context('1', '10')")
        conn.execute(
            "DECLARE c CURSOR FOR SELECT site, NULL::bigint FROM rt_site_rows"
            " UNION ALL SELECT site, owner FROM rt_owned_rows"
        )
        rows = conn.execute("FETCH 1 FROM c").fetchall()  # needs the site only
        conn.execute("SELECT rls.set_context('2', '20')")
        rows += conn.execute("FETCH ALL FROM c").fetchall()
        conn.rollback()
    # (1, 10) sees its own row; (2, 20) would see (2, 20); (1, 20) belongs to neither context.
    assert sorted(rows, key=str) == sorted([(1, None), (1, None), (1, 10)], key=str)


# ---------------------------------------------------------------------------------------------
# Bypassing roles (ext/bypassing_roles.c): held.
# ---------------------------------------------------------------------------------------------


def test_membership_in_the_owner_granted_after_the_cache_filled_is_refused(
    database: Database, sites_table: str, admin_conn: psycopg.Connection
) -> None:
    with database.connect("app_unbound") as conn:
        conn.autocommit = False
        conn.execute("SELECT rls.set_context('1', '10')")  # fills the cache: owns nothing
        conn.rollback()
        admin_conn.execute(sql.SQL("GRANT {} TO {}").format(OWNER, APP))
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT rls.set_context('1', '10')")
            conn.rollback()
        finally:
            admin_conn.execute(sql.SQL("REVOKE {} FROM {}").format(OWNER, APP))


def test_ownership_given_after_the_cache_filled_is_refused(
    database: Database, sites_table: str, admin_conn: psycopg.Connection
) -> None:
    with database.connect("app_unbound") as conn:
        conn.autocommit = False
        conn.execute("SELECT rls.set_context('1', '10')")
        conn.rollback()
        admin_conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(sites_table), APP))
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT rls.set_context('1', '10')")
            conn.rollback()
        finally:
            admin_conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(sites_table), OWNER))


def test_an_owners_security_definer_function_cannot_set_a_context(
    database: Database, sites_table: str, owner_conn: psycopg.Connection
) -> None:
    owner_conn.execute(
        "CREATE FUNCTION public.rt_owner_sets() RETURNS void LANGUAGE sql SECURITY DEFINER"
        " AS $$ SELECT rls.set_context('1', '10') $$"
    )
    owner_conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.rt_owner_sets() TO {}").format(APP))
    try:
        with database.connect("app_unbound") as conn:
            conn.autocommit = False
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT public.rt_owner_sets()")
    finally:
        owner_conn.execute("DROP FUNCTION public.rt_owner_sets()")


def test_no_non_superuser_can_allow_bypassing_roles(database: Database, owner_conn: psycopg.Connection) -> None:
    """The owner owns the database here: ALTER DATABASE is its own, and still refused."""
    for statement in (
        sql.SQL("ALTER DATABASE {} SET django_rls.allow_bypassing_roles = on").format(sql.Identifier(database.name)),
        sql.SQL("ALTER ROLE CURRENT_USER SET django_rls.allow_bypassing_roles = on"),
        sql.SQL("SET django_rls.allow_bypassing_roles = on"),
        sql.SQL("SELECT set_config('django_rls.allow_bypassing_roles', 'on', false)"),
        sql.SQL(
            "CREATE FUNCTION public.rt_allow() RETURNS void LANGUAGE sql"
            " SET django_rls.allow_bypassing_roles = on AS $$ SELECT $$"
        ),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            owner_conn.execute(statement)


def test_no_non_superuser_can_allow_bypassing_roles_at_login(database: Database) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied to set parameter"):
        database.connect("owner", options="-c django_rls.allow_bypassing_roles=on").close()


# ---------------------------------------------------------------------------------------------
# Accessor initplans under EvalPlanQual: held.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement", ["UPDATE notes SET body = 'taken' WHERE id = %s", "DELETE FROM notes WHERE id = %s"]
)
@pytest.mark.parametrize(("moved_to", "written"), [(2, 0), (1, 1)])
def test_a_row_changed_while_a_write_waits_for_it_is_rechecked_with_the_same_context(
    database: Database, sites_table: str, admin_conn: psycopg.Connection, statement: str, moved_to: int, written: int
) -> None:
    """EvalPlanQual rechecks the policy with the statement's context: a row moved to site 2 meanwhile is
    left alone, one that stayed in site 1 is written (the initplan's value reaches the recheck)."""
    import threading

    row = admin_conn.execute("SELECT min(id) FROM notes WHERE site_id = 1").fetchone()[0]
    with psycopg.connect(database.admin) as mover, database.connect("app_unbound") as writer:
        writer.autocommit = False
        writer.execute("SELECT rls.set_context('1', NULL)")
        mover.execute("UPDATE notes SET site_id = %s, body = 'moved' WHERE id = %s", (moved_to, row))
        result: list[int] = []
        waiting = threading.Thread(target=lambda: result.append(writer.execute(statement, (row,)).rowcount))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive(), "the write should wait for the moving transaction"
        mover.commit()
        waiting.join(timeout=10)
        writer.commit()
    assert result == [written]
    left = admin_conn.execute("SELECT site_id, body FROM notes WHERE id = %s", (row,)).fetchone()
    if written == 0:
        assert left == (2, "moved")
    else:
        assert left is None if statement.startswith("DELETE") else left == (1, "taken")


# ---------------------------------------------------------------------------------------------
# rls.member_of() as an oracle on the audit log (site_id and user_id are bigint columns): held.
# ---------------------------------------------------------------------------------------------


def test_member_of_cannot_read_the_audit_log_or_its_partitions(
    database: Database, admin_conn: psycopg.Connection
) -> None:
    partitions = [
        row[0]
        for row in admin_conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'rls_audit.statements'::regclass"
        )
    ]
    assert partitions
    with database.connect("app_unbound") as conn:
        conn.autocommit = False
        for table in ["rls_audit.log", "rls_audit.statements", *partitions]:
            conn.execute("SELECT rls.set_context('1', '10')")
            with pytest.raises((psycopg.errors.WrongObjectType, psycopg.errors.InsufficientPrivilege)):
                conn.execute("SELECT rls.member_of(%s::regclass, 'site_id', 'user_id', 2::bigint)", (table,))
            conn.rollback()
