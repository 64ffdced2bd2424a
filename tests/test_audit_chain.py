"""The audit log's hash chain: rls_audit.verify() names the first entry a superuser edited, deleted, inserted or reordered."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql

from tests.conftest import Database
from tests.dumps import dump_and_restore
from tests.roles import APP_ROLE

CHAIN_DB = "django_rls_chain"

SCHEMA = """
CREATE TABLE item (id int PRIMARY KEY, site_id int, body text);
GRANT SELECT, INSERT, UPDATE, DELETE ON item TO {app};
SELECT rls_audit.enable('item');
"""


def write_history(conn: psycopg.Connection) -> None:
    """Statements of two sites and one without a site: several chains, several seals each."""
    conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    conn.execute("INSERT INTO item SELECT g, 1, 'a' || g FROM generate_series(1, 4) g")
    conn.execute("UPDATE item SET body = body || '!' WHERE id <= 2")
    conn.execute("DELETE FROM item WHERE id = 4")
    conn.execute("SELECT rls.set_context('2', NULL, NULL, false)")
    conn.execute("INSERT INTO item VALUES (10, 2, 'b')")
    conn.execute("SELECT rls.clear_context()")
    conn.execute("INSERT INTO item VALUES (20, NULL, 'c')")
    conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    conn.execute("INSERT INTO item VALUES (5, 1, 'a5')")


def problems(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT chain, problem, entry_id FROM rls_audit.verify() WHERE problem IS NOT NULL ORDER BY month, chain"
    ).fetchall()


def site_one_ids(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM rls_audit.log WHERE site_id = 1 ORDER BY id")]


def statement_of(entry_id: int) -> int:
    """The rls_audit.statements row holding an entry (its id is the statement's id * 1024 + its position)."""
    return entry_id // 1024


def first_entry_of(entry_id: int) -> int:
    """What verify() reports for a bad statement row: the first entry it holds."""
    return statement_of(entry_id) * 1024 + 1


@pytest.fixture
def chain_db(database: Database) -> Iterator[psycopg.Connection]:
    """A database of its own with the chain on: tampering with its log leaves the shared test log alone."""
    name = sql.Identifier(CHAIN_DB)
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        admin.execute(sql.SQL("ALTER DATABASE {} SET django_rls.audit_chain = on").format(name))
        # The superuser writes the history itself: the server refuses it a context otherwise (docs/security.md).
        admin.execute(sql.SQL("ALTER DATABASE {} SET django_rls.allow_bypassing_roles = on").format(name))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")
            conn.execute(SCHEMA.format(app=APP_ROLE))
            write_history(conn)
            yield conn
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def test_every_statement_is_sealed_and_an_untouched_log_verifies(chain_db):
    rows = chain_db.execute("SELECT chain, seals, entries, problem FROM rls_audit.verify() ORDER BY chain").fetchall()
    # site 1: INSERT (4 rows), UPDATE (2), DELETE (1), INSERT (1); site 2: 1; no site: 1
    assert rows == [("", 1, 1, None), ("1", 4, 8, None), ("2", 1, 1, None)]
    assert chain_db.execute("SELECT count(*) FROM rls_audit.log").fetchone()[0] == 10


def test_the_app_role_writes_sealed_entries_but_cannot_verify_or_read_the_seals(chain_db, database):
    # The setter functions, as in tests/conftest.py's "app_unbound" (this database is dropped afterwards).
    chain_db.execute(
        sql.SQL("ALTER ROLE {} IN DATABASE {} SET django_rls.statement_bound = off").format(
            sql.Identifier(APP_ROLE), sql.Identifier(CHAIN_DB)
        )
    )
    with psycopg.connect(psycopg.conninfo.make_conninfo(database.app, dbname=CHAIN_DB), autocommit=True) as app:
        app.execute("SELECT rls.set_context('2', NULL, NULL, false)")
        app.execute("INSERT INTO item VALUES (11, 2, 'by the app')")
        for statement in ("SELECT * FROM rls_audit.verify()", "SELECT * FROM rls_audit.seals"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SET django_rls.audit_chain = off")
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = '2'").fetchone() == (
        2,
        2,
        None,
    )


def test_concurrent_writers_of_one_site_wait_for_each_other_and_the_chain_stays_whole(chain_db, database):
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        for conn in (first, second):
            conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        first.execute("INSERT INTO item VALUES (100, 1, 'first')")
        waiting = threading.Thread(
            target=lambda: (second.execute("INSERT INTO item VALUES (101, 1, 'second')"), second.commit())
        )
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive(), "the second writer of site 1 should wait for the first one's chain head"
        first.execute("INSERT INTO item VALUES (102, 1, 'first again')")
        first.commit()
        waiting.join(timeout=10)
        assert not waiting.is_alive()
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = '1'").fetchone() == (
        7,
        11,
        None,
    )


