"""RlsMiddleware end to end: Django test client (WSGI path) and async client (ASGI path), as the app role."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from django.db import connections
from psycopg import sql

from tests import wire
from tests.modes import SQL_MODE, library_only
from tests.roles import APP_ROLE

H1, H2, NOWHERE = "megacorp1.test", "megacorp2.test", "nowhere.test"


def settings_middleware() -> list[str]:
    from tests import settings

    return list(settings.MIDDLEWARE)


@pytest.fixture
def persistent(live_db: None) -> Iterator[None]:
    """Keep the app role's connection open across requests, as CONN_MAX_AGE does in production."""
    settings_dict = connections["default"].settings_dict
    saved = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = None
    yield
    settings_dict["CONN_MAX_AGE"] = saved


@pytest.fixture(params=["client", "server"])
def binding(request: pytest.FixtureRequest, persistent: None) -> Iterator[str]:
    """Both bindings on the app role's connection: Django's default client-side one, and server-side."""
    connection = connections["default"]
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("server_side_binding")
    options["server_side_binding"] = request.param == "server"
    connection.close()
    yield request.param
    options["server_side_binding"] = saved
    connection.close()


def backend_pid() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def context_now() -> dict:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT rls.context()::text")
        return json.loads(cursor.fetchone()[0])


class TestIsolation:
    def test_each_site_sees_its_own_rows(self, live_db, client):
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
        assert client.get("/notes/", HTTP_HOST=NOWHERE).json() == {"sites": [], "count": 0}

    async def test_each_site_sees_its_own_rows_async(self, live_db, async_client):
        assert (await async_client.get("/notes/async/", headers={"x-forwarded-host": H1})).json() == {"sites": [1]}
        assert (await async_client.get("/notes/async/", headers={"x-forwarded-host": H2})).json() == {"sites": [2]}
        assert (await async_client.get("/notes/async/", headers={"x-forwarded-host": NOWHERE})).json() == {"sites": []}

    def test_raw_sql_sees_only_the_current_site(self, live_db, client):
        assert client.get("/notes/raw/", HTTP_HOST=H2).json() == {"sites": [2]}

    async def test_raw_sql_sees_only_the_current_site_async(self, live_db, async_client):
        assert (await async_client.get("/notes/raw/", headers={"x-forwarded-host": H1})).json() == {"sites": [1]}

    def test_other_aliases_get_the_context(self, live_db, client):
        for _ in range(3):
            assert client.get("/notes/on/replica/", HTTP_HOST=H2).json() == {"sites": [2]}
            assert client.get("/notes/on/pooled/", HTTP_HOST=H1).json() == {"sites": [1]}
            assert client.get("/notes/on/pooled/", HTTP_HOST=H2).json() == {"sites": [2]}

    def test_streaming_body_keeps_the_request_context(self, live_db, client):
        response = client.get("/notes/stream/", HTTP_HOST=H2)
        assert b"".join(response.streaming_content).split() == [b"2"] * 3

    async def test_streaming_body_keeps_the_request_context_async(self, live_db, async_client):
        response = await async_client.get("/notes/stream/async/", headers={"x-forwarded-host": H1})
        body = b"".join([chunk async for chunk in response.streaming_content])
        assert body.split() == [b"1"] * 3


class TestUser:
    def test_user_set_inside_the_view_is_picked_up(self, live_db, client):
        result = client.get("/tasks/late-user/?as=alice", HTTP_HOST=H1).json()
        assert result == {"before": [], "after": ["alice 1", "alice 2"]}

    def test_drf_authentication_inside_the_view(self, live_db, client):
        def basic(user: str) -> str:
            return "Basic " + base64.b64encode(f"{user}:{user}".encode()).decode()

        assert client.get("/tasks/drf/", HTTP_HOST=H1, HTTP_AUTHORIZATION=basic("alice")).json() == {
            "tasks": ["alice 1", "alice 2"]
        }
        assert client.get("/tasks/drf/", HTTP_HOST=H2, HTTP_AUTHORIZATION=basic("bob")).json() == {"tasks": ["bob 1"]}
        assert client.get("/tasks/drf/", HTTP_HOST=H1, HTTP_AUTHORIZATION=basic("bob")).json() == {"tasks": []}

    def test_session_login(self, live_db, client):
        from django.contrib.auth.models import User

        client.force_login(User.objects.get(username="carol"))
        assert client.get("/whoami/", HTTP_HOST=H2).json()["user"] == User.objects.get(username="carol").pk


