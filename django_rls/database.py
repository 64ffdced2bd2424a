"""Hand the current context to PostgreSQL, lazily, once per transaction.

An execute wrapper on every protected database alias runs before each query:

- With server-side binding (``OPTIONS={"server_side_binding": True}``) and the
  library preloaded on the server, a query carries the context itself: it is
  sent as ``/*django_rls:$1*/ <query>`` with the context bound as ``$1``
  (ext/statement.c), so no extra statement is sent. Inside a transaction only
  the first query that needs the context carries it; the extension keeps it
  until the transaction ends. Whether the library is preloaded is asked once
  per connection (``marker_supported``): without preloading the server would
  load it too late for the first such query of each backend, so the context
  is then always sent as a statement of its own.
- Otherwise (Django's default client-side binding, named cursors, executemany,
  utility statements): inside a transaction (``atomic()``, ``ATOMIC_REQUESTS``)
  the first query of the transaction, and the first after the context changed
  or a savepoint was rolled back, is preceded by one ``rls.set_context(...)``
  statement; in autocommit, where each query is its own transaction, the query
  is sent in a pipeline with ``BEGIN``, the context and ``COMMIT``: one network
  round trip, like the query alone, but three more statements.
- A request that runs no query sends nothing.
- Inside a request or ``context()``, "no context" is sent like any other
  (carried, or ``rls.clear_context()``) until this wrapper knows what the
  session holds, so a session-scoped context that an earlier request left on a
  reused connection never reaches a query that runs without one (a request of
  an unknown host, or without a user).

Values are always bound server-side (a plain ``psycopg.Cursor``, whatever
cursor class Django uses), so they never appear in ``pg_stat_activity``. With
``DJANGO_RLS["SIGNING_KEY"]`` each statement carries a fresh single-use token.
The context is transaction-scoped (``SET LOCAL`` semantics), so nothing is left
on a connection that goes back to a pool or to PgBouncer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.pq import TransactionStatus
from psycopg.types.string import StrDumper

from django_rls.conf import rls_settings
from django_rls.state import EMPTY, Values, current_frame
from django_rls.tokens import sign_context

_APPLIED = "_django_rls_applied"
_UNKNOWN: Any = object()  # the context a session holds before this wrapper has set one
_PRELOADED = "_django_rls_preloaded"
# Reported by the server at connection start (GUC_REPORT); absent where the library is not loaded.
PRELOADED_SETTING = "django_rls.preloaded"

# A query that carries its context starts with this comment; the context is bound as $1.
MARKER = "/*django_rls:%s*/ "
MARKER_NAMED = "/*django_rls:%(django_rls_context)s*/ "
# Statements the server plans and executes, where the extension applies a carried context.
PLANNED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "MERGE", "EXPLAIN")


class ContextParameter(str):
    """A context as the $1 of a query that carries it: a signed token or a JSON object."""


class ContextParameterDumper(StrDumper):
    """Binds a ContextParameter as text: the query never reads $1, so the server cannot infer its type."""

    oid = psycopg.adapters.types["text"].oid


class AppliedContext:
    """What this connection's database session holds, and whether a ROLLBACK can undo it."""

    __slots__ = ("pgconn", "transactional", "values")

    def __init__(self, pgconn: psycopg.Connection[Any], values: Values, transactional: bool) -> None:
        self.pgconn = pgconn
        self.values = values
        self.transactional = transactional


def _signed(values: Values) -> str | None:
    """A fresh single-use token for these values, or None in unsigned mode."""
    key = rls_settings.SIGNING_KEY
    if key is None:
        return None
    return sign_context(
        key, site=values.site, user=values.user, claims=values.claims_dict, lifetime=rls_settings.TOKEN_LIFETIME
    )


def context_statement(values: Values, is_local: bool) -> tuple[str, tuple[Any, ...]]:
    """The SQL (with bound parameters) that sets these values on the server."""
    if values == EMPTY:
        return "SELECT rls.clear_context()", ()
    token = _signed(values)
    if token is not None:
        return "SELECT rls.set_context_signed(%s, %s)", (token, is_local)
    return "SELECT rls.set_context(%s, %s, %s::jsonb, %s)", (values.site, values.user, values.claims, is_local)


