"""Django on a real Citus cluster (issue 17, item 5): requests, the leak matrix, the attack suite, PgBouncer.

The test project (tests/settings.py, tests/testapp) is migrated onto the coordinator of a cluster of its
own (tests/harness/citus_cluster.py), rls_apply protects it, and tests/seed.py fills it. Two protected
models are distributed: ``testapp.Note`` (BySite, audited; the table the attack suite and the views
read) and ``testapp.Tag`` (BySite). Their primary key is ``id`` alone, so Citus distributes them by
``id`` (a distribution column must be in every unique constraint), and their foreign keys, which
Citus refuses between a distributed table and a plain one, are dropped first. The audit triggers
need ``citus.enable_unsafe_triggers`` on the coordinator.

Every Django alias of the test project is pointed at the coordinator for the module, with
``ATOMIC_REQUESTS`` on for the application's aliases, and off for the autocommit tests (the bridge then sends each
autocommit query in a transaction of its own, which carries the context to the workers; docs/scale-out.md). Every assertion about rows runs as the app role through Django
(neither a superuser, nor BYPASSRLS, nor an owner); the superuser only sets up and compares.

Without Citus in the server's pkglibdir every test here skips (docs/scale-out.md).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db.transaction import TransactionManagementError
from psycopg import sql

from django_rls.roles import plan as hardening_plan
from django_rls.roles import specs as role_specs
from tests.harness import citus_fixtures
from tests.harness.citus_cluster import DATABASE, CitusCluster, citus_missing, create_role, move_shard, running_cluster
from tests.harness.pgbouncer import PGBOUNCER, PgBouncer
from tests.roles import APP_ROLE, BYPASS_ROLE, OWNER_ROLE, PASSWORD
from tests.test_attacks import ATTACKS, H1, SITE2_NOTE, site2_state
from tests.test_pgbouncer import HOSTS
from tests.test_pgbouncer import _request as request_through_bouncer
from tests.test_pgbouncer import _signed_request as signed_request_through_bouncer

MISSING = citus_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

H2 = HOSTS[1]
# The models distributed on the cluster, and the column Citus distributes each by.
DISTRIBUTED = {"testapp_note": "id", "testapp_tag": "id"}
DISTRIBUTED_MODELS = ["testapp.Note", "testapp.Tag"]
# Not "pooled": Django keeps its connection pools per alias for the life of the process, and a pool must
# not outlive the cluster.
APP_ALIASES = ("default", "replica")
ALIASES = (*APP_ALIASES, "owner", "bypass")


def _prepare_database(admin: psycopg.Connection) -> None:
    """The roles and the hardening tests/conftest.py gives the single-server test database."""
    create_role(admin, OWNER_ROLE, "NOSUPERUSER NOBYPASSRLS", PASSWORD)
    create_role(admin, APP_ROLE, "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB", PASSWORD)
    create_role(admin, BYPASS_ROLE, "NOSUPERUSER BYPASSRLS", PASSWORD)
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(BYPASS_ROLE)))
    admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE)))
    admin.execute("SELECT rls_audit.ensure_partitions(1)")
    # The owner creates the tables; a shard move creates them on the target worker as their owner.
    admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))
    with admin.transaction(), admin.cursor() as cursor:
        for _, statement in hardening_plan(cursor, role_specs(APP_ROLE, OWNER_ROLE, BYPASS_ROLE, None, {})):
            cursor.execute(statement)
    # Audited models have triggers, which Citus refuses on distributed tables unless told.
    admin.execute("ALTER SYSTEM SET citus.enable_unsafe_triggers = on")
    admin.execute("SELECT pg_reload_conf()")


def _distribute(admin: psycopg.Connection) -> None:
    """Drop the foreign keys to and from the tables to distribute (Citus refuses them), then distribute."""
    tables = list(DISTRIBUTED)
    # The audit guard refuses the copies of the audit triggers Citus makes on the shards (docs/scale-out.md).
    admin.execute("SELECT rls_audit.disable('testapp_note')")
    for table, constraint in admin.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' "
        "AND (conrelid = ANY (%s::regclass[]) OR confrelid = ANY (%s::regclass[]))",
        (tables, tables),
    ).fetchall():
        admin.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(constraint))
        )
    for table, column in DISTRIBUTED.items():
        admin.execute("SELECT create_distributed_table(%s, %s)", (table, column))


def _new_wrapper(alias: str) -> None:
    """Drop this thread's connection wrapper of ``alias`` and make a new one from its settings, set up as
    django_rls sets up every alias's wrapper at startup (apps.py), so that nothing later tests rely on is lost."""
    from django.db import connections

    from django_rls import database

    connections[alias].close()
    del connections[alias]
    database.install(connections[alias])


