"""Moving a database between the SQL-only mode and the library, as docs/operating.md says, and back.

Needs a server that has the library (the C pass): the SQL-only mode is installed in a database of
its own there, as check E029 reports such databases. The same policy helpers protect the same table
in each mode (rls_apply calls them with the same declarations), and the rows a context sees stay
the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls import sqlonly
from tests.modes import library_only
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

pytestmark = library_only("moving to and from the extension needs a server that has the library")

DB = "django_rls_move"
# Every policy that reads the context calls a function of schema rls, the permissive rls_base_<command>
# too (it carries the groups' conjunction), so CASCADE takes them all and the table closes, never opens.
SQL_TO_LIBRARY = (
    "DROP SCHEMA rls CASCADE",
    # The SQL-only mode's audit trail (its log, registrations and the capture triggers with their functions).
    "DROP SCHEMA rls_audit CASCADE",
    "DROP OWNED BY django_rls_context, django_rls_member, django_rls_audit",
    "CREATE EXTENSION django_rls",
)
LIBRARY_TO_SQL = ("DROP EXTENSION django_rls CASCADE", "DROP SCHEMA rls")


@pytest.fixture
def move_db(admin_conn) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """(superuser, owner) connections to a database in the SQL-only mode whose table notes is protected by site."""
    admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB), sql.Identifier(OWNER_ROLE)))
    dsn = make_conninfo(admin_conn.info.dsn, dbname=DB)
    try:
        with (
            psycopg.connect(dsn) as admin,
            psycopg.connect(make_conninfo(dsn, user=OWNER_ROLE, password=PASSWORD), autocommit=True) as owner,
        ):
            with admin.cursor() as cursor:
                sqlonly.install(cursor, [])
            admin.commit()
            owner.execute("CREATE TABLE notes (id int PRIMARY KEY, site_id bigint NOT NULL)")
            owner.execute("INSERT INTO notes VALUES (1, 1), (2, 2), (3, 2)")
            owner.execute(sql.SQL("GRANT SELECT ON notes TO {}").format(sql.Identifier(APP_ROLE)))
            protect(owner)
            owner.execute("SELECT rls_audit.enable('notes')")
            yield admin, owner
    finally:
        admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin_conn.execute("DROP ROLE IF EXISTS django_rls_context, django_rls_member, django_rls_audit")


def protect(owner: psycopg.Connection) -> None:
    """What rls_apply does for BySite("site") on the table, in either mode."""
    owner.execute("SELECT rls.protect_by_site('notes', to_role => %s)", (APP_ROLE,))


def seen_by_site_2(admin: psycopg.Connection) -> list[int]:
    with admin.transaction():
        # The library refuses a context to a superuser's session unless told it is maintenance.
        admin.execute("SET LOCAL django_rls.allow_bypassing_roles = on")
        admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        admin.execute("SELECT rls.set_context('2', '')")
        return [row[0] for row in admin.execute("SELECT id FROM notes ORDER BY id")]


def run(admin: psycopg.Connection, statements: tuple[str, ...]) -> None:
    with admin.transaction():
        for statement in statements:
            admin.execute(statement)


def test_sql_only_to_the_library_and_back(move_db):
    admin, owner = move_db
    assert seen_by_site_2(admin) == [2, 3]

    # CREATE EXTENSION over the SQL-only mode is refused, with the procedure as its hint.
    with pytest.raises(psycopg.errors.DuplicateObject) as excinfo:
        admin.execute("CREATE EXTENSION django_rls")
    admin.rollback()
    assert "the SQL-only mode of django_rls is installed" in str(excinfo.value)
    assert "Moving between the SQL-only mode and the library" in excinfo.value.diag.message_hint

    # Dropping the schema takes the permissive policies with the restrictive ones: nothing is left to show rows.
    with admin.transaction(force_rollback=True):
        admin.execute(SQL_TO_LIBRARY[0])
        left = admin.execute("SELECT polname FROM pg_policy WHERE polrelid = 'notes'::regclass").fetchall()
        assert left == [], "a policy outlived the schema rls"
        admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        assert admin.execute("SELECT count(*) FROM notes").fetchone() == (0,)

    run(admin, SQL_TO_LIBRARY)
    # The SQL-only capture went with its schema; the library's audits the table again.
    assert admin.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notes'::regclass").fetchone() == (0,)
    admin.commit()
    owner.execute("SELECT rls_audit.enable('notes')")
    # Between the move and rls_apply the table keeps row level security without a policy: it shows nothing.
    with admin.transaction():
        admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        assert admin.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    protect(owner)
    assert seen_by_site_2(admin) == [2, 3]
    assert admin.execute("SELECT rls.extension_info() ->> 'mode'").fetchone() == ("c",)

    # The SQL-only installer refuses while the extension is there, and says where the way back is.
    with admin.cursor() as cursor, pytest.raises(sqlonly.InstallError, match="Moving between the SQL-only mode"):
        sqlonly.install(cursor, [])
    admin.rollback()

    run(admin, LIBRARY_TO_SQL)
    with admin.cursor() as cursor:
        sqlonly.install(cursor, [])
    admin.commit()
    protect(owner)
    assert seen_by_site_2(admin) == [2, 3]
    assert admin.execute("SELECT rls.extension_info() ->> 'mode'").fetchone() == ("sql",)
