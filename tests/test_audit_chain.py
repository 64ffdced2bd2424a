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


def test_a_repeatable_read_transaction_seals_its_own_site_several_times(chain_db, database):
    """A head this transaction updated itself is not a concurrent update, in any isolation level."""
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    for level in ("REPEATABLE READ", "SERIALIZABLE"):
        with psycopg.connect(dsn) as conn:
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
            conn.execute("INSERT INTO item VALUES (800, 1, 'once'), (801, 1, 'once')")
            conn.execute("UPDATE item SET body = 'twice' WHERE id >= 800")
            conn.execute("SELECT rls.set_context('12', NULL, NULL, false)")
            conn.execute("INSERT INTO item VALUES (802, 12, 'a new chain')")
            conn.execute("INSERT INTO item VALUES (803, 12, 'and again')")
            conn.execute("DELETE FROM item WHERE id >= 800")
            conn.commit()
    assert problems(chain_db) == []
    assert chain_db.execute("SELECT seals, entries FROM rls_audit.verify() WHERE chain = '1'").fetchone() == (8, 16)


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


# One column of each built-in type family, with values whose text needs quoting or escaping.
TYPED_TABLE = """
CREATE TABLE typed (
    id int PRIMARY KEY, site_id int, n numeric, f float8, r real, b boolean, t text, c char(4),
    ts timestamp, tz timestamptz, d date, tm time, ttz timetz, iv interval, by bytea, u uuid,
    j json, jb jsonb, ia int[], ta text[], ip inet, net cidr, mac macaddr, m money, p point,
    bx box, tr tsrange, tzr tstzrange, bits varbit, x xml, o oid, rc regclass, tv tsvector
);
SELECT rls_audit.enable('typed');
"""
TYPED_ROW = (
    r"""({id}, {site}, 12345.678901234567890, 1.0/3, 0.1, true, E'a "quoted", back\\slash, {{brace}}, é', 'ab ',"""
    r""" '2024-02-29 23:59:59.123456', '2024-07-01 12:34:56.789+05:30', '2024-12-31', '23:59:59.5', '01:02:03+04',"""
    r""" '1 year 2 mons -3 days 04:05:06.7', '\x00ff5c22', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"""
    r""" '{{"k": [1, "v\"\\"]}}', '{{"k": {{"z": null, "a": 1.50}}}}', '{{1,NULL,3}}',"""
    r""" '{{"x y",NULL,"\"\\"}}', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, '(1.5,-2)',"""
    r""" '((0,0),(1,1))', '[2024-01-01,2024-02-01)', '[2024-01-01 00:00+02,)', B'1011', '<a b="1">x &amp; y</a>',"""
    r""" 4294967295, 'typed', 'fat:1A cat:2B')"""
)


def write_typed(conn: psycopg.Connection, site: str | None, first: int) -> None:
    """Insert two rows of every type (one all NULL but its key), update some columns, delete one."""
    site_value = "NULL" if site is None or not site.isdigit() else site
    if site is None:
        conn.execute("SELECT rls.clear_context()")
    else:
        conn.execute("SELECT rls.set_context(%s, NULL, NULL, false)", [site])
    conn.execute("INSERT INTO typed (id, site_id) VALUES " + f"({first + 1}, {site_value})")
    conn.execute("INSERT INTO typed VALUES " + TYPED_ROW.format(id=first, site=site_value))
    conn.execute(
        f"UPDATE typed SET tz = tz + interval '1 hour', iv = NULL, jb = '{{\"k\": \"changed\"}}', "
        f"f = 'NaN', n = n * -1 WHERE id = {first}"
    )
    conn.execute(f"DELETE FROM typed WHERE id = {first + 1}")


SITE_UUID = "6f1b0c2e-2d7a-4f4e-9c1a-0b8e6a3c5d11"


def digests_match_entry_digest(conn: psycopg.Connection) -> list[tuple]:
    """Per seal: whether its digests are rls_audit._entry_digest() of the statement rows it lists."""
    conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")  # as _entry_digest() is defined
    return conn.execute(
        "SELECT s.chain, s.seq, s.digests = (SELECT string_agg(rls_audit._entry_digest(l), ''::bytea ORDER BY l.id)"
        "                                 FROM rls_audit.statements l WHERE l.id = ANY (s.statement_ids)),"
        "       cardinality(s.statement_ids) * 32 = octet_length(s.digests)"
        "  FROM rls_audit.seals s ORDER BY s.chain, s.seq"
    ).fetchall()


def test_the_capture_seals_every_type_family_across_sites_as_verify_checks(chain_db):
    """The capture's own seal (audit_chain.c): a chain of a site id, of a site uuid and of no site, each
    starting next to another month's head of the same name, verifies, and every seal's digests are
    _entry_digest() of its statement rows."""
    chain_db.execute(TYPED_TABLE)
    # Last month's heads of the chains written below: the capture must start this month's chains apart.
    chain_db.execute(
        "INSERT INTO rls_audit.chain_heads SELECT (date_trunc('month', now(), 'UTC') - interval '1 month')::date,"
        " c, 5, '\\x00' FROM unnest(ARRAY['7', %s, '']) c",
        [SITE_UUID],
    )
    write_typed(chain_db, "7", 100)
    write_typed(chain_db, SITE_UUID, 200)
    write_typed(chain_db, None, 300)
    write_typed(chain_db, "7", 400)
    this_month = "rls_audit._chain_month(now())"
    rows = chain_db.execute(
        f"SELECT chain, seals, entries, problem FROM rls_audit.verify() WHERE month = {this_month} ORDER BY chain"
    ).fetchall()
    assert rows == [("", 5, 5, None), ("1", 4, 8, None), ("2", 1, 1, None), (SITE_UUID, 4, 4, None), ("7", 8, 8, None)]
    assert chain_db.execute(
        f"SELECT h.seq, h.seal = s.seal FROM rls_audit.chain_heads h JOIN rls_audit.seals s USING (month, chain, seq)"
        f" WHERE h.month = {this_month} AND h.chain = '7'"
    ).fetchone() == (8, True)
    # The other month's heads were neither used nor changed.
    assert chain_db.execute(
        "SELECT count(*) FROM rls_audit.chain_heads WHERE month < rls_audit._chain_month(now()) AND seq = 5"
    ).fetchone() == (3,)
    assert all(row[2] and row[3] for row in digests_match_entry_digest(chain_db))
    assert chain_db.execute("SELECT count(*) FROM rls_audit.seals").fetchone() == (22,)


