"""Throwaway tables protected by site, as the red team's tests make them, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests.roles import APP_ROLE


@contextmanager
def site_table(
    owner_conn: psycopg.Connection, name: str, columns: str, values: str | None = None, *, audited: bool = False
) -> Iterator[str]:
    """Table ``name`` with ``columns`` (a site_id among them) and the rows ``values`` (VALUES text), committed:
    every DML privilege granted to the application role, protected by site (rls.protect_by_site) and, ``audited``,
    audited with the site read rule. Yields its name; drops it (after rls_audit.disable()) afterwards."""
    owner_conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    owner_conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(columns)))
    if values:
        owner_conn.execute(sql.SQL("INSERT INTO {} VALUES {}").format(sql.Identifier(name), sql.SQL(values)))
    owner_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.Identifier(name), sql.Identifier(APP_ROLE)
        )
    )
    owner_conn.execute("SELECT rls.protect_by_site(%s, to_role => %s)", (name, APP_ROLE))
    if audited:
        owner_conn.execute("SELECT rls_audit.enable(%s)", (name,))
        owner_conn.execute("SELECT rls_audit.set_read_rule(%s, site_column => 'site_id')", (name,))
    owner_conn.commit()
    try:
        yield name
    finally:
        owner_conn.rollback()
        if audited:
            owner_conn.execute("SELECT rls_audit.disable(%s)", (name,))
        owner_conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        owner_conn.commit()
