"""Set up the demo on DATABASE_URL (a superuser of a disposable server), check it, and optionally serve it.

    python demo/setup.py            # set up and check
    python demo/setup.py --serve    # then serve http://127.0.0.1:8000/

The database, roles and signing key are made anew on every run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls import roles

DEMO = Path(__file__).resolve().parent
DEMO_DB = "django_rls_demo"
PASSWORD = "demo"
KEY_FILE = "django_rls_demo.key"


def create_database(server: str) -> str:
    """Roles, database and extension; returns a freshly generated signing key, installed on the server."""
    key = secrets.token_urlsafe(48)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        for role in ("demo_maintenance", "demo_app", "demo_owner"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        for role, options in (
            ("demo_owner", "NOSUPERUSER NOBYPASSRLS"),
            ("demo_app", "NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"),
            ("demo_maintenance", "NOSUPERUSER BYPASSRLS IN ROLE demo_owner"),
        ):
            conn.execute(
                sql.SQL(f"CREATE ROLE {{}} LOGIN {options} PASSWORD {{}}").format(
                    sql.Identifier(role), sql.Literal(PASSWORD)
                )
            )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER demo_owner").format(sql.Identifier(DEMO_DB)))

        # The signing key: one file in the data directory (COPY writes it as the server's OS user).
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        conn.execute(
            sql.SQL("COPY (SELECT {}) TO {}").format(sql.Literal(key), sql.Literal(f"{data_directory}/{KEY_FILE}"))
        )
        conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("ALTER ROLE demo_app SET django_rls.require_signature = on")

    with psycopg.connect(make_conninfo(server, dbname=DEMO_DB), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS django_rls")  # the Docker image has it in template1
        conn.execute("ALTER SCHEMA public OWNER TO demo_owner")
        # What the scheduled job of docs/audit.md does: the audit trail's monthly partitions,
        # so the demo's entries never wait in the default one (rls.problems reports that on 14).
        conn.execute("SELECT rls_audit.ensure_partitions(3)")
        # What manage.py rls_roles does: no CREATE in any schema, no TEMPORARY on the database
        # (PUBLIC has it by default), a search_path with pg_temp last for demo_app, and demo_app
        # statement-bound (its context comes only with the statements the application binds).
        with conn.transaction(), conn.cursor() as cursor:
            for _, statement in roles.plan(cursor, roles.specs("demo_app", "demo_owner", "demo_maintenance", None, {})):
                cursor.execute(statement)
    return key


def manage(env: dict[str, str], *args: str) -> None:
    print(f"$ manage.py {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(DEMO / "manage.py"), *args], env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="serve the demo on --port after setting it up")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 in a container)")
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL")
    if not server:
        print("demo/setup.py: set DATABASE_URL, or run `make demo`, which starts a throwaway server", file=sys.stderr)
        return 2
    key = create_database(server)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo_site.settings",
        "DJANGO_RLS_SIGNING_KEY": key,
        "PYTHONPATH": str(DEMO.parent),
    }
    manage(env, "migrate", "--database", "owner", "--verbosity", "0")
    manage(env, "rls_apply")
    manage(env, "demo_seed")
    manage(env, "check", "--database", "default", "--fail-level", "WARNING")
    manage(env, "demo_check")
    if args.serve:
        return serve(env, args.host, args.port)
    return 0


def serve(env: dict[str, str], host: str, port: int) -> int:
    """Run the development server until it stops; Ctrl-C, SIGTERM and SIGHUP are the normal way to end."""
    print(f"\nServing the demo on http://{host}:{port}/ (Ctrl-C stops it).", flush=True)
    server = subprocess.Popen(
        [sys.executable, str(DEMO / "manage.py"), "runserver", f"{host}:{port}", "--noreload"], env=env
    )
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, frame: object) -> None:
        if server.poll() is None:
            server.terminate()  # the server dies quietly of SIGTERM; a KeyboardInterrupt would print a traceback

    for signum in stop_signals:
        signal.signal(signum, stop)
    status = server.wait()
    # A signal sent to the whole process group can also arrive late, forwarded by
    # cluster.py; during interpreter shutdown it would kill this process.
    for signum in stop_signals:
        signal.signal(signum, signal.SIG_IGN)
    if status in (0, *(-signum for signum in stop_signals)):
        print("Demo stopped.", flush=True)
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
