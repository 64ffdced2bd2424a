"""What signed mode costs per statement and per request, side by side in one run.

    python tests/harness/cluster.py run -- .venv/bin/python bench/signed_cost.py

Two tables:

- application side (in this process, no database): the context material a request of 1 or 10
  autocommit queries sends, built the way signed mode did before reusable tokens (a single-use
  token signed per statement) and the way it does now (a use of the context's reusable token
  per statement; the token signed on the context's first request, then kept);
- server side: microseconds per rls.set_context_signed() call as the application role, CALLS
  calls evaluated in one statement over a temporary table (no protocol cost in the numbers), for single-use tokens (a
  full verify each: signature, base64url, JSON, members) and for uses of reusable tokens (after
  the first use on a backend, only the MAC), beside the unsigned setter and a call that
  verifies nothing (the floor: reading the same material). Verify cost = a row's time minus
  the floor's.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django_rls.database import ReusableTokens
from django_rls.state import make_values
from django_rls.tokens import sign_context, sign_reusable

DB = "django_rls_signed_bench"
ROLE = "bench_signer"
KEY_FILE = "django_rls_bench.key"
CALLS = int(os.environ.get("BENCH_CALLS", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LIFETIME = 30


def per_call(function: Callable[[], object], number: int = 2000) -> float:
    """Median CPU microseconds of this process per call over ROUNDS timings (other load on the
    machine does not count)."""
    timings = timeit.repeat(function, number=number, repeat=ROUNDS, timer=time.process_time)
    return statistics.median(timings) / number * 1e6


def application_side(key: str) -> None:
    values = make_values(site=42, user=7)

    def before(queries: int) -> Callable[[], object]:
        def request() -> object:
            return [
                sign_context(key, site=values.site, user=values.user, claims=values.claims_dict, lifetime=LIFETIME)
                for _ in range(queries)
            ]

        return request

    def first_request(queries: int) -> Callable[[], object]:
        def request() -> object:
            cache = ReusableTokens()  # the context's first request: its token is signed now
            return [cache.use(key, LIFETIME, values) for _ in range(queries)]

        return request

    def later_request(queries: int) -> Callable[[], object]:
        cache = ReusableTokens()
        cache.use(key, LIFETIME, values)
        return lambda: [cache.use(key, LIFETIME, values) for _ in range(queries)]

    print("application side: context material per request (CPU µs of this process)")
    print(f"{'queries':>8s} {'before: token per query':>24s} {'now: first request':>19s} {'now: later requests':>20s}")
    for queries in (1, 10):
        costs = [per_call(make(queries), number=500) for make in (before, first_request, later_request)]
        print(f"{queries:8d} {costs[0]:24.1f} {costs[1]:19.1f} {costs[2]:20.1f}")


def setup(server: str, key: str) -> str:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        data_directory = admin.execute("SHOW data_directory").fetchone()[0]
        admin.execute(
            sql.SQL("COPY (SELECT {}) TO {}").format(sql.Literal(key), sql.Literal(f"{data_directory}/{KEY_FILE}"))
        )
        admin.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        admin.execute("SELECT pg_reload_conf()")
    with psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
    time.sleep(1.1)  # the reload reaches new backends; tokens of the server's first second are refused
    return make_conninfo(server, dbname=DB, user=ROLE)


def backend_cpu_seconds(pid: int) -> float | None:
    """CPU time the backend has run, from Linux's schedstat (None where the server is not local)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def timed_calls(conn: psycopg.Connection, call: str, arguments: list[str]) -> float:
    """Microseconds per call of call(u) over every u of arguments, evaluated in one statement.

    The arguments are loaded into a temporary table first, so neither sending nor parsing
    them is counted. The time is the backend's CPU time where the server runs on this machine
    (other load does not count), else the statement's wall time.
    """
    conn.execute("DROP TABLE IF EXISTS arguments")
    conn.execute("CREATE TEMP TABLE arguments (u text)")
    with conn.cursor().copy("COPY arguments (u) FROM STDIN") as copy:
        for argument in arguments:
            copy.write_row((argument,))
    conn.execute("VACUUM arguments")
    query = sql.SQL("SELECT count({}) FROM arguments").format(sql.SQL(call))
    pid = conn.info.backend_pid
    cpu, wall = backend_cpu_seconds(pid), time.perf_counter()
    conn.execute(query)
    cpu_after, wall_after = backend_cpu_seconds(pid), time.perf_counter()
    elapsed = cpu_after - cpu if cpu is not None and cpu_after is not None else wall_after - wall
    return elapsed / len(arguments) * 1e6


def server_side(server: str, key: str) -> None:
    dsn = setup(server, key)
    issuer = secrets.token_urlsafe(16)
    sequence = iter(range(1, 10**9))
    signed = "rls.set_context_signed(u, false)"
    rows: dict[str, list[float]] = {
        "floor: length(u)": [],
        "unsigned setter": [],
        "single-use tokens (full verify)": [],
        "uses of one reusable token": [],
        "uses of 16 reusable tokens in turn": [],
        "uses of 256 tokens in turn (> 64 slots)": [],
    }
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for _ in range(ROUNDS):
            token = sign_reusable(key, site=42, user=7, lifetime=LIFETIME, issuer=issuer)
            sixteen = [sign_reusable(key, site=site, user=7, lifetime=LIFETIME, issuer=issuer) for site in range(16)]
            single = [
                sign_context(key, site=42, user=7, lifetime=LIFETIME, issuer=issuer, sequence=next(sequence))
                for _ in range(CALLS)
            ]
            uses = [token.use(next(sequence)) for _ in range(CALLS)]
            mixed = [sixteen[i % 16].use(next(sequence)) for i in range(CALLS)]
            many = [sign_reusable(key, site=site, user=7, lifetime=LIFETIME, issuer=issuer) for site in range(256)]
            evicting = [many[i % 256].use(next(sequence)) for i in range(CALLS)]
            rows["floor: length(u)"].append(timed_calls(conn, "length(u)", uses))
            rows["unsigned setter"].append(timed_calls(conn, "rls.set_context(u, '7', NULL, false)", ["42"] * CALLS))
            rows["single-use tokens (full verify)"].append(timed_calls(conn, signed, single))
            rows["uses of one reusable token"].append(timed_calls(conn, signed, uses))
            rows["uses of 16 reusable tokens in turn"].append(timed_calls(conn, signed, mixed))
            rows["uses of 256 tokens in turn (> 64 slots)"].append(timed_calls(conn, signed, evicting))
    floor = statistics.median(rows["floor: length(u)"])
    print(
        f"\nserver side: backend CPU µs per call as the application role, {CALLS} calls in one statement, median of {ROUNDS}"
    )
    print(f"{'call':40s} {'µs/call':>8s} {'above floor':>12s}")
    for name, samples in rows.items():
        median = statistics.median(samples)
        print(f"{name:40s} {median:8.2f} {median - floor:12.2f}")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
        admin.execute("ALTER SYSTEM RESET django_rls.signing_key_file")
        admin.execute("SELECT pg_reload_conf()")


def main() -> int:
    key = secrets.token_urlsafe(48)
    application_side(key)
    server_side(os.environ["DATABASE_URL"], key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
