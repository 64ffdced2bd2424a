"""rls_audit.count_entries() and rls_audit.entry_times(): the view's count(*), min(logged_at) and max(logged_at).

The admin's paginator and date hierarchy ask these instead of counting or aggregating the view
(which unnests every entry with its row images and sorts them). They must answer exactly what
the view answers the same caller: every entry checked as the caller, no other site's entries
counted, and nothing about them told by a count or a time that changes when they do. Both
modes (the C walk over the statement rows, the SQL-only mode's query of the view).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.roles import APP_ROLE

TABLE = "ac_items"
APP = sql.Identifier(APP_ROLE)
# (site, user) contexts the app role reads in; site 3 has no entries, None no context at all
READERS = ((1, 7), (1, 8), (2, 7), (3, 7), (None, None))


@pytest.fixture
def trail(
    owner_conn: psycopg.Connection, app_conn: psycopg.Connection, admin_conn: psycopg.Connection
) -> Iterator[dict[str, object]]:
    """An audited site-protected table with entries of sites 1 and 2: bulk and single-row statements of
    the app role, and statement rows of a superuser (without a context) that mix several sites' rows."""
    owner_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    owner_conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, site_id bigint NOT NULL, body text)")
    owner_conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(sql.Identifier(TABLE), APP))
    owner_conn.execute("SELECT rls.protect_by_site(%s, to_role => %s)", (TABLE, APP_ROLE))
    owner_conn.execute("SELECT rls_audit.enable(%s)", (TABLE,))
    owner_conn.execute("SELECT rls_audit.set_read_rule(%s, site_column => 'site_id')", (TABLE,))
    for site, user, statement in (
        (1, 7, f"INSERT INTO {TABLE} SELECT g, 1, 'bulk' FROM generate_series(1, 30) g"),
        (2, 8, f"INSERT INTO {TABLE} SELECT g, 2, 'bulk' FROM generate_series(101, 120) g"),
        *((1, 8, f"INSERT INTO {TABLE} VALUES ({n}, 1, 'one')") for n in range(31, 36)),
        *((2, 7, f"INSERT INTO {TABLE} VALUES ({n}, 2, 'one')") for n in range(121, 124)),
        (1, 7, f"UPDATE {TABLE} SET body = 'again' WHERE id % 3 = 0"),
        (2, 8, f"DELETE FROM {TABLE} WHERE id = 101"),
    ):
        with app_conn.transaction():
            app_conn.execute("SELECT rls.set_context(%s, %s)", (str(site), str(user)))
            app_conn.execute(statement)
    # a superuser's statements (no context): rows of sites 1, 2 and 3 in one statement row; site 2's rows
    with admin_conn.transaction():
        admin_conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")  # a superuser, writing test data
        admin_conn.execute(f"INSERT INTO {TABLE} SELECT g, g % 3 + 1, 'mixed' FROM generate_series(201, 260) g")
        admin_conn.execute(f"UPDATE {TABLE} SET body = 'owner' WHERE id BETWEEN 111 AND 115")
    times = owner_conn.execute(
        "SELECT min(logged_at), max(logged_at), (array_agg(logged_at ORDER BY logged_at))[cardinality(array_agg(logged_at)) / 2] "
        "FROM rls_audit.log WHERE table_name = %s",
        (f"public.{TABLE}",),
    ).fetchone()
    yield {"middle": times[2]}
    owner_conn.execute("SELECT rls_audit.disable(%s)", (TABLE,))
    owner_conn.execute(f"DROP TABLE {TABLE}")


def _conditions(middle: object) -> list[dict[str, object]]:
    return [
        {},
        {"site_id": 1},
        {"site_id": 2},
        {"site_id": 1, "user_id": 8},
        {"user_id": 7},
        {"table_name": f"public.{TABLE}"},
        {"table_name": f"public.{TABLE}", "operation": "UPDATE"},
        {"operation": "DELETE"},
        {"site_id": 1, "logged_from": middle},
        {"table_name": f"public.{TABLE}", "logged_before": middle},
        {"site_id": 9},
    ]


