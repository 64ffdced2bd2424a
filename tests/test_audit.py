"""The audit trail from Django: every kind of write is logged with its context; the app role reads its site's trail."""

from __future__ import annotations

import io
import re

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg import sql

import django_rls
from django_rls import declarations
from django_rls.models import AuditEntry
from django_rls.policies import BySite, Declaration
from tests.conftest import unbound_session
from tests.dumps import dump_and_restore
from tests.harness.cluster import BINDIR
from tests.modes import library_only
from tests.roles import OWNER_ROLE
from tests.seed import OWNER_A, TENANT_A
from tests.testapp.models import Note, TenantDoc

H1 = "megacorp1.test"


def entries_since(last_id: int) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(id__gt=last_id).order_by("id"))


def last_id() -> int:
    with django_rls.bypass("test: newest audit id"):
        return AuditEntry.objects.using("bypass").order_by("-id").values_list("id", flat=True).first() or 0


@pytest.fixture
def alice() -> User:
    return User.objects.get(username="alice")


@pytest.fixture
def cleanup_notes(live_db: None):
    """Tests that commit notes remove them afterwards, so other tests keep their three notes per site."""
    with django_rls.bypass("test: newest note"):
        newest = Note.objects.order_by("-id").values_list("id", flat=True).first()
    yield
    with django_rls.bypass("test: remove the notes this test committed"):
        Note.objects.filter(id__gt=newest).delete()


@pytest.mark.django_db(databases=["default", "bypass"])
def test_orm_writes_are_logged_with_the_context(alice):
    start = last_id()
    with django_rls.context(site=1, user=alice, claims={"request": "r1"}):
        note = Note.objects.create(site_id=1, author=alice, body="first")
        note.body = "second"
        note.save()
        note.save()  # no change: nothing logged
        Note.objects.filter(pk=note.pk).update(body="third")
        Note.objects.bulk_create([Note(site_id=1, body="bulk a"), Note(site_id=1, body="bulk b")])
        note.delete()
        entries = entries_since(start)
    assert [(e.operation, e.changed_columns) for e in entries] == [
        ("INSERT", None),
        ("UPDATE", ["body"]),
        ("UPDATE", ["body"]),
        ("INSERT", None),
        ("INSERT", None),
        ("DELETE", None),
    ]
    assert {(e.site_id, e.user_id, e.db_role) for e in entries} == {(1, alice.pk, "rls_test_app")}
    assert entries[0].claims == {"request": "r1"}
    assert entries[1].old_values == {"body": "first"} and entries[1].new_values == {"body": "second"}
    assert entries[0].new_values["body"] == "first" and entries[-1].old_values["body"] == "third"


@pytest.mark.django_db(databases=["default", "bypass"])
def test_raw_sql_is_logged(alice):
    start = last_id()
    with django_rls.context(site=1, user=alice), connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_note (site_id, body) VALUES (1, 'raw') RETURNING id")
        (note_id,) = cursor.fetchone()
        cursor.execute("UPDATE testapp_note SET body = 'raw 2' WHERE id = %s", [note_id])
        entries = entries_since(start)
    assert [(e.operation, e.row_key) for e in entries] == [("INSERT", str(note_id)), ("UPDATE", str(note_id))]


def test_a_plain_database_connection_is_logged(cleanup_notes, database):
    """Writes from psql or a cron job, outside Django, are logged with whatever context they set.

    (The app role in a session that may call the setter functions: see tests/conftest.py.)
    """
    start = last_id()
    with unbound_session(database, lambda: psycopg.connect(database.app)) as conn:
        conn.execute("SELECT rls.set_context('2', '99')")
        conn.execute("INSERT INTO testapp_note (site_id, body) VALUES (2, 'from a script')")
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the context ended with the commit
            conn.execute("INSERT INTO testapp_note (site_id, body) VALUES (2, 'without context')")
    with django_rls.bypass("test: read the whole trail"):
        entries = list(AuditEntry.objects.using("bypass").filter(id__gt=start).order_by("id"))
    assert [(e.operation, e.site_id, e.user_id, e.db_role) for e in entries] == [("INSERT", 2, 99, "rls_test_app")]