def _point_aliases_at(cluster: CitusCluster) -> dict[str, dict[str, Any]]:
    """Every alias of the test project to the coordinator; the app's with ATOMIC_REQUESTS. Returns the old settings."""
    from django.db import connections

    saved = {}
    for alias in ALIASES:
        saved[alias] = dict(connections.settings[alias])
        connections.settings[alias].update(
            {"HOST": "127.0.0.1", "PORT": str(cluster.coordinator.port), "NAME": DATABASE},
            ATOMIC_REQUESTS=alias in APP_ALIASES,
        )
        _new_wrapper(alias)
    return saved


def _restore_aliases(saved: dict[str, dict[str, Any]]) -> None:
    from django.db import connections

    for alias, settings in saved.items():
        connections.settings[alias].clear()
        connections.settings[alias].update(settings)
        _new_wrapper(alias)


@pytest.fixture(scope="module")
def citus(django_db_blocker: Any) -> Iterator[CitusCluster]:
    """The cluster with the test project migrated, two models distributed, protected and seeded."""
    from django.core.management import call_command
    from django.db import connections

    from tests.seed import seed

    saved: dict[str, dict[str, Any]] = {}
    with running_cluster() as cluster:
        try:
            with cluster.connect() as admin:
                _prepare_database(admin)
            saved = _point_aliases_at(cluster)
            with django_db_blocker.unblock():
                call_command("migrate", database="owner", verbosity=0)
                call_command("rls_apply", database="owner", verbosity=0, stdout=io.StringIO(), stderr=io.StringIO())
                with cluster.connect() as admin:
                    _distribute(admin)
                seed()
                connections.close_all()
            yield cluster
        finally:
            if saved:
                _restore_aliases(saved)


admin = citus_fixtures.admin  # the superuser on the coordinator (tests/harness/citus_fixtures.py)


@pytest.fixture
def db(citus: CitusCluster, django_db_blocker: Any, admin: psycopg.Connection) -> Iterator[None]:
    """Database access for the test, autocommit as in production; rows a test wrote are removed afterwards."""
    from django.db import connections

    notes = admin.execute("SELECT max(id) FROM testapp_note").fetchone()[0]
    with django_db_blocker.unblock():
        yield
        connections.close_all()
    admin.execute("DELETE FROM testapp_note WHERE id > %s", (notes,))


def _placements(admin: psycopg.Connection) -> dict[int, set[int]]:
    """Worker port -> the shards of testapp_note it holds."""
    held: dict[int, set[int]] = {}
    for shard, port in admin.execute(
        "SELECT shardid, nodeport FROM citus_shards WHERE table_name = 'testapp_note'::regclass"
    ).fetchall():
        held.setdefault(port, set()).add(shard)
    return held


@pytest.fixture(scope="module", params=["as placed", "after a shard move"])
def placement(request: pytest.FixtureRequest, citus: CitusCluster) -> str:
    """The cluster as created, then after every shard of testapp_note holding site 1's notes moved workers."""
    if request.param == "after a shard move":
        with citus.connect() as admin:
            shards = {
                shard
                for (shard,) in admin.execute(
                    "SELECT DISTINCT get_shard_id_for_distribution_column('testapp_note', id) "
                    "FROM testapp_note WHERE site_id = 1"
                ).fetchall()
            }
            before = _placements(admin)
            for shard in sorted(shards):
                move_shard(admin, shard)
            after = _placements(admin)
            assert shards and all(
                shard not in after.get(port, set()) for shard in shards for port in before if shard in before[port]
            ), (before, after)
    return request.param


