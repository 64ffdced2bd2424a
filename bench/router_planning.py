"""DJANGO_RLS["FILTER_BY_SITE"]: queries with and without the explicit ``site_id = <site>`` conjunct.

    python tests/harness/cluster.py run -- .venv/bin/python bench/router_planning.py

The opt-in makes Django add ``<site column> = <the context's site>`` to its queries on BySite
models (django_rls/router.py; tests/test_filter_by_site.py shows the SQL). This runs the same
statements with and without that conjunct, interleaved, side by side in one run:

- plain PostgreSQL (DATABASE_URL), as the application role with site 42's context set: a table
  protected with rls.protect_by_site(), and the same rows in a table list-partitioned by site
  (one partition per site) protected the same way, where the conjunct is a constant the
  planner can prune partitions with at plan time;
- a Citus coordinator and two workers (tests/harness/citus_cluster.py) when Citus is installed
  for this PostgreSQL, else the section says why it is skipped: a table distributed by site_id
  and NOT protected, read as the superuser, with the policy's condition played by
  ``site_id = current_setting('bench.site')::int`` (set with SET LOCAL, which Citus forwards to
  the workers with citus.propagate_set_commands = 'local'): a stable function Citus cannot prune
  shards with, as it cannot rls.site_id(). The context does not reach the workers yet (issue 17
  item 2), so the application role reads no row of a protected distributed table; routing (one
  task instead of one per shard) is what is measured here. tests/test_citus.py shows the
  protected table's plans, one task with the conjunct, as the application role.

Each figure is the median wall time, in ms, of ``REPEAT`` rounds of ``RUNS`` executions of the
statement from this client (planning and execution; Citus's distributed execution included).
Absolute times drift on a shared machine; the ratios within one run are what counts.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
SITES = 100
SITE = 42
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
RUNS = int(os.environ.get("BENCH_RUNS", "20"))
DB = "django_rls_bench_router"

QUERIES = {
    "count of the site's rows": "SELECT count(*) FROM {t}{where}",
    "one row by id": "SELECT id, title FROM {t} WHERE id = 4242{and_}",
    "update one row": "UPDATE {t} SET title = title WHERE id = 4242{and_}",
}


# What the policy adds on every shard, for a table the policies cannot protect on Citus yet: a
# stable function of a setting, which Citus cannot prune shards with (as it cannot rls.site_id()).
STAND_IN = "site_id = current_setting('bench.site')::int"


def statement(query: str, table: str, filtered: bool, always: str | None = None) -> str:
    """The query, with ``always`` (the policy's stand-in) and, when filtered, the conjunct FILTER_BY_SITE adds."""
    conjuncts = [always] if always else []
    if filtered:
        conjuncts.append(f"site_id = {SITE}")
    where = " AND ".join(conjuncts)
    return query.format(t=table, where=f" WHERE {where}" if where else "", and_=f" AND {where}" if where else "")


def task_count(conn: psycopg.Connection, text: str) -> int:
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL bench.site = '{SITE}'")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + text))
    return sum(int(count) for count in re.findall(r"Task Count: (\d+)", plan))


def rounds(run: Callable[[str], None], without: str, with_: str) -> tuple[float, float]:
    """Median ms per execution of each statement, the two interleaved round by round."""
    times: dict[str, list[float]] = {without: [], with_: []}
    for _ in range(REPEAT):
        for text in (without, with_):
            started = time.perf_counter()
            for _ in range(RUNS):
                run(text)
            times[text].append((time.perf_counter() - started) * 1000 / RUNS)
    return statistics.median(times[without]), statistics.median(times[with_])


def report(name: str, without: float, with_: float) -> None:
    print(f"  {name:<44} {without:>10.3f} {with_:>10.3f} {without / with_:>8.2f}x", flush=True)


def header(title: str) -> None:
    print(f"\n{title}\n  {'':<44} {'without':>10} {'with':>10} {'ratio':>9}", flush=True)


def rows_sql(table: str) -> sql.Composed:
    return sql.SQL("INSERT INTO {} SELECT g, g % {} + 1, 'row ' || g FROM generate_series(1, {}) AS g").format(
        sql.Identifier(table), sql.Literal(SITES), sql.Literal(ROWS)
    )


def plain_postgres(server: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        admin.execute("DROP ROLE IF EXISTS bench_app")
        admin.execute("CREATE ROLE bench_app LOGIN")
    dsn = make_conninfo(server, dbname=DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, site_id int NOT NULL, title text)")
        conn.execute("CREATE INDEX ON notes (site_id)")
        conn.execute(
            "CREATE TABLE notes_by_site (id bigint NOT NULL, site_id int NOT NULL, title text, "
            "PRIMARY KEY (site_id, id)) PARTITION BY LIST (site_id)"
        )
        for site in range(1, SITES + 1):
            conn.execute(f"CREATE TABLE notes_by_site_{site} PARTITION OF notes_by_site FOR VALUES IN ({site})")
        conn.execute("CREATE INDEX ON notes_by_site (id)")
        for table in ("notes", "notes_by_site"):
            conn.execute(rows_sql(table))
            conn.execute("SELECT rls.protect_by_site(%s, to_role => 'bench_app')", (table,))
            conn.execute(sql.SQL("GRANT SELECT, UPDATE ON {} TO bench_app").format(sql.Identifier(table)))
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    with psycopg.connect(make_conninfo(dsn, user="bench_app"), autocommit=True) as app:
        app.execute("SELECT rls.set_context(%s, NULL, NULL, false)", (str(SITE),))

        def run(text: str) -> None:
            app.execute(text).fetchall() if text.startswith("SELECT") else app.execute(text)

        for table, title in (("notes", "one table"), ("notes_by_site", f"{SITES} partitions by site")):
            header(f"plain PostgreSQL, app role, site {SITE}'s context, {title}: ms per statement")
            for name, query in QUERIES.items():
                same = [run_rows(app, statement(query, table, filtered)) for filtered in (False, True)]
                assert same[0] == same[1], (name, table, same)
                report(name, *rounds(run, statement(query, table, False), statement(query, table, True)))
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute("DROP ROLE bench_app")


def run_rows(conn: psycopg.Connection, text: str) -> object:
    """What a statement returns (rows, or the row count of a write): the same with the conjunct and without."""
    cursor = conn.execute(text)
    return cursor.fetchall() if cursor.description else cursor.rowcount


def citus() -> None:
    from tests.harness.citus_cluster import CitusCluster, citus_missing

    missing = citus_missing()
    if missing is not None:
        print(f"\nCitus: skipped: {missing}", flush=True)
        return
    cluster = CitusCluster()
    try:
        cluster.start()
        with cluster.connect() as conn:
            conn.execute(
                "CREATE TABLE notes (id bigint NOT NULL, site_id int NOT NULL, title text, PRIMARY KEY (site_id, id))"
            )
            conn.execute("CREATE INDEX ON notes (id)")
            conn.execute("SELECT create_distributed_table('notes', 'site_id')")
            conn.execute(rows_sql("notes"))
            conn.execute("ANALYZE notes")
            shards = conn.execute("SHOW citus.shard_count").fetchone()[0]

            conn.execute("SET citus.propagate_set_commands = 'local'")

            def run(text: str) -> object:
                # The policy's stand-in needs its setting on the workers: SET LOCAL in a transaction block.
                with conn.transaction():
                    conn.execute(f"SET LOCAL bench.site = '{SITE}'")
                    return run_rows(conn, text)

            header(f"Citus, coordinator + 2 workers, {shards} shards, superuser: ms per statement (tasks)")
            for name, query in QUERIES.items():
                texts = [statement(query, "notes", filtered, STAND_IN) for filtered in (False, True)]
                assert run(texts[0]) == run(texts[1]), name
                tasks = [task_count(conn, text) for text in texts]
                without, with_ = rounds(run, *texts)
                report(f"{name} ({tasks[0]} vs {tasks[1]} tasks)", without, with_)
    finally:
        cluster.stop()
        cluster.remove()


def main() -> int:
    print(f"router planning: {ROWS:,} rows, {SITES} sites, site {SITE}; {REPEAT} rounds of {RUNS}", flush=True)
    plain_postgres(os.environ["DATABASE_URL"])
    citus()
    return 0


if __name__ == "__main__":
    sys.exit(main())
