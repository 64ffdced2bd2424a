"""A view moving its request to another site (switch_context, issue 15 item 3) and work handed to threads
(propagate, item 7), as the app role."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

import django_rls
from django_rls.models import AuditEntry
from tests.testapp.models import Note

H1 = "megacorp1.test"


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def atomic_requests(request: pytest.FixtureRequest, live_db: None) -> Iterator[bool]:
    settings_dict = connections["default"].settings_dict
    saved = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = request.param
    yield request.param
    settings_dict["ATOMIC_REQUESTS"] = saved


def test_switch_context_moves_the_rest_of_the_request(atomic_requests, client):
    body = client.get("/switch/", HTTP_HOST=H1).json()
    assert body["in_transaction"] is atomic_requests
    assert body["before"] == [1]
    # The next query runs as site 2, inside the same transaction when ATOMIC_REQUESTS opened one ...
    assert body["after"] == [2]
    # ... where the row written as site 1 is no longer visible, and it was committed all the same.
    assert body["written_before_visible"] is False
    with django_rls.context(site=1):
        assert Note.objects.filter(pk=body["note"], body="written before the switch").exists()
    # The audit trail keeps the context each statement ran with: the note was written as site 1.
    (entry,) = AuditEntry.objects.using("bypass").filter(table_name="public.testapp_note", row_key=str(body["note"]))
    assert (entry.operation, entry.site_id) == ("INSERT", 1)
    with django_rls.bypass("test cleanup"):
        Note.objects.filter(pk=body["note"]).delete()


async def test_switch_context_async(live_db, async_client):
    response = await async_client.get("/switch/async/", headers={"x-forwarded-host": H1})
    assert response.json() == {"before": [1], "after": [2]}


def test_switch_context_outside_a_request_says_what_to_use(live_db):
    with pytest.raises(RuntimeError, match=r"outside any request.*django_rls.context"):
        django_rls.switch_context(site=1)
    with django_rls.context(site=1), pytest.raises(RuntimeError, match="inside a context"):
        django_rls.switch_context(site=2)


def _count_and_close() -> int:
    try:
        return Note.objects.count()
    finally:
        connections.close_all()  # each thread opens its own connection


def test_threads_start_without_a_context_and_propagate_hands_it_over(live_db):
    with django_rls.context(site=1), ThreadPoolExecutor(2) as pool:
        assert pool.submit(_count_and_close).result() == 0  # a new thread has no context
        assert pool.submit(django_rls.propagate(_count_and_close)).result() == 3
        assert list(pool.map(django_rls.propagate(lambda _: _count_and_close()), range(3))) == [3, 3, 3]
    # The worker thread's own (empty) context is back after the call.
    with ThreadPoolExecutor(1) as pool:
        with django_rls.context(site=2):
            bound = django_rls.propagate(_count_and_close)
        assert pool.submit(bound).result() == 3  # bound when propagate() was called, not when run
        assert pool.submit(_count_and_close).result() == 0


def test_propagate_carries_a_bypass(live_db):
    with django_rls.bypass("count every site's notes"), ThreadPoolExecutor(2) as pool:
        assert pool.submit(django_rls.propagate(_count_and_close)).result() == 6
        assert pool.submit(_count_and_close).result() == 0
