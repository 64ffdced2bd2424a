"""Django request path: what the middleware costs per request, side by side in one run.

    python tests/harness/cluster.py run -- .venv/bin/python bench/request_path.py

Four copies of one tiny site (bench/request_site/) run under gunicorn on loopback at the
same time, as the application role, each with persistent database connections:

- none:        no middleware and an unprotected table (the floor),
- ours:        django_rls's RlsMiddleware and a table protected by rls.protect_by_site();
               the query carries its context (server-side binding),
- ours-client: the same with Django's default client-side binding: the query's own values
               inlined, the context carried as its one bound parameter,
- ours-signed: ours in signed mode (DJANGO_RLS["SIGNING_KEY"]): each query carries a use of
               its context's reusable token,
- classic:     the tutorials' middleware (session-level set before, RESET after every
               request) and the policy site_id = current_setting('app.site')::int.

wrk drives each view of each variant in turn for ROUNDS rounds in rotated order; the table
gives the median requests/s and its ratio to the floor. Statements and round trips per
request come from libpq's protocol trace (bench/request_site/count_wire.py).
Targets: ours loses at most 3% on the one-query view, and sends nothing on the DB-less view.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.harness.cluster import free_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ROWS = 100_000
SITES = 100
DB = "django_rls_request_bench"
ROLE = "bench_web"
PASSWORD = "bench"
VARIANTS = ("none", "ours", "ours-client", "ours-signed", "classic")
TABLES = ("none", "ours", "classic")
VIEWS = ("one-query", "no-query")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
WORKERS = 2  # gunicorn sync workers per variant; the machine has 2 cores
CONNECTIONS = 4  # wrk's concurrent connections
MAX_LOSS = 0.03
SIGNING_KEY = secrets.token_urlsafe(48)
KEY_FILE = "django_rls_request_bench.key"


def setup(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        key_path = f"{admin.execute('SHOW data_directory').fetchone()[0]}/{KEY_FILE}"
        admin.execute(sql.SQL("COPY (SELECT {}) TO {}").format(sql.Literal(SIGNING_KEY), sql.Literal(key_path)))
        admin.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        admin.execute("SELECT pg_reload_conf()")
    with psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        for variant in TABLES:
            table = sql.Identifier(f"items_{variant}")
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, site_id int NOT NULL, name text, price int)").format(
                    table
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, g % {}, 'item ' || g, g % 1000 FROM generate_series(1, {}) g").format(
                    table, sql.Literal(SITES), sql.Literal(ROWS)
                )
            )
            conn.execute(sql.SQL("CREATE INDEX ON {} (site_id)").format(table))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(ROLE)))
            if variant in ("ours", "ours-signed"):
                conn.execute("SELECT rls.protect_by_site(%s, 'site_id', to_role => %s)", [f"items_{variant}", ROLE])
            elif variant == "classic":
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
                conn.execute(
                    sql.SQL("CREATE POLICY site ON {} TO {} USING (site_id = current_setting('app.site')::int)").format(
                        table, sql.Identifier(ROLE)
                    )
                )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    url = urlparse(server)
    netloc = f"{ROLE}:{PASSWORD}@{url.hostname or '127.0.0.1'}:{url.port or 5432}"
    return urlunparse(("postgresql", netloc, f"/{DB}", "", "", ""))


def variant_env(variant: str, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_VARIANT": variant,
        "BENCH_DATABASE_URL": database_url,
        "BENCH_SIGNING_KEY": SIGNING_KEY,
        "DJANGO_SETTINGS_MODULE": "request_site.settings",
        "PYTHONPATH": str(HERE),
    }


def start_server(variant: str, database_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(VENV_BIN / "gunicorn"),
            "--workers",
            str(WORKERS),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "request_site.wsgi",
        ],
        env=variant_env(variant, database_url),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            for view in VIEWS:  # each answer also opens a worker's persistent connection
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/{view}/", timeout=5) as response:
                    json.load(response)
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"gunicorn for {variant} did not answer on port {port}") from None
            time.sleep(0.2)


def wrk(port: str, view: str, seconds: int) -> float:
    """Requests per second, after checking that every answer was a 200."""
    output = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", f"http://127.0.0.1:{port}/{view}/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk saw failed requests on /{view}/:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def wire_counts(variant: str, database_url: str) -> dict[str, dict[str, float]]:
    output = subprocess.run(
        [sys.executable, str(HERE / "request_site" / "count_wire.py")],
        env=variant_env(variant, database_url),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)


def main() -> int:
    if shutil.which("wrk") is None or not (VENV_BIN / "gunicorn").exists():
        raise SystemExit("request_path.py needs wrk (apt-get install wrk) and gunicorn in the venv: run `make bench`")
    server = os.environ["DATABASE_URL"]
    started = time.monotonic()
    database_url = setup(server)
    print(
        f"request path: gunicorn ({WORKERS} sync workers per variant) and wrk ({CONNECTIONS} connections) on loopback; "
        f"median of {ROUNDS} rounds of {SECONDS} s in rotated order",
        flush=True,
    )
    counts = {variant: wire_counts(variant, database_url) for variant in VARIANTS}
    servers = {variant: start_server(variant, database_url) for variant in VARIANTS}
    try:
        for variant in VARIANTS:  # warm-up round, not counted
            for view in VIEWS:
                wrk(servers[variant][1], view, 1)
        samples: dict[tuple[str, str], list[float]] = {(v, view): [] for v in VARIANTS for view in VIEWS}
        for round_ in range(ROUNDS):
            order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
            for view in VIEWS:
                for variant in order:
                    samples[variant, view].append(wrk(servers[variant][1], view, SECONDS))
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(timeout=30)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(
        f"\n{'view':10s} {'variant':12s} {'req/s':>8s} {'x floor':>8s} {'statements':>11s} {'round trips':>12s}  target"
    )
    met_all = True
    for view in VIEWS:
        for variant in VARIANTS:
            ratio = medians[variant, view] / medians["none", view]
            wire = counts[variant][f"/{view}/"]
            target = ""
            if variant in ("ours", "ours-signed"):
                met = ratio >= 1 - MAX_LOSS if view == "one-query" else wire["statements"] == 0
                met_all &= met
                goal = f">= {1 - MAX_LOSS:.2f}x" if view == "one-query" else "0 statements"
                target = f"{goal}: {'yes' if met else 'NO'}"
            print(
                f"{view:10s} {variant:12s} {medians[variant, view]:8.0f} {ratio:8.3f} "
                f"{wire['statements']:11.1f} {wire['round_trips']:12.1f}  {target}"
            )
    spread = {key: (max(v) - min(v)) / statistics.median(v) for key, v in samples.items()}
    print(f"\nspread of the rounds (max - min over median): {max(spread.values()):.1%} at most")

    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
        admin.execute("ALTER SYSTEM RESET django_rls.signing_key_file")
        admin.execute("SELECT pg_reload_conf()")
    print(f"total {time.monotonic() - started:.0f} s; all targets met: {'yes' if met_all else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
