"""Hand the current context to PostgreSQL, lazily, once per transaction.

An execute wrapper on every protected database alias runs before each query and
makes one choice (``ContextWrapper.__call__``):

- **as is**: the session already holds the wanted context (a later query of the
  same transaction), or the transaction has failed anyway.
- **carry**: the query itself carries the context: it is sent as
  ``/*django_rls:$1*/ <query>`` with the context bound as ``$1`` (wire.py,
  ext/statement.c), whatever binding the alias uses for the query's own
  parameters, so no extra statement is sent. Inside a transaction only the first
  query that needs the context carries it; the extension keeps it until the
  transaction ends.
- **send first**: a query that cannot carry (a named cursor's ``DECLARE``, as
  ``QuerySet.iterator()`` sends; ``executemany``; a utility statement) inside a
  transaction is preceded by a statement that carries the context and does
  nothing else; in autocommit, where each query is its own transaction, the query
  is wrapped in ``BEGIN``, that statement and ``COMMIT``, pipelined where psycopg
  can (one round trip).
- **in a transaction of its own**: on a server with Citus (reported at connection
  start as ``django_rls.citus``, else asked once per connection:
  ``citus_coordinator``) an autocommit query that could carry is sent as ``send
  first`` sends one in autocommit: the context reaches the workers only from a
  transaction block (ext/citus.c, docs/scale-out.md), and a query carrying it
  alone would read and write none of the rows kept there. Other servers pay
  nothing where the library reports (one catalog read per connection where it is
  not reported), and a cached test per autocommit query.
- **setter**: only where the marker cannot work (the server did not preload the
  library, asked once per connection by ``marker_supported``, or ``SCOPE =
  "session"``) the context goes through ``rls.set_context()`` (signed:
  ``rls.set_context_signed()``). A statement-bound application role (``manage.py
  rls_roles``) is refused that by the server: such a query fails, it never runs
  without its context. This is also how the SQL-only mode of hosted PostgreSQL
  (django_rls/sqlonly.py) gets its context: its server has no library, and its
  setters have the same names.
- A request that runs no query sends nothing.
- Inside a request or ``context()``, "no context" is sent like any other until this
  wrapper knows what the session holds, so a session-scoped context that an
  earlier request left on a reused connection never reaches a query that runs
  without one (a request of an unknown host, or without a user).

Values are always bound (never formatted into SQL), so they never appear in
``pg_stat_activity``. With ``DJANGO_RLS["SIGNING_KEY"]`` each context is signed
once, as a reusable token, and each statement that carries it sends a new
single-use *use* of that token: a fresh sequence number and a short MAC
(tokens.py, ``ReusableTokens``). A setter call sends a single-use token instead,
which both the library and the SQL-only mode accept (the SQL-only mode knows no
uses); the setter path sets a context once per transaction, not per statement. The context is transaction-scoped
(``SET LOCAL`` semantics), so nothing is left on a connection that goes back to
a pool or to PgBouncer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.pq import TransactionStatus

from django_rls.conf import rls_settings
from django_rls.state import EMPTY, Values, current_frame
from django_rls.tokens import ReusableToken, current_issuer, sign_context, sign_reusable
from django_rls.wire import (
    CARRIER,
    MARKER,
    CarryingMixin,
    ContextParameter,
    ContextParameterDumper,
    carrying_cursor_class,
    is_planned,
    query_text,
)

__all__ = [
    "MARKER",
    "ContextParameter",
    "citus_coordinator",
    "context_parameter",
    "install",
    "marker_supported",
    "wrapper",
]

_APPLIED = "_django_rls_applied"
_UNKNOWN: Any = object()  # the context a session holds before this wrapper has set one
_PRELOADED = "_django_rls_preloaded"
_PREPARED = "_django_rls_prepared"  # the psycopg connection prepare() has readied
_CITUS = "_django_rls_citus"
# Reported by the server at connection start (GUC_REPORT); absent where the library is not loaded.
PRELOADED_SETTING = "django_rls.preloaded"
# Reported likewise: "on" where the server has loaded the Citus library.
CITUS_SETTING = "django_rls.citus"


class AppliedContext:
    """What this connection's database session holds, and whether a ROLLBACK can undo it."""

    __slots__ = ("pgconn", "transactional", "values")

    def __init__(self, pgconn: psycopg.Connection[Any], values: Values, transactional: bool) -> None:
        self.pgconn = pgconn
        self.values = values
        self.transactional = transactional


