"""Every query the Django bridge sends carries its context, as the statement-bound app role.

The app role is statement-bound (tests/conftest.py runs rls_roles' plan): the setter
functions are refused to it, so a query that ran without the context the bridge meant
for it would see no rows, and one that fell back to rls.set_context() would fail. Each
path is run through Django's default client-side binding ("default") and server-side
binding ("replica"), in autocommit and in a transaction, with no key and in signed mode
(signatures required: every context goes as a use of a reusable token).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connections, transaction

import django_rls
from django_rls import wire as carrying
from tests import wire
from tests.testapp.models import Note

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["default", "replica"], ids=["client-side binding", "server-side binding"])
def alias(request, injection_mode) -> str:
    return request.param


def sites(queryset) -> list[int]:
    return sorted({note.site_id for note in queryset})


def test_the_role_really_is_statement_bound(alias):
    with django_rls.context(site=1), connections[alias].cursor() as cursor:
        cursor.execute("SHOW django_rls.statement_bound")
        assert cursor.fetchone() == ("on",)


def test_the_python_marker_is_the_c_marker():
    source = (ROOT / "ext" / "statement.c").read_text()
    [c_marker] = re.findall(r'#define STATEMENT_MARKER "([^"]+)"', source)
    assert carrying.STATEMENT_MARKER == c_marker
    assert carrying.MARKER.replace("%s", "$1").strip() == c_marker


def test_psycopg_sends_through_the_step_the_client_side_cursor_replaces():
    """The psycopg installed sends a client-side cursor's query through _execute_send(), where the marker goes."""
    assert carrying.CARRIES_CLIENT_SIDE


def test_a_psycopg_that_sends_otherwise_fails_before_the_carried_query_is_sent(monkeypatch, live_db):
    """Should a psycopg release send without _execute_send(), a query that must carry fails, unsent."""
    monkeypatch.setattr(carrying, "CARRIES_CLIENT_SIDE", False)
    connections.close_all()
    with django_rls.context(site=1):
        with wire.traced(connections["default"]) as log, pytest.raises(Exception, match="cannot carry a context"):
            Note.objects.count()
        assert not any("testapp_note" in line for line in log.sent)
        with connections["default"].cursor() as cursor:  # a statement sent first still carries it
            cursor.execute("SHOW django_rls.site")
            assert cursor.fetchone() == ("1",)


def test_a_carried_query_that_psycopg_sent_unmarked_raises(monkeypatch, live_db):
    """The second check: had psycopg sent the query without CarryingClientCursor's step, the call raises."""
    monkeypatch.setattr(carrying.CarryingClientCursor, "_send_carrying", carrying.DjangoClientCursor._execute_send)
    connections.close_all()
    with django_rls.context(site=1), pytest.raises(Exception, match="cannot carry a context"):
        Note.objects.count()


def test_a_carried_query_keeps_its_percent_signs(alias):
    """The marker goes in front of the final text: a literal %, with parameters or without, reaches the server as is."""
    with django_rls.context(site=1), connections[alias].cursor() as cursor:
        with wire.traced(connections[alias]) as log:
            cursor.execute("SELECT '5%', rls.site_id()")
            assert cursor.fetchone() == ("5%", 1)
            cursor.execute("SELECT %s || '%%', rls.site_id()", ["7"])
            assert cursor.fetchone() == ("7%", 1)
            assert Note.objects.using(alias).filter(body__contains="%").count() == 0
        assert log.carried == 3


@pytest.mark.parametrize("chunk_size", [1, 100])
def test_named_cursor_in_autocommit(alias, chunk_size):
    """QuerySet.iterator(): DECLARE cannot carry, so a statement that carries goes first, in its transaction."""
    with django_rls.context(site=2):
        with wire.traced(connections[alias]) as log:
            found = sites(Note.objects.using(alias).iterator(chunk_size=chunk_size))
    assert found == [2]
    assert log.context_statements == 0
    assert any("DECLARE" in line for line in log.sent)