def test_writers_without_a_site_share_one_chain_head_whatever_their_user_or_table(chain_db, database):
    # Entries without a site all belong to the chain '' (docs/audit.md): a transaction holding its head
    # makes a site-less write of another user, to another table, wait; lock_timeout bounds the wait.
    chain_db.execute("CREATE TABLE note (id int PRIMARY KEY, owner_id int)")
    chain_db.execute("SELECT rls_audit.enable('note')")
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, options="-c lock_timeout=300ms") as other:
        holder.execute("SELECT rls.set_context(NULL, '7', NULL, false)")
        holder.execute("INSERT INTO item VALUES (30, NULL, 'user 7, no site')")
        other.execute("SELECT rls.set_context(NULL, '8', NULL, false)")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("INSERT INTO note VALUES (1, 8)")
        other.rollback()
        holder.commit()
        other.execute("SELECT rls.set_context(NULL, '8', NULL, false)")
        other.execute("INSERT INTO note VALUES (1, 8)")
        other.commit()
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = ''").fetchone() == (
        3,
        3,
        None,
    )


def test_a_repeatable_read_writer_behind_a_newer_seal_of_its_site_gets_a_serialization_failure(chain_db, database):
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn) as late:
        late.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        late.execute("SELECT rls.set_context('1', NULL, NULL, false)")  # takes the snapshot
        chain_db.execute("INSERT INTO item VALUES (100, 1, 'sealed after that snapshot')")
        with pytest.raises(psycopg.errors.SerializationFailure):
            late.execute("INSERT INTO item VALUES (101, 1, 'late')")
        late.rollback()
    assert problems(chain_db) == []


def test_the_writers_and_the_verifiers_settings_do_not_matter(chain_db):
    chain_db.execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'")
    chain_db.execute("SELECT rls.set_context('2', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item VALUES (30, 2, 'written at +05:30')")
    chain_db.execute("SET TimeZone = 'America/New_York'; SET DateStyle = 'German'")
    assert problems(chain_db) == []
    assert chain_db.execute("SELECT entries FROM rls_audit.verify() WHERE chain = '2'").fetchone() == (2,)


def test_entries_moved_out_of_the_default_partition_still_verify(chain_db):
    assert chain_db.execute("SELECT sum(cardinality(row_keys)) FROM rls_audit.statements_default").fetchone()[0] == 10
    chain_db.execute("SELECT rls_audit.ensure_partitions(0)")
    assert chain_db.execute("SELECT count(*) FROM rls_audit.statements_default").fetchone()[0] == 0
    assert chain_db.execute("SELECT count(*), count(problem) FROM rls_audit.verify()").fetchone() == (3, 0)


def test_a_statement_of_many_statement_rows_is_sealed_once(chain_db):
    """10,000 rows are 10 statement rows of 1,000 entries: one seal lists them all, in id order."""
    chain_db.execute("SELECT rls.set_context('3', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item SELECT g, 3, 'bulk ' || g FROM generate_series(1000, 10999) g")
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = '3'").fetchone() == (
        1,
        10000,
        None,
    )
    ids = chain_db.execute("SELECT statement_ids FROM rls_audit.seals WHERE chain = '3'").fetchone()[0]
    assert len(ids) == 10 and ids == sorted(ids)


def test_a_log_given_a_check_constraint_is_written_by_the_insert_statement_still_sealed(chain_db):
    """The capture inserts statement rows itself only into the log as the extension made it; a CHECK
    constraint a superuser adds sends them through the INSERT statement, which enforces it, with or
    without the chain, and what that writes verifies and reads as before."""
    chain_db.execute("ALTER TABLE rls_audit.statements ADD CONSTRAINT not_32 CHECK (row_keys <> '{32}')")
    chain_db.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item VALUES (30, 1, 'checked')")
    chain_db.execute("UPDATE item SET body = 'checked!' WHERE id = 30")
    with pytest.raises(psycopg.errors.CheckViolation):
        chain_db.execute("INSERT INTO item VALUES (32, 1, 'refused')")
    chain_db.execute("SET django_rls.audit_chain = off")
    with pytest.raises(psycopg.errors.CheckViolation):
        chain_db.execute("INSERT INTO item VALUES (32, 1, 'refused')")
    chain_db.execute("ALTER TABLE rls_audit.statements DROP CONSTRAINT not_32")
    chain_db.execute("RESET django_rls.audit_chain")
    chain_db.execute("DELETE FROM item WHERE id = 30")
    assert problems(chain_db) == []
    assert chain_db.execute("SELECT seals, entries FROM rls_audit.verify() WHERE chain = '1'").fetchone() == (7, 11)
    assert chain_db.execute(
        "SELECT operation, old_values, new_values, changed_columns FROM rls_audit.log WHERE row_key = '30' ORDER BY id"
    ).fetchall() == [
        ("INSERT", None, {"id": 30, "body": "checked", "site_id": 1}, None),
        ("UPDATE", {"body": "checked"}, {"body": "checked!"}, ["body"]),
        ("DELETE", {"id": 30, "body": "checked!", "site_id": 1}, None, None),
    ]


