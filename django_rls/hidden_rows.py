"""Say what really happened when ``Model.save()`` could not update a row the policies hide.

``save()`` on an instance with a primary key first runs ``UPDATE ... WHERE pk = %s``.
When row level security hides that row, the UPDATE matches no row, so Django takes
the row for new and runs an INSERT, which the insert policy then refuses with
``new row violates row-level security policy``: an error about inserting, for a
call that meant to update.

An execute wrapper on every protected alias notices that sequence (an UPDATE of a
protected table that matched no row, then a refused INSERT into the same table) and
raises :class:`RowNotUpdatable` from the database's error instead. It says no more
than the two failures already told: the row either exists but this context may not
see or change it, or does not exist and this context may not create it as given.
It never looks the row up, so it cannot tell which.

The same wrapper explains one more refusal, :class:`SequenceResetRefused`: ``setval()``
on a sequence, which the application role may not run (it has ``USAGE`` on the
sequences, never ``UPDATE``). Django sends it from ``loaddata`` and from the statements
``connection.ops.sequence_reset_sql()`` builds, and PostgreSQL's own message
(``permission denied for sequence``) says neither why nor what to run instead.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import ProgrammingError
from django.db.backends.base.base import BaseDatabaseWrapper

_UNMATCHED = "_django_rls_unmatched_update"  # table of the last statement, an UPDATE that matched no row
_UPDATE = re.compile(r'UPDATE "([^"]+)" SET ')
_INSERT = re.compile(r'INSERT INTO "([^"]+)" ')
# insufficient_privilege: PostgreSQL raises it for a row-level security violation and a denied privilege alike.
_INSUFFICIENT_PRIVILEGE = "42501"


class RowNotUpdatable(ProgrammingError):
    """``save()`` of a protected row that the current context may not update (see module docs)."""


class SequenceResetRefused(ProgrammingError):
    """``setval()`` by the application role, which may use sequences but not set them (see module docs)."""


def _sequence_reset_refused(sql: Any, exc: BaseException) -> SequenceResetRefused | None:
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE or not isinstance(sql, str) or "setval(" not in sql:
        return None
    if "permission denied for sequence" not in str(cause):
        return None
    return SequenceResetRefused(
        f"{str(cause).splitlines()[0]}: the application role may take numbers from sequences but not set them "
        "(setval() needs UPDATE on the sequence, which django_rls never grants it; under row level security its "
        "max(id) would count only the rows its policies show). Django runs setval() after loaddata and wherever "
        "connection.ops.sequence_reset_sql() is executed. Run loaddata through the owner role's alias "
        "(--database <OWNER_DATABASE>); in tests, set DJANGO_RLS['TEST_BYPASS_ROLE'] and use "
        "django_rls.test_runner.RlsDiscoverRunner or the pytest plugin's rls_django_db_setup, which have the owner "
        "reset the sequences after each fixture (docs/testing.md)."
    )


def _protected_models() -> dict[str, str]:
    from django_rls.declarations import all_declarations

    return {d.model_class()._meta.db_table: label for label, d in all_declarations().items()}


def _is_rls_violation(exc: BaseException) -> bool:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE and "violates row-level security policy" in str(
        cause
    )


def _error(label: str, table: str) -> RowNotUpdatable:
    return RowNotUpdatable(
        f"cannot save this {label} row: the UPDATE of {table} that Model.save() ran matched no row visible in the "
        "current django_rls context, so Django tried an INSERT, which the table's row level security policy refused. "
        "Either the row exists but belongs to another site or user than the current context allows, or it does not "
        "exist and this context may not create it as given. Load the row through a query in the context that should "
        "change it: a row that no query in this context can return cannot be saved in it either."
    )


class HiddenRowWrapper:
    """The execute wrapper; one instance serves every connection."""

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        connection: BaseDatabaseWrapper = context["connection"]
        unmatched = connection.__dict__.pop(_UNMATCHED, None)
        try:
            result = execute(sql, params, many, context)
        except ProgrammingError as exc:
            if unmatched is not None and not many and _is_rls_violation(exc):
                inserted = _INSERT.match(sql) if isinstance(sql, str) else None
                label = _protected_models().get(unmatched) if inserted and inserted.group(1) == unmatched else None
                if label is not None:
                    raise _error(label, unmatched) from exc
            refused = _sequence_reset_refused(sql, exc)
            if refused is not None:
                raise refused from exc
            raise
        if not many and isinstance(sql, str) and sql.startswith("UPDATE "):
            updated = _UPDATE.match(sql)
            cursor = context.get("cursor")
            if updated is not None and cursor is not None and cursor.rowcount == 0:
                connection.__dict__[_UNMATCHED] = updated.group(1)
        return result


wrapper = HiddenRowWrapper()
