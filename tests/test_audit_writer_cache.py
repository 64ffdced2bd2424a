"""The capture's kept log writer: what it resolved about the log's partition and its indexes is
kept per backend across statements and given up at every change to them (ext/audit.c,
LogWriterShape; docs/audit.md, "Cost").

Each test writes from one session (the writer: the app role, or a superuser where the writer
itself changes the log), changes the log from another session or in the writer's own
transaction, writes again from the same session, and then checks that every entry went where
it belongs: the partition of its month (or the default one), every B-tree index of every
partition holding every row (amcheck's heapallindexed), the GIN index of row keys finding
each row key, and the entries readable by the app role through the log's policies.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Database
from tests.modes import library_only
from tests.roles import APP_ROLE

pytestmark = library_only("the C capture's log writer and its per-backend cache")

WRITER_DB = "django_rls_writer_cache"

SCHEMA = """
CREATE EXTENSION amcheck;
CREATE TABLE item (id int PRIMARY KEY, site_id int, body text);
GRANT SELECT, INSERT, UPDATE, DELETE ON item TO {app};
SELECT rls_audit.enable('item');
SELECT rls_audit.set_read_rule('item', site_column => 'site_id');
"""


class Log:
    """The writer database: its superuser connection, and connections as the app role."""

    def __init__(self, admin: psycopg.Connection, admin_dsn: str, app_dsn: str) -> None:
        self.admin = admin
        self.admin_dsn = admin_dsn
        self.app_dsn = app_dsn

    def app(self) -> psycopg.Connection:
        conn = psycopg.connect(self.app_dsn, autocommit=True)
        conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        return conn

    def superuser(self, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(self.admin_dsn, autocommit=autocommit)
        conn.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        return conn

    def month_partition(self) -> str:
        month = self.admin.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')").fetchone()[0]
        return f"rls_audit.statements_{month}"

    def partition_of(self, key: int) -> str:
        rows = self.admin.execute(
            'SELECT tableoid::regclass::text FROM rls_audit.statements WHERE row_keys = ARRAY[%s::text COLLATE "C"]',
            [str(key)],
        ).fetchall()
        assert len(rows) == 1, f"key {key} recorded {len(rows)} times"
        return rows[0][0]

    def check(self, *keys: int) -> None:
        """Every index of every partition holds every row, and the app role reads each key's entry."""
        btrees = self.admin.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am a ON a.oid = c.relam"
            " WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree('rls_audit.statements') WHERE isleaf)"
            " AND a.amname = 'btree'"
        ).fetchall()
        assert btrees
        for (index,) in btrees:
            self.admin.execute("SELECT bt_index_check(%s::regclass, true)", [index])
        with self.admin.transaction():
            self.admin.execute("SET LOCAL enable_seqscan = off")
            for key in keys:
                plan = "\n".join(
                    r[0]
                    for r in self.admin.execute(
                        'EXPLAIN SELECT id FROM rls_audit.statements WHERE row_keys OPERATOR(rls_audit.@>) ARRAY[%s::text COLLATE "C"]',
                        [str(key)],
                    )
                )
                assert "Index Scan" in plan, plan
                found = self.admin.execute(
                    'SELECT count(*) FROM rls_audit.statements WHERE row_keys OPERATOR(rls_audit.@>) ARRAY[%s::text COLLATE "C"]',
                    [str(key)],
                ).fetchone()[0]
                assert found == 1, f"the row key index finds key {key} {found} times"
        with self.app() as app:
            seen = app.execute(
                "SELECT row_key, operation, new_values->>'body', site_id FROM rls_audit.log"
                " WHERE row_key = ANY(%s) ORDER BY row_key::int",
                [[str(k) for k in keys]],
            ).fetchall()
        assert seen == [(str(k), "INSERT", f"b{k}", 1) for k in sorted(keys)]


