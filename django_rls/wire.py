"""How a query carries its context on the wire: the statement marker and the one parameter it binds.

A statement whose text starts with ``/*django_rls:$1*/`` and that the client binds
through the extended query protocol gets its context from ``$1`` (ext/statement.c).
Only the context is ever bound that way; the query's own parameters travel exactly
as the alias's binding would send them:

- Django's default client-side binding: :class:`CarryingClientCursor` is Django's
  own cursor class; a query that carries nothing runs through it unchanged, and one
  that carries a context has its parameters inlined by the same code, then goes with
  the context alone bound as ``$1``.
- ``OPTIONS={"server_side_binding": True}``: :class:`CarryingServerBindingCursor`
  binds them server-side after the context, renumbered from ``$2``.

The bridge (database.py) decides when a query carries a context and hands it to the
cursor just before the query runs (``cursor.django_rls_carry``); the cursor spends it
on that one statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import psycopg
from django.db.backends.postgresql.base import Cursor as DjangoClientCursor
from django.db.backends.postgresql.base import ServerBindingCursor as DjangoServerBindingCursor
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.types.string import StrDumper

# The C side's STATEMENT_MARKER (ext/statement.c), as psycopg writes it before numbering placeholders.
STATEMENT_MARKER = "/*django_rls:$1*/"
MARKER = "/*django_rls:%s*/ "
MARKER_NAMED = "/*django_rls:%(django_rls_context)s*/ "
# The marker in front of a client-side cursor's final (inlined) text, where psycopg numbers nothing.
MARKER_TEXT = (STATEMENT_MARKER + " ").encode("ascii")
# Statements the server plans and executes, where the extension applies a carried context.
PLANNED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "MERGE", "EXPLAIN")
# A statement that carries a context and does nothing else: it sets the context for the rest
# of its transaction, before a query that cannot carry one itself (a utility statement, a
# named cursor's DECLARE, executemany).
CARRIER = MARKER + "SELECT"
_TEXT_TYPE = (psycopg.adapters.types["text"].oid,)
_TEXT_FORMAT = (pq.Format.TEXT,)


def _sends_through_execute_send() -> bool:
    """Whether psycopg sends a query through ``_execute_send()``, where CarryingClientCursor adds the marker."""
    send = getattr(psycopg.ClientCursor, "_maybe_prepare_gen", None)
    code = getattr(send, "__code__", None)
    return code is not None and "_execute_send" in code.co_names and hasattr(psycopg.ClientCursor, "_execute_send")


# Checked once, at import: a psycopg that sends otherwise gets an error before a carried query runs.
CARRIES_CLIENT_SIDE = _sends_through_execute_send()


class ContextParameter(str):
    """A context as the $1 of a query that carries it: a signed token or a JSON object."""


class ContextParameterDumper(StrDumper):
    """Binds a ContextParameter as text: the query never reads $1, so the server cannot infer its type."""

    oid = psycopg.adapters.types["text"].oid


def is_planned(sql: Any) -> bool:
    """Whether a query is one statement the server plans (the marker counts only there)."""
    return isinstance(sql, str) and sql.lstrip(" \t\r\n(")[:7].upper().startswith(PLANNED)


def query_text(cursor: psycopg.Cursor[Any], query: Any) -> str:
    """A query (str, bytes or psycopg.sql object) as text."""
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode(cursor.connection.info.encoding)
    if isinstance(query, pgsql.Composable):
        return query.as_string(cursor)
    raise TypeError(f"cannot carry a django_rls context on a query of type {type(query).__name__}")


def carrying(sql: str, params: Any, parameter: ContextParameter) -> tuple[str, Any]:
    """The query and server-side parameters that carry this context as $1."""
    if params is None:  # psycopg now reads placeholders: a literal % must be doubled
        return MARKER + sql.replace("%", "%%"), (parameter,)
    if isinstance(params, Mapping):
        return MARKER_NAMED + sql, {**params, "django_rls_context": parameter}
    return MARKER + sql, (parameter, *params)


class CarryingMixin:
    """A context the bridge hands to the cursor for the next statement it sends."""

    django_rls_carry: ContextParameter | None = None

    def _take_carry(self) -> ContextParameter | None:
        carry, self.django_rls_carry = self.django_rls_carry, None
        return carry


class CarryingServerBindingCursor(CarryingMixin, DjangoServerBindingCursor):  # type: ignore[misc]
    """Django's server-side binding cursor; a carried context goes first, as $1."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        carry = self._take_carry()
        if carry is not None:
            query, params = carrying(query_text(self, query), params, carry)
        return super().execute(query, params, prepare=prepare, binary=binary)