class TestQueryCount:
    def test_dbless_request_sends_nothing(self, persistent, client):
        client.get("/count/", HTTP_HOST=H1)  # open the connection, warm the site cache
        with wire.traced(connections["default"]) as log:
            assert client.get("/nodb/", HTTP_HOST=H1).content == b"ok"
        assert log.sent == []

    async def test_dbless_request_sends_nothing_async(self, live_db, async_client, statements):
        await async_client.get("/notes/async/", headers={"x-forwarded-host": H1})
        counter = statements()
        assert (await async_client.get("/nodb/", headers={"x-forwarded-host": H1})).content == b"ok"
        assert counter.since() == {}

    def test_one_query_view_carries_the_context_in_the_query(self, binding, client):
        client.get("/count/", HTTP_HOST=H1)
        with wire.traced(connections["default"]) as log:
            assert client.get("/count/", HTTP_HOST=H1).content == b"3"
        if SQL_MODE:  # no marker: BEGIN, the setter, the query and COMMIT, pipelined in one round trip
            assert (log.context_statements, log.carried, log.round_trips, log.statements) == (1, 0, 1, 4)
            return
        assert log.context_statements == 0
        assert log.carried == 1
        assert log.round_trips == 1
        assert log.statements == 1  # no BEGIN, no COMMIT

    @library_only("a query carries its context (the marker), so no statement sets it")
    async def test_one_query_async_view_sends_no_context_statement(self, live_db, async_client, statements):
        await async_client.get("/notes/async/", headers={"x-forwarded-host": H2})  # caches the site
        counter = statements()
        assert (await async_client.get("/notes/async/", headers={"x-forwarded-host": H2})).json() == {"sites": [2]}
        assert counter.context_statements() == 0
        assert counter.total() == 1

    def test_transaction_carries_the_context_in_its_first_query(self, binding, client):
        client.get("/notes/atomic/", HTTP_HOST=H1)
        with wire.traced(connections["default"]) as log:
            assert client.get("/notes/atomic/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        if SQL_MODE:  # no marker: one setter statement, once in the transaction
            assert (log.context_statements, log.carried) == (1, 0)
            assert log.round_trips == 5  # BEGIN, the setter, two queries, COMMIT
            return
        assert (log.context_statements, log.carried) == (0, 1)
        assert log.round_trips == 4  # BEGIN, two queries, COMMIT

    def test_atomic_requests_send_the_context_once(self, binding, client):
        settings_dict = connections["default"].settings_dict
        settings_dict["ATOMIC_REQUESTS"] = True
        try:
            client.get("/notes/", HTTP_HOST=H1)
            with wire.traced(connections["default"]) as log:
                assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
        finally:
            settings_dict["ATOMIC_REQUESTS"] = False
        assert (log.context_statements, log.carried) == ((1, 0) if SQL_MODE else (0, 1))

    def test_values_are_bound_server_side(self, binding, client):
        client.get("/count/", HTTP_HOST=H2)
        with wire.traced(connections["default"]) as log:
            client.get("/count/", HTTP_HOST=H2)
        carrier = "rls.set_context" if SQL_MODE else "django_rls:"
        parse = [line for line in log.sent if "\tParse\t" in line and carrier in line]
        assert parse and "$1" in parse[0] and '"2"' not in parse[0] and "'2'" not in parse[0]
        # The context's site: inside the JSON that carries it, or the setter's first parameter.
        bind = [line for line in log.sent if "\tBind\t" in line and ('"site":"2"' in line or "'2'" in line)]
        assert bind

    @library_only("a query carries its context as its only bound parameter (the marker)")
    def test_only_the_context_is_bound(self, binding, client):
        """With Django's default binding the query's own values are inlined, as its ClientCursor inlines them."""
        client.get("/notes/search/", {"q": "x"}, HTTP_HOST=H1)
        with wire.traced(connections["default"]) as log:
            assert client.get("/notes/search/", {"q": "it's 100%"}, HTTP_HOST=H1).json() == {"bodies": []}
        [parse] = [line for line in log.sent if "\tParse\t" in line]
        assert parse.count("/*django_rls:$1*/") == 1
        if binding == "client":
            # psycopg's ClientCursor writes a literal with a backslash as E'...'.
            assert "LIKE  E'%it''s 100\\\\%%'" in parse and "$2" not in parse
        else:
            assert "$2" in parse and "it''s" not in parse
        assert log.statements == 1


class TestNoLeftovers:
    def test_exception_in_view_leaves_no_context(self, persistent, client):
        client.raise_request_exception = False
        assert client.get("/boom/", HTTP_HOST=H1).status_code == 500
        pid = backend_pid()
        assert client.get("/whoami/", HTTP_HOST=NOWHERE).json() == {"site": None, "user": None, "claims": None}
        assert backend_pid() == pid
        assert context_now()["site"] is None

    async def test_exception_in_async_view_leaves_no_context(self, persistent, async_client):
        async_client.raise_request_exception = False
        assert (await async_client.get("/boom/", headers={"x-forwarded-host": H2})).status_code == 500
        whoami = (await async_client.get("/whoami/", headers={"x-forwarded-host": NOWHERE})).json()
        assert whoami == {"site": None, "user": None, "claims": None}

    def test_session_scope_is_cleared_when_the_request_ends(self, unbound_app_role, persistent, client, settings):
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SCOPE": "session"}
        assert client.get("/count/", HTTP_HOST=H1).content == b"3"
        assert context_now()["site"] is None
        from tests.testapp.models import Note

        assert Note.objects.count() == 0


@library_only("statement-bound roles")
def test_session_scope_fails_closed_for_a_statement_bound_role(live_db, client, settings):
    """A session-scoped context needs rls.set_context(), which a statement-bound role is refused."""
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SCOPE": "session"}
    with pytest.raises(Exception, match=r"disabled because django_rls\.statement_bound is on"):
        client.get("/count/", HTTP_HOST=H1)
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SCOPE": "transaction"}
    assert client.get("/count/", HTTP_HOST=H1).content == b"3"


def test_signed_contexts_with_signatures_required(live_db, client, settings, signing_keys, admin_conn):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    try:
        for connection in connections.all():
            connection.close()
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        assert client.get("/notes/atomic/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
        with connections["default"].cursor() as cursor:
            cursor.execute("SHOW django_rls.require_signature")
            assert cursor.fetchone()[0] == "on"
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))
        for connection in connections.all():
            connection.close()


