"""Many requests for two sites at once: through a thread pool (WSGI) and through ASGI tasks."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from django.db import connections
from django.test import AsyncClient, Client

HOSTS = ["megacorp1.test", "megacorp2.test"]
REQUESTS = 50


def _one_request(i: int) -> tuple[int, dict]:
    site = i % 2 + 1
    client = Client()
    try:
        return site, client.get("/notes/raw/", HTTP_HOST=HOSTS[site - 1]).json()
    finally:
        for connection in connections.all():
            connection.close()


def test_threads_never_see_another_site(live_db):
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(_one_request, range(REQUESTS)))
    assert len(results) == REQUESTS
    for site, body in results:
        assert body == {"sites": [site]}


async def test_asgi_tasks_never_see_another_site(live_db):
    client = AsyncClient()

    async def one(i: int) -> tuple[int, dict]:
        site = i % 2 + 1
        response = await client.get("/notes/async/", headers={"x-forwarded-host": HOSTS[site - 1]})
        return site, response.json()

    results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    assert len(results) == REQUESTS
    for site, body in results:
        assert body == {"sites": [site]}


def test_one_connection_shared_by_interleaved_contexts(live_db):
    """Two contexts alternating on the same connection, query by query, as a thread-sensitive executor does."""
    import django_rls
    from tests.testapp.models import Note

    one, two = django_rls.context(site=1), django_rls.context(site=2)
    for _ in range(10):
        with one:
            assert set(Note.objects.values_list("site_id", flat=True)) == {1}
        with two:
            assert set(Note.objects.values_list("site_id", flat=True)) == {2}
        assert Note.objects.count() == 0