def inject(client: Any, statement: str, alias: str = "default", host: str = H1) -> dict:
    return client.get("/inject/", {"sql": statement, "alias": alias}, HTTP_HOST=host).json()


# -- a request of each site -------------------------------------------------------------------------


def test_each_request_sees_exactly_its_sites_notes(placement, db, client):
    """/notes/ reads through the ORM in the request's transaction; the rows live on the workers' shards."""
    assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
    assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    assert client.get("/notes/raw/", HTTP_HOST=H2).json() == {"sites": [2]}


def test_each_request_writes_its_own_site_and_is_refused_another(placement, db, client, admin):
    for host, own, other in ((H1, 1, 2), (H2, 2, 1)):
        mine = inject(
            client, f"INSERT INTO testapp_note (site_id, body) VALUES ({own}, 'mine') RETURNING site_id", host=host
        )
        assert mine == {"outcome": f"[[{own}]]", "sites": [own]}, mine
        theirs = inject(client, f"INSERT INTO testapp_note (site_id, body) VALUES ({other}, 'planted')", host=host)
        assert "new row violates row-level security policy" in theirs["outcome"], theirs
        moved = inject(client, f"UPDATE testapp_note SET site_id = {other} WHERE body = 'mine' RETURNING id", host=host)
        assert "new row violates row-level security policy" in moved["outcome"], moved
        changed = inject(client, "UPDATE testapp_note SET body = body RETURNING site_id", host=host)
        assert json.loads(changed["outcome"]) == [[own]] * 4, changed
        deleted = inject(client, f"DELETE FROM testapp_note WHERE site_id = {other} RETURNING id", host=host)
        assert deleted["outcome"] == "[]", deleted
    # As the superuser: each site's new row is on the shards, nothing was planted or moved.
    assert admin.execute(
        "SELECT site_id, body FROM testapp_note WHERE body IN ('mine', 'planted') ORDER BY 1"
    ).fetchall() == [(1, "mine"), (2, "mine")]
    assert admin.execute("SELECT site_id, count(*) FROM testapp_note GROUP BY 1 ORDER BY 1").fetchall() == [
        (1, 4),
        (2, 4),
    ]


def test_the_context_is_evaluated_on_the_workers(placement, db, client, admin):
    """Not the coordinator's local answer: rls.site_id() in the target list runs on the shards."""
    result = inject(client, "SELECT DISTINCT rls.site_id() FROM testapp_note", host=H2)
    assert result["outcome"] == "[[2]]", result
    # The plan is a Citus one: the rows come from the workers.
    plan = "\n".join(row[0] for row in admin.execute("EXPLAIN SELECT * FROM testapp_note").fetchall())
    assert "Custom Scan (Citus Adaptive)" in plan


# -- autocommit: the aliases without ATOMIC_REQUESTS ---------------------------------------------------


