"""Fixtures: a database with django_rls, an owner role and a non-superuser app role.

The harness (``make test``) exports DATABASE_URL for a superuser of a throwaway
cluster with django_rls preloaded. Every assertion about what a tenant can see
runs on ``app_conn``: a login role that is neither a superuser, nor BYPASSRLS,
nor the owner of any table.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls.roles import plan as hardening_plan
from django_rls.roles import specs as role_specs
from tests.modes import SQL_MODE
from tests.roles import APP_ROLE, BYPASS_ROLE, OWNER_ROLE, PASSWORD, TEST_DB

# The second test project runs its own tests in a subprocess (tests/test_tenant_project.py).
collect_ignore = ["tenantproject"]

KEY_FILE = "django_rls_test.key"

T = TypeVar("T")


@dataclass(frozen=True)
class Database:
    """Connection strings for one test database, per role."""

    admin: str
    owner: str
    app: str
    name: str

    def connect(self, role: str = "app", **kwargs: object) -> psycopg.Connection:
        """A connection as "admin", "owner", "app" (statement-bound, as rls_roles leaves it) or
        "app_unbound": the app role in a session that may call the setter functions, as a
        superuser may allow for the role (the tests of what those functions refuse, and of
        everything else done with them, use it)."""
        if role != "app_unbound":
            return psycopg.connect(getattr(self, role), autocommit=True, **kwargs)
        return unbound_session(self, lambda: psycopg.connect(self.app, autocommit=True, **kwargs))


_unbound_logins = threading.Lock()


def unbound_session(db: Database, connect: Callable[[], T]) -> T:
    """Open one app-role session without django_rls.statement_bound (read at login only).

    One at a time: a test that connects from two threads must not log one of them in
    after the other has put the setting back.
    """
    setting = sql.SQL("ALTER ROLE {} IN DATABASE {} {}")
    role, name = sql.Identifier(APP_ROLE), sql.Identifier(db.name)
    with _unbound_logins, psycopg.connect(db.admin, autocommit=True) as admin:
        admin.execute(setting.format(role, name, sql.SQL("SET django_rls.statement_bound = off")))
        try:
            return connect()
        finally:
            admin.execute(setting.format(role, name, sql.SQL("RESET django_rls.statement_bound")))


def _server_dsn() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.exit(
            "DATABASE_URL is not set: run `make test`, which starts a throwaway cluster, "
            "or point DATABASE_URL at a superuser of a disposable server with django_rls preloaded.",
            returncode=2,
        )
    return url


def _create_role(conn: psycopg.Connection, role: str, options: str) -> None:
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN " + options + " PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD))
    )


@pytest.fixture(scope="session")
def database() -> Iterator[Database]:
    """The test database with the extension, and the owner, app and bypass roles."""
    server = _server_dsn()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEST_DB)))
        _create_role(conn, OWNER_ROLE, "NOSUPERUSER NOBYPASSRLS" + (" CREATEROLE" if SQL_MODE else ""))
        _create_role(conn, APP_ROLE, "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB")
        _create_role(conn, BYPASS_ROLE, "NOSUPERUSER BYPASSRLS")
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(BYPASS_ROLE)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(TEST_DB), sql.Identifier(OWNER_ROLE)))

    admin = make_conninfo(server, dbname=TEST_DB)
    owner = make_conninfo(admin, user=OWNER_ROLE, password=PASSWORD)
    if SQL_MODE:
        _install_sql_mode(admin, owner)
    else:
        _install_extension(admin)
    db = Database(
        admin=admin,
        owner=owner,
        app=make_conninfo(admin, user=APP_ROLE, password=PASSWORD),
        name=TEST_DB,
    )
    yield db

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEST_DB)))
        for role in (BYPASS_ROLE, APP_ROLE, OWNER_ROLE):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _install_sql_mode(admin: str, owner: str) -> None:
    """The SQL-only mode, installed and hardened by the owner role alone, as docs/getting-started.md does it."""
    from django_rls import sqlonly

    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if conn.info.server_version >= 160000:
            # As on hosted PostgreSQL 16+, where the administrator role creates the application's roles and so
            # holds the ADMIN option on them that CREATEROLE alone no longer gives (the maintenance role is a
            # member of the owner already, so the owner cannot also hold it).
            conn.execute(
                sql.SQL("GRANT {} TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE").format(
                    sql.Identifier(APP_ROLE), sql.Identifier(OWNER_ROLE)
                )
            )
    with psycopg.connect(owner) as conn:
        with conn.cursor() as cursor:
            sqlonly.install(cursor, [])
            cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))
            # The owner is the administrator here (CREATEROLE), which rls_roles leaves it without the library.
            for _, statement in hardening_plan(cursor, role_specs(APP_ROLE, OWNER_ROLE, BYPASS_ROLE, None, {})):
                cursor.execute(statement)
        conn.commit()


def _install_extension(admin: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        # The audit log's monthly partitions, as the scheduled job docs/audit.md asks for keeps
        # them (rows left in the default partition are a problem on PostgreSQL 14).
        conn.execute("SELECT rls_audit.ensure_partitions(1)")
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))
        # The hardening manage.py rls_roles applies (no CREATE in any schema, no TEMPORARY on the
        # database, a search_path with pg_temp last), from the very same plan.
        with conn.transaction(), conn.cursor() as cursor:
            for _, statement in hardening_plan(cursor, role_specs(APP_ROLE, OWNER_ROLE, BYPASS_ROLE, None, {})):
                cursor.execute(statement)


@pytest.fixture(scope="session")
def django_db_setup(database: Database, django_db_blocker: Any) -> Iterator[None]:
    """Replaces pytest-django's: migrate as the owner, rls_apply, then seed data as the bypass role."""
    from django.core.management import call_command
    from django.db import connections

    from tests.seed import seed

    with django_db_blocker.unblock():
        call_command("migrate", database="owner", verbosity=0)
        call_command("rls_apply", database="owner", verbosity=0, stdout=io.StringIO(), stderr=io.StringIO())
        seed()
        for connection in connections.all():
            connection.close()
    yield
    with django_db_blocker.unblock():
        for connection in connections.all():
            connection.close()


