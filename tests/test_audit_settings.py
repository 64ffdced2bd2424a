"""The audit trail records the same images and the same changes whatever the writer's session settings.

Output functions print by session settings the application role may SET (extra_float_digits,
DateStyle, IntervalStyle, TimeZone, bytea_output, lc_monetary, xmlbinary, xmloption,
quote_all_identifiers). rls_audit.capture() pins each of them for its run, so neither the row
images nor the UPDATE diff (which compares printed texts where stored bytes differ) depend on
them: a change the session would print away is still recorded, and with the values it has.
Writes run as the application role, under a policy, inside a context.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.roles import APP_ROLE

# Every setting that changes what a built-in output function prints, at a hostile value.
HOSTILE = {
    "extra_float_digits": "-15",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "sql_standard",
    "TimeZone": "Asia/Kathmandu",
    "bytea_output": "escape",
    "lc_monetary": "C.UTF-8",  # the only other locale on these machines; pinned all the same
    "xmlbinary": "hex",
    "xmloption": "document",
    "quote_all_identifiers": "on",
    # A schema with a table named pg_class ahead of pg_catalog: regclass prints "pg_catalog.pg_class" here.
    "search_path": "rt_settings_shadow, pg_catalog, public",
}

# column, type, a value, a different value that some hostile setting prints the same
FAMILIES = [
    ("f8", "float8", "149.99", "149.98999999"),
    ("f4", "float4", "1.9", "1.90001"),
    ("nm", "numeric", "1.10", "1.1"),
    ("pt", "point", "(1.9,2.9)", "(1.7,2.7)"),
    ("bx", "box", "(1.9,1.9),(0,0)", "(1.7,1.7),(0,0)"),
    ("pg", "polygon", "((0,0),(1.25,0),(1,1))", "((0,0),(1.2500001,0),(1,1))"),
    ("fa", "float8[]", "{1.9,2.5}", "{1.7,2.5}"),
    ("cp", "rt_settings_pair", "(1.9,2024-01-02 03:04:05+00)", "(1.7,2024-01-02 03:04:05+00)"),
    ("tz", "timestamptz", "2024-01-02 03:04:05+00", "2024-01-02 03:04:05.5+00"),
    ("ta", "timestamptz[]", "{2024-01-02 03:04:05+00}", "{2024-01-02 04:04:05+00}"),
    ("tr", "tstzrange", "[2024-01-01 00:00+00,2024-02-01 00:00+00)", "[2024-01-01 00:00+00,2024-02-01 00:00:01+00)"),
    ("ts", "timestamp", "2024-03-04 05:06:07", "2024-04-03 05:06:07"),
    ("dt", "date", "2024-03-04", "2024-04-03"),
    ("da", "date[]", "{2024-03-04}", "{2024-04-03}"),
    ("dr", "daterange", "[2024-03-04,2024-04-03)", "[2024-04-03,2024-05-03)"),
    ("iv", "interval", "1 day 02:00:00", "1 day 02:00:01"),
    ("ia", "interval[]", "{1 day}", "{2 days}"),
    ("by", "bytea", "\\x41ff", "\\x41fe"),
    ("mn", "money", "12.50", "12.51"),
    ("xm", "xml", "<x>1</x>", "<x>2</x>"),
    ("rc", "regclass", "pg_catalog.pg_class", "pg_catalog.pg_type"),
    ("mr", "datemultirange", "{[2024-03-04,2024-04-03)}", "{[2024-03-04,2024-04-04)}"),
    ("dm", "rt_settings_amount", "1.9", "1.7"),  # a domain prints through its base type
    ("en", "rt_settings_mood", "calm", "vexed"),
    ("js", "json", '{"a": 1.9}', '{"a": 1.7}'),
    ("jb", "jsonb", '{"a": 1.9}', '{"a": 1.7}'),
    ("tv", "tsvector", "a:1 b:2", "a:1 c:2"),
    ("ip", "inet", "10.0.0.1/8", "10.0.0.2/8"),
    ("bt", "bit(4)", "0101", "0110"),
    ("uu", "uuid", "a8098c1a-f86e-11da-bd1a-00112444be1e", "00000000-0000-0000-0000-000000000000"),
    ("tt", "timetz", "03:04:05+05:45", "03:04:05+05:30"),
]
COLUMNS = [name for name, _, _, _ in FAMILIES]


@pytest.fixture
def family_table(owner_conn: psycopg.Connection) -> Iterator[None]:
    owner_conn.execute("DROP TABLE IF EXISTS public.rt_settings_families")
    owner_conn.execute("DROP TYPE IF EXISTS public.rt_settings_pair, public.rt_settings_mood")
    owner_conn.execute("DROP DOMAIN IF EXISTS public.rt_settings_amount")
    owner_conn.execute("DROP SCHEMA IF EXISTS rt_settings_shadow CASCADE")
    owner_conn.execute("CREATE SCHEMA rt_settings_shadow")
    owner_conn.execute("CREATE TABLE rt_settings_shadow.pg_class (x int)")
    owner_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA rt_settings_shadow TO {}").format(sql.Identifier(APP_ROLE)))
    owner_conn.execute("CREATE TYPE public.rt_settings_pair AS (x float8, at timestamptz)")
    owner_conn.execute("CREATE TYPE public.rt_settings_mood AS ENUM ('calm', 'vexed')")
    owner_conn.execute("CREATE DOMAIN public.rt_settings_amount AS float8 CHECK (VALUE > 0)")
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t, _, _ in FAMILIES)
    owner_conn.execute(
        sql.SQL("CREATE TABLE public.rt_settings_families (id int PRIMARY KEY, site_id bigint, {})").format(columns)
    )
    owner_conn.execute("SELECT rls.protect_by_site('rt_settings_families', to_role => %s)", (APP_ROLE,))
    owner_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE ON rt_settings_families TO {}").format(sql.Identifier(APP_ROLE))
    )
    for name in ("rt_settings_pair", "rt_settings_mood", "rt_settings_amount"):
        owner_conn.execute(
            sql.SQL("GRANT USAGE ON TYPE {} TO {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE))
        )
    owner_conn.execute("SELECT rls_audit.enable('rt_settings_families')")
    owner_conn.execute("SELECT rls_audit.set_read_rule('rt_settings_families', 'site_id')")
    yield
    owner_conn.execute("DROP TABLE public.rt_settings_families")
    owner_conn.execute("DROP TYPE public.rt_settings_pair, public.rt_settings_mood")
    owner_conn.execute("DROP DOMAIN public.rt_settings_amount")
    owner_conn.execute("DROP SCHEMA rt_settings_shadow CASCADE")


def _set(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def _write(app_conn: psycopg.Connection, statement: sql.Composable, params: Any = None) -> None:
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        app_conn.execute(statement, params)


def _insert(app_conn: psycopg.Connection, row_id: int, index: int) -> None:
    names = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    values = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for _, t, _, _ in FAMILIES)
    _write(
        app_conn,
        sql.SQL("INSERT INTO rt_settings_families (id, site_id, {}) VALUES (%s, 1, {})").format(names, values),
        [row_id, *[family[index] for family in FAMILIES]],
    )


def _entries(admin_conn: psycopg.Connection, row_id: int, operation: str) -> list[tuple[Any, ...]]:
    return admin_conn.execute(
        "SELECT changed_columns, old_values, new_values FROM rls_audit.log "
        "WHERE table_oid = 'public.rt_settings_families'::regclass AND row_key = %s AND operation = %s ORDER BY id",
        (str(row_id), operation),
    ).fetchall()


@pytest.mark.usefixtures("family_table")
def test_images_do_not_depend_on_the_writers_settings(app_conn, admin_conn):
    _insert(app_conn, 1, 2)  # default settings
    _set(app_conn, HOSTILE)
    _insert(app_conn, 2, 2)
    for name in HOSTILE:
        app_conn.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
    ((_, _, plain),) = _entries(admin_conn, 1, "INSERT")
    ((_, _, hostile),) = _entries(admin_conn, 2, "INSERT")
    assert {k: v for k, v in hostile.items() if k != "id"} == {k: v for k, v in plain.items() if k != "id"}
    # and what the default settings print is what the image holds
    assert plain["f8"] == 149.99 and plain["pt"] == "(1.9,2.9)" and plain["fa"] == "{1.9,2.5}"
    assert plain["iv"] == "1 day 02:00:00" and plain["by"] == "\\x41ff" and plain["rc"] == "pg_class"
    assert plain["tz"] == "2024-01-02T03:04:05+00:00" and plain["mn"] == "$12.50"


# Values that print as the pinned ones do, which the capture leaves as they are (ext/audit.c, AlreadyPinned()).
BENIGN = {
    "extra_float_digits": "3",
    "DateStyle": "ISO, DMY",
    "TimeZone": "Etc/UTC",
    "lc_monetary": "POSIX",
}


def _images_under(app_conn: psycopg.Connection, admin_conn: psycopg.Connection, settings: dict[str, str]) -> None:
    """The image written under settings is the one written under the default settings."""
    _insert(app_conn, 1, 2)  # default settings
    _set(app_conn, settings)
    _insert(app_conn, 2, 2)
    for name in settings:
        app_conn.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
    ((_, _, plain),) = _entries(admin_conn, 1, "INSERT")
    ((_, _, written),) = _entries(admin_conn, 2, "INSERT")
    assert {k: v for k, v in written.items() if k != "id"} == {k: v for k, v in plain.items() if k != "id"}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.usefixtures("family_table")
def test_each_hostile_setting_alone_is_pinned(app_conn, admin_conn, name):
    """Each setting is checked on its own variable: one hostile value alone is pinned too."""
    _images_under(app_conn, admin_conn, {name: HOSTILE[name]})


@pytest.mark.usefixtures("family_table")
def test_settings_that_print_as_the_pinned_ones_write_the_same_images(app_conn, admin_conn):
    _images_under(app_conn, admin_conn, BENIGN)


@pytest.mark.parametrize(("column", "type_name", "before", "after"), FAMILIES, ids=COLUMNS)
@pytest.mark.usefixtures("family_table")
def test_a_change_hostile_settings_print_away_is_recorded(app_conn, admin_conn, column, type_name, before, after):
    _insert(app_conn, 1, 2)
    _insert(app_conn, 2, 2)
    update = sql.SQL("UPDATE rt_settings_families SET {} = %s::{} WHERE id = %s").format(
        sql.Identifier(column), sql.SQL(type_name)
    )
    _write(app_conn, update, [after, 1])  # default settings
    _set(app_conn, HOSTILE)
    _write(app_conn, update, [after, 2])
    _write(app_conn, update, [after, 2])  # no change: nothing recorded, whatever the settings
    for name in HOSTILE:
        app_conn.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
    plain = _entries(admin_conn, 1, "UPDATE")
    hostile = _entries(admin_conn, 2, "UPDATE")
    assert [changed for changed, _, _ in plain] == [[column]]
    assert hostile == plain


@pytest.mark.usefixtures("family_table")
def test_the_app_role_reads_the_entries_of_its_site(app_conn):
    """The entries stay readable to the application role under its policy (the read rule holds)."""
    _insert(app_conn, 1, 2)
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', NULL)")
        mine = app_conn.execute(
            "SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.rt_settings_families'"
        ).fetchone()
        app_conn.execute("SELECT rls.set_context('2', NULL)")
        theirs = app_conn.execute(
            "SELECT count(*) FROM rls_audit.log WHERE table_name = 'public.rt_settings_families'"
        ).fetchone()
    assert (mine, theirs) == ((1,), (0,))


@pytest.mark.usefixtures("family_table")
def test_the_writers_own_settings_are_left_as_they_were(app_conn):
    """The capture pins the settings for its own run only: the session keeps its values, in the
    transaction that wrote and after it."""
    _set(app_conn, HOSTILE)
    shown = "SELECT " + ", ".join(f"current_setting('{name}')" for name in HOSTILE)
    before = app_conn.execute(shown).fetchone()
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('1', '7')")
        _insert_in_transaction(app_conn, 3)
        within = app_conn.execute(shown).fetchone()
    after = app_conn.execute(shown).fetchone()
    for name in HOSTILE:
        app_conn.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
    assert before == within == after
    assert before[0] == "-15"


def _insert_in_transaction(app_conn: psycopg.Connection, row_id: int) -> None:
    app_conn.execute("INSERT INTO rt_settings_families (id, site_id, f8) VALUES (%s, 1, 1.5)", (row_id,))