@pytest.fixture
def autocommit(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The application's aliases without ATOMIC_REQUESTS, as Django's default is; yields the SQL of every query the
    bridge sent in a transaction of its own (database.py, ``_execute_in_transaction``)."""
    from django.db import connections

    from django_rls import database

    wrapped: list[str] = []
    original = database.ContextWrapper._execute_in_transaction

    def spy(*args: Any, **kwargs: Any) -> Any:
        wrapped.append(str(args[4]))
        return original(*args, **kwargs)

    monkeypatch.setattr(database.ContextWrapper, "_execute_in_transaction", staticmethod(spy))
    for alias in APP_ALIASES:
        connections.settings[alias]["ATOMIC_REQUESTS"] = False
    connections.close_all()
    try:
        yield wrapped
    finally:
        for alias in APP_ALIASES:
            connections.settings[alias]["ATOMIC_REQUESTS"] = True
        connections.close_all()


def test_an_autocommit_request_sees_exactly_its_sites_notes(placement, autocommit, client, monkeypatch):
    """Each autocommit query of the request goes in a transaction of its own that carries the context to the
    workers; carried alone (as on one server) it would read nothing there."""
    from django.db import connections

    from django_rls import database

    assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
    assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    assert client.get("/notes/raw/", HTTP_HOST=H2).json() == {"sites": [2]}
    assert client.get("/notes/on/replica/", HTTP_HOST=H2).json() == {"sites": [2]}
    assert len([q for q in autocommit if "testapp_note" in q]) >= 6, autocommit
    # Reported by the server at connection start (django_rls.citus), so the bridge asks the catalog nothing.
    assert connections["default"].connection.info.parameter_status(database.CITUS_SETTING) == "on"
    assert database.citus_coordinator(connections["default"]) is True
    # The control: the same request with the query carrying its context alone.
    monkeypatch.setattr(database, "citus_coordinator", lambda connection: False)
    connections.close_all()
    assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [], "count": 0}


def test_an_autocommit_request_with_signatures_required(mode, autocommit, client):
    """Statement-bound, and signed with signatures required: the statement that carries the context in the
    transaction of its own sends a use of the request's reusable token."""
    assert client.get("/notes/", HTTP_HOST=H1).json() == {"sites": [1], "count": 3}
    assert client.get("/notes/on/replica/", HTTP_HOST=H2).json() == {"sites": [2]}
    assert len(autocommit) >= 3, autocommit


def test_an_autocommit_async_view_sees_exactly_its_sites_notes(autocommit, client):
    """Django refuses ATOMIC_REQUESTS for async views; in autocommit their queries get the context like any."""
    assert client.get("/notes/async/", HTTP_HOST=H1).json() == {"sites": [1]}
    assert client.get("/notes/async/", HTTP_HOST=H2).json() == {"sites": [2]}


def test_autocommit_writes_its_own_site_and_is_refused_another(placement, autocommit, admin):
    from django.db import DatabaseError, connection
    from django.db.models import F

    import django_rls
    from tests.testapp.models import Note

    for own, other in ((1, 2), (2, 1)):
        with django_rls.context(site=own):
            assert connection.get_autocommit()
            assert Note.objects.create(site_id=own, body="mine").site_id == own
            with pytest.raises(DatabaseError, match="new row violates row-level security policy"):
                Note.objects.create(site_id=other, body="planted")
            with pytest.raises(DatabaseError, match="new row violates row-level security policy"):
                Note.objects.filter(body="mine").update(site_id=other)
            assert Note.objects.update(body=F("body")) == 4
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM testapp_note WHERE site_id = %s RETURNING id", [other])
                assert cursor.fetchall() == []
    assert admin.execute(
        "SELECT site_id, body FROM testapp_note WHERE body IN ('mine', 'planted') ORDER BY 1"
    ).fetchall() == [(1, "mine"), (2, "mine")]
    assert admin.execute("SELECT site_id, count(*) FROM testapp_note GROUP BY 1 ORDER BY 1").fetchall() == [
        (1, 4),
        (2, 4),
    ]


def test_an_autocommit_iterator_reads_its_sites_notes_through_a_named_cursor(placement, autocommit, client):
    """QuerySet.iterator() declares a server-side cursor (WITH HOLD in autocommit), in a request's streaming body
    and in code that sets a context itself."""
    import django_rls
    from tests.testapp.models import Note

    with django_rls.context(site=2):
        assert [note.site_id for note in Note.objects.order_by("id").iterator(chunk_size=2)] == [2, 2, 2]
    assert any(q.lstrip().upper().startswith("SELECT") for q in autocommit)
    response = client.get("/notes/stream/", HTTP_HOST=H1)
    assert b"".join(response.streaming_content).split() == [b"1"] * 3


def test_the_leak_matrix_in_autocommit(placement, autocommit, admin):
    """The matrix's questions asked in autocommit, where leak_matrix() cannot roll its writes back: for each
    distributed model and each ordered pair of sites, the first reads exactly its own rows and can neither read,
    write, move into, nor delete the second's. Rows a leak wrote are removed afterwards."""
    from django.db import DatabaseError, connection

    import django_rls
    from tests.testapp.models import Note, Tag

    cases = ((Note, "body"), (Tag, "label"))
    truth = {
        (model, site): count
        for model, _ in cases
        for site, count in admin.execute(
            sql.SQL("SELECT site_id, count(*) FROM {} GROUP BY 1").format(sql.Identifier(model._meta.db_table))
        ).fetchall()
    }
    try:
        for model, field in cases:
            table = model._meta.db_table
            for own, other in ((1, 2), (2, 1)):
                with django_rls.context(site=own):
                    assert connection.get_autocommit()
                    seen = list(model.objects.values_list("site_id", flat=True))
                    assert sorted(seen) == [own] * truth[(model, own)], (table, own, seen)
                    assert model.objects.filter(site_id=other).count() == 0
                    assert model.objects.filter(site_id=other).update(**{field: "leaked"}) == 0
                    with pytest.raises(DatabaseError, match="new row violates row-level security policy"):
                        model.objects.create(site_id=other, **{field: "leaked"})
                    with pytest.raises(DatabaseError, match="new row violates row-level security policy"):
                        model.objects.filter(site_id=own).update(site_id=other)
                    with connection.cursor() as cursor:
                        cursor.execute(f"DELETE FROM {table} WHERE site_id = %s RETURNING id", [other])
                        assert cursor.fetchall() == []
    finally:
        after = {
            (model, site): count
            for model, field in cases
            for site, count in admin.execute(
                sql.SQL("SELECT site_id, count(*) FROM {} GROUP BY 1").format(sql.Identifier(model._meta.db_table))
            ).fetchall()
        }
        leaked = [
            admin.execute(
                sql.SQL("DELETE FROM {} WHERE {} = 'leaked' RETURNING id").format(
                    sql.Identifier(model._meta.db_table), sql.Identifier(field)
                )
            ).fetchall()
            for model, field in cases
        ]
    assert after == truth
    assert leaked == [[], []]


# -- the leak matrix over the distributed models -------------------------------------------------------


def _users() -> dict[str, int]:
    from django.contrib.auth.models import User

    return {u.username: u.pk for u in User.objects.all()}


def test_leak_matrix_over_the_distributed_models(placement, db):
    from django_rls.testing import leak_matrix

    users = _users()
    leaks = leak_matrix([{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}], DISTRIBUTED_MODELS)
    assert leaks == []


def test_the_matrix_catches_a_leak_on_the_shards(db, admin):
    """The control: weaken the insert policies on the shards only (as a superuser, behind Citus): the matrix
    run through the coordinator must report exactly that hole."""
    from django_rls.testing import leak_matrix

    users = _users()
    weaken = "ALTER POLICY {} ON %s WITH CHECK (true)"
    restore = "ALTER POLICY {} ON %s WITH CHECK (site_id = rls.site_id())"
    policies = ("rls_site_insert", "rls_base_insert")
    for policy in policies:
        admin.execute("SELECT run_command_on_placements('testapp_note', %s)", (weaken.format(policy),))
    try:
        leaks = leak_matrix([{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}], ["testapp.Note"])
    finally:
        for policy in policies:
            admin.execute("SELECT run_command_on_placements('testapp_note', %s)", (restore.format(policy),))
    assert [leak.operation for leak in leaks] == ["insert", "insert"], leaks


# -- the attack suite (tests/test_attacks.py) against the distributed notes ---------------------------


@pytest.fixture(params=["statement-bound", "signed"])
def mode(
    request: pytest.FixtureRequest, db: None, citus: CitusCluster, admin: psycopg.Connection, settings
) -> Iterator[str]:
    """As tests/test_attacks.py: statement-bound without a key, or signed with signatures required; the key is
    the one every node of the cluster shares."""
    from django.db import connections

    role = sql.Identifier(APP_ROLE)
    if request.param == "signed":
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": citus.signing_key}
        admin.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(role))
    connections.close_all()
    yield request.param
    if request.param == "signed":
        admin.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(role))
    connections.close_all()