@pytest.fixture
def live_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Database access without pytest-django's wrapping transaction: autocommit, as in production."""
    from django.db import connections

    with django_db_blocker.unblock():
        yield
        for connection in connections.all():
            connection.close()


@pytest.fixture
def admin_conn(database: Database) -> Iterator[psycopg.Connection]:
    with database.connect("admin") as conn:
        yield conn


@pytest.fixture
def owner_conn(database: Database) -> Iterator[psycopg.Connection]:
    with database.connect("owner") as conn:
        yield conn


@pytest.fixture
def app_conn(database: Database) -> Iterator[psycopg.Connection]:
    """The app role, in a session that may call rls.set_context() (see Database.connect)."""
    with database.connect("app_unbound") as conn:
        yield conn


@pytest.fixture
def bound_app_conn(database: Database) -> Iterator[psycopg.Connection]:
    """The app role as rls_roles leaves it: statement-bound."""
    with database.connect("app") as conn:
        yield conn


@pytest.fixture
def unbound_app_role(admin_conn: psycopg.Connection) -> Iterator[None]:
    """The app role without django_rls.statement_bound for the connections Django opens in this test."""
    from django.db import connections

    role = sql.Identifier(APP_ROLE)
    admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.statement_bound").format(role))
    connections.close_all()
    yield
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.statement_bound = on").format(role))
    connections.close_all()