class TestLateSite:
    """A tenant middleware after RlsMiddleware: queries before it sets the site must not freeze the request."""

    LATE = (*settings_middleware(), "tests.tenant_middleware.LateTenantMiddleware")
    SWITCHING = (*settings_middleware(), "tests.tenant_middleware.SwitchingTenantMiddleware")

    @pytest.fixture
    def from_tenant(self, settings):
        from django_rls.resolvers import from_attribute

        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SITE_RESOLVER": from_attribute("tenant")}
        return settings

    def test_site_set_after_a_query_is_used(self, live_db, client, from_tenant):
        from_tenant.MIDDLEWARE = list(self.LATE)
        assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        assert client.get("/notes/", HTTP_HOST=NOWHERE).json() == {"sites": [], "count": 0}

    async def test_site_set_after_a_query_is_used_async(self, live_db, async_client, from_tenant):
        from_tenant.MIDDLEWARE = list(self.LATE)
        response = await async_client.get("/notes/async/", headers={"x-forwarded-host": H2})
        assert response.json() == {"sites": [2]}

    def test_another_site_after_queries_with_one_is_an_error(self, live_db, client, from_tenant):
        from django_rls.middleware import SiteChanged

        from_tenant.MIDDLEWARE = list(self.SWITCHING)
        with pytest.raises(SiteChanged, match="changed from 1 to 2 after queries had run with site 1"):
            client.get("/notes/", HTTP_HOST=H2)
        # The same site again is no change.
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}

    async def test_another_site_after_queries_with_one_is_an_error_async(self, live_db, async_client, from_tenant):
        from django_rls.middleware import SiteChanged

        from_tenant.MIDDLEWARE = list(self.SWITCHING)
        with pytest.raises(SiteChanged, match="changed from 1 to none"):
            await async_client.get("/notes/async/", headers={"x-forwarded-host": NOWHERE})


def resolver_that_queries_as_another_site(request):
    """Site 1 for every request, found by a query made in site 3's context (as find() makes one in its own)."""
    import django_rls
    from tests.testapp.models import Note

    with django_rls.context(site=3):  # a site without notes
        list(Note.objects.all()[:1])
    return 1


def test_a_resolver_query_in_another_context_does_not_become_the_requests(live_db, client, settings):
    """The resolver is asked before each query; when it queries in a context of its own (find() does), the query
    after it must not run in that context, though the transaction held the request's context before (a test
    case's transaction across requests, or the request's own earlier queries)."""
    from django.db import transaction

    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SITE_RESOLVER": resolver_that_queries_as_another_site}
    with transaction.atomic():
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
        transaction.set_rollback(True)
