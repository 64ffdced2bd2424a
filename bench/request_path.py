"""Django request path: what each RLS middleware costs per request, side by side in one run.

    python tests/harness/cluster.py run -- .venv/bin/python bench/request_path.py

Copies of one tiny site (bench/request_site/, its settings.py describes each variant) run under
gunicorn on loopback at the same time, as one non-superuser application role, with persistent
database connections:

- none:        no RLS middleware and an unprotected table (the floor),
- ours:        django_rls's RlsMiddleware, a table protected by rls.protect_by_site(), the role
               statement-bound (as manage.py rls_roles leaves it), no signing key,
- ours-signed: the same with a SIGNING_KEY the server's django_rls.signing_key_file holds,
- classic:     the tutorials' middleware (session-level set before, RESET after every
               request) and the policy site_id = current_setting('app.site')::int,
- rls-tenants: django-rls-tenants, set up as its README says (RLSTenantMiddleware, an
               RLSProtectedModel whose table and policy come from migrate),
- django-rls:  django-rls, set up as its docs say (its ENGINE, RLSContextMiddleware, an RLSModel
               with a tenant ModelPolicy installed by migrate),
- sqlonly:     ours in the SQL-only mode (django_rls/sqlonly.py): a second throwaway cluster
               without the C library, the mode installed by a non-superuser owner with
               CREATEROLE (what rls_apply --install does), no signing key: the context goes
               through the setter, rls.set_context(), in the statement's transaction,
- sqlonly-signed: the same with a SIGNING_KEY the owner added, the role required to sign
               (rls.require_signature, as rls_apply --install does with a key),
- none-server, ours-server (only when named in BENCH_VARIANTS): none and ours with
               server_side_binding; their ratio is to none-server.

Every variant gets the same signed-in user and tenant without a query (request_site/auth.py),
so the floor differs from each variant only by its RLS middleware and policy. The peers come
from PyPI at the versions bench/deps.sh pins.

Views: one-query (Item.objects.get(pk=...) in autocommit), ten-queries (ten such gets in the
request's transaction, ATOMIC_REQUESTS) and no-query. Variants are interleaved: in each of
BENCH_ROUNDS short rounds, wrk drives one view of every variant for BENCH_SECONDS each, back to
back in an order rotated every round, so a variant and the floor are measured seconds apart,
under the same load. Each round gives a ratio to the floor; the table shows the median of
those per-round ratios and their spread (the middle half of them, quartile to quartile),
next to the median requests/s. Statements and round trips per request come from libpq's
protocol trace (bench/request_site/count_wire.py).
With BENCH_INPROCESS=1 the table adds each view's Python CPU time per request, measured
in-process (bench/request_site/time_requests.py), which the machine's load disturbs less; with
BENCH_INSTRUCTIONS=1 the instructions per request in the Django process, counted by callgrind
(bench/request_site/count_instructions.py), which the load does not change at all.
Targets for ours and ours-signed: at most 3% lost on one-query and ten-queries, nothing sent on
no-query. BENCH_VARIANTS (comma-separated) picks variants; none is always run.
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
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.harness.cluster import free_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
# django-rls is imported as django_rls, as ours is: bench/deps.sh installs it here, and only its
# variant's processes see it, first on their path.
DJANGO_RLS_PEER_DIR = VENV_BIN.parent / "peers" / "django-rls"
ROWS = 100_000
SITES = 100
DB = "django_rls_request_bench"
ROLE = "bench_web"
PASSWORD = "bench"
KEY_FILE = "django_rls_request_bench.key"
ALL_VARIANTS = (
    "none",
    "ours",
    "ours-signed",
    "sqlonly",
    "sqlonly-signed",
    "classic",
    "rls-tenants",
    "django-rls",
    "none-server",
    "ours-server",
)
DEFAULT_VARIANTS = ("none", "ours", "ours-signed", "sqlonly", "sqlonly-signed", "classic", "rls-tenants", "django-rls")
PEERS = ("rls-tenants", "django-rls")
SQLONLY = ("sqlonly", "sqlonly-signed")  # served by a second cluster, without the C library
SQLONLY_OWNER = "bench_owner"
TABLES = ("none", "ours", "classic")  # the shared database's tables; the peers' come from migrate
VIEWS = ("one-query", "ten-queries", "no-query")
TARGETED = ("ours", "ours-signed", "ours-server")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "12"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "1"))
WORKERS = 2  # gunicorn sync workers per variant; the machine has 2 cores
CONNECTIONS = 4  # wrk's concurrent connections
MAX_LOSS = 0.03


def chosen_variants() -> tuple[str, ...]:
    named = os.environ.get("BENCH_VARIANTS")
    if not named:
        return DEFAULT_VARIANTS
    variants = [v.strip() for v in named.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown:
        raise SystemExit(f"BENCH_VARIANTS: unknown {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    if "ours-server" in variants and "none-server" not in variants:
        variants.append("none-server")
    return tuple(v for v in ALL_VARIANTS if v == "none" or v in variants)


def floor_of(variant: str) -> str:
    return "none-server" if variant.endswith("-server") else "none"


def database_name(variant: str) -> str:
    return f"{DB}_{variant.replace('-', '_')}" if variant in PEERS + SQLONLY else DB


def setup(server: str, variants: tuple[str, ...], signing_key: str) -> None:
    """The shared database and its tables, each peer's database (its tables from migrate), the role, the key."""
    with psycopg.connect(server, autocommit=True) as admin:
        for name in [DB] + [database_name(peer) for peer in PEERS]:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        # What manage.py rls_roles does for the application role: contexts only from the statements it binds.
        admin.execute(sql.SQL("ALTER ROLE {} SET django_rls.statement_bound = on").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        if "ours-signed" in variants:
            data_directory = admin.execute("SHOW data_directory").fetchone()[0]
            admin.execute(
                sql.SQL("COPY (SELECT {}) TO {}").format(
                    sql.Literal(signing_key), sql.Literal(f"{data_directory}/{KEY_FILE}")
                )
            )
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
        if "ours-signed" in variants:
            deadline = time.monotonic() + 10
            while not conn.execute("SELECT rls.extension_info()").fetchone()[0]["signing_key_configured"]:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not load the signing key file after pg_reload_conf()")
                time.sleep(0.1)
    for peer in PEERS:
        if peer in variants:
            setup_peer(server, peer)


def setup_peer(server: str, peer: str) -> None:
    """The peer's tables and policy as its docs make them (migrate, as a superuser here), then the same rows."""
    name = database_name(peer)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner_url = urlunparse(urlparse(server)._replace(path=f"/{name}"))
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--run-syncdb", "--skip-checks", "--verbosity", "0"],
        env=variant_env(peer, owner_url),
        cwd=HERE,
        check=True,
    )
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO request_site_tenant (id, name) SELECT s, 'tenant ' || s FROM generate_series(0, %s - 1) s",
            [SITES],
        )
        table = sql.Identifier(f"items_{peer.replace('-', '_')}")
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, tenant_id, name, price) SELECT g, g % {}, 'item ' || g, g % 1000 FROM generate_series(1, {}) g"
            ).format(table, sql.Literal(SITES), sql.Literal(ROWS))
        )
        policies = conn.execute(
            "SELECT count(*) FROM pg_policies WHERE tablename = %s", [table.as_string(conn).strip('"')]
        ).fetchone()[0]
        if policies == 0:
            raise SystemExit(f"{peer}: migrate left no policy on its table; check its setup in bench/request_site/")
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(ROLE)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def setup_sqlonly(server: str, variants: tuple[str, ...], signing_key: str) -> None:
    """On the cluster without the library: per variant a database its owner installs the SQL-only mode in.

    The owner is no superuser (CREATEROLE, owns the database), as on hosted PostgreSQL, and
    does what rls_apply --install does (django_rls.sqlonly.install), then protects the table.
    """
    from django_rls import sqlonly

    with psycopg.connect(server, autocommit=True) as admin:
        for role, options in ((SQLONLY_OWNER, "CREATEROLE"), (ROLE, "")):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS " + options + " PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(PASSWORD)
                )
            )
        for variant in SQLONLY:
            if variant in variants:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database_name(variant)), sql.Identifier(SQLONLY_OWNER)
                    )
                )
    for variant in SQLONLY:
        if variant not in variants:
            continue
        owner_url = make_conninfo(server, dbname=database_name(variant), user=SQLONLY_OWNER, password=PASSWORD)
        with psycopg.connect(owner_url) as conn:
            with conn.cursor() as cursor:
                signed = variant == "sqlonly-signed"
                sqlonly.install(cursor, [signing_key] if signed else [], ROLE if signed else None)
                cursor.execute(
                    "CREATE TABLE items_sqlonly (id int PRIMARY KEY, site_id int NOT NULL, name text, price int)"
                )
                cursor.execute(
                    "INSERT INTO items_sqlonly SELECT g, g %% %s, 'item ' || g, g %% 1000 FROM generate_series(1, %s) g",
                    [SITES, ROWS],
                )
                cursor.execute("CREATE INDEX ON items_sqlonly (site_id)")
                cursor.execute(sql.SQL("GRANT SELECT ON items_sqlonly TO {}").format(sql.Identifier(ROLE)))
                cursor.execute("SELECT rls.protect_by_site('items_sqlonly', 'site_id', to_role => %s)", [ROLE])
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE items_sqlonly")