def test_entries_go_to_the_partition_of_their_month(chain_db):
    chain_db.execute("SELECT rls_audit.ensure_partitions(0)")
    chain_db.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item VALUES (31, 1, 'this month')")
    month = chain_db.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')").fetchone()[0]
    assert chain_db.execute(
        "SELECT tableoid::regclass::text FROM rls_audit.statements WHERE row_keys = '{31}'"
    ).fetchone() == (f"rls_audit.statements_{month}",)
    assert problems(chain_db) == []


def test_an_edited_entry_is_reported(chain_db):
    ids = site_one_ids(chain_db)
    chain_db.execute(
        'UPDATE rls_audit.statements SET new_values = ARRAY[\'{"body": "forged"}\'::jsonb] WHERE id = %s',
        [statement_of(ids[5])],
    )
    assert problems(chain_db) == [("1", "edited", first_entry_of(ids[5]))]


def test_an_entry_moved_to_another_site_is_reported_as_edited(chain_db):
    ids = site_one_ids(chain_db)
    chain_db.execute("UPDATE rls_audit.statements SET site_id = 2 WHERE id = %s", [statement_of(ids[2])])
    assert ("1", "edited", first_entry_of(ids[2])) in problems(chain_db)


def test_a_deleted_entry_is_reported(chain_db):
    ids = site_one_ids(chain_db)
    chain_db.execute(
        "DELETE FROM rls_audit.statements WHERE id = ANY(%s)", [[statement_of(ids[3]), statement_of(ids[6])]]
    )
    assert problems(chain_db) == [("1", "deleted", first_entry_of(ids[3]))]


def test_an_inserted_entry_is_reported(chain_db):
    ids = site_one_ids(chain_db)
    chain_db.execute(
        "INSERT INTO rls_audit.statements (table_oid, table_name, operation, row_keys, new_values, site_id, db_role) "
        "SELECT table_oid, table_name, 'INSERT', '{99}', ARRAY['{\"body\": \"planted\"}'::jsonb], 1, db_role "
        "FROM rls_audit.statements WHERE id = %s",
        [statement_of(ids[0])],
    )
    planted = site_one_ids(chain_db)[-1]
    assert problems(chain_db) == [("1", "inserted", planted)]


def test_a_copy_of_a_sealed_entry_is_reported_as_inserted(chain_db):
    ids = site_one_ids(chain_db)
    columns = [
        r[0]
        for r in chain_db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'rls_audit.statements'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attname <> 'id'"
        )
    ]
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    chain_db.execute(
        sql.SQL("INSERT INTO rls_audit.statements ({c}) SELECT {c} FROM rls_audit.statements WHERE id = %s").format(
            c=names
        ),
        [statement_of(ids[2])],
    )
    assert problems(chain_db) == [("1", "inserted", first_entry_of(site_one_ids(chain_db)[-1]))]


def test_an_entry_inserted_for_a_site_without_a_chain_is_reported(chain_db):
    chain_db.execute(
        "INSERT INTO rls_audit.statements (table_oid, table_name, operation, row_keys, site_id, db_role) "
        "VALUES ('item'::regclass, 'public.item', 'DELETE', '{1}', 77, 'postgres')"
    )
    assert [(c, p) for c, p, _ in problems(chain_db)] == [("77", "inserted")]


def test_reordered_entries_are_reported(chain_db):
    ids = site_one_ids(chain_db)
    first, second = ids[1], ids[4]
    columns = [
        r[0]
        for r in chain_db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'rls_audit.statements'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attname <> 'id'"
        )
    ]
    assignments = sql.SQL(", ").join(sql.SQL("{c} = o.{c}").format(c=sql.Identifier(c)) for c in columns)
    chain_db.execute(
        sql.SQL(
            "UPDATE rls_audit.statements l SET {a} FROM rls_audit.statements o "
            "WHERE (l.id, o.id) IN ((%s, %s), (%s, %s))"
        ).format(a=assignments),
        [statement_of(first), statement_of(second), statement_of(second), statement_of(first)],
    )
    assert problems(chain_db) == [("1", "reordered", first_entry_of(first))]