@pytest.fixture
def log(database: Database) -> Iterator[Log]:
    """A database of its own: the tests change its log's partitions and indexes."""
    name = sql.Identifier(WRITER_DB)
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        # The superuser writes too where it changes the log itself (docs/security.md).
        admin.execute(sql.SQL("ALTER DATABASE {} SET django_rls.allow_bypassing_roles = on").format(name))
    admin_dsn = psycopg.conninfo.make_conninfo(database.admin, dbname=WRITER_DB)
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")
            conn.execute(SCHEMA.format(app=APP_ROLE))
            # The setter functions, as in tests/conftest.py's "app_unbound" (this database is dropped afterwards).
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET django_rls.statement_bound = off").format(
                    sql.Identifier(APP_ROLE), name
                )
            )
            yield Log(conn, admin_dsn, psycopg.conninfo.make_conninfo(database.app, dbname=WRITER_DB))
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def insert(conn: psycopg.Connection, key: int) -> None:
    conn.execute("INSERT INTO item VALUES (%s, 1, %s)", [key, f"b{key}"])


def test_a_new_month_partition_takes_the_next_entries(log):
    with log.app() as app:
        insert(app, 1)
        insert(app, 2)
        assert log.partition_of(2) == "rls_audit.statements_default"
        log.admin.execute("SELECT rls_audit.ensure_partitions(0)")
        insert(app, 3)
    month = log.month_partition()
    assert [log.partition_of(k) for k in (1, 2, 3)] == [month, month, month]
    log.check(1, 2, 3)


def test_a_detached_and_a_dropped_partition_send_the_entries_to_the_default_one(log):
    log.admin.execute("SELECT rls_audit.ensure_partitions(0)")
    month = log.month_partition()
    with log.app() as app:
        insert(app, 1)
        assert log.partition_of(1) == month
        log.admin.execute(f"ALTER TABLE rls_audit.statements DETACH PARTITION {month}")
        insert(app, 2)
        assert log.partition_of(2) == "rls_audit.statements_default"
        log.admin.execute(f"DROP TABLE {month}")
        log.admin.execute("SELECT rls_audit.ensure_partitions(0)")
        insert(app, 3)
        assert log.partition_of(3) == month
        log.admin.execute(f"DROP TABLE {month}")
        insert(app, 4)
    assert log.partition_of(4) == "rls_audit.statements_default"
    # Key 2 moved from the default partition into the month partition ensure_partitions() made, dropped since.
    log.check(4)


def test_an_index_added_to_the_partition_gets_the_next_entries(log):
    with log.app() as app:
        insert(app, 1)
        # Partial, on an expression: its predicate and expression states are kept with the index.
        log.admin.execute(
            "CREATE INDEX extra_expr ON rls_audit.statements_default ((table_name || operation)) WHERE site_id = 1"
        )
        insert(app, 2)
        log.admin.execute("CREATE INDEX CONCURRENTLY extra_conc ON rls_audit.statements_default (table_oid, id)")
        insert(app, 3)
    log.check(1, 2, 3)
    with log.admin.transaction():
        log.admin.execute("SET LOCAL enable_seqscan = off")
        log.admin.execute("SET LOCAL enable_bitmapscan = off")
        assert log.admin.execute(
            "SELECT count(*) FROM rls_audit.statements_default WHERE table_name || operation = 'public.itemINSERT'"
            " AND site_id = 1"
        ).fetchone() == (3,)
        plan = " ".join(
            r[0]
            for r in log.admin.execute(
                "EXPLAIN SELECT count(*) FROM rls_audit.statements_default"
                " WHERE table_name || operation = 'public.itemINSERT' AND site_id = 1"
            )
        )
        assert "extra_expr" in plan, plan


def test_an_index_dropped_from_the_partition_is_not_written(log):
    with log.app() as app:
        insert(app, 1)
        index = log.admin.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'rls_audit.statements_default'::regclass"
            " AND pg_get_indexdef(indexrelid) LIKE '%(logged_at)'"
        ).fetchone()[0]
        log.admin.execute(f"DROP INDEX {index}")
        insert(app, 2)
        log.admin.execute("CREATE INDEX extra ON rls_audit.statements_default (id)")
        insert(app, 3)
        log.admin.execute("DROP INDEX CONCURRENTLY rls_audit.extra")
        insert(app, 4)
    log.check(1, 2, 3, 4)