def _answers(conn: psycopg.Connection, conditions: dict[str, object]) -> tuple[tuple, tuple]:
    """(count_entries(NULL), entry_times()) and the view's (count(*), min, max), for the same conditions."""
    view_conditions = {"logged_from": ("logged_at", ">="), "logged_before": ("logged_at", "<")}
    where = sql.SQL(" AND ").join(
        [sql.SQL("true")]
        + [
            sql.SQL("{} {} {}").format(
                sql.Identifier(view_conditions.get(name, (name,))[0]),
                sql.SQL(view_conditions.get(name, (name, "="))[1]),
                sql.Literal(value),
            )
            for name, value in conditions.items()
        ]
    )
    names = sql.SQL("").join(
        sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Literal(value)) for name, value in conditions.items()
    )
    leading = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Literal(value)) for name, value in conditions.items()
    )
    ours = conn.execute(
        sql.SQL(
            "SELECT rls_audit.count_entries(NULL{names}), t.oldest, t.newest FROM rls_audit.entry_times({leading}) t"
        ).format(names=names, leading=leading)
    ).fetchone()
    view = conn.execute(
        sql.SQL("SELECT count(*), min(logged_at), max(logged_at) FROM rls_audit.log WHERE {}").format(where)
    ).fetchone()
    return ours, view


def _as(conn: psycopg.Connection, site: int | None, user: int | None) -> None:
    if site is None:
        conn.execute("SELECT rls.clear_context()")
    else:
        conn.execute("SELECT rls.set_context(%s, %s)", (str(site), str(user)))


def test_counts_and_times_are_the_views(trail, app_conn, owner_conn):
    """For each reader and each condition: what the view answers, and a count stops at up_to."""
    checked = 0
    for site, user in READERS:
        with app_conn.transaction():
            _as(app_conn, site, user)
            for conditions in _conditions(trail["middle"]):
                ours, view = _answers(app_conn, conditions)
                assert ours == view, (site, user, conditions)
                full = view[0]
                for up_to in (0, 1, 7, full, full + 1):
                    names = sql.SQL("").join(
                        sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Literal(value))
                        for name, value in conditions.items()
                    )
                    (capped,) = app_conn.execute(
                        sql.SQL("SELECT rls_audit.count_entries({}{})").format(sql.Literal(up_to), names)
                    ).fetchone()
                    assert capped == min(up_to, full), (site, user, conditions, up_to)
                checked += full
    assert checked > 0
    # the owner reads every entry of its table, the app role only its site's
    with app_conn.transaction():
        _as(app_conn, 1, 7)
        (site_1,) = app_conn.execute(
            "SELECT rls_audit.count_entries(NULL, table_name => %s)", (f"public.{TABLE}",)
        ).fetchone()
    (every,) = owner_conn.execute(
        "SELECT rls_audit.count_entries(NULL, table_name => %s)", (f"public.{TABLE}",)
    ).fetchone()
    assert 0 < site_1 < every
    assert _answers(owner_conn, {"table_name": f"public.{TABLE}"})[0][0] == every


def test_another_sites_entries_change_no_answer(trail, app_conn, admin_conn):
    """What site 1's reader is told (counts, capped counts, first and last times) does not change when
    entries of site 2 are written: by site 2, bulk and single-row, and by a superuser, with user 7's
    context in site 2 (no timing involved: the answers themselves)."""

    def told() -> list[tuple]:
        answers = []
        with app_conn.transaction():
            _as(app_conn, 1, 7)
            for conditions in _conditions(trail["middle"]):
                names = sql.SQL("").join(
                    sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Literal(value))
                    for name, value in conditions.items()
                )
                answers.append(
                    app_conn.execute(
                        sql.SQL(
                            "SELECT rls_audit.count_entries(NULL{n}), rls_audit.count_entries(40{n}), "
                            "(rls_audit.entry_times({l})).*"
                        ).format(
                            n=names,
                            l=sql.SQL(", ").join(
                                sql.SQL("{} => {}").format(sql.Identifier(name), sql.Literal(value))
                                for name, value in conditions.items()
                            ),
                        )
                    ).fetchone()
                )
        return answers

    before = told()
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('2', '7')")
        app_conn.execute(f"INSERT INTO {TABLE} SELECT g, 2, 'later' FROM generate_series(301, 340) g")
        app_conn.execute(f"INSERT INTO {TABLE} VALUES (341, 2, 'later')")
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context('2', '7')")  # user 7, whom site 1's reader filters by
        app_conn.execute(f"UPDATE {TABLE} SET body = 'later' WHERE id BETWEEN 111 AND 113")
    with admin_conn.transaction():
        admin_conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")
        admin_conn.execute(f"INSERT INTO {TABLE} SELECT g, 2, 'later' FROM generate_series(401, 420) g")
    assert told() == before


def test_a_negative_limit_is_refused(app_conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused, app_conn.transaction():
        app_conn.execute("SELECT rls_audit.count_entries(-1)")
    assert refused.value.diag.message_hint