def test_an_edited_seal_and_a_deleted_seal_are_reported(chain_db):
    chain_db.execute(
        "UPDATE rls_audit.seals SET digests = sha256('x') || substring(digests FROM 33) WHERE chain = '1' AND seq = 2"
    )
    chain_db.execute("DELETE FROM rls_audit.seals WHERE chain = '2'")
    assert [(c, p) for c, p, _ in problems(chain_db)] == [("1", "seal edited"), ("2", "seal deleted")]


def test_the_last_statement_deleted_with_its_seal_is_reported(chain_db):
    last = site_one_ids(chain_db)[-1]
    chain_db.execute("DELETE FROM rls_audit.statements WHERE id = %s", [statement_of(last)])
    chain_db.execute("DELETE FROM rls_audit.seals WHERE chain = '1' AND seq = 4")
    assert [(c, p) for c, p, _ in problems(chain_db)] == [("1", "seal deleted")]


def test_a_month_dropped_for_retention_leaves_the_rest_verifiable(chain_db):
    """Move site 2's history to last month (entries, seals and head re-sealed as the capture would have
    sealed them then), drop last month's partition: the chains of this month still verify."""
    chain_db.execute(
        "CREATE TABLE rls_audit.statements_last_month PARTITION OF rls_audit.statements FOR VALUES "
        "FROM (date_trunc('month', now(), 'UTC') - interval '1 month') TO (date_trunc('month', now(), 'UTC'))"
    )
    chain_db.execute("UPDATE rls_audit.statements SET logged_at = logged_at - interval '1 month' WHERE site_id = 2")
    chain_db.execute("DELETE FROM rls_audit.seals WHERE chain = '2'")
    chain_db.execute("DELETE FROM rls_audit.chain_heads WHERE chain = '2'")
    chain_db.execute("SET TimeZone = 'UTC'")  # as the capture seals
    chain_db.execute(
        "SELECT rls_audit._seal(rls_audit._chain_month(l.logged_at), '2', ARRAY[l.id], rls_audit._entry_digest(l)) "
        "FROM rls_audit.statements l WHERE site_id = 2"
    )
    assert chain_db.execute("SELECT count(*), count(problem) FROM rls_audit.verify()").fetchone() == (3, 0)
    assert chain_db.execute("SELECT rls_audit.drop_partitions_before(date_trunc('month', now()))").fetchone()[0] == 1
    rows = chain_db.execute("SELECT chain, problem FROM rls_audit.verify() ORDER BY chain").fetchall()
    assert rows == [("", None), ("1", None)]


def test_the_chain_survives_dump_and_restore(database: Database):
    def prepare(conn: psycopg.Connection) -> None:
        conn.execute("SET django_rls.audit_chain = on")
        conn.execute("SET django_rls.allow_bypassing_roles = on")  # the superuser writes the history itself
        # The month's partition, as docs/audit.md asks operators to keep: pg_dump 14 leaves out rows
        # waiting in log_default (docs/security.md#postgresql-14), which verify() would rightly call deleted.
        conn.execute("SELECT rls_audit.ensure_partitions(1)")
        conn.execute(SCHEMA.format(app=APP_ROLE))
        write_history(conn)

    def check(conn: psycopg.Connection) -> None:
        rows = conn.execute("SELECT chain, seals, entries, problem FROM rls_audit.verify() ORDER BY chain").fetchall()
        assert rows == [("", 1, 1, None), ("1", 4, 8, None), ("2", 1, 1, None)]

    dump_and_restore(database, prepare, check)


@pytest.mark.django_db(databases=["default", "owner"])
def test_the_command_reports_the_first_bad_entry_and_fails(chain_db, extra_alias):
    alias = extra_alias("chain_admin", dbname=CHAIN_DB, user="postgres")
    out = io.StringIO()
    call_command("rls_audit_verify", database=alias, stdout=out)
    assert "3 chain(s) verified, no problem" in out.getvalue()
    later = io.StringIO()
    call_command("rls_audit_verify", "--since", "2999-01", database=alias, stdout=later)
    assert later.getvalue() == "0 chain(s) verified, no problem.\n"
    with pytest.raises(CommandError, match="--since expects a month"):
        call_command("rls_audit_verify", "--since", "last week", database=alias)
    ids = site_one_ids(chain_db)
    chain_db.execute("DELETE FROM rls_audit.statements WHERE id = %s", [statement_of(ids[1])])
    with pytest.raises(CommandError, match=rf"chain 1 of .*: deleted entry {first_entry_of(ids[1])}"):
        call_command("rls_audit_verify", database=alias, stdout=io.StringIO())
