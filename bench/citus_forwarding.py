"""What carrying the context to the Citus workers costs (issue 17 item 2, ext/citus.c).

    PG_BINDIR=... .venv/bin/python bench/citus_forwarding.py

Starts a coordinator and two workers (tests/harness/citus_cluster.py; Citus must be installed
for the server in PG_BINDIR) and measures, as the application role, side by side and
interleaved in one run:

- on the coordinator, ``BEGIN; SELECT rls.set_context('3', NULL); COMMIT`` in the Citus
  database, where the setter forwards the context (Citus assigns a distributed transaction id,
  an SPI query reads it, one HMAC, SET LOCAL through SPI), and in a database of the same
  server without the citus extension, where it does not;
- on a worker, in a session of the application role's own that plays a worker backend of
  Citus (``assign_distributed_transaction_id()``, then the credential set as Citus sets it),
  ``SELECT rls.site_id()``: once with a valid credential (the first use verifies it: HMAC,
  SPI query of the distributed transaction id), once without a credential;
- a request-sized transaction through the coordinator: ``BEGIN; set_context; SELECT`` of the
  site's rows on a protected table distributed by site_id with ``site_id = 3`` (one shard)
  ``; COMMIT``, against the same query as the superuser on an unprotected copy, without a context.

Each figure is the median of REPEAT rounds of RUNS transactions from this client, in ms per
transaction. Absolute times drift on a shared machine; the differences within one run count.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
RUNS = int(os.environ.get("BENCH_RUNS", "50"))


def per_transaction(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    for _ in range(RUNS):
        run()
    return (time.perf_counter() - started) / RUNS * 1000


def compare(name: str, runs: dict[str, Callable[[], None]]) -> None:
    times: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(REPEAT):
        for label, run in runs.items():
            times[label].append(per_transaction(run))
    print(f"{name}:")
    for label, values in times.items():
        print(f"  {label:<48} {statistics.median(values):8.3f} ms")


def main() -> int:
    from tests.harness.citus_cluster import DATABASE, CitusCluster, citus_missing
    from tests.roles import APP_ROLE, PASSWORD

    missing = citus_missing()
    if missing:
        print(f"citus_forwarding.py: {missing}", file=sys.stderr)
        return 1
    cluster = CitusCluster()
    try:
        cluster.start()
        with cluster.connect() as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(PASSWORD)
                )
            )
            for table in ("items", "items_plain"):
                admin.execute(f"CREATE TABLE {table} (id bigint NOT NULL, site_id int NOT NULL, title text)")
                admin.execute("SELECT create_distributed_table(%s, 'site_id')", (table,))
                admin.execute(f"INSERT INTO {table} SELECT g, 3 + g % 100, 'row' FROM generate_series(1, 10000) g")
            admin.execute("SELECT rls.protect_by_site('items', to_role => %s)", (APP_ROLE,))
            admin.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(APP_ROLE)))
            admin.execute("CREATE DATABASE plain")
        with psycopg.connect(cluster.url(cluster.coordinator, dbname="plain"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")

        app = cluster.connect(APP_ROLE, PASSWORD)
        plain = psycopg.connect(cluster.url(cluster.coordinator, APP_ROLE, "plain"), password=PASSWORD, autocommit=True)
        admin = cluster.connect()

        def setter(conn: psycopg.Connection) -> Callable[[], None]:
            def run() -> None:
                with conn.transaction():
                    conn.execute("SELECT rls.set_context('3', NULL)")

            return run

        compare(
            "coordinator: BEGIN; rls.set_context(); COMMIT",
            {"Citus database (forwards the context)": setter(app), "database without Citus": setter(plain)},
        )

        worker = cluster.connect(APP_ROLE, PASSWORD, node=cluster.workers[0])
        (stamp,) = worker.execute("SELECT now()").fetchone()
        (stamp_us,) = worker.execute(
            "SELECT (extract(epoch FROM %s::timestamptz - '2000-01-01 00:00:00+00') * 1000000)::bigint", (stamp,)
        ).fetchone()
        rest = f"{int(time.time()) + 290}.0.4242.{stamp_us}.3.."
        mac = hmac.new(
            cluster.signing_key.encode(), b"c1." + rest.encode() + b"\0" + DATABASE.encode(), hashlib.sha256
        ).hexdigest()
        credential = f"c1.{mac}.{rest}"

        def on_worker(value: str) -> Callable[[], None]:
            def run() -> None:
                with worker.transaction():
                    worker.execute("SELECT assign_distributed_transaction_id(0, 4242, %s)", (stamp,))
                    worker.execute("SELECT set_config('django_rls.forwarded', %s, true)", (value,))
                    worker.execute("SELECT rls.site_id()").fetchone()

            return run

        assert worker.execute("SELECT 1").fetchone() == (1,)
        compare(
            "worker: BEGIN; assign id; set credential; rls.site_id(); COMMIT",
            {"a credential (verified at first use)": on_worker(credential), "no credential": on_worker("")},
        )

        def request(conn: psycopg.Connection, table: str, context: bool) -> Callable[[], None]:
            def run() -> None:
                with conn.transaction():
                    if context:
                        conn.execute("SELECT rls.set_context('3', NULL)")
                    conn.execute(f"SELECT id, title FROM {table} WHERE site_id = 3").fetchall()

            return run

        compare(
            "through the coordinator: BEGIN; [set_context;] SELECT ... WHERE site_id = 3; COMMIT",
            {
                "app role, protected table, context forwarded": request(app, "items", True),
                "superuser, unprotected copy, no context": request(admin, "items_plain", False),
            },
        )
        for conn in (app, plain, admin, worker):
            conn.close()
    finally:
        cluster.stop()
        cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