@lru_cache(maxsize=4096)
def _unsigned_parameter(values: Values) -> ContextParameter:
    claims = values.claims if values.claims is not None else "null"
    return ContextParameter(f'{{"site":{json.dumps(values.site)},"user":{json.dumps(values.user)},"claims":{claims}}}')


def context_parameter(values: Values) -> ContextParameter:
    """The $1 of a query that carries these values."""
    token = _signed(values)
    return _unsigned_parameter(values) if token is None else ContextParameter(token)


def can_carry(sql: Any, many: bool, context: dict[str, Any]) -> bool:
    """Whether this query can carry its context: one planned statement bound server-side."""
    cursor = getattr(context.get("cursor"), "cursor", None)
    return (
        not many
        and isinstance(sql, str)
        and isinstance(cursor, psycopg.Cursor)
        and not isinstance(cursor, (psycopg.ClientCursor, psycopg.ServerCursor))
        and sql.lstrip(" \t\r\n(")[:7].upper().startswith(PLANNED)
    )


def carrying(sql: str, params: Any, values: Values) -> tuple[str, Any]:
    """The query and parameters that carry these values."""
    parameter = context_parameter(values)
    if params is None:  # psycopg now reads placeholders: a literal % must be doubled
        return MARKER + sql.replace("%", "%%"), (parameter,)
    if isinstance(params, Mapping):
        return MARKER_NAMED + sql, {**params, "django_rls_context": parameter}
    return MARKER + sql, (parameter, *params)


def marker_supported(connection: BaseDatabaseWrapper) -> bool:
    """Whether queries on this connection may carry their context: the server preloads the library.

    The server reports ``django_rls.preloaded`` when the connection starts, so this is
    usually free; where a proxy (PgBouncer) does not pass it on, one query asks, once
    per connection. Preloading is server or role configuration, so the answer holds
    for every backend a pooler may hand this connection; if it is wrong, the server
    refuses the statement rather than run it without its context.
    """
    pgconn: psycopg.Connection[Any] = connection.connection
    cached = getattr(connection, _PRELOADED, None)
    if cached is not None and cached[0] is pgconn:
        return bool(cached[1])
    reported = pgconn.info.parameter_status(PRELOADED_SETTING)
    supported: bool
    if reported is not None:
        supported = reported == "on"
    elif pgconn.autocommit and pgconn.info.transaction_status == TransactionStatus.IDLE:
        row = psycopg.Cursor(pgconn).execute("SELECT current_setting(%s, true)", (PRELOADED_SETTING,)).fetchone()
        supported = row is not None and row[0] == "on"
    else:
        return False  # cannot ask without touching the application's transaction; ask later
    setattr(connection, _PRELOADED, (pgconn, supported))
    return supported


def protected_aliases() -> list[str]:
    """Database aliases whose connections get the context."""
    configured = rls_settings.DATABASES
    if configured is not None:
        return list(configured)
    excluded = {rls_settings.OWNER_DATABASE, rls_settings.BYPASS_DATABASE}
    return [
        alias
        for alias in connections.settings
        if alias not in excluded and connections.settings[alias]["ENGINE"] == "django.db.backends.postgresql"
    ]


def _send(pgconn: psycopg.Connection[Any], values: Values, is_local: bool) -> None:
    sql, params = context_statement(values, is_local)
    psycopg.Cursor(pgconn).execute(sql, params)


