"""rls_apply on a generated project of 500 protected models: the first run and a no-op rerun.

    python tests/harness/cluster.py run -- .venv/bin/python bench/rls_apply_scale.py

Targets (docs/benchmarks.md): first run under 5 s, no-op rerun under 1 s.

Besides wall seconds, which move with the machine's load, it prints what moves
less: the statements rls_apply sends, the transactions it commits, and the
server's time in django_rls's functions and event trigger (track_functions),
per table of the first run.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
from psycopg import sql

MODELS = int(os.environ.get("BENCH_MODELS", "500"))
DB = "django_rls_apply_bench"
PASSWORD = "bench"


def write_app(root: Path) -> None:
    """A Django app with MODELS site-protected models, written as source like a real project."""
    app = root / "benchapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    lines = [
        "from django.db import models",
        "import django_rls",
        "from django_rls.policies import BySite",
        "",
    ]
    for i in range(MODELS):
        lines += [
            "@django_rls.protect(BySite('site_id'))",
            f"class Thing{i}(models.Model):",
            "    site_id = models.BigIntegerField()",
            "    name = models.CharField(max_length=50)",
            "    class Meta:",
            "        app_label = 'benchapp'",
            "",
        ]
    (app / "models.py").write_text("\n".join(lines))


def main() -> int:
    server = os.environ["DATABASE_URL"]
    url = urlparse(server)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        for role in ("bench_apply_app", "bench_apply_owner"):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD))
            )
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER bench_apply_owner").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(sql.Identifier(DB)))
    with psycopg.connect(psycopg.conninfo.make_conninfo(server, dbname=DB), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION django_rls")
        admin.execute("ALTER SCHEMA public OWNER TO bench_apply_owner")

    root = Path(tempfile.mkdtemp(prefix="django_rls-bench-"))
    write_app(root)
    sys.path.insert(0, str(root))

    def database(user: str) -> dict:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DB,
            "USER": user,
            "PASSWORD": PASSWORD,
            "HOST": url.hostname or "127.0.0.1",
            "PORT": str(url.port or 5432),
        }

    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django_rls", "benchapp"],
        DATABASES={"default": database("bench_apply_app"), "owner": database("bench_apply_owner")},
        DJANGO_RLS={"OWNER_DATABASE": "owner"},
        USE_TZ=True,
    )
    import django

    django.setup()
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connections

    with connections["owner"].schema_editor() as editor:
        for model in apps.get_app_config("benchapp").get_models():
            editor.create_model(model)

    connections.close_all()
    bench_url = psycopg.conninfo.make_conninfo(server, dbname=DB)
    with psycopg.connect(bench_url, autocommit=True) as admin:
        admin.execute("SELECT pg_stat_reset()")
    statements = [0]

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        statements[0] += 1
        return execute(sql, params, many, context)

    def server_cpu() -> float:
        """CPU seconds of the owner alias's server process so far (the server runs on this machine)."""
        connections["owner"].ensure_connection()
        pid = connections["owner"].connection.info.backend_pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    timings = []
    for _ in range(2):
        server_before = server_cpu()
        client_before = time.process_time()
        started = time.perf_counter()
        with connections["owner"].execute_wrapper(count):
            call_command("rls_apply", stdout=io.StringIO())
        timings.append(time.perf_counter() - started)
        if not timings[1:]:
            first_client_cpu = time.process_time() - client_before
            first_server_cpu = server_cpu() - server_before
            first_statements = statements[0]
            connections.close_all()  # the session's function statistics are reported when it ends
            with psycopg.connect(bench_url, autocommit=True) as admin:
                functions = admin.execute(
                    """
                    SELECT schemaname || '.' || funcname, sum(calls)::int8, sum(total_time)::float8, sum(self_time)::float8
                      FROM pg_stat_user_functions
                     WHERE schemaname IN ('rls', 'rls_audit') GROUP BY 1 ORDER BY 3 DESC LIMIT 8
                    """
                ).fetchall()
                commits = admin.execute(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                ).fetchone()[0]
    first, rerun = timings
    print(f"rls_apply on {MODELS} protected models")
    print(f"{'what':20s} {'seconds':>8s} {'target':>8s}  met")
    print(f"{'first run':20s} {first:8.2f} {'< 5':>8s}  {'yes' if first < 5 else 'NO'}")
    print(f"{'no-op rerun':20s} {rerun:8.2f} {'< 1':>8s}  {'yes' if rerun < 1 else 'NO'}")
    print()
    print(
        f"first run CPU seconds (less moved by other load than wall seconds): client {first_client_cpu:.2f}, "
        f"server process {first_server_cpu:.2f}"
    )
    print(f"first run: {first_statements} statements sent by rls_apply, {commits} transactions committed in the")
    print("database (rls_apply's and the statistics reads'), server time per table in django_rls's functions:")
    print(f"{'function':32s} {'calls':>7s} {'total ms/table':>15s} {'self ms/table':>14s}")
    for name, calls, total, own in functions:
        print(f"{name:32s} {calls:7d} {total / MODELS:15.3f} {own / MODELS:14.3f}")

    connections.close_all()
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        for role in ("bench_apply_app", "bench_apply_owner"):
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