def sqlonly_cluster() -> Any:
    """A started throwaway cluster that does not load the django_rls library (tests/harness/cluster.py)."""
    from tests.harness.cluster import Cluster

    cluster = Cluster(library=False)
    cluster.init()
    cluster.start()
    return cluster


def app_url(server: str, variant: str) -> str:
    """The application role's URL for the database of this variant."""
    url = urlparse(server)
    netloc = f"{ROLE}:{PASSWORD}@{url.hostname or '127.0.0.1'}:{url.port or 5432}"
    return urlunparse(("postgresql", netloc, f"/{database_name(variant)}", "", "", ""))


def variant_env(variant: str, database_url: str, signing_key: str = "") -> dict[str, str]:
    path = [str(HERE)]
    if variant == "django-rls":
        if not (DJANGO_RLS_PEER_DIR / "django_rls").is_dir():
            raise SystemExit(f"django-rls is not installed in {DJANGO_RLS_PEER_DIR}: run bench/deps.sh")
        path.insert(0, str(DJANGO_RLS_PEER_DIR))
    return {
        **os.environ,
        "BENCH_VARIANT": variant,
        "BENCH_DATABASE_URL": database_url,
        "BENCH_SIGNING_KEY": signing_key,
        "DJANGO_SETTINGS_MODULE": "request_site.settings",
        "PYTHONPATH": os.pathsep.join(path),
    }


