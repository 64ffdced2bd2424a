"""Without preloading: placeholders set before the library loads must not become a context,
and a statement carrying its context is never run without it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper
from psycopg import sql
from psycopg.types.string import StrDumper

import django_rls
from django_rls.database import marker_supported, on_connection_created, wrapper
from tests.harness.cluster import BINDIR, Cluster

pytestmark = pytest.mark.skipif(not (BINDIR / "initdb").exists(), reason=f"no PostgreSQL server binaries in {BINDIR}")


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[Cluster]:
    """A second throwaway cluster that does not preload django_rls."""
    cluster = Cluster(preload=False)
    cluster.init()
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE late_app LOGIN")
            conn.execute("CREATE EXTENSION django_rls")
            conn.execute("CREATE TABLE t (site_id int)")
            conn.execute("INSERT INTO t SELECT s FROM generate_series(1, 5) s")
            conn.execute("GRANT SELECT, INSERT ON t TO late_app")
            conn.execute("SELECT rls.protect_by_site('t', to_role => 'late_app')")
            conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal("any.key")))
        cluster.stop()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


def test_placeholder_set_before_load_is_discarded(plain_cluster: Cluster):
    with psycopg.connect(plain_cluster.dsn(user="late_app"), autocommit=True) as conn:
        warnings: list[str] = []
        conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
        # The library is not loaded in this session yet, so this creates a placeholder.
        conn.execute("SET django_rls.site = '5'")
        assert conn.execute("SELECT current_setting('django_rls.site')").fetchone()[0] == "5"
        # Loading the library (first call) re-checks the placeholder and drops it.
        assert conn.execute("SELECT rls.site_id()").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        assert any("django_rls.site" in w or "django_rls context" in w for w in warnings), warnings
        # Now the prefix is reserved and the setting is guarded as usual.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET django_rls.site = '5'")


def test_role_setting_stored_before_load_is_refused(plain_cluster: Cluster):
    with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER ROLE late_app SET django_rls.site = '3'")
    try:
        with psycopg.connect(plain_cluster.dsn(user="late_app"), autocommit=True) as conn:
            assert conn.execute("SELECT rls.site_id()").fetchone()[0] is None
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    finally:
        with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER ROLE late_app RESET django_rls.site")


def test_context_still_works_and_problem_is_reported(plain_cluster: Cluster):
    with psycopg.connect(plain_cluster.dsn(user="late_app"), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT rls.set_context('2', '1')")
            assert conn.execute("SELECT array_agg(site_id) FROM t").fetchone()[0] == [2]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="django_rls in shared_preload_libraries"):
            with conn.transaction():
                conn.execute("SELECT rls.set_context_signed('v1.x.y')")
        problems = [p for (p,) in conn.execute("SELECT problem FROM rls.problems")]
        assert any("not preloaded" in p for p in problems), problems


class Text(str):
    """Bound as type text, as the marker's $1 must be."""


class TextDumper(StrDumper):
    oid = psycopg.adapters.types["text"].oid


def fresh_app_connection(cluster: Cluster) -> psycopg.Connection:
    """A new backend, which has not loaded the library yet."""
    conn = psycopg.connect(cluster.dsn(user="late_app"), autocommit=True)
    conn.adapters.register_dumper(Text, TextDumper)
    assert conn.info.parameter_status("django_rls.preloaded") is None
    return conn


CARRIED = "/*django_rls:%s*/ "


def test_carried_insert_on_a_fresh_backend_is_refused_not_run_without_context(plain_cluster: Cluster):
    with fresh_app_connection(plain_cluster) as conn:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="loaded too late") as excinfo:
            conn.execute(CARRIED + "INSERT INTO t VALUES (2)", (Text(json.dumps({"site": 2})),))
        assert "shared_preload_libraries" in excinfo.value.diag.message_hint
        # From now on the library is loaded in this backend, and the marker works.
        conn.execute(CARRIED + "INSERT INTO t VALUES (2)", (Text(json.dumps({"site": 2})),))
        rows = conn.execute(CARRIED + "SELECT count(*) FROM t", (Text(json.dumps({"site": 2})),)).fetchall()
        assert rows == [(2,)]
    with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
        admin.execute("DELETE FROM t WHERE site_id = 2 AND ctid <> (SELECT min(ctid) FROM t WHERE site_id = 2)")