@pytest.mark.django_db(databases=["default", "bypass"])
def test_uuid_context_and_masked_columns():
    start = last_id()
    with django_rls.context(site=TENANT_A, user=OWNER_A):
        doc = TenantDoc.objects.create(tenant_id=TENANT_A, owner_uuid=OWNER_A, body="secret")
        doc.body = "still secret"
        doc.save()
        entries = entries_since(start)
    assert [(e.operation, e.site_uuid, e.user_uuid) for e in entries] == [
        ("INSERT", TENANT_A, OWNER_A),
        ("UPDATE", TENANT_A, OWNER_A),
    ]
    assert "body" not in entries[0].new_values
    assert entries[1].changed_columns == ["body"] and entries[1].changes() == [("body", "(masked)", "(masked)")]


@pytest.mark.django_db(databases=["default", "bypass"])
def test_audit_history_in_order_and_only_for_the_current_site(alice):
    with django_rls.context(site=1, user=alice):
        note = Note.objects.create(site_id=1, body="v1")
        for version in ("v2", "v3"):
            note.body = version
            note.save()
        history = list(note.audit_history())
        assert [(e.operation, (e.new_values or {}).get("body")) for e in history] == [
            ("INSERT", "v1"),
            ("UPDATE", "v2"),
            ("UPDATE", "v3"),
        ]
    with django_rls.context(site=2):
        assert list(note.audit_history()) == []
        assert AuditEntry.objects.filter(site_id=1).count() == 0


@pytest.mark.django_db
def test_the_model_cannot_write():
    with django_rls.context(site=1):
        entry = AuditEntry.objects.first()
    with pytest.raises(TypeError):
        AuditEntry(id=1).save()
    if entry is not None:
        with pytest.raises(TypeError):
            entry.delete()


def test_rls_apply_switches_auditing(live_db, monkeypatch):
    def run(*args: str) -> str:
        out = io.StringIO()
        call_command("rls_apply", *args, stdout=out)
        return out.getvalue()

    note = declarations._registry["testapp.Note"]
    monkeypatch.setitem(
        declarations._registry, "testapp.Note", Declaration("testapp.Note", note.policies, True, ("author",), ("body",))
    )
    assert "change the audit options of testapp_note (excluding author_id, masking body)" in run()
    monkeypatch.setitem(declarations._registry, "testapp.Note", Declaration("testapp.Note", (BySite("site"),)))
    assert "kept testapp_note: audited though no declaration asks for it" in run()
    assert "stop auditing testapp_note" in run("--prune")
    monkeypatch.undo()
    assert "audit testapp_note (excluding nothing, masking nothing)" in run()
    assert "In sync" in run("--check")