def test_reindex_keeps_every_index_whole(log):
    with log.app() as app:
        insert(app, 1)
        log.admin.execute("REINDEX TABLE rls_audit.statements_default")
        insert(app, 2)
        log.admin.execute("REINDEX TABLE CONCURRENTLY rls_audit.statements_default")
        insert(app, 3)
    log.check(1, 2, 3)


def test_a_partition_changed_so_the_insert_statement_must_write_it_is_written_by_it(log):
    """A CHECK constraint, a trigger or a deferrable unique constraint on the partition: the capture
    decides again after the change and writes through the INSERT statement, which applies them;
    once they are gone it inserts itself again."""
    with log.app() as app:
        insert(app, 1)
        log.admin.execute("ALTER TABLE rls_audit.statements_default ADD CONSTRAINT not_5 CHECK (row_keys <> '{5}')")
        insert(app, 2)
        with pytest.raises(psycopg.errors.CheckViolation):
            insert(app, 5)
        log.admin.execute("ALTER TABLE rls_audit.statements_default DROP CONSTRAINT not_5")
        insert(app, 5)
        log.admin.execute("CREATE TABLE rls_audit.seen (keys text[])")
        log.admin.execute(
            "CREATE FUNCTION rls_audit.seen() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN INSERT INTO rls_audit.seen VALUES (NEW.row_keys); RETURN NEW; END$$"
        )
        log.admin.execute(
            "CREATE TRIGGER seen BEFORE INSERT ON rls_audit.statements_default"
            " FOR EACH ROW EXECUTE FUNCTION rls_audit.seen()"
        )
        insert(app, 6)
        log.admin.execute("DROP TRIGGER seen ON rls_audit.statements_default")
        insert(app, 7)
        log.admin.execute("ALTER TABLE rls_audit.statements_default ADD CONSTRAINT u UNIQUE (id) DEFERRABLE")
        insert(app, 8)
        log.admin.execute("ALTER TABLE rls_audit.statements_default DROP CONSTRAINT u")
        insert(app, 9)
    assert log.admin.execute("SELECT keys FROM rls_audit.seen").fetchall() == [(["6"],)]
    log.check(1, 2, 5, 6, 7, 8, 9)


def test_the_writers_own_ddl_and_a_rolled_back_one(log):
    with log.superuser(autocommit=False) as writer:
        insert(writer, 1)
        writer.commit()
        # Its own index, in its own transaction, then rolled back: the kept shape named it.
        writer.execute("CREATE INDEX extra ON rls_audit.statements_default (id)")
        insert(writer, 100)
        writer.rollback()
        insert(writer, 2)
        writer.commit()
        # Its own month partition, rolled back: the next entry goes to the default partition again.
        writer.execute("SELECT rls_audit.ensure_partitions(0)")
        insert(writer, 101)
        writer.rollback()
        insert(writer, 3)
        writer.commit()
        assert log.partition_of(3) == "rls_audit.statements_default"
        # And kept: an index made and written in one transaction, committed.
        writer.execute("CREATE INDEX extra ON rls_audit.statements_default (id)")
        insert(writer, 4)
        writer.commit()
        insert(writer, 5)
        writer.commit()
    assert log.admin.execute("SELECT count(*) FROM rls_audit.statements WHERE row_keys && '{100,101}'").fetchone() == (
        0,
    )
    log.check(1, 2, 3, 4, 5)


def test_discard_all_leaves_the_writer_correct(log):
    with log.app() as app:
        insert(app, 1)
        app.execute("DISCARD ALL")
        app.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        insert(app, 2)
        log.admin.execute("SELECT rls_audit.ensure_partitions(0)")
        app.execute("DISCARD ALL")
        app.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        insert(app, 3)
    month = log.month_partition()
    assert [log.partition_of(k) for k in (1, 2, 3)] == [month, month, month]
    log.check(1, 2, 3)