def test_carried_select_on_a_fresh_backend_is_right_or_refused(plain_cluster: Cluster):
    with fresh_app_connection(plain_cluster) as conn:
        try:
            rows = conn.execute(CARRIED + "SELECT site_id FROM t", (Text(json.dumps({"site": 3})),)).fetchall()
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            assert "loaded too late" in str(exc)
        else:
            assert rows == [(3,)]


@pytest.fixture
def late_django_connection(plain_cluster: Cluster, django_db_blocker):
    """A Django connection (server-side binding) to the cluster that does not preload the library."""
    settings = {
        **connections.settings["default"],
        "NAME": "postgres",
        "USER": "late_app",
        "PASSWORD": "",
        "HOST": str(plain_cluster.base_dir),
        "PORT": str(plain_cluster.port),
    }
    connection = DatabaseWrapper(settings, alias="late")
    with django_db_blocker.unblock():
        connection.ensure_connection()
        on_connection_created(sender=DatabaseWrapper, connection=connection)
        connection.execute_wrappers.append(wrapper)
        try:
            yield connection
        finally:
            connection.close()


def test_bridge_sends_the_context_as_a_statement_when_not_preloaded(late_django_connection, plain_cluster: Cluster):
    connection = late_django_connection
    assert marker_supported(connection) is False
    with django_rls.context(site=4, user=1), connection.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (4)")
        cursor.execute("SELECT array_agg(site_id) FROM t")
        assert cursor.fetchone()[0] == [4, 4]
    with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
        admin.execute("DELETE FROM t WHERE site_id = 4 AND ctid <> (SELECT min(ctid) FROM t WHERE site_id = 4)")


def test_session_preload_is_enough_for_a_carried_context(plain_cluster: Cluster):
    with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER ROLE late_app SET session_preload_libraries = 'django_rls'")
    try:
        with psycopg.connect(plain_cluster.dsn(user="late_app"), autocommit=True) as conn:
            conn.adapters.register_dumper(Text, TextDumper)
            assert conn.info.parameter_status("django_rls.preloaded") == "on"
            # The first statement of the backend: the hooks were in place before it started.
            conn.execute(CARRIED + "INSERT INTO t VALUES (5)", (Text(json.dumps({"site": 5})),))
            rows = conn.execute(CARRIED + "SELECT count(*) FROM t", (Text(json.dumps({"site": 5})),)).fetchall()
            assert rows == [(2,)]
            assert conn.execute("SHOW django_rls.preloaded").fetchone() == ("on",)
    finally:
        with psycopg.connect(plain_cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER ROLE late_app RESET session_preload_libraries")
            admin.execute("DELETE FROM t WHERE site_id = 5 AND ctid <> (SELECT min(ctid) FROM t WHERE site_id = 5)")


def test_a_client_cannot_make_the_citus_report_say_anything(plain_cluster: Cluster):
    """Where the library is not loaded, django_rls.citus from a connection's options is a placeholder, which the
    server never reports (the bridge then asks the catalog); once the library loads, the placeholder gives way to
    the library's own value (Citus is not loaded here: off), still not reported to this session."""
    with psycopg.connect(plain_cluster.dsn(user="late_app"), autocommit=True, options="-c django_rls.citus=on") as conn:
        assert conn.execute("SELECT current_setting('django_rls.citus')").fetchone() == ("on",)
        assert conn.info.parameter_status("django_rls.citus") is None
        conn.execute("SELECT rls.site_id()")  # loads the library
        assert conn.execute("SELECT current_setting('django_rls.citus')").fetchone() == ("off",)
        assert conn.info.parameter_status("django_rls.citus") is None


def test_citus_loads_only_at_server_start(plain_cluster: Cluster):
    """Why django_rls.citus, set when the library starts, never goes stale: Citus refuses to be loaded later."""
    from tests.harness.citus_cluster import citus_missing

    missing = citus_missing()
    if missing:
        pytest.skip(missing)
    with psycopg.connect(plain_cluster.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="shared_preload_libraries"):
            conn.execute("LOAD 'citus'")
