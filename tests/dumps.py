"""pg_dump one test database with the extension and pg_restore it into another, as an operator would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from urllib.parse import urlparse

import psycopg
from psycopg import sql

from tests.conftest import Database
from tests.harness.cluster import BINDIR


def dump_and_restore(
    database: Database,
    prepare: Callable[[psycopg.Connection], None],
    check: Callable[[psycopg.Connection], None],
    names: tuple[str, str] = ("django_rls_dump_src", "django_rls_dump_dst"),
) -> None:
    """Run prepare on a new database with the extension, pg_dump it, pg_restore it into another, run check there."""
    server = urlparse(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "PGHOST": server.hostname or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGUSER": server.username or "postgres",
        "PGPASSWORD": server.password or "",
    }
    with psycopg.connect(database.admin, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(database.admin, dbname=names[0]), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")
            prepare(conn)
        dump = subprocess.run(
            [str(BINDIR / "pg_dump"), "-Fc", "-d", names[0]], env=env, capture_output=True, check=True
        ).stdout
        subprocess.run([str(BINDIR / "pg_restore"), "--exit-on-error", "-d", names[1]], input=dump, env=env, check=True)
        with psycopg.connect(psycopg.conninfo.make_conninfo(database.admin, dbname=names[1]), autocommit=True) as conn:
            check(conn)
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