def test_named_cursor_in_a_transaction(alias):
    with django_rls.context(site=1), transaction.atomic(using=alias):
        assert sites(Note.objects.using(alias).iterator(chunk_size=1)) == [1]
        assert Note.objects.using(alias).count() == 3


def test_executemany_in_autocommit_and_in_a_transaction(alias):
    rows = [(1, f"many {i}") for i in range(3)]
    try:
        with django_rls.context(site=1):
            with connections[alias].cursor() as cursor:
                cursor.executemany("INSERT INTO testapp_note (site_id, body) VALUES (%s, %s)", rows)
                assert cursor.rowcount == 3
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.executemany("INSERT INTO testapp_note (site_id, body) VALUES (%s, %s)", rows)
            assert Note.objects.using(alias).filter(body__startswith="many ").count() == 6
        with django_rls.context(site=2), connections[alias].cursor() as cursor:
            with pytest.raises(Exception, match="row-level security"):  # WITH CHECK: the context went with them
                cursor.executemany("INSERT INTO testapp_note (site_id, body) VALUES (%s, %s)", rows)
    finally:
        with django_rls.context(site=1):
            Note.objects.using(alias).filter(body__startswith="many ").delete()


def test_bulk_create_and_bulk_update(alias):
    try:
        with django_rls.context(site=2):
            created = Note.objects.using(alias).bulk_create([Note(site_id=2, body=f"bulk {i}") for i in range(3)])
            for note in created:
                note.body += " updated"
            Note.objects.using(alias).bulk_update(created, ["body"])
            assert Note.objects.using(alias).filter(body__endswith=" updated").count() == 3
        with django_rls.context(site=1):
            assert Note.objects.using(alias).filter(body__startswith="bulk ").count() == 0
    finally:
        with django_rls.context(site=2):
            Note.objects.using(alias).filter(body__startswith="bulk ").delete()


def test_utility_statement_in_autocommit_runs_with_its_context(alias):
    with django_rls.context(site=2), connections[alias].cursor() as cursor:
        cursor.execute("SHOW django_rls.site")
        assert cursor.fetchone() == ("2",)


def test_savepoint_rollback_restores_the_context(alias):
    """The context a savepoint rolls back is sent again; the one before it comes back."""
    with django_rls.context(site=1), transaction.atomic(using=alias):
        with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias):
            # The transaction's first query, so its context is set inside the savepoint.
            assert sites(Note.objects.using(alias).all()) == [1]
            raise ZeroDivisionError
        assert sites(Note.objects.using(alias).all()) == [1]
        with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias), django_rls.context(site=2):
            assert sites(Note.objects.using(alias).all()) == [2]
            raise ZeroDivisionError
        assert sites(Note.objects.using(alias).all()) == [1]


def test_no_stale_context_when_it_changes_inside_a_transaction(alias):
    with transaction.atomic(using=alias):
        with django_rls.context(site=1):
            assert sites(Note.objects.using(alias).all()) == [1]
        with django_rls.context(site=2):
            assert sites(Note.objects.using(alias).all()) == [2]
        with django_rls.no_context():
            assert Note.objects.using(alias).count() == 0


def test_bypass_uses_its_own_role_and_needs_no_context(live_db):
    with django_rls.bypass("test: count every site"):
        assert Note.objects.using("bypass").values("site_id").distinct().count() == 2


def test_the_role_cannot_switch_it_off(database):
    """SET, set_config(), RESET need a superuser; RESET ALL and DISCARD ALL restore the login value; so do startup options."""
    import psycopg

    with database.connect("app") as conn:
        for statement in (
            "SET django_rls.statement_bound = off",
            "SELECT set_config('django_rls.statement_bound', 'off', false)",
            "RESET django_rls.statement_bound",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        for statement in ("RESET ALL", "DISCARD ALL"):
            conn.execute(statement)
            assert conn.execute("SHOW django_rls.statement_bound").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="statement_bound is on"):
            with conn.transaction():
                conn.execute("SELECT rls.set_context('2', NULL)")
    with pytest.raises(psycopg.OperationalError, match="permission denied to set parameter"):
        psycopg.connect(database.app, options="-c django_rls.statement_bound=off")
