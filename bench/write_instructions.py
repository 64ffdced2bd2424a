"""Single-row audited writes in instructions: what the audit capture adds per statement, counted by callgrind.

    python bench/write_instructions.py        (needs valgrind: apt-get install valgrind)

bench/write_path.py times 2,000 single-row statements per variant; on a shared machine those
latency ratios move by 30% and more between runs, more than the fixed cost of the capture it
is meant to show. This counts instructions instead. It starts a throwaway cluster of its own,
loads the tables with the server running normally, then restarts it under callgrind (the whole
backend counted: protocol, executor, the capture, commit) and, for each variant and statement,
runs one session of WARM + N statements and one of WARM + 2N: the difference divided by N is
one warm single-row statement in autocommit (median of BENCH_REPEAT such pairs, default 3), as bench/write_path.py runs it (extended protocol,
prepared, the same 8-column table and statements). Variants: none (no trigger), ours
(rls_audit.enable()), ours_chain (ours with django_rls.audit_chain = on), and the PL/pgSQL
reference designs of bench/write_path.py (row_jsonb, row_event, stmt_jsonb: the same functions
and log tables, created from its REFERENCES). The log has this month's partition
(rls_audit.ensure_partitions()), as a deployment keeps it.

Each statement also runs in transactions of BENCH_XACT statements (default 5; 0 leaves it out),
as a request with ATOMIC_REQUESTS writes: the same pair of sessions, each statement of one
explicit transaction of BENCH_XACT, the difference over N again one statement's count (the
transaction's BEGIN and COMMIT spread over its statements). BENCH_VARIANTS (default all)
picks variants by name, comma-separated; "none" always runs.

BENCH_FILL_ROWS (default 0: an empty log) runs bench/write_path.py's bulk INSERT, UPDATE and
DELETE of that many rows on each variant's table first, so that its log holds what
write_path.py's single-row statements find there (200000 as write_path.py runs them).

BENCH_STATEMENTS (default 100) sets N; BENCH_WARM (default 20) the statements before it (both
multiples of BENCH_XACT).
BENCH_CALLGRIND_DIR keeps callgrind's files there (one per process, cg.<pid>), for
callgrind_annotate --inclusive=yes: the sessions run in the order printed, WARM + N then WARM + 2N.
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
from write_path import REFERENCES, create_variant
from write_path import STATEMENTS as BULK_STATEMENTS

N = int(os.environ.get("BENCH_STATEMENTS", "100"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
WARM = int(os.environ.get("BENCH_WARM", "20"))
FILL = int(os.environ.get("BENCH_FILL_ROWS", "0"))
ALL_VARIANTS = ("none", "ours", "ours_chain", "row_jsonb", "row_event", "stmt_jsonb")
XACT = int(os.environ.get("BENCH_XACT", "5"))
VARIANTS = tuple(
    v for v in ALL_VARIANTS if v == "none" or v in os.environ.get("BENCH_VARIANTS", ",".join(ALL_VARIANTS)).split(",")
)
COLUMNS = (
    "id bigint PRIMARY KEY, site_id int, qty int, name text, note text, price numeric(12,2), "
    "created_at timestamptz, active boolean"
)
# As bench/write_path.py's SINGLE_STATEMENTS.
STATEMENTS = {
    "insert": "INSERT INTO {t} VALUES (%s, 7, 1, 'single', 'note', 1.50, now(), true)",
    "update": "UPDATE {t} SET qty = qty + 1 WHERE id = %s",
    "delete": "DELETE FROM {t} WHERE id = %s",
}
# Rows loaded for UPDATE and DELETE (each uses half of them); INSERT writes keys above them.
LOADED = 2 * REPEAT * (2 * WARM + 3 * N) * (2 if XACT else 1) + 2
# Autocommit (1 statement per transaction) and, unless BENCH_XACT=0, XACT statements per transaction.
MODES = (1, XACT) if XACT > 1 else (1,)


def load(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        conn.execute("SELECT rls_audit.ensure_partitions(1)")
        conn.execute(REFERENCES)
        # The context of the fill's entries (bench/write_path.py's); the session is a superuser's.
        conn.execute("SET django_rls.allow_bypassing_roles = on")
        conn.execute("SELECT rls.set_context('7', '42', NULL, false)")
        conn.execute("SELECT set_config('app.site', '7', false), set_config('app.user', '42', false)")
        for variant in VARIANTS:
            table = create_variant(conn, variant)
            if FILL:
                for statement in BULK_STATEMENTS.values():
                    conn.execute(statement.format(t=table, rows=FILL))
            conn.execute(
                f"INSERT INTO {table} SELECT g, 7, 1, 'loaded', 'note', 1.50, now(), true "
                f"FROM generate_series(1, {LOADED}) g"
            )
        if not FILL:
            # The loading's entries: the counted statements find an empty log.
            for log in ("rls_audit.statements", "ref.logged_actions", "ref.events", "ref.stmt_log"):
                conn.execute(f"TRUNCATE {log}")
        conn.execute("VACUUM (FREEZE, ANALYZE)")


def counted(out: Path, dsn: str, variant: str, query: str, keys: range, per_xact: int = 1) -> tuple[int, int]:
    """The backend's pid and the instructions callgrind counted in one session that runs query once per key,
    per_xact statements to a transaction (1: autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # An earlier backend with the same pid left its file: it is not this session's count.
        (out / f"cg.{pid}").unlink(missing_ok=True)
        # A superuser's session, which the server refuses a context unless allowed (docs/security.md).
        conn.execute("SET django_rls.allow_bypassing_roles = on")
        conn.execute("SELECT rls.set_context('7', '42', NULL, false)")
        # The references' context (bench/write_path.py sets the same).
        conn.execute("SELECT set_config('app.site', '7', false), set_config('app.user', '42', false)")
        conn.execute(f"SET django_rls.audit_chain = {'on' if variant == 'ours_chain' else 'off'}")
        if per_xact == 1:
            for key in keys:
                conn.execute(query, [key], prepare=True)
        else:
            keys = list(keys)
            for start in range(0, len(keys), per_xact):
                with conn.transaction():
                    for key in keys[start : start + per_xact]:
                        conn.execute(query, [key], prepare=True)
    # callgrind writes the file when the backend exits.
    path = out / f"cg.{pid}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(("totals:", "summary:")):
                    return pid, int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"write_instructions.py: callgrind wrote no totals to {path}")