def wait_for(attempt: Callable[[], T], timeout: float = 10) -> T:
    """Retry until attempt() stops raising: a configuration reload reaches backends asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _key_file_configured(database: Database) -> bool:
    with database.connect("app") as conn:
        return conn.execute("SELECT rls.extension_info()").fetchone()[0]["signing_key_configured"]


def _raise(error: Exception) -> NoReturn:
    raise error


def write_key_file(conn: psycopg.Connection, *keys: str) -> str:
    """Write keys into the server's key file (COPY runs as the server's OS user); return its absolute path."""
    data_directory = conn.execute("SHOW data_directory").fetchone()[0]
    path = f"{data_directory}/{KEY_FILE}"
    lines = " UNION ALL ".join(["SELECT '# django_rls test keys'"] + ["SELECT {}"] * len(keys))
    conn.execute(sql.SQL(f"COPY ({lines}) TO {{}}").format(*map(sql.Literal, keys), sql.Literal(path)))
    return path


def reset_max_token_lifetime(admin_conn: psycopg.Connection) -> None:
    """Reset django_rls.max_token_lifetime and wait until the server has reloaded, so that the
    connections later tests open start with the default again."""
    admin_conn.execute("ALTER SYSTEM RESET django_rls.max_token_lifetime")
    admin_conn.execute("SELECT pg_reload_conf()")

    def reloaded() -> None:
        assert admin_conn.execute("SHOW django_rls.max_token_lifetime").fetchone()[0] == "5min"

    wait_for(reloaded)


@pytest.fixture(scope="session")
def signing_keys(database: Database) -> Iterator[tuple[str, str]]:
    """Configure two keys (current and previous) in a server-side key file, as during a rotation."""
    current, previous = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    if SQL_MODE:
        yield from _sql_mode_keys(database, current, previous)
        return
    with database.connect("admin") as conn:
        write_key_file(conn, current, previous)
        conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _key_file_configured(database) or _raise(AssertionError("key file not configured yet")))
    yield current, previous
    with database.connect("admin") as conn:
        write_key_file(conn)
        conn.execute("ALTER SYSTEM RESET django_rls.signing_key_file")
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: not _key_file_configured(database) or _raise(AssertionError("key file still configured")))


def require_signature(database: Database, required: bool) -> None:
    """Require signed contexts of the app role, or stop: django_rls.require_signature as a superuser sets
    it, or, in the SQL-only mode, rls.require_signature() as the owner calls it."""
    if SQL_MODE:
        with database.connect("owner") as conn:
            conn.execute("SELECT rls.require_signature(%s::regrole, %s)", (APP_ROLE, required))
        return
    role = sql.Identifier(APP_ROLE)
    with database.connect("admin") as conn:
        if required:
            conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(role))
        else:
            conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(role))


@pytest.fixture(params=["statement-bound", "signed"])
def injection_mode(
    request: pytest.FixtureRequest, live_db: None, settings: Any, signing_keys: tuple[str, str], database: Database
) -> Iterator[str]:
    """How the app role sets its context while injected SQL runs (tests/test_attacks.py and the red team's):
    statement-bound with no key (the test role as rls_roles leaves it; not in the SQL-only mode, where without a
    key injected SQL may set one), or signed contexts with signatures required of the app role (which is
    statement-bound too)."""
    from django.db import connections

    if SQL_MODE and request.param == "statement-bound":
        pytest.skip("the SQL-only mode has no statement-bound contexts: without a key injected SQL may set one")
    if request.param == "signed":
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
        require_signature(database, True)
    else:
        assert settings.DJANGO_RLS.get("SIGNING_KEY") is None
    connections.close_all()
    yield request.param
    if request.param == "signed":
        require_signature(database, False)
    connections.close_all()


def _sql_mode_keys(database: Database, current: str, previous: str) -> Iterator[tuple[str, str]]:
    """The SQL-only mode's keys live in the database, added by the owner (rls_apply --install does it)."""
    with database.connect("owner") as conn:
        conn.execute("SELECT rls.add_signing_key(%s), rls.add_signing_key(%s)", (current, previous))
    yield current, previous
    with database.connect("owner") as conn:
        conn.execute("SELECT rls.remove_signing_key(%s), rls.remove_signing_key(%s)", (current, previous))


@pytest.fixture
def sites_table(database: Database, owner_conn: psycopg.Connection) -> Iterator[str]:
    """A table protected by site, owned by the owner role, with 3 rows in each of sites 1 and 2."""
    owner_conn.execute("DROP TABLE IF EXISTS notes")
    owner_conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, site_id bigint NOT NULL, body text)")
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE notes_id_seq TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute(
        "INSERT INTO notes (site_id, body) SELECT s, 'note' FROM generate_series(1, 2) s, generate_series(1, 3)"
    )
    owner_conn.execute("SELECT rls.protect_by_site('notes', to_role => %s)", (APP_ROLE,))
    yield "notes"
    owner_conn.execute("DROP TABLE IF EXISTS notes")


class StatementCounter:
    """Counts statements the app role ran, on every connection, from pg_stat_statements."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.before = self._snapshot()

    def _snapshot(self) -> dict[str, int]:
        rows = self.conn.execute(
            """
            SELECT s.query, s.calls FROM pg_stat_statements s
             WHERE s.userid = %s::regrole AND s.dbid = (SELECT oid FROM pg_database WHERE datname = %s)
            """,
            (APP_ROLE, TEST_DB),
        ).fetchall()
        return dict(rows)

    def since(self) -> dict[str, int]:
        after = self._snapshot()
        return {q: n - self.before.get(q, 0) for q, n in after.items() if n != self.before.get(q, 0)}

    def context_statements(self) -> int:
        return sum(n for q, n in self.since().items() if "rls.set_context" in q)

    def total(self) -> int:
        return sum(self.since().values())


@pytest.fixture
def statements(admin_conn: psycopg.Connection) -> Callable[[], StatementCounter]:
    """``counter = statements()`` starts counting; ``counter.since()`` lists what ran since."""
    if not admin_conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone():
        pytest.skip("pg_stat_statements is not available on this server")
    return lambda: StatementCounter(admin_conn)


@pytest.fixture
def extra_alias(live_db: None) -> Iterator[Callable[..., str]]:
    """Add a Django database alias at run time (a copy of "owner" with changes); removed afterwards."""
    from django.db import connections

    added: list[str] = []

    def add(name: str, dbname: str | None = None, user: str | None = None, password: str | None = None) -> str:
        connections.settings[name] = {
            **connections.settings["owner"],
            **({"NAME": dbname} if dbname else {}),
            **({"USER": user} if user else {}),
            **({"PASSWORD": password} if password is not None else {}),
        }
        added.append(name)
        return name

    yield add
    for name in added:
        connections[name].close()
        del connections[name]
        del connections.settings[name]