class ReusableTokens:
    """The reusable token of each context this process sent recently, in signed mode.

    A context is signed once per half of ``TOKEN_LIFETIME`` (and again in a forked
    child, which is an issuer of its own), however many statements, requests and
    connections send it: each of them costs only a use (a sequence number and a short
    MAC). The half left of a token's lifetime covers the time a statement takes to
    reach the server and clock differences. At most ``size`` contexts are kept, the
    least recently used forgotten first.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._tokens: OrderedDict[tuple[str | bytes, int, Values], tuple[ReusableToken, float]] = OrderedDict()
        # The last token handed out, its cache key and when to sign again: the statements of a
        # request follow one another with one context, so most uses need neither lock nor dict.
        self._last: tuple[tuple[str | bytes, int, Values], ReusableToken, float] | None = None

    def use(self, key: str | bytes, lifetime: int, values: Values) -> str:
        """A fresh use of the reusable token of these values."""
        cache_key = (key, lifetime, values)
        now = time.time()
        last = self._last
        if last is not None and last[2] > now and last[0] == cache_key and last[1].issuer == current_issuer():
            return last[1].use(now=now)
        with self._lock:
            cached = self._tokens.get(cache_key)
            if cached is not None and cached[1] > now and cached[0].issuer == current_issuer():
                self._tokens.move_to_end(cache_key)
                token = cached[0]
            else:
                token = sign_reusable(
                    key, site=values.site, user=values.user, claims=values.claims_dict, lifetime=lifetime, now=now
                )
                self._tokens[cache_key] = (token, token.expires_at - lifetime / 2)
                self._tokens.move_to_end(cache_key)
                if len(self._tokens) > self.size:
                    self._tokens.popitem(last=False)
            self._last = (cache_key, token, self._tokens[cache_key][1])
        return token.use(now=now)


reusable_tokens = ReusableTokens()


def _signed_use(values: Values) -> str | None:
    """A fresh use of these values' reusable token, or None in unsigned mode."""
    key = rls_settings.SIGNING_KEY
    if key is None:
        return None
    return reusable_tokens.use(key, rls_settings.TOKEN_LIFETIME, values)


def _signed_once(values: Values) -> str | None:
    """A single-use token of these values, or None in unsigned mode."""
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
    token = _signed_once(values)
    if token is not None:
        return "SELECT rls.set_context_signed(%s, %s)", (token, is_local)
    return "SELECT rls.set_context(%s, %s, %s::jsonb, %s)", (values.site, values.user, values.claims, is_local)


@lru_cache(maxsize=4096)
def _unsigned_parameter(values: Values) -> ContextParameter:
    claims = values.claims if values.claims is not None else "null"
    return ContextParameter(f'{{"site":{json.dumps(values.site)},"user":{json.dumps(values.user)},"claims":{claims}}}')


def context_parameter(values: Values) -> ContextParameter:
    """The $1 of a query that carries these values."""
    token = _signed_use(values)
    return _unsigned_parameter(values) if token is None else ContextParameter(token)


def carrier(sql: Any, many: bool, context: dict[str, Any]) -> CarryingMixin | None:
    """The cursor that can carry the context on this very query: one planned statement, not executemany."""
    cursor = getattr(context.get("cursor"), "cursor", None)
    if many or not isinstance(cursor, CarryingMixin) or not is_planned(sql):
        return None
    return cursor


def marker_supported(connection: BaseDatabaseWrapper) -> bool:
    """Whether queries on this connection may carry their context: the server preloads the library.

    The server reports ``django_rls.preloaded`` when the connection starts, so this is
    usually free; where a proxy (PgBouncer) does not pass it on, one query asks, once
    per connection, inside the application's transaction if one is open (it reads a
    setting and changes nothing; a failed transaction never gets here). Preloading is
    server or role configuration, so the answer holds for every backend a pooler may
    hand this connection; if it is wrong, the server refuses the statement rather than
    run it without its context.
    """
    return _reported_or_asked(
        connection, _PRELOADED, PRELOADED_SETTING, f"SELECT current_setting('{PRELOADED_SETTING}', true) = 'on'"
    )