@pytest.mark.parametrize("alias", ["default", "replica"], ids=["client-side binding", "server-side binding"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_stays_inside_site_1(mode, alias, client, admin, attack):
    before = site2_state(admin)
    if attack.startswith("COPY"):
        # psycopg refuses COPY through execute() once the server has begun it, and the connection then cannot
        # roll back to the view's savepoint: the request's transaction (ATOMIC_REQUESTS) fails whole, and the
        # attacker gets an error page and no row.
        with pytest.raises(TransactionManagementError):
            inject(client, attack, alias)
        result = {"sites": [], "outcome": ""}
    else:
        result = inject(client, attack, alias)
    assert result["sites"] in ([1], []), result
    assert SITE2_NOTE not in result["outcome"], result
    after = site2_state(admin)
    assert after[:2] == before[:2], "site 2's notes changed"
    assert after[2] >= before[2], "audit rows disappeared"


def test_the_attacks_ran_against_a_distributed_table(db, admin, client):
    """What the attacks above aim at holds site 2's notes on the workers, and the view reads site 1 there."""
    assert site2_state(admin)[0] == 3
    assert admin.execute("SELECT count(*) FROM citus_shards WHERE table_name = 'testapp_note'::regclass").fetchone()[
        0
    ] == int(admin.execute("SHOW citus.shard_count").fetchone()[0])
    assert inject(client, "SELECT 1")["sites"] == [1]


# -- PgBouncer in transaction pooling in front of the coordinator -------------------------------------


@pytest.fixture(params=["server-side binding", "client-side binding"])
def bouncer_alias(request: pytest.FixtureRequest, db: None, citus: CitusCluster) -> Iterator[str]:
    """An alias of the app role through PgBouncer (transaction pooling, two server connections) to the coordinator."""
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed")
    from django.db import connections

    bouncer = PgBouncer(DATABASE, "127.0.0.1", citus.coordinator.port, [APP_ROLE], "transaction")
    bouncer.start()
    connections.settings["bouncer"] = {
        **connections.settings["default"],
        "HOST": "127.0.0.1",
        "PORT": str(bouncer.port),
        "ATOMIC_REQUESTS": True,
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {"prepare_threshold": None, "server_side_binding": request.param == "server-side binding"},
    }
    try:
        yield "bouncer"
    finally:
        connections["bouncer"].close()
        del connections["bouncer"]
        del connections.settings["bouncer"]
        bouncer.stop()


@pytest.mark.parametrize("atomic", [True, False], ids=["ATOMIC_REQUESTS", "autocommit"])
@pytest.mark.parametrize("signed", [False, True], ids=["statement-bound", "signed"])
def test_interleaved_requests_through_transaction_pooling(bouncer_alias, admin, citus, settings, signed, atomic):
    """Sixty requests of two sites from ten threads over two pooled server connections to the coordinator; signed:
    with signatures required, each query with a use of its request's reusable token (tests/test_pgbouncer.py).
    In autocommit each query is a transaction of its own, which PgBouncer may give either server connection."""
    from django.db import connections

    connections.settings[bouncer_alias]["ATOMIC_REQUESTS"] = atomic
    role = sql.Identifier(APP_ROLE)
    if signed:
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": citus.signing_key}
        admin.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(role))
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(signed_request_through_bouncer if signed else request_through_bouncer, range(60)))
    finally:
        admin.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(role))
    assert [body for _, body in results] == [{"sites": [site]} for site, _ in results]
    assert {site for site, _ in results} == {1, 2}