class ContextWrapper:
    """The execute wrapper; one instance serves every connection."""

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        connection: BaseDatabaseWrapper = context["connection"]
        frame = current_frame()
        if frame is not None and frame.resolving:
            return execute(sql, params, many, context)
        pgconn = connection.connection
        status = pgconn.info.transaction_status
        applied: AppliedContext | None = getattr(connection, _APPLIED, None)
        if applied is not None and (
            applied.pgconn is not pgconn or (applied.transactional and status == TransactionStatus.IDLE)
        ):
            applied = None
        # What the session holds is unknown until this wrapper has set it: an earlier request on a
        # reused or pooled connection may have left a session-scoped context there. So inside a
        # request or context() even "no context" is sent explicitly, and a query never inherits a
        # context it did not ask for. Code outside both (migrate, check) sends nothing, as before:
        # it may run before the extension exists.
        held = applied.values if applied is not None else (_UNKNOWN if frame is not None else EMPTY)
        wanted = frame.values() if frame is not None else EMPTY

        session_scope = rls_settings.SCOPE == "session"
        if held == wanted or status == TransactionStatus.INERROR:
            result = execute(sql, params, many, context)
        elif not session_scope and can_carry(sql, many, context) and marker_supported(connection):
            in_transaction = not pgconn.autocommit or status != TransactionStatus.IDLE
            carried_sql, carried_params = carrying(sql, params, wanted)
            result = execute(carried_sql, carried_params, many, context)
            if in_transaction:
                setattr(connection, _APPLIED, AppliedContext(pgconn, wanted, transactional=True))
        elif pgconn.autocommit and status == TransactionStatus.IDLE and not session_scope:
            result = self._execute_in_pipeline(connection, pgconn, wanted, execute, sql, params, many, context)
        else:
            in_transaction = not pgconn.autocommit or status != TransactionStatus.IDLE
            _send(pgconn, wanted, is_local=not session_scope)
            setattr(connection, _APPLIED, AppliedContext(pgconn, wanted, transactional=in_transaction))
            result = execute(sql, params, many, context)

        # ROLLBACK TO SAVEPOINT restores whatever context the savepoint saw,
        # which may not be the one recorded here: forget it, re-send if needed.
        if isinstance(sql, str) and sql[:8].upper() == "ROLLBACK":
            setattr(connection, _APPLIED, None)
        return result

    @staticmethod
    def _execute_in_pipeline(
        connection: BaseDatabaseWrapper,
        pgconn: psycopg.Connection[Any],
        values: Values,
        execute: Any,
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        """Run one autocommit query in its own transaction with the context, in one round trip."""
        raw = psycopg.Cursor(pgconn)
        context_sql, context_params = context_statement(values, is_local=True)
        # psycopg cannot pipeline a named (server-side) cursor, as QuerySet.iterator() uses;
        # those four statements then go one by one.
        named = isinstance(getattr(context.get("cursor"), "cursor", None), psycopg.ServerCursor)
        try:
            with connection.wrap_database_errors, nullcontext() if named else pgconn.pipeline():
                raw.execute("BEGIN")
                raw.execute(context_sql, context_params)
                result = execute(sql, params, many, context)
                raw.execute("COMMIT")
        except BaseException:
            if pgconn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                raw.execute("ROLLBACK")
            raise
        return result


wrapper = ContextWrapper()


def install(connection: BaseDatabaseWrapper) -> None:
    """Add the wrapper to a connection of a protected alias (idempotent)."""
    if connection.alias in protected_aliases() and wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(wrapper)


def on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    install(connection)
    connection.connection.adapters.register_dumper(ContextParameter, ContextParameterDumper)
    setattr(connection, _APPLIED, None)
    if connection.alias in protected_aliases():
        # psycopg's prepared statements have names injected SQL can DEALLOCATE and PREPARE again,
        # and the next request on the connection would run the planted statement with its own
        # context (tests/test_session_state.py): never prepare on a connection that serves requests.
        connection.connection.prepare_threshold = None


def clear_session_context(aliases: list[str] | None = None) -> None:
    """With SCOPE = "session": clear what a request left on its connections."""
    for alias in aliases if aliases is not None else protected_aliases():
        connection = connections[alias]
        applied: AppliedContext | None = getattr(connection, _APPLIED, None)
        if applied is None or applied.values == EMPTY or connection.connection is not applied.pgconn:
            continue
        if connection.connection.info.transaction_status == TransactionStatus.INERROR:
            # Nothing can run in a failed transaction; closing is the only sure way to clear.
            connection.close()
        else:
            _send(connection.connection, EMPTY, is_local=False)
        setattr(connection, _APPLIED, None)