def _seconds_from_now(log: Log, seconds: int):
    return log.admin.execute(
        "SELECT date_trunc('second', clock_timestamp()) + make_interval(secs => %s)", [seconds]
    ).fetchone()[0]


def test_the_kept_partition_is_left_when_time_passes_its_bound(log):
    """What a month boundary does, in seconds: a writer that kept the partition of one range (or the default
    partition for the gap below the next one) puts the entries written after the bound where the log's bounds
    send them, never into the kept partition past its range (the capture inserts into it directly, without the
    partition constraint check the INSERT statement makes). Red team, session 7."""
    bound = _seconds_from_now(log, 3)
    log.admin.execute(
        "CREATE TABLE rls_audit.statements_ending PARTITION OF rls_audit.statements"
        f" FOR VALUES FROM ('-infinity') TO ('{bound.isoformat()}')"
    )
    with log.app() as app:
        insert(app, 1)
        assert log.partition_of(1) == "rls_audit.statements_ending"
        app.execute("SELECT pg_sleep_until(%s)", [bound])
        insert(app, 2)
        assert log.partition_of(2) == "rls_audit.statements_default"
        # The default partition's gap ends where a later partition starts: the kept gap is left there too.
        later = _seconds_from_now(log, 3)
        log.admin.execute(
            "CREATE TABLE rls_audit.statements_later PARTITION OF rls_audit.statements"
            f" FOR VALUES FROM ('{later.isoformat()}') TO ('infinity')"
        )
        insert(app, 3)
        assert log.partition_of(3) == "rls_audit.statements_default"
        app.execute("SELECT pg_sleep_until(%s)", [later])
        insert(app, 4)
        assert log.partition_of(4) == "rls_audit.statements_later"
    # Every entry within its partition's range.
    misplaced = log.admin.execute(
        "SELECT (SELECT count(*) FROM ONLY rls_audit.statements_ending WHERE logged_at >= %(bound)s)"
        " + (SELECT count(*) FROM ONLY rls_audit.statements_default WHERE logged_at < %(bound)s OR logged_at >= %(later)s)"
        " + (SELECT count(*) FROM ONLY rls_audit.statements_later WHERE logged_at < %(later)s)",
        {"bound": bound, "later": later},
    ).fetchone()
    assert misplaced == (0,)
    log.check(1, 2, 3, 4)


def partition_index_locks(log: Log, pid: int, partition: str) -> list[tuple[str, str]]:
    """The locks the backend pid holds on the partition's indexes."""
    return log.admin.execute(
        "SELECT l.relation::regclass::text, l.mode FROM pg_locks l JOIN pg_index i ON i.indexrelid = l.relation"
        " WHERE l.pid = %s AND l.locktype = 'relation' AND i.indrelid = %s::regclass AND l.granted"
        " ORDER BY 1",
        [pid, partition],
    ).fetchall()


def test_the_index_locks_are_held_to_the_end_of_the_transaction(log):
    """The writer keeps its RowExclusiveLock on the partition's indexes it wrote to, as on the
    partition itself, until its transaction ends (the next statements of a transaction do not take
    them again); the partial indexes its statement rows take no entry in (the uuid and user ones,
    for a site-only integer context) it does not open at all."""
    indexes = log.admin.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'rls_audit.statements_default'::regclass"
        " AND (indpred IS NULL OR pg_get_indexdef(indexrelid) LIKE '%WHERE (site_id IS NOT NULL)')"
        " ORDER BY 1"
    ).fetchall()
    assert len(indexes) == 4
    with log.app() as app:
        pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
        # The session's first write resolves the partition's indexes, opening every one of them.
        insert(app, 0)
        with app.transaction():
            insert(app, 1)
            held = partition_index_locks(log, pid, "rls_audit.statements_default")
            assert held == [(name, "RowExclusiveLock") for (name,) in indexes]
            insert(app, 2)
            insert(app, 3)
            assert partition_index_locks(log, pid, "rls_audit.statements_default") == held
        assert partition_index_locks(log, pid, "rls_audit.statements_default") == []
        insert(app, 4)
        assert partition_index_locks(log, pid, "rls_audit.statements_default") == []
    log.check(0, 1, 2, 3, 4)