class TestAdmin:
    @pytest.fixture
    def admin_client(self, client):
        client.force_login(User.objects.get(username="admin"))
        return client

    def test_browser_shows_only_the_current_sites_rows(self, cleanup_notes, admin_client, alice):
        with django_rls.context(site=2):
            Note.objects.create(site_id=2, body="site 2 change")
        with django_rls.context(site=1, user=alice):
            note = Note.objects.create(site_id=1, body="site 1 change")
        page = admin_client.get("/admin/django_rls/auditentry/", HTTP_HOST=H1).content.decode()
        assert "testapp_note" in page
        assert "action-checkbox" not in page  # no bulk actions on the trail
        with django_rls.bypass("test: ids of other sites' entries"):
            foreign = list(
                AuditEntry.objects.using("bypass").exclude(read_keys__contains=["1"]).values_list("id", flat=True)
            )
        assert foreign
        assert not any(f"/admin/django_rls/auditentry/{pk}/change/" in page for pk in foreign)

        with django_rls.context(site=1):
            entry = note.audit_history().get()
        detail = admin_client.get(f"/admin/django_rls/auditentry/{entry.pk}/change/", HTTP_HOST=H1)
        assert detail.status_code == 200 and "site 1 change" in detail.content.decode()
        assert admin_client.get(f"/admin/django_rls/auditentry/{foreign[0]}/change/", HTTP_HOST=H1).status_code == 302

        history = admin_client.get(f"/admin/testapp/note/{note.pk}/history/", HTTP_HOST=H1).content.decode()
        assert 'id="audit-trail"' in history and f"/admin/django_rls/auditentry/{entry.pk}/change/" in history

    def test_browser_lists_newest_first_by_time(self, cleanup_notes, admin_client, admin_conn):
        """By logged_at, which the log's (site_id, logged_at) index gives a site's list in (bench/audit_read.py),
        not by id: an entry with a higher id but an earlier time comes after."""
        with django_rls.context(site=1):
            note = Note.objects.create(site_id=1, body="listed first")
            entry = note.audit_history().get()
        columns = [
            name
            for (name,) in admin_conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'rls_audit.statements'::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attname NOT IN ('id', 'logged_at') ORDER BY attnum"
            )
        ]
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        earlier = admin_conn.execute(
            sql.SQL(
                "INSERT INTO rls_audit.statements (logged_at, {c}) SELECT logged_at - interval '1 hour', {c} "
                "FROM rls_audit.statements WHERE id = %s RETURNING id * 1024 + 1"
            ).format(c=names),
            [entry.pk // 1024],
        ).fetchone()[0]
        try:
            assert earlier > entry.pk
            page = admin_client.get("/admin/django_rls/auditentry/?site_id__exact=1", HTTP_HOST=H1).content.decode()
            newer_at = page.index(f"/admin/django_rls/auditentry/{entry.pk}/change/")
            assert newer_at < page.index(f"/admin/django_rls/auditentry/{earlier}/change/")
        finally:
            admin_conn.execute("DELETE FROM rls_audit.statements WHERE id = %s", [earlier // 1024])

    def test_a_page_newest_first_reads_only_its_statement_rows(self, cleanup_notes, admin_client, alice):
        """A page of the list, newest first, filtered by site and operation: the same entries in the same
        order as the plain ordered query, read through rls_audit.newest_statements() (which walks the
        statement rows newest first instead of sorting the site's all); a search cannot narrow that way."""
        with django_rls.context(site=1, user=alice):
            Note.objects.bulk_create([Note(site_id=1, body=f"page {i}") for i in range(70)])  # one statement row
            for i in range(40):
                Note.objects.create(site_id=1, body=f"single {i}")
        with django_rls.context(site=2):
            Note.objects.create(site_id=2, body="other site")
        with django_rls.context(site=1):
            plain = AuditEntry.objects.filter(site_id=1, operation="INSERT").order_by("-logged_at", "-id")
            expected = [list(plain[:50].values_list("id", flat=True)), list(plain[50:100].values_list("id", flat=True))]
            newest = AuditEntry.objects.filter(site_id=1, operation="INSERT").newest(100)
            assert "newest_statements" in str(newest.query)
            assert list(newest[50:100].values_list("id", flat=True)) == expected[1]
            assert "newest_statements" not in str(AuditEntry.objects.filter(row_key__icontains="1").newest(50).query)
        for page, ids in enumerate(expected, start=1):
            with CaptureQueriesContext(connection) as queries:
                html = admin_client.get(
                    f"/admin/django_rls/auditentry/?site_id__exact=1&operation__exact=INSERT&p={page}", HTTP_HOST=H1
                ).content.decode()
            assert any("newest_statements" in query["sql"] for query in queries.captured_queries)
            listed = [int(pk) for pk in re.findall(r"/admin/django_rls/auditentry/(\d+)/change/", html)]
            assert list(dict.fromkeys(listed)) == ids

    def test_counts_and_dates_come_from_the_statement_rows(self, cleanup_notes, alice):
        """count(), Min/Max of logged_at and the date hierarchy's datetimes() of a filtered trail: the
        answers the view gives (QuerySet's own methods), read through rls_audit.count_entries() and
        rls_audit.entry_times() when every filter is a statement column; another site's entries count
        for nothing."""
        from django.db.models import Max, Min, QuerySet

        from django_rls.admin import _HierarchyQuerySet

        with django_rls.context(site=1, user=alice):
            Note.objects.bulk_create([Note(site_id=1, body=f"counted {i}") for i in range(12)])
            Note.objects.create(site_id=1, body="counted alone")
        with django_rls.context(site=2):
            Note.objects.create(site_id=2, body="other site")
        for site in (1, 2, 3):
            with django_rls.context(site=site):
                for filtered in (
                    AuditEntry.objects.all(),
                    AuditEntry.objects.filter(site_id=1),
                    AuditEntry.objects.filter(site_id=1, operation="INSERT", table_name="public.testapp_note"),
                    AuditEntry.objects.filter(user_id=alice.pk),
                ):
                    with CaptureQueriesContext(connection) as queries:
                        counted = filtered.count()
                        ends = filtered.aggregate(first=Min("logged_at"), last=Max("logged_at"))
                    read = [query["sql"] for query in queries.captured_queries]
                    assert any("count_entries" in q for q in read) and any("entry_times" in q for q in read)
                    assert not any('"rls_audit"."log"' in q for q in read)  # the view was not read
                    assert counted == QuerySet.count(filtered)
                    assert ends == QuerySet.aggregate(filtered, first=Min("logged_at"), last=Max("logged_at"))
                    assert filtered.readable_count(3) == min(3, counted)
                    hierarchy = filtered._chain()
                    hierarchy.__class__ = _HierarchyQuerySet
                    for kind in ("year", "month", "day"):
                        assert list(hierarchy.datetimes("logged_at", kind)) == list(
                            QuerySet.datetimes(filtered, "logged_at", kind)
                        )
                    if site == 3:
                        assert counted == 0 and ends == {"first": None, "last": None}
                # a search is not a statement column: counted through the view
                searched = AuditEntry.objects.filter(site_id=1, row_key__icontains="1")
                with CaptureQueriesContext(connection) as queries:
                    assert searched.count() == QuerySet.count(searched)
                assert not any("count_entries" in query["sql"] for query in queries.captured_queries)

    def test_the_list_says_more_than_where_it_stops_counting(self, cleanup_notes, admin_client, alice, monkeypatch):
        """The paginator counts as far as the limit (or the page after the one asked for): past it the
        list says "more than", never a wrong number; below it the number is exact."""
        from django_rls.admin import AuditEntryAdmin

        monkeypatch.setattr(AuditEntryAdmin, "list_per_page", 2)
        monkeypatch.setattr(AuditEntryAdmin, "list_count_limit", 3)
        with django_rls.context(site=1, user=alice):
            for i in range(7):
                Note.objects.create(site_id=1, body=f"paged {i}")
            listed = AuditEntry.objects.filter(site_id=1).count()
        assert listed >= 7
        with CaptureQueriesContext(connection) as queries:
            page = admin_client.get("/admin/django_rls/auditentry/?site_id__exact=1", HTTP_HOST=H1).content.decode()
        assert "more than 4 entries" in page and "more than 4 results" in page  # pages 1 and 2 counted
        # every read of the view is narrowed to the statement rows of the newest entries: the page, and
        # the filters' choices; the count and the date hierarchy read the statement rows
        read = [query["sql"] for query in queries.captured_queries]
        views = [q for q in read if '"rls_audit"."log"' in q]
        assert len(views) == 2 and all("newest_statements" in q for q in views)  # the page; the filters' values
        assert any("count_entries" in q for q in read) and any("entry_times" in q for q in read)
        assert f"user_id={alice.pk}" in page and "operation=INSERT" in page  # the filters' choices
        page = admin_client.get("/admin/django_rls/auditentry/?site_id__exact=1&p=3", HTTP_HOST=H1).content.decode()
        assert ("more than 8 entries" if listed > 8 else f"{listed} audit trail") in page  # pages 3 and 4 counted
        last = (listed + 1) // 2
        page = admin_client.get(f"/admin/django_rls/auditentry/?site_id__exact=1&p={last}", HTTP_HOST=H1)
        html = page.content.decode()
        assert f"{listed} audit trail" in html and "more than" not in html  # the last page counts them all: exact

    def test_diff_view(self, cleanup_notes, admin_client, alice):
        with django_rls.context(site=1, user=alice):
            note = Note.objects.create(site_id=1, body="before")
            note.body = "after"
            note.save()
            update = note.audit_history().last()
        page = admin_client.get(f"/admin/django_rls/auditentry/{update.pk}/change/", HTTP_HOST=H1).content.decode()
        assert 'id="audit-changes"' in page
        assert "<td>body</td><td><code>before</code></td><td><code>after</code></td>" in page


@pytest.mark.skipif(not (BINDIR / "pg_dump").exists(), reason="pg_dump is not installed here")
@library_only("dump and restore of the extension (tests/dumps.py creates it)")
def test_the_trail_survives_dump_and_restore(database):
    def prepare(conn: psycopg.Connection) -> None:
        # Written under another name, then renamed: entries stay with the table (rls_audit.trails).
        conn.execute("CREATE TABLE t_before (id int PRIMARY KEY, v text)")
        conn.execute("SELECT rls_audit.enable('t_before')")
        conn.execute("SELECT rls_audit.set_read_rule('t_before', site_column => 'id')")
        conn.execute("SELECT rls_audit.ensure_partitions(1)")
        with conn.transaction():
            conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")  # a superuser, writing test data
            conn.execute("SELECT rls.set_context('5', '6')")
            conn.execute("INSERT INTO t_before SELECT i, 'v' FROM generate_series(1, 10) i")
        conn.execute("ALTER TABLE t_before RENAME TO t")
        conn.execute(sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
        # A dropped table's rule and trail id leave nothing behind to dump (no bare oid).
        conn.execute("CREATE TABLE gone (id int PRIMARY KEY)")
        conn.execute("SELECT rls_audit.enable('gone')")
        conn.execute("SELECT rls_audit.set_read_rule('gone', site_column => 'id')")
        conn.execute("DROP TABLE gone")

    def check(conn: psycopg.Connection) -> None:
        assert conn.execute("SELECT count(*), min(site_id), max(user_id) FROM rls_audit.log").fetchone() == (10, 5, 6)
        assert conn.execute("SELECT table_name::text FROM rls_audit.status").fetchall() == [("t",)]
        assert conn.execute("SELECT table_oid::text, site_column FROM rls_audit.read_rules").fetchall() == [("t", "id")]
        assert conn.execute("SELECT table_oid::text FROM rls_audit.trails").fetchall() == [("t",)]
        conn.execute("INSERT INTO t VALUES (11, 'after restore')")
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM rls_audit.log").fetchone() == (11, 11)
        # The restored table has a new oid; its owner reads the entries from before the dump and after.
        owner_dsn = psycopg.conninfo.make_conninfo(database.owner, dbname=conn.info.dbname)
        with psycopg.connect(owner_dsn) as owner:
            assert owner.execute("SELECT count(*) FROM rls_audit.log").fetchone() == (11,)

    dump_and_restore(database, prepare, check)


@pytest.mark.skipif(not (BINDIR / "pg_dump").exists(), reason="pg_dump is not installed here")
@library_only("dump and restore of the extension (tests/dumps.py creates it)")
def test_rows_waiting_in_the_default_partition_survive_dump_and_restore(database):
    """A row of a month without a partition waits in rls_audit.statements_default, and pg_dump takes it along.

    pg_dump 14 cannot dump that partition, so on PostgreSQL 14 it is not marked for dumping:
    rls.problems reports the row until ensure_partitions() moves it into a monthly partition.
    """

    def problems(conn: psycopg.Connection) -> list[tuple[str]]:
        return conn.execute("SELECT object_name FROM rls.problems WHERE object_name LIKE 'rls_audit.%'").fetchall()

    def prepare(conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO rls_audit.statements (logged_at, table_oid, table_name, operation, db_role, row_keys)"
            " VALUES ('2003-04-05', 1, 'public.old', 'INSERT', 'x', '{1}')"
        )
        where = conn.execute("SELECT tableoid::regclass::text FROM rls_audit.statements").fetchall()
        assert where == [("rls_audit.statements_default",)]
        if conn.info.server_version < 150000:
            assert problems(conn) == [("rls_audit.statements_default",)]
            conn.execute("SELECT rls_audit.ensure_partitions(0)")
        assert problems(conn) == []

    def check(conn: psycopg.Connection) -> None:
        assert conn.execute("SELECT table_name FROM rls_audit.log").fetchall() == [("public.old",)]

    dump_and_restore(database, prepare, check)


def test_the_row_key_index_of_every_partition_has_no_pending_list(database):
    """Every partition's GIN index on row_keys puts its keys in the tree at once (fastupdate off).

    With GIN's pending list a lookup of one row's history reads every key waiting there (up to
    4MB of them after a bulk write): 76 to 95 ms with 140,000 keys pending, docs/audit.md.
    """
    with database.connect("admin") as conn:
        conn.execute("SELECT rls_audit.ensure_partitions(1)")
        options = conn.execute(
            "SELECT c.relname, i.indexrelid::regclass::text, coalesce(x.reloptions, '{}')"
            "  FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
            "  JOIN pg_index i ON i.indrelid = h.inhrelid"
            "  JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am a ON a.oid = x.relam"
            " WHERE h.inhparent = 'rls_audit.statements'::regclass AND a.amname = 'gin'"
        ).fetchall()
    assert len(options) >= 3  # the default partition, this month's and the next
    assert {relname: opts for relname, _, opts in options} == {relname: ["fastupdate=off"] for relname, _, _ in options}


def test_set_read_rule_says_whether_it_changed_the_rule(owner_conn):
    """True when the rule changed, false when it was already so: a rule with one column unset
    too (a record with a NULL field is neither NULL nor NOT NULL as a whole)."""
    owner_conn.execute("DROP TABLE IF EXISTS rt_rule_changes")
    owner_conn.execute("CREATE TABLE rt_rule_changes (id int PRIMARY KEY, site_id bigint, user_id bigint)")
    owner_conn.execute("SELECT rls_audit.enable('rt_rule_changes')")

    def set_rule(site: str | None, owner: str | None, shared: bool = False) -> bool:
        query = "SELECT rls_audit.set_read_rule('rt_rule_changes', %s::name, %s::name, %s)"
        return owner_conn.execute(query, (site, owner, shared)).fetchone()[0]

    try:
        assert [set_rule("site_id", None), set_rule("site_id", None)] == [True, False]
        assert [set_rule("site_id", None, True), set_rule("site_id", None, True)] == [True, False]
        assert [set_rule(None, "user_id"), set_rule(None, "user_id")] == [True, False]
        assert [set_rule("site_id", "user_id"), set_rule("site_id", "user_id")] == [True, False]
        assert [set_rule(None, None), set_rule(None, None)] == [True, False]
    finally:
        owner_conn.execute("SELECT rls_audit.disable('rt_rule_changes')")
        owner_conn.execute("DROP TABLE rt_rule_changes")