def test_the_capture_digest_equals_entry_digest_whatever_the_writers_settings(chain_db):
    """Rows written under another TimeZone, DateStyle, IntervalStyle, float and bytea output: the digests the
    capture sealed are those _entry_digest() computes under TimeZone UTC and DateStyle ISO."""
    chain_db.execute(TYPED_TABLE)
    chain_db.execute(
        "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard';"
        " SET extra_float_digits = 0; SET bytea_output = 'escape'"
    )
    write_typed(chain_db, "7", 100)
    chain_db.execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'German'; SET IntervalStyle = 'iso_8601'")
    write_typed(chain_db, "7", 200)
    matches = digests_match_entry_digest(chain_db)
    assert [row for row in matches if row[0] == "7"] == [("7", seq, True, True) for seq in range(1, 9)]
    assert problems(chain_db) == []


def test_a_trigger_on_the_chain_heads_still_fires_and_the_chain_verifies(chain_db):
    """The capture writes the chain's tables itself only as the extension made them; a trigger a superuser
    adds to one sends the seal through rls_audit._seal(), where it fires, and the chain stays whole."""
    chain_db.execute("CREATE TABLE public.head_changes (chain text, seq bigint)")
    chain_db.execute(
        "CREATE FUNCTION public.note_head() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO public.head_changes VALUES (NEW.chain, NEW.seq); RETURN NEW; END$$"
    )
    chain_db.execute(
        "CREATE TRIGGER note_head AFTER INSERT OR UPDATE ON rls_audit.chain_heads "
        "FOR EACH ROW EXECUTE FUNCTION public.note_head()"
    )
    chain_db.execute("SELECT rls.set_context('1', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item VALUES (40, 1, 'noted')")
    chain_db.execute("SELECT rls.set_context('9', NULL, NULL, false)")
    chain_db.execute("INSERT INTO item VALUES (41, 9, 'noted, new chain')")
    assert chain_db.execute("SELECT chain, seq FROM public.head_changes ORDER BY chain").fetchall() == [
        ("1", 5),
        ("9", 1),
    ]
    chain_db.execute("DROP TRIGGER note_head ON rls_audit.chain_heads")
    chain_db.execute("INSERT INTO item VALUES (42, 9, 'sealed by the capture again')")
    assert chain_db.execute("SELECT count(*) FROM public.head_changes").fetchone() == (2,)
    assert problems(chain_db) == []
    assert chain_db.execute("SELECT seals, entries FROM rls_audit.verify() WHERE chain = '9'").fetchone() == (2, 2)


def test_two_writers_creating_one_chain_head_wait_and_both_seal(chain_db, database):
    """The second writer of a chain without a head yet waits for the first one's head, then appends to it
    (READ COMMITTED); the creation's unique violation never reaches it."""
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        for conn in (first, second):
            conn.execute("SELECT rls.set_context('55', NULL, NULL, false)")
        first.execute("INSERT INTO item VALUES (500, 55, 'creates the head')")
        waiting = threading.Thread(
            target=lambda: (second.execute("INSERT INTO item VALUES (501, 55, 'second')"), second.commit())
        )
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive(), "the second writer should wait for the head the first one is creating"
        first.commit()
        waiting.join(timeout=10)
        assert not waiting.is_alive()
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = '55'").fetchone() == (
        2,
        2,
        None,
    )


def test_writers_taking_turns_on_one_chain_and_a_rewritten_head_table_keep_it_whole(chain_db, database):
    """Each backend remembers where it left a chain's head; a head another backend moved since, or a table
    rewritten under it, is found through the primary key again."""
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn, autocommit=True) as first, psycopg.connect(dsn, autocommit=True) as second:
        for conn in (first, second):
            conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        for key in range(700, 710):
            (first if key % 3 else second).execute("INSERT INTO item VALUES (%s, 1, 'turns')", [key])
            if key == 704:
                chain_db.execute("VACUUM FULL rls_audit.chain_heads")
            if key == 706:
                chain_db.execute("UPDATE rls_audit.chain_heads SET seal = seal WHERE chain = '1'")
    assert chain_db.execute("SELECT seals, entries, problem FROM rls_audit.verify() WHERE chain = '1'").fetchone() == (
        14,
        18,
        None,
    )


def test_a_repeatable_read_writer_behind_a_new_chain_head_gets_a_serialization_failure(chain_db, database):
    dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=CHAIN_DB)
    with psycopg.connect(dsn) as late:
        late.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        late.execute("SELECT rls.set_context('56', NULL, NULL, false)")  # takes the snapshot
        chain_db.execute("SELECT rls.set_context('56', NULL, NULL, false)")
        chain_db.execute("INSERT INTO item VALUES (600, 56, 'head created after that snapshot')")
        with pytest.raises(psycopg.errors.SerializationFailure):
            late.execute("INSERT INTO item VALUES (601, 56, 'late')")
        late.rollback()
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