def test_ddl_between_the_writes_of_one_transaction(log):
    """The writer's own DDL on the partition, its indexes, the log and the audited table between
    writes of one transaction (the writer holds the locks of the indexes it wrote from the first
    write on): every write lands where it belongs, in every index."""
    with log.superuser(autocommit=False) as writer:
        insert(writer, 1)
        writer.execute("CREATE INDEX extra ON rls_audit.statements_default (table_oid, id)")
        insert(writer, 2)
        writer.execute("REINDEX TABLE rls_audit.statements_default")
        insert(writer, 3)
        writer.execute("DROP INDEX rls_audit.extra")
        insert(writer, 4)
        writer.execute("ALTER TABLE rls_audit.statements_default ADD CONSTRAINT not_9 CHECK (row_keys <> '{9}')")
        insert(writer, 5)
        writer.execute("ALTER TABLE rls_audit.statements_default DROP CONSTRAINT not_9")
        writer.execute("ALTER TABLE item ADD COLUMN extra text")
        insert(writer, 6)
        # The month's partition made in the same transaction: the next entries go there.
        writer.execute("SELECT rls_audit.ensure_partitions(0)")
        insert(writer, 7)
        writer.execute("ALTER TABLE item DROP COLUMN extra")
        insert(writer, 8)
        writer.commit()
        insert(writer, 9)
        writer.commit()
    month = log.month_partition()
    assert [log.partition_of(k) for k in range(1, 10)] == [month] * 9
    log.check(*range(1, 10))


def test_a_savepoint_rolled_back_after_a_write(log):
    """Writes inside a savepoint rolled back, the first of the transaction and after DDL made inside
    it: the rolled-back entries are gone, the others whole, and the writer goes on writing."""
    with log.superuser(autocommit=False) as writer:
        pid = writer.execute("SELECT pg_backend_pid()").fetchone()[0]
        # The savepoint's writes are the transaction's first: their index locks go with the savepoint.
        writer.execute("SAVEPOINT s")
        insert(writer, 100)
        writer.execute("ROLLBACK TO SAVEPOINT s")
        assert partition_index_locks(log, pid, "rls_audit.statements_default") == []
        insert(writer, 1)
        writer.execute("SAVEPOINT s")
        insert(writer, 101)
        writer.execute("CREATE INDEX extra ON rls_audit.statements_default (table_oid, id)")
        insert(writer, 102)
        writer.execute("SELECT rls_audit.ensure_partitions(0)")
        insert(writer, 103)
        writer.execute("ROLLBACK TO SAVEPOINT s")
        insert(writer, 2)
        writer.execute("SAVEPOINT t")
        insert(writer, 3)
        writer.execute("RELEASE SAVEPOINT t")
        writer.commit()
        insert(writer, 4)
        writer.commit()
    assert log.admin.execute(
        "SELECT count(*) FROM rls_audit.statements WHERE row_keys && '{100,101,102,103}'"
    ).fetchone() == (0,)
    assert [log.partition_of(k) for k in range(1, 5)] == ["rls_audit.statements_default"] * 4
    log.check(1, 2, 3, 4)


def test_an_aborted_transaction_leaves_no_lock_and_no_entry(log):
    with log.app() as app:
        pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
        with pytest.raises(psycopg.errors.UniqueViolation), app.transaction():
            insert(app, 100)
            insert(app, 100)
        assert partition_index_locks(log, pid, "rls_audit.statements_default") == []
        insert(app, 1)
    assert log.admin.execute("SELECT count(*) FROM rls_audit.statements WHERE row_keys && '{100}'").fetchone() == (0,)
    log.check(1)


