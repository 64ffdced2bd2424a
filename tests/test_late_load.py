"""Without preloading: placeholders set before the library loads must not become a context."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

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
            conn.execute("GRANT SELECT ON t TO late_app")
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
