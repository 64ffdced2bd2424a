"""django_rls.context(): nesting, decorators, threads, tasks, and the bypass role."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_rls
from django_rls.state import current_values, make_values, normalize_id, parse_id_text
from tests.modes import library_only
from tests.testapp.models import Note


def sites() -> set[int]:
    return set(Note.objects.values_list("site_id", flat=True))


@pytest.mark.django_db
def test_nested_contexts_restore_the_outer_one():
    with django_rls.context(site=1):
        assert sites() == {1}
        with django_rls.context(site=2):
            assert sites() == {2}
            with django_rls.no_context():
                assert sites() == set()
            assert sites() == {2}
        assert sites() == {1}
    assert sites() == set()


@pytest.mark.django_db
def test_exception_inside_a_context_restores_the_outer_one():
    with django_rls.context(site=1):
        with pytest.raises(RuntimeError), django_rls.context(site=2):
            raise RuntimeError
        assert sites() == {1}


@pytest.mark.django_db
def test_decorator():
    @django_rls.context(site=2)
    def job() -> set[int]:
        return sites()

    assert job() == {2}
    assert sites() == set()


@pytest.mark.django_db(transaction=False)
async def test_async_decorator_and_async_with():
    from asgiref.sync import sync_to_async

    @django_rls.context(site=1)
    async def job() -> set[int]:
        return {n.site_id async for n in Note.objects.all()}

    assert await job() == {1}
    async with django_rls.context(site=2):
        assert await sync_to_async(sites)() == {2}


def test_threads_do_not_share_a_context(live_db):
    seen: dict[str, set[int]] = {}
    ready = threading.Barrier(2)

    def worker(name: str, site: int | None) -> None:
        from django.db import connections

        try:
            if site is None:
                ready.wait()
                seen[name] = sites()
            else:
                with django_rls.context(site=site):
                    ready.wait()
                    seen[name] = sites()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=("site2", 2)), threading.Thread(target=worker, args=("none", None))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"site2": {2}, "none": set()}


async def test_asyncio_tasks_do_not_share_a_context():
    async def task(site: int) -> str | None:
        with django_rls.context(site=site):
            await asyncio.sleep(0.01)
            return current_values().site

    assert await asyncio.gather(task(1), task(2), task(3)) == ["1", "2", "3"]
    assert current_values().site is None


def test_values_accept_instances_ids_and_uuids():
    from django.contrib.sites.models import Site

    tenant = uuid.uuid4()
    assert make_values(Site(id=7), "8", {"b": 1, "a": 2}) == make_values(7, 8, {"a": 2, "b": 1})
    assert make_values(str(tenant).upper(), None).site == str(tenant)


@pytest.mark.parametrize(
    ("site", "error"),
    [("megacorp", ValueError), (True, TypeError), (1.5, TypeError)],
)
def test_bad_ids_are_refused_with_a_reason(site, error):
    with pytest.raises(error, match="site"):
        django_rls.context(site=site)


def test_unsaved_instance_is_refused():
    from django.contrib.sites.models import Site

    with pytest.raises(ValueError, match="no primary key"):
        django_rls.context(site=Site(domain="x"))


@pytest.mark.django_db(databases=["default", "bypass"])
def test_bypass_uses_the_bypass_role_and_says_why(caplog):
    caplog.set_level("INFO", logger="django_rls.bypass")
    with django_rls.bypass("test: count every note"):
        assert Note.objects.count() == 6
        assert Note.objects.db == "bypass"
    assert Note.objects.count() == 0
    assert "test: count every note" in caplog.text


@pytest.mark.django_db
def test_bypass_leaves_the_app_connection_without_context():
    from django.db import connection

    with django_rls.context(site=1), django_rls.bypass("raw SQL on the app connection sees nothing"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM testapp_note")
            assert cursor.fetchone()[0] == 0


def test_bypass_needs_a_reason_and_a_database(settings):
    with pytest.raises(ValueError, match="reason"):
        django_rls.bypass("")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "BYPASS_DATABASE": None}
    with pytest.raises(ImproperlyConfigured, match="BYPASS_DATABASE"), django_rls.bypass("x"):
        pass


def test_savepoint_rollback_never_leaves_the_wrong_context(live_db):
    """ROLLBACK TO SAVEPOINT restores the context the savepoint saw; the next query must still get the right one."""
    from django.db import transaction

    with transaction.atomic(), django_rls.context(site=1):
        assert sites() == {1}
        with django_rls.context(site=2):
            with pytest.raises(RuntimeError), transaction.atomic():
                assert sites() == {2}
                raise RuntimeError  # rolls back to the savepoint, where the database context was site 1
            assert sites() == {2}
        assert sites() == {1}
        with pytest.raises(RuntimeError), transaction.atomic(), django_rls.context(site=2):
            assert sites() == {2}
            raise RuntimeError
        assert sites() == {1}
    assert sites() == set()


def test_context_change_inside_one_transaction(live_db):
    from django.db import transaction

    with transaction.atomic():
        with django_rls.context(site=2):
            assert sites() == {2}
        assert sites() == set()  # the transaction continues, the context does not
        with django_rls.context(site=1):
            assert sites() == {1}


ID_CASES = json.loads((Path(__file__).parent / "id_vectors.json").read_text())["cases"]


@pytest.mark.parametrize(("text", "canonical"), ID_CASES)
def test_python_reads_ids_as_the_extension_does(text, canonical):
    if canonical is None:
        with pytest.raises(ValueError):
            parse_id_text(text)
        with pytest.raises(ValueError, match="site id"):
            normalize_id(text, "site")
    else:
        assert (parse_id_text(text) or "") == canonical


def test_the_extension_reads_ids_as_python_does(app_conn):
    """The same vectors through rls.set_context(), as the app role."""
    for text, canonical in ID_CASES:
        with app_conn.transaction():
            if canonical is None:
                with pytest.raises(Exception, match="invalid user identifier") as excinfo, app_conn.transaction():
                    app_conn.execute("SELECT rls.set_context(NULL, %s)", (text,))
                assert excinfo.value.sqlstate == "22023", text
                continue
            app_conn.execute("SELECT rls.set_context(NULL, %s)", (text,))
            assert app_conn.execute("SELECT current_setting('django_rls.user')").fetchone()[0] == canonical, text


def test_integer_ids_beyond_64_bits_are_refused():
    with pytest.raises(ValueError, match="64 bits"):
        normalize_id(2**63, "user")
    assert normalize_id(-(2**63), "user") == str(-(2**63))


FORWARDED_ATTEMPTS = [
    "SET django_rls.forwarded = 'c1.nokey'",
    "SELECT set_config('django_rls.forwarded', 'c1.' || repeat('0', 64) || '.9999999999.0.1.0.2..', false)",
    "BEGIN; SET LOCAL django_rls.forwarded = 'c1.nokey'",
    "BEGIN; SELECT set_config('django_rls.forwarded', 'c1.nokey', true)",
    "ALTER ROLE CURRENT_USER SET django_rls.forwarded = 'c1.nokey'",
]


@library_only("django_rls.forwarded, the context a Citus coordinator forwards (docs/scale-out.md), is the library's")
@pytest.mark.parametrize("attempt", FORWARDED_ATTEMPTS)
def test_the_forwarded_context_cannot_be_set_without_citus(app_conn, attempt):
    """Without Citus nobody may set it, and the setter forwards nothing: everything is as before."""
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege) as excinfo:
        app_conn.execute(attempt)
    assert excinfo.value.diag.message_primary == (
        "django_rls.forwarded can only be set by the django_rls setter on a Citus coordinator, which forwards it "
        "to the workers"
    )
    assert excinfo.value.diag.message_hint
    app_conn.execute("ROLLBACK")
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        assert app_conn.execute("SHOW django_rls.forwarded").fetchone() == ("",)
        assert app_conn.execute("SELECT rls.site_id(), rls.user_id()").fetchone() == (1, 7)