def citus_coordinator(connection: BaseDatabaseWrapper) -> bool:
    """Whether an autocommit query on this connection needs a transaction of its own: Citus may run it.

    The library reports ``django_rls.citus`` at connection start: ``on`` where the
    server has loaded the Citus library (Citus can only be preloaded, so the answer
    never changes for a backend), ``off`` where it has not. That costs no query, and
    the answer cannot go stale: ``on`` holds before ``CREATE EXTENSION citus`` and
    after it. ``on`` does not say the database has the extension; a Citus server's
    database without it then pays ``BEGIN``/``COMMIT`` in the same pipeline, and no
    row changes. Where nothing is reported (a proxy that does not pass it on, an
    older library) one catalog read asks, once per connection, in autocommit,
    changing nothing; that answer is the database's, so it holds for every backend a
    pooler may hand this connection, but not past a later ``CREATE EXTENSION citus``.

    A wrong "no" fails closed: the query then carries its context alone, which the
    workers never see, so it reads and writes none of their rows. No client can make
    the report say "no" where the library is loaded (``PGC_INTERNAL``); where it is
    not, a setting of that name is a placeholder, which the server never reports.
    Citus on a worker with metadata answers yes as well: wrapping a query in a
    transaction there changes no row it sees.
    """
    return _reported_or_asked(
        connection, _CITUS, CITUS_SETTING, "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')"
    )


def _reported_or_asked(connection: BaseDatabaseWrapper, attribute: str, setting: str, question: str) -> bool:
    """Whether ``setting`` is reported ``on`` at connection start, or else what the one-column boolean query
    ``question`` answers (NULL: no); kept on the connection under ``attribute`` with the psycopg connection it
    holds for, so a new connection asks again."""
    pgconn: psycopg.Connection[Any] = connection.connection
    cached = getattr(connection, attribute, None)
    if cached is not None and cached[0] is pgconn:
        return bool(cached[1])
    reported = pgconn.info.parameter_status(setting)
    answer: bool
    if reported is not None:
        answer = reported == "on"
    else:
        row = psycopg.Cursor(pgconn).execute(question).fetchone()
        answer = row is not None and bool(row[0])
    setattr(connection, attribute, (pgconn, answer))
    return answer


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


def may_roll_back(sql: Any, context: dict[str, Any]) -> bool:
    """Whether a query may have rolled back to a savepoint (or rolled back at all).

    Not only Django's own ``ROLLBACK TO SAVEPOINT``: raw SQL may have spaces or a comment
    before the keyword, be a psycopg ``sql.Composed``, or put it after another statement
    (client-side binding sends a query without parameters as one string). Any query whose
    text has the word counts, in any case; a false alarm costs only the context carried again.
    """
    if isinstance(sql, str):
        text = sql
    else:
        cursor = getattr(context.get("cursor"), "cursor", None)
        try:
            text = query_text(cursor, sql)
        except (TypeError, psycopg.Error):
            return True  # cannot read it: assume the worst
    return "rollback" in text.lower()


def _send(pgconn: psycopg.Connection[Any], values: Values, is_local: bool) -> None:
    sql, params = context_statement(values, is_local)
    psycopg.Cursor(pgconn).execute(sql, params)


def _carry_first(pgconn: psycopg.Connection[Any], values: Values) -> None:
    """Set the context for the rest of the transaction with a statement that carries it and does nothing else."""
    psycopg.Cursor(pgconn).execute(CARRIER, (context_parameter(values),))