def test_partial_indexes_opened_as_the_statement_rows_need_them(log):
    """Statement rows of one transaction with a site, a user, uuid ids and no context at all: each
    partial index (opened only for a row its predicate takes) holds exactly the rows it should."""
    site_uuid = "6f1c2a4e-9d1b-4c55-8a61-3f0f4a0d2b7e"
    user_uuid = "0b9e8f4a-2c3d-4e5f-8a9b-1c2d3e4f5a6b"
    with log.superuser(autocommit=False) as writer:
        insert(writer, 1)
        writer.execute("SELECT rls.set_context('1', '5', NULL, false)")
        insert(writer, 2)
        writer.execute("SELECT rls.set_context(%s, %s, NULL, false)", [site_uuid, user_uuid])
        writer.execute("INSERT INTO item VALUES (3, 2, 'b3')")
        writer.execute("SELECT rls.set_context(NULL, NULL, NULL, false)")
        writer.execute("INSERT INTO item VALUES (4, 2, 'b4')")
        writer.execute("SELECT rls.set_context('1', NULL, NULL, false)")
        insert(writer, 5)
        writer.commit()
        # And a new transaction whose first rows need the uuid indexes only.
        writer.execute("SELECT rls.set_context(%s, %s, NULL, false)", [site_uuid, user_uuid])
        writer.execute("INSERT INTO item VALUES (6, 2, 'b6')")
        writer.commit()
    counts = {}
    with log.admin.transaction():
        log.admin.execute("SET LOCAL enable_seqscan = off")
        log.admin.execute("SET LOCAL enable_bitmapscan = off")
        for column, value in (("site_id", 1), ("user_id", 5), ("site_uuid", site_uuid), ("user_uuid", user_uuid)):
            query = (
                f"SELECT array_agg(row_keys[1] ORDER BY row_keys[1]) FROM rls_audit.statements"
                f" WHERE {column} = %s AND logged_at > '-infinity'"
            )
            plan = " ".join(r[0] for r in log.admin.execute(f"EXPLAIN {query}", [value]))
            assert f"{column}_logged_at_idx" in plan, plan
            counts[column] = log.admin.execute(query, [value]).fetchone()[0]
    assert counts == {"site_id": ["1", "2", "5"], "user_id": ["2"], "site_uuid": ["3", "6"], "user_uuid": ["3", "6"]}
    log.check(1, 2, 5)


def test_a_superusers_index_function_resolves_names_through_the_pinned_search_path(log):
    """The capture runs with the writer's search_path (rls_audit.capture() has no SET clause) and pins it
    wherever a name could be resolved through it: here, in a PL/pgSQL predicate a superuser gave an index of
    the log, which runs as the log's owner at each insert. The writer's own lower(), first on its path, never
    runs there."""
    log.admin.execute(sql.SQL("CREATE SCHEMA app_own AUTHORIZATION {}").format(sql.Identifier(APP_ROLE)))
    log.admin.execute(
        "CREATE FUNCTION rls_audit.loud(op text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS"
        " $$BEGIN RETURN lower(op) = 'insert'; END$$"
    )
    log.admin.execute("CREATE INDEX loud ON rls_audit.statements_default (id) WHERE rls_audit.loud(operation)")
    with log.app() as app:
        app.execute(
            "CREATE FUNCTION app_own.lower(text) RETURNS text LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'the writer''s lower() ran as %', current_user; END$$"
        )
        app.execute("SET search_path = app_own, pg_catalog, public")
        insert(app, 1)  # builds the kept shape
        insert(app, 2)  # writes through it
        with pytest.raises(psycopg.errors.RaiseException, match="the writer's lower"):
            app.execute("SELECT lower('A')")
    log.check(1, 2)
    assert log.admin.execute(
        "SELECT count(*) FROM rls_audit.statements_default WHERE rls_audit.loud(operation)"
    ).fetchone() == (2,)
