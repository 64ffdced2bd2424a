"""Test helpers for your own project: the leak matrix, and a bypass on the test's own connection.

``leak_matrix(contexts)`` takes every protected model (or the ones you name)
and every ordered pair of contexts (A, B), as the application role, and tries
what a bug or an injection would: read, update and delete the rows only B can
see while acting as A, insert a copy of one of B's rows, and move one of A's
rows onto B's keys. It returns what got through; an empty list means no leak.
Everything runs in a transaction that is rolled back.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, models, transaction
from psycopg import sql as psycopg_sql

from django_rls import probes
from django_rls.declarations import all_declarations
from django_rls.state import context, no_context


@dataclass(frozen=True)
class Leak:
    model: str
    operation: str
    detail: str

    def __str__(self) -> str:
        return f"{self.model}: {self.operation}: {self.detail}"


def _visible(model: type[models.Model], using: str, ctx: Mapping[str, Any]) -> set[Any]:
    with context(**ctx):
        return set(model._base_manager.using(using).values_list("pk", flat=True))


def _refused(using: str, action: Any) -> bool:
    """True when the database refuses the action (the savepoint keeps the test transaction usable)."""
    try:
        with transaction.atomic(using=using):
            action()
    except DatabaseError:
        return True
    return False


def _clone(row: models.Model) -> models.Model:
    """An unsaved copy of a row (read while B's context was active) with a new primary key."""
    clone = copy.copy(row)
    clone.pk = uuid.uuid4() if isinstance(row._meta.pk, models.UUIDField) else None
    clone._state = copy.copy(row._state)
    clone._state.adding = True
    return clone


def _check_pair(
    model: type[models.Model], key_fields: Sequence[str], using: str, a: Mapping[str, Any], b: Mapping[str, Any]
) -> list[Leak]:
    label = model._meta.label
    leaks: list[Leak] = []
    seen_by_a, seen_by_b = _visible(model, using, a), _visible(model, using, b)
    only_b, only_a = sorted(seen_by_b - seen_by_a, key=str), sorted(seen_by_a - seen_by_b, key=str)
    if not only_b:
        return [Leak(label, "setup", f"no row is visible to {dict(b)} but not to {dict(a)}; add test data for both")]
    manager = model._base_manager.using(using)
    with context(**b):
        b_row = manager.get(pk=only_b[0])
    editable = next(f for f in model._meta.concrete_fields if not f.primary_key)

    with context(**a):
        if manager.filter(pk__in=only_b).exists():
            leaks.append(Leak(label, "read", f"{dict(a)} reads rows only {dict(b)} should see"))
        updated = manager.filter(pk__in=only_b).update(**{editable.attname: models.F(editable.attname)})
        if updated:
            leaks.append(Leak(label, "update", f"{dict(a)} updated {updated} of {dict(b)}'s rows"))
        deleted = manager.filter(pk__in=only_b)._raw_delete(using)
        if deleted:
            leaks.append(Leak(label, "delete", f"{dict(a)} deleted {deleted} of {dict(b)}'s rows"))
        clone = _clone(b_row)
        # No RETURNING clause: it would be refused by the SELECT policy and hide a missing WITH CHECK.
        if not _refused(using, lambda: probes.insert(clone, using, returning=False)):
            leaks.append(Leak(label, "insert", f"{dict(a)} inserted a row with {dict(b)}'s keys"))
        if only_a and key_fields:
            # A queryset UPDATE of the key columns: what save() would change, without its signals.
            keys = {
                model._meta.get_field(name).attname: getattr(b_row, model._meta.get_field(name).attname)
                for name in key_fields
            }

            def move() -> None:
                if not manager.filter(pk=only_a[0]).update(**keys):
                    raise DatabaseError("no row was updated")

            if not _refused(using, move):
                leaks.append(Leak(label, "move", f"{dict(a)} moved its row onto {dict(b)}'s keys {list(key_fields)}"))
    return leaks


def leak_matrix(
    contexts: Sequence[Mapping[str, Any]],
    models_to_check: Iterable[type[models.Model] | str] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> list[Leak]:
    """Run the matrix; ``contexts`` are keyword arguments for django_rls.context(), at least two."""
    if len(contexts) < 2:
        raise ValueError("the leak matrix needs at least two contexts, such as two sites or two users")
    declarations = {d.model: d for d in all_declarations().values()}
    if models_to_check is None:
        chosen = list(declarations)
    else:
        chosen = [m if isinstance(m, str) else m._meta.label for m in models_to_check]
    leaks: list[Leak] = []
    for label in chosen:
        if label not in declarations:
            leaks.append(Leak(label, "setup", "the model has no django_rls declaration"))
            continue
        declaration = declarations[label]
        for a, b in permutations(contexts, 2):
            with transaction.atomic(using=using):
                leaks.extend(_check_pair(declaration.model_class(), declaration.key_fields(), using, a, b))
                transaction.set_rollback(True, using=using)
    return leaks


def is_test_database(name: str) -> bool:
    """Whether a database name is one Django gives test databases (``test_`` + NAME, or a TEST NAME so prefixed)."""
    from django.db.backends.base.creation import TEST_DATABASE_PREFIX

    return name.startswith(TEST_DATABASE_PREFIX)


def bypass_role_recipe(app_role: str, test_bypass: str) -> str:
    """The SQL that makes ``DJANGO_RLS["TEST_BYPASS_ROLE"]`` usable, and where the docs explain it."""
    role, app = psycopg_sql.Identifier(test_bypass), psycopg_sql.Identifier(app_role)
    create = psycopg_sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS; GRANT {} TO {};").format(role, role, app)
    return (
        f"as a superuser of the test server (never one that serves requests): {create.as_string(None)} "
        '(docs/testing.md, "A bypass on the test\'s own connection")'
    )


def grant_like_application(cursor: Any, app_role: str, test_bypass: str) -> None:
    """Give the test bypass role the application role's privileges in the test database, no more.

    It cannot inherit them: the application role is a member of it (test_bypass() sets
    that role), and PostgreSQL refuses circular memberships. A role that does not exist, has no
    BYPASSRLS or that the application role may not SET ROLE to is refused here, before any test,
    with the SQL that makes it.
    """
    cursor.execute(
        "SELECT r.rolbypassrls, pg_has_role(%s, r.oid, 'MEMBER') FROM pg_roles r WHERE r.rolname = %s",
        (app_role, test_bypass),
    )
    found = cursor.fetchone()
    problem = None
    if found is None:
        problem = "does not exist"
    elif not found[0]:
        problem = "has no BYPASSRLS"
    elif not found[1]:
        problem = f"is not a role {app_role} is a member of"
    if problem:
        raise TestBypassRefused(
            f'DJANGO_RLS["TEST_BYPASS_ROLE"] = {test_bypass!r} {problem}, so test_bypass() could not switch to it. '
            f"Set it up {bypass_role_recipe(app_role, test_bypass)}"
        )
    to = psycopg_sql.Identifier(test_bypass)
    cursor.execute(
        "SELECT n.nspname FROM pg_namespace n WHERE has_schema_privilege(%s, n.oid, 'USAGE') "
        "AND pg_has_role(current_user, n.nspowner, 'USAGE')",
        (app_role,),
    )
    for (schema,) in cursor.fetchall():
        cursor.execute(psycopg_sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(psycopg_sql.Identifier(schema), to))
    cursor.execute(
        "SELECT table_schema, table_name, string_agg(privilege_type, ',') FROM information_schema.role_table_grants "
        "WHERE grantee = %s GROUP BY 1, 2",
        (app_role,),
    )
    for schema, table, privileges in cursor.fetchall():
        cursor.execute(
            psycopg_sql.SQL("GRANT {} ON {} TO {}").format(
                psycopg_sql.SQL(", ").join(psycopg_sql.SQL(p) for p in privileges.split(",") if p.isalpha()),
                psycopg_sql.Identifier(schema, table),
                to,
            )
        )
    cursor.execute(
        "SELECT object_schema, object_name FROM information_schema.usage_privileges "
        "WHERE grantee = %s AND object_type = 'SEQUENCE'",
        (app_role,),
    )
    for schema, name in cursor.fetchall():
        cursor.execute(
            psycopg_sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(psycopg_sql.Identifier(schema, name), to)
        )


# The aliases a test_bypass() block is active on.
_bypassing: ContextVar[frozenset[str]] = ContextVar("django_rls_test_bypass", default=frozenset())


class TestBypassRefused(RuntimeError):
    """test_bypass() was asked for where it must not work."""


@contextmanager
def test_bypass(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Read and write every site's rows on the test's own connection, inside its transaction.

    ``django_rls.bypass()`` uses another connection, which cannot see the rows a test has
    not committed. This switches the test's connection to ``DJANGO_RLS["TEST_BYPASS_ROLE"]``
    (``SET ROLE``; a BYPASSRLS role the application role is a member of on test servers
    only) and back. It refuses outside a test database (a name starting with ``test_``)
    and outside a transaction, and check E019 refuses the membership it needs anywhere
    else. Test-client requests made inside it run as the application role with the
    middleware's context, as in production, and the bypass resumes after each one. Other
    queries inside carry no context: the server refuses one to a BYPASSRLS role.
    """
    from django.core.signals import request_finished, request_started
    from django.db import connections

    from django_rls.conf import rls_settings

    if using in _bypassing.get():
        yield  # already bypassing on this connection: the outer block switches back
        return
    role = rls_settings.TEST_BYPASS_ROLE
    if not role:
        from django_rls.conf import app_role

        raise TestBypassRefused(
            'test_bypass() needs DJANGO_RLS["TEST_BYPASS_ROLE"] in the test settings: the name of a NOLOGIN BYPASSRLS '
            "role the application role is a member of, made "
            + bypass_role_recipe(app_role() or "<application role>", "app_test_bypass")
        )
    connection = connections[using]
    if not connection.in_atomic_block:
        raise TestBypassRefused("test_bypass() works inside a test's transaction only (pytest.mark.django_db)")
    # Its statements go past Django's cursor, so assertNumQueries counts only the test's own queries.
    connection.ensure_connection()
    row = psycopg.Cursor(connection.connection).execute("SELECT current_database()").fetchone()
    database = row[0] if row is not None else ""
    if not is_test_database(database):
        raise TestBypassRefused(f"test_bypass() refuses to run outside a test database; {database!r} is not one")
    switch = psycopg_sql.SQL("SET ROLE {}").format(psycopg_sql.Identifier(role))

    def run(statement: Any) -> None:
        with connection.wrap_database_errors:
            psycopg.Cursor(connection.connection).execute(statement)

    def suspend(**kwargs: Any) -> None:
        run("RESET ROLE")

    def resume(**kwargs: Any) -> None:
        if not connection.needs_rollback:
            run(switch)

    run(switch)
    token = _bypassing.set(_bypassing.get() | {using})
    request_started.connect(suspend, dispatch_uid=f"django_rls.test_bypass.{using}.suspend")
    request_finished.connect(resume, dispatch_uid=f"django_rls.test_bypass.{using}.resume")
    try:
        # The server refuses a context to a BYPASSRLS role (docs/security.md): none is sent inside.
        with no_context():
            yield
    finally:
        _bypassing.reset(token)
        request_started.disconnect(dispatch_uid=f"django_rls.test_bypass.{using}.suspend")
        request_finished.disconnect(dispatch_uid=f"django_rls.test_bypass.{using}.resume")
        if not connection.needs_rollback and connection.connection is not None:
            run("RESET ROLE")
