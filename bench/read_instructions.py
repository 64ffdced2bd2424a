"""Read path in instructions: what the policy adds to a query, counted by callgrind, not timed.

    python bench/read_instructions.py        (needs valgrind: apt-get install valgrind)

Times on a shared machine move by 10% from one query to the next; instruction counts move by
a few thousand per query, so they show what bench/read_path.py's ratios cannot resolve: how
much work the policy adds, and where. This starts a throwaway cluster of its own, loads the data with the
server running normally, then restarts it under callgrind (counting only inside PortalStart
and PortalRun: executor start, run and end, not parsing or planning) and runs each path's
query once in one session and twice in another, after a first session that reads the pages
into shared buffers: the difference is one execution with warm caches. The floor is the
same query with an explicit WHERE site_id = 42 run as a superuser; ours runs as the
application role under rls.protect_by_site(), calls as a member of it with
django_rls.accessor_initplans = off. Parallel workers are off (their work is counted in
processes of their own), so the parallel path is measured as a plain sequential scan.

A session now and then counts a one-off on top (a malloc() growing the heap, about 900
instructions; 8,000 and 16,000 in two published cells whose code measured the usual count
when run again), so each cell is the median of BENCH_REPEAT (default 3) such differences.

BENCH_ROWS (default 200,000) sets the rows per table. BENCH_CASES runs only the paths whose
label contains one of its comma-separated words ("index-only,join": the two paths a
per-execution cost shows on best). BENCH_CALLGRIND_DIR keeps callgrind's files there (one per
process, cg.<pid>, each printed with its role and runs before its path's row: the warming
session, the one running the query twice, the one running it once), for callgrind_annotate.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "harness"))
from cluster import Cluster

ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
SITES = 100
SITE = 42
SEQ = [
    "SET LOCAL max_parallel_workers_per_gather = 0",
    "SET LOCAL enable_indexscan = off",
    "SET LOCAL enable_bitmapscan = off",
]
INDEX = ["SET LOCAL enable_seqscan = off"]
INDEX_ONLY = ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off"]
JOIN = ["SET LOCAL max_parallel_workers_per_gather = 0"]
# what: (settings, query under the policy, floor query), as in bench/read_path.py
CASES = {
    "index path": (
        INDEX,
        "SELECT count(*), sum(amount) FROM orders",
        "SELECT count(*), sum(amount) FROM orders WHERE site_id = 42",
    ),
    "sequential scan": (
        SEQ,
        "SELECT count(*), sum(amount) FROM orders",
        "SELECT count(*), sum(amount) FROM orders WHERE site_id = 42",
    ),
    "app filter + policy, index-only": (
        INDEX_ONLY,
        "SELECT count(*) FROM orders WHERE site_id = 42",
        "SELECT count(*) FROM orders WHERE site_id = 42",
    ),
    "join of two protected tables": (
        JOIN,
        "SELECT count(*), sum(l.amount) FROM orders o JOIN lines l ON l.order_id = o.id",
        "SELECT count(*), sum(l.amount) FROM orders o JOIN lines l ON l.order_id = o.id WHERE o.site_id = 42 AND l.site_id = 42",
    ),
}


def load(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        conn.execute("CREATE ROLE bench_app LOGIN")
        conn.execute("CREATE ROLE bench_app_calls LOGIN IN ROLE bench_app")
        conn.execute("ALTER ROLE bench_app_calls SET django_rls.accessor_initplans = off")
        for kind in ("orders", "lines"):
            key = "order_id bigint NOT NULL," if kind == "lines" else ""
            order_id = "g / 10, " if kind == "lines" else ""
            conn.execute(
                f"CREATE TABLE {kind} (id bigint PRIMARY KEY, {key} site_id int NOT NULL, amount int, payload text)"
            )
            conn.execute(
                f"INSERT INTO {kind} SELECT g, {order_id}g % {SITES}, g % 1000, md5(g::text) FROM generate_series(1, {ROWS}) g"
            )
            conn.execute(f"CREATE INDEX ON {kind} (site_id)")
            if kind == "lines":
                conn.execute(f"CREATE INDEX ON {kind} (site_id, order_id)")
            conn.execute(f"GRANT SELECT ON {kind} TO bench_app")
            conn.execute("SELECT rls.protect_by_site(%s, 'site_id', to_role => 'bench_app')", [kind])
        conn.execute("VACUUM (FREEZE, ANALYZE)")


def counted(out: Path, dsn: str, settings: list[str], context: bool, query: str, times: int) -> int:
    """Instructions callgrind counted in one session that runs query `times` times."""
    with psycopg.connect(dsn) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        user = conn.info.user
        conn.commit()
        with conn.transaction():
            for statement in settings:
                conn.execute(statement)
            if context:
                conn.execute("SELECT rls.set_context(%s, NULL)", [str(SITE)])
            for _ in range(times):
                conn.execute(query).fetchall()
    # callgrind writes the file when the backend exits.
    path = out / f"cg.{pid}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(("totals:", "summary:")):
                    if os.environ.get("BENCH_CALLGRIND_DIR"):
                        print(f"  {path} ({times} run{'s' if times > 1 else ''} as {user})")
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"read_instructions.py: callgrind wrote no totals to {path}")


def main() -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("read_instructions.py needs valgrind (apt-get install valgrind)")
    wanted = [word.strip() for word in os.environ.get("BENCH_CASES", "").split(",") if word.strip()]
    cases = {label: case for label, case in CASES.items() if not wanted or any(w in label for w in wanted)}
    if not cases:
        raise SystemExit(
            f"read_instructions.py: BENCH_CASES={os.environ['BENCH_CASES']!r} names no path of {list(CASES)}"
        )
    keep = os.environ.get("BENCH_CALLGRIND_DIR")
    out = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="django_rls-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)
    cluster = Cluster()
    try:
        cluster.init()
        cluster.start()
        started = time.monotonic()
        load(cluster.dsn())
        cluster.stop()
        os.environ["DJANGO_RLS_SERVER_WRAPPER"] = (
            "valgrind --tool=callgrind --collect-atstart=no --toggle-collect=PortalStart --toggle-collect=PortalRun "
            f"--callgrind-out-file={out}/cg.%p"
        )
        cluster.start()
        print(
            f"read path in instructions: {ROWS:,} rows per table, {SITES} sites, site {SITE}; setup {time.monotonic() - started:.0f} s"
        )
        print(
            f"{'what':32s} {'floor':>12s} {'ours':>12s} {'ours x':>7s} {'calls':>12s} {'calls x':>8s} {'ours - floor':>13s}"
        )
        for label, (settings, protected, floor_query) in cases.items():
            warm = {}
            for name, user, query in (
                ("floor", "postgres", floor_query),
                ("ours", "bench_app", protected),
                ("calls", "bench_app_calls", protected),
            ):
                dsn = cluster.dsn(user=user)
                context = name != "floor"
                counted(out, dsn, settings, context, query, 1)  # reads the pages into shared buffers first
                warm[name] = statistics.median(
                    counted(out, dsn, settings, context, query, 2) - counted(out, dsn, settings, context, query, 1)
                    for _ in range(REPEAT)
                )
            print(
                f"{label:32s} {warm['floor']:12,.0f} {warm['ours']:12,.0f} {warm['ours'] / warm['floor']:7.3f} "
                f"{warm['calls']:12,.0f} {warm['calls'] / warm['floor']:8.3f} {warm['ours'] - warm['floor']:13,.0f}"
            )
    finally:
        cluster.stop()
        cluster.remove()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