class ContextWrapper:
    """The execute wrapper; one instance serves every connection."""

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        connection: BaseDatabaseWrapper = context["connection"]
        frame = current_frame()
        if frame is not None and frame.resolving:
            return execute(sql, params, many, context)
        # First what this query wants: a request's frame asks its resolvers, whose own queries (find() in a
        # context of its own, a resolver's context() block) pass through here and change what the
        # connection holds. What it holds is read only after them.
        wanted = frame.values() if frame is not None else EMPTY
        pgconn = connection.connection
        if getattr(connection, _PREPARED, None) is not pgconn:
            prepare(connection)
        # libpq's status as an int: pgconn.info builds an object and an enum member on every call.
        status = pgconn.pgconn.transaction_status
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

        if held is wanted or held == wanted or status == TransactionStatus.INERROR:
            result = execute(sql, params, many, context)
        elif rls_settings.SCOPE == "session" or not marker_supported(connection):
            result = self._execute_after_setter(connection, pgconn, wanted, execute, sql, params, many, context)
        elif (cursor := carrier(sql, many, context)) is not None and (
            status != TransactionStatus.IDLE or not pgconn.autocommit or not citus_coordinator(connection)
        ):
            cursor.django_rls_carry = context_parameter(wanted)
            try:
                result = execute(sql, params, many, context)
            finally:
                cursor.django_rls_carry = None
            if not pgconn.autocommit or status != TransactionStatus.IDLE:
                setattr(connection, _APPLIED, AppliedContext(pgconn, wanted, transactional=True))
        elif not pgconn.autocommit or status != TransactionStatus.IDLE:
            _carry_first(pgconn, wanted)
            setattr(connection, _APPLIED, AppliedContext(pgconn, wanted, transactional=True))
            result = execute(sql, params, many, context)
        else:
            result = self._execute_in_transaction(connection, pgconn, wanted, execute, sql, params, many, context)

        # ROLLBACK TO SAVEPOINT restores whatever context the savepoint saw,
        # which may not be the one recorded here: forget it, re-send if needed.
        if getattr(connection, _APPLIED, None) is not None and may_roll_back(sql, context):
            setattr(connection, _APPLIED, None)
        return result

    def _execute_after_setter(
        self,
        connection: BaseDatabaseWrapper,
        pgconn: psycopg.Connection[Any],
        values: Values,
        execute: Any,
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        """Set the context with the setter functions, where the marker cannot work."""
        status = pgconn.info.transaction_status
        session_scope = rls_settings.SCOPE == "session"
        if pgconn.autocommit and status == TransactionStatus.IDLE and not session_scope:
            setter = context_statement(values, is_local=True)
            return self._execute_in_transaction(connection, pgconn, values, execute, sql, params, many, context, setter)
        in_transaction = not pgconn.autocommit or status != TransactionStatus.IDLE
        _send(pgconn, values, is_local=not session_scope)
        setattr(connection, _APPLIED, AppliedContext(pgconn, values, transactional=in_transaction))
        return execute(sql, params, many, context)

    @staticmethod
    def _execute_in_transaction(
        connection: BaseDatabaseWrapper,
        pgconn: psycopg.Connection[Any],
        values: Values,
        execute: Any,
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
        setter: tuple[str, tuple[Any, ...]] | None = None,
    ) -> Any:
        """Run one autocommit query in a transaction of its own that first sets the context.

        The context goes in a statement that carries it (or, where the marker cannot
        work, the setter statement), in one round trip where psycopg can pipeline.
        """
        raw = psycopg.Cursor(pgconn)
        context_sql, context_params = setter if setter is not None else (CARRIER, (context_parameter(values),))
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
    """Add the wrappers to a connection of a protected alias (idempotent)."""
    from django_rls import hidden_rows, router

    if connection.alias in protected_aliases():
        router.install(connection)
        for added in (wrapper, hidden_rows.wrapper):
            if added not in connection.execute_wrappers:
                connection.execute_wrappers.append(added)


def prepare(connection: BaseDatabaseWrapper) -> None:
    """Ready a new psycopg connection for carrying a context (idempotent, once per connection).

    Run by the first of our ``connection_created`` receiver and this wrapper's first
    query on the connection, so the order of receivers does not matter: another app's
    receiver (``django.contrib.postgres`` reads ``pg_type``) may query through the
    wrapper before ours has run, inside a request or ``context()``.
    """
    pgconn: psycopg.Connection[Any] = connection.connection
    if getattr(connection, _PREPARED, None) is pgconn:
        return
    setattr(connection, _PREPARED, pgconn)
    pgconn.adapters.register_dumper(ContextParameter, ContextParameterDumper)
    setattr(connection, _APPLIED, None)
    if connection.alias in protected_aliases():
        # Django's own cursor classes, able to carry a context; the binding of the query's own
        # parameters stays what the alias chose (wire.py). A cursor_factory set in OPTIONS is kept:
        # its queries get the context from a statement sent first.
        carrying_class = carrying_cursor_class(pgconn.cursor_factory)
        if carrying_class is not None:
            pgconn.cursor_factory = carrying_class
        # psycopg's prepared statements have names injected SQL can DEALLOCATE and PREPARE again,
        # and the next request on the connection would run the planted statement with its own
        # context (tests/test_session_state.py): never prepare on a connection that serves requests.
        pgconn.prepare_threshold = None


def on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    install(connection)
    prepare(connection)
    # A connection Django takes from its pool may be the very psycopg connection this wrapper
    # used before, since served to other threads' requests: what its session holds is unknown.
    setattr(connection, _APPLIED, None)


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