def main() -> int:
    if XACT > 1 and (N % XACT or WARM % XACT):
        raise SystemExit("write_instructions.py: BENCH_STATEMENTS and BENCH_WARM must be multiples of BENCH_XACT")
    if shutil.which("valgrind") is None:
        raise SystemExit("write_instructions.py needs valgrind (apt-get install valgrind)")
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
        os.environ["DJANGO_RLS_SERVER_WRAPPER"] = f"valgrind --tool=callgrind --callgrind-out-file={out}/cg.%p"
        cluster.start()
        # The first backend after a restart builds the relation cache's init file: a session of its own.
        counted(out, cluster.dsn(), "none", "SELECT %s::int", range(1))
        per_statement: dict[tuple[str, int, str], float] = {}
        for variant in VARIANTS:
            next_key = {"insert": LOADED + 1, "update": 1, "delete": LOADED // 2 + 1}
            for mode in MODES:
                for op, statement in STATEMENTS.items():
                    query = statement.format(t=f"bench_{variant}")
                    differences = []
                    for _ in range(REPEAT):
                        totals = []
                        for n in (N, 2 * N):
                            first = next_key[op]
                            next_key[op] += WARM + n
                            pid, total = counted(
                                out, cluster.dsn(), variant, query, range(first, first + WARM + n), mode
                            )
                            totals.append(total)
                            if keep:
                                print(
                                    f"  {variant} {op} x{mode} {WARM} + {n}: {total:,d} instructions, {out}/cg.{pid}",
                                    flush=True,
                                )
                        differences.append((totals[1] - totals[0]) / N)
                    per_statement[variant, mode, op] = statistics.median(differences)
        for mode in MODES:
            print(
                f"single-row statements {'in autocommit' if mode == 1 else f'{mode} to a transaction'}, "
                f"instructions per statement (callgrind, whole backend; "
                f"{WARM} + {N} against {WARM} + {2 * N} statements, median of {REPEAT})"
            )
            print(f"{'variant':12s} " + " ".join(f"{op:>10s} {'x':>6s} {'- none':>9s}" for op in STATEMENTS))
            for variant in VARIANTS:
                cells = []
                for op in STATEMENTS:
                    mine = per_statement[variant, mode, op]
                    base = per_statement["none", mode, op]
                    cells.append(f"{mine:10,.0f} {mine / base:6.2f} {mine - base:9,.0f}")
                print(f"{variant:12s} " + " ".join(cells))
        print(f"setup and run {time.monotonic() - started:.0f} s")
    finally:
        cluster.stop()
        cluster.remove()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