def start_server(variant: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
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
        env=env,
        cwd=HERE,  # gunicorn puts its directory first on the path: not the repository, which holds our django_rls
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


def wrk(port: int, view: str, seconds: int) -> float:
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


def site_script(name: str, env: dict[str, str]) -> Any:
    """What a measuring script of request_site/ prints (JSON), run in this variant's environment."""
    output = subprocess.run(
        [sys.executable, str(HERE / "request_site" / name)],
        env=env,
        cwd=HERE,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)


def teardown(server: str, signed: bool) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        for name in [DB] + [database_name(peer) for peer in PEERS]:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
        if signed:
            admin.execute("ALTER SYSTEM RESET django_rls.signing_key_file")
            admin.execute("SELECT pg_reload_conf()")


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the middle half of the values lies between them)."""
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def main() -> int:
    if shutil.which("wrk") is None or not (VENV_BIN / "gunicorn").exists():
        raise SystemExit("request_path.py needs wrk (apt-get install wrk) and gunicorn in the venv: run `make bench`")
    if os.environ.get("BENCH_INSTRUCTIONS") == "1" and shutil.which("valgrind") is None:
        raise SystemExit("BENCH_INSTRUCTIONS=1 needs valgrind (apt-get install valgrind)")
    server = os.environ["DATABASE_URL"]
    variants = chosen_variants()
    started = time.monotonic()
    signing_key = secrets.token_urlsafe(48)
    setup(server, variants, signing_key)
    cluster = sqlonly_cluster() if any(v in SQLONLY for v in variants) else None
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        sqlonly_server = cluster.env["DATABASE_URL"] if cluster is not None else ""
        if cluster is not None:
            setup_sqlonly(sqlonly_server, variants, signing_key)
        envs = {
            variant: variant_env(
                variant, app_url(sqlonly_server if variant in SQLONLY else server, variant), signing_key
            )
            for variant in variants
        }
        print(
            f"request path: gunicorn ({WORKERS} sync workers per variant) and wrk ({CONNECTIONS} connections) on "
            f"loopback; {ROUNDS} rounds, each view of every variant for {SECONDS} s per round, interleaved",
            flush=True,
        )
        counts = {variant: site_script("count_wire.py", envs[variant]) for variant in variants}
        inprocess = (
            {variant: site_script("time_requests.py", envs[variant]) for variant in variants}
            if os.environ.get("BENCH_INPROCESS") == "1"
            else None
        )
        instructions = (
            {variant: site_script("count_instructions.py", envs[variant]) for variant in variants}
            if os.environ.get("BENCH_INSTRUCTIONS") == "1"
            else None
        )
        for variant in variants:
            servers[variant] = start_server(variant, envs[variant])
        for variant in variants:  # warm-up round, not counted
            for view in VIEWS:
                wrk(servers[variant][1], view, 1)
        samples: dict[tuple[str, str], list[float]] = {(v, view): [] for v in variants for view in VIEWS}
        for round_ in range(ROUNDS):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for view in VIEWS:
                for variant in order:
                    samples[variant, view].append(wrk(servers[variant][1], view, SECONDS))
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(timeout=30)
        if cluster is not None:
            cluster.stop()
            cluster.remove()

    # A variant's ratio is taken round by round, to the floor measured seconds before or after it.
    ratios = {
        (variant, view): [
            value / floor for value, floor in zip(samples[variant, view], samples[floor_of(variant), view], strict=True)
        ]
        for variant in variants
        for view in VIEWS
    }
    extra = (f" {'py us':>7s} {'x floor':>8s}" if inprocess else "") + (
        f" {'instr/req':>10s} {'x floor':>8s}" if instructions else ""
    )
    print(
        f"\n{'view':12s} {'variant':15s} {'req/s':>8s} {'x floor':>8s} {'middle half':>13s} {'statements':>11s} "
        f"{'round trips':>12s}{extra}  target"
    )
    met_all = True
    for view in VIEWS:
        for variant in variants:
            ratio = statistics.median(ratios[variant, view])
            low, high = quartiles(ratios[variant, view])
            wire = counts[variant][f"/{view}/"]
            target = ""
            if variant in TARGETED:
                met = ratio >= 1 - MAX_LOSS if view != "no-query" else wire["statements"] == 0
                met_all &= met
                goal = f">= {1 - MAX_LOSS:.2f}x" if view != "no-query" else "0 statements"
                target = f"{goal}: {'yes' if met else 'NO'}"
            cells = ""
            if inprocess:
                microseconds = inprocess[variant][f"/{view}/"]
                cells += f" {microseconds:7.0f} {microseconds / inprocess[floor_of(variant)][f'/{view}/']:8.3f}"
            if instructions:
                count = instructions[variant][f"/{view}/"]
                cells += f" {count:10.0f} {count / instructions[floor_of(variant)][f'/{view}/']:8.3f}"
            print(
                f"{view:12s} {variant:15s} {statistics.median(samples[variant, view]):8.0f} {ratio:8.3f} "
                f"{low:6.3f}-{high:6.3f} {wire['statements']:11.1f} {wire['round_trips']:12.1f}{cells}  {target}"
            )
    spread = {key: (max(v) - min(v)) / statistics.median(v) for key, v in samples.items()}
    print(
        f"\nspread of the requests/s over the rounds (max - min over median): {max(spread.values()):.1%} at most; "
        "the per-round ratios cancel most of what the machine's load does to both"
    )

    teardown(server, "ours-signed" in variants)
    print(f"total {time.monotonic() - started:.0f} s; all targets met: {'yes' if met_all else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