class CarryingClientCursor(CarryingMixin, DjangoClientCursor):  # type: ignore[misc]
    """Django's default cursor (client-side binding), able to carry a context.

    A query that carries nothing runs exactly as it does on Django's own cursor: the
    same class, so the same code, after one attribute check. A query that carries a context
    has its parameters inlined by that same code, then goes through the extended
    protocol with the marker in front and the context bound as ``$1``, the only bound
    parameter: never as text in the query. That one step replaces psycopg's
    ``_execute_send()`` for that statement, where the client-side cursor sends the inlined text; with a
    psycopg that no longer sends through it, a query that should carry a context fails
    before it is sent (``CARRIES_CLIENT_SIDE``), and again after, should the check at
    import have been wrong.
    """

    # The context being sent with the statement under way; _send_carrying() spends it.
    _django_rls_sending: ContextParameter | None = None

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        carry = self.django_rls_carry
        if carry is None:
            return super().execute(query, params, prepare=prepare, binary=binary)
        self.django_rls_carry = None
        if not CARRIES_CLIENT_SIDE:
            raise _cannot_carry()
        # For this one statement, psycopg's send step is ours (an instance attribute): a query
        # that carries nothing pays no extra call.
        self._django_rls_sending = carry
        self._execute_send = self._send_carrying
        try:
            result = super().execute(query, params, prepare=prepare, binary=binary)
        finally:
            sent = self._django_rls_sending is None
            self._django_rls_sending = None
            del self._execute_send
        if not sent:
            raise _cannot_carry()
        return result

    def _send_carrying(self, query: Any, *args: Any, **kwargs: Any) -> None:
        """psycopg's send step for a statement that carries a context: the marker, the inlined text, $1."""
        carry = self._django_rls_sending
        if carry is None:  # a second statement within one execute(): it carries nothing
            return DjangoClientCursor._execute_send(self, query, *args, **kwargs)
        self._django_rls_sending = None
        binary = kwargs.get("binary")
        if binary or (binary is None and self.format == pq.Format.BINARY):
            raise psycopg.NotSupportedError("client-side cursors don't support binary results")
        self._query = query
        # The inlined text is final (psycopg reads no placeholder in it again): a % stays a %.
        marked = MARKER_TEXT + query.query
        values = [carry.encode(self._tx.encoding)]
        pgconn = self._pgconn
        if self._conn._pipeline:
            self._conn._pipeline.command_queue.append(
                partial(pgconn.send_query_params, marked, values, param_formats=_TEXT_FORMAT, param_types=_TEXT_TYPE)
            )
        else:
            pgconn.send_query_params(marked, values, param_formats=_TEXT_FORMAT, param_types=_TEXT_TYPE)

    def executemany(
        self, query: Any, params_seq: Iterable[Sequence[Any] | Mapping[str, Any]], *, returning: bool = False
    ) -> None:
        if self._take_carry() is not None:
            raise psycopg.NotSupportedError("executemany() cannot carry a django_rls context")
        return super().executemany(query, params_seq, returning=returning)


def _cannot_carry() -> psycopg.NotSupportedError:
    return psycopg.NotSupportedError(
        f"django_rls cannot carry a context with psycopg {psycopg.__version__}'s client-side cursor: it does not "
        "send queries through Cursor._execute_send(). Use a psycopg release django_rls supports (pyproject.toml), "
        'or OPTIONS={"server_side_binding": True}'
    )


def carrying_cursor_class(cursor_factory: Any) -> type[psycopg.Cursor[Any]] | None:
    """The carrying class that stands in for Django's own cursor class, or None for any other."""
    if cursor_factory is DjangoClientCursor:
        return CarryingClientCursor
    if cursor_factory is DjangoServerBindingCursor:
        return CarryingServerBindingCursor
    return None