# -- E032: a session-scoped context on a Citus coordinator -------------------------------------------


def _check_ids(databases: list[str]) -> list[tuple[str, str]]:
    from django_rls.checks import check_database

    return [(m.id, m.msg) for m in check_database(databases=databases)]


def _e032(databases: list[str]) -> list[str]:
    return [msg for id_, msg in _check_ids(databases) if id_ == "django_rls.E032"]


def test_the_check_is_silent_for_the_transaction_scope_with_or_without_atomic_requests(autocommit, client):
    """The autocommit queries of a request reach the workers' rows (above), so an alias without ATOMIC_REQUESTS
    is no error any more."""
    from django.db import connections

    assert not connections.settings["default"]["ATOMIC_REQUESTS"]
    assert _e032(["default"]) == []
    assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    connections.settings["default"]["ATOMIC_REQUESTS"] = True
    assert _e032(["default"]) == []


def test_the_check_reports_a_session_scope_in_autocommit(autocommit, client, settings, admin):
    """What E032 is for: a session-scoped context is set by a setter sent on its own, which in autocommit reaches
    no worker: a request in autocommit reads none of the workers' rows, without an error. In transaction blocks
    the setter is sent again in each, and the rows are there."""
    from django.db import connection, connections, transaction

    import django_rls
    from tests.testapp.models import Note

    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SCOPE": "session"}
    found = _e032(["default"])
    assert len(found) == 1, found
    assert "testapp_note" in found[0] and "testapp_tag" in found[0], found
    connections.settings["default"]["ATOMIC_REQUESTS"] = True
    assert _e032(["default"]) == []
    connections.settings["default"]["ATOMIC_REQUESTS"] = False
    # A session-scoped context goes through the setter, which a statement-bound role (rls_roles) may not call.
    role = sql.Identifier(APP_ROLE)
    admin.execute(sql.SQL("ALTER ROLE {} RESET django_rls.statement_bound").format(role))
    try:
        connections.close_all()
        assert client.get("/notes/", HTTP_HOST=H2).json() == {"sites": [], "count": 0}
        with django_rls.context(site=2):
            with transaction.atomic():
                first = Note.objects.count()
            with transaction.atomic():
                second = Note.objects.count()
            assert connection.get_autocommit()
    finally:
        connections.close_all()
        admin.execute(sql.SQL("ALTER ROLE {} SET django_rls.statement_bound = on").format(role))
    assert (first, second) == (3, 3)


def test_django_refuses_atomic_requests_for_an_async_view(db, client):
    """So an async view cannot rely on ATOMIC_REQUESTS on Citus: Django refuses the combination outright."""
    with pytest.raises(RuntimeError, match="You cannot use ATOMIC_REQUESTS with async views"):
        client.get("/notes/async/", HTTP_HOST=H1)


# -- what the setup above works around ------------------------------------------------------------------


@pytest.mark.parametrize("order", ["audited first", "distributed first"])
def test_an_audited_table_cannot_be_distributed(citus, admin, order):
    """Why testapp_note is distributed with its audit trail off (citus.enable_unsafe_triggers is on here): the audit
    guard refuses the copies of the audit triggers Citus makes on the shards, and rls_audit.enable() refuses a
    distributed table (docs/scale-out.md, tests/test_citus.py)."""
    admin.execute("CREATE TABLE audited (id bigint PRIMARY KEY, site_id int NOT NULL)")
    admin.execute(sql.SQL("ALTER TABLE audited OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
    try:
        with citus.connect(OWNER_ROLE, PASSWORD) as owner:
            if order == "audited first":
                owner.execute("SELECT rls_audit.enable('audited')")
                with pytest.raises(psycopg.errors.FeatureNotSupported) as excinfo:
                    admin.execute("SELECT create_distributed_table('audited', 'id')")
                assert "is a shard of an audited table" in excinfo.value.diag.message_primary
            else:
                admin.execute("SELECT create_distributed_table('audited', 'id')")
                with pytest.raises(psycopg.errors.FeatureNotSupported) as excinfo:
                    owner.execute("SELECT rls_audit.enable('audited')")
                assert excinfo.value.diag.message_primary == (
                    "public.audited is a distributed table of Citus, which django_rls cannot audit"
                )
    finally:
        admin.execute("DROP TABLE audited")


def test_e033_reports_the_audited_model_that_is_distributed(db):
    """testapp.Note is declared audit=True and distributed here (its trail turned off first, as rls_audit.enable()
    refuses a table of Citus): E033 names it; testapp.Tag, distributed and not audited, is not named."""
    found = [msg for id_, msg in _check_ids(["default"]) if id_ == "django_rls.E033"]
    assert len(found) == 1, found
    assert found[0].startswith(
        "testapp.Note is declared audited (audit=True), and its table testapp_note is a distributed table of Citus"
    )
