"""How a query carries its context on the wire: the statement marker and the one parameter it binds.

A statement whose text starts with ``/*django_rls:$1*/`` and that the client binds
through the extended query protocol gets its context from ``$1`` (ext/statement.c).
Only the context is ever bound that way; the query's own parameters travel exactly
as the alias's binding would send them:

- Django's default client-side binding: :class:`CarryingClientCursor` inlines them
  client-side as psycopg's ``ClientCursor`` (Django's default cursor) does, so the
  application's SQL behaves as it always did, and binds the context alone as ``$1``.
- ``OPTIONS={"server_side_binding": True}``: :class:`CarryingServerBindingCursor`
  binds them server-side after the context, renumbered from ``$2``.

The bridge (database.py) decides when a query carries a context and hands it to the
cursor just before the query runs (``cursor.django_rls_carry``); the cursor spends it
on that one statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from django.db.backends.postgresql.base import Cursor as DjangoClientCursor
from django.db.backends.postgresql.base import ServerBindingCursor as DjangoServerBindingCursor
from psycopg import adapt
from psycopg import sql as pgsql
from psycopg.types.string import StrDumper

try:  # what ClientCursor.mogrify() inlines with; private to psycopg, so a fallback below
    from psycopg._queries import PostgresClientQuery
except ImportError:  # a psycopg that moved it: inline through a ClientCursor, as before
    PostgresClientQuery = None

# The C side's STATEMENT_MARKER (ext/statement.c), as psycopg writes it before numbering placeholders.
STATEMENT_MARKER = "/*django_rls:$1*/"
MARKER = "/*django_rls:%s*/ "
MARKER_BYTES = MARKER.encode("ascii")
MARKER_NAMED = "/*django_rls:%(django_rls_context)s*/ "
# Statements the server plans and executes, where the extension applies a carried context.
PLANNED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "MERGE", "EXPLAIN")
# A statement that carries a context and does nothing else: it sets the context for the rest
# of its transaction, before a query that cannot carry one itself (a utility statement, a
# named cursor's DECLARE, executemany).
CARRIER = MARKER + "SELECT"


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


class CarryingClientCursor(CarryingMixin, DjangoServerBindingCursor):  # type: ignore[misc]
    """Django's default client-side binding, able to carry a context.

    The query's parameters are inlined client-side by psycopg's own ClientCursor
    (``mogrify``), exactly as Django's default cursor inlines them, and the text goes
    as a simple query, as it would. A carried context goes as the only bound
    parameter, $1, through the extended protocol: never as text in the query.
    """

    # The ClientCursor that ran the last executemany(): its rowcount is known only once a
    # pipeline the call ran in has synced.
    _django_rls_many: psycopg.ClientCursor[Any] | None = None

    def _inline(self, query: Any, params: Any) -> Any:
        """The query with its parameters inlined; untouched without parameters, as ClientCursor leaves it.

        What ``ClientCursor.mogrify()`` does, with this cursor's adapters (a copy of the
        connection's, as a new ClientCursor would take), without building a cursor per query.
        The text stays in the connection's encoding (bytes), as psycopg sends it.
        """
        if params is None:
            return query
        if PostgresClientQuery is None:
            return DjangoClientCursor(self.connection).mogrify(query, params)
        transformer = adapt.Transformer(self)
        inlined = PostgresClientQuery(transformer)
        inlined.convert(query, params)
        return inlined.query

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        carry = self._take_carry()
        self._django_rls_many = None
        query = self._inline(query, params)
        if carry is None:
            return super().execute(query, None, prepare=False, binary=binary)
        if isinstance(query, bytes):  # Django connects with client_encoding UTF8: a % byte is a % sign
            marked: Any = MARKER_BYTES + query.replace(b"%", b"%%")
        else:
            marked = MARKER + query_text(self, query).replace("%", "%%")
        return super().execute(marked, (carry,), prepare=False, binary=binary)

    def executemany(
        self, query: Any, params_seq: Iterable[Sequence[Any] | Mapping[str, Any]], *, returning: bool = False
    ) -> None:
        if self._take_carry() is not None:
            raise psycopg.NotSupportedError("executemany() cannot carry a django_rls context")
        if returning:
            raise psycopg.NotSupportedError(
                "executemany(returning=True) is not supported on a django_rls connection; run execute() per row"
            )
        self._django_rls_many = DjangoClientCursor(self.connection)
        self._django_rls_many.executemany(query, params_seq)

    @property
    def rowcount(self) -> int:
        if self._django_rls_many is not None:
            return self._django_rls_many.rowcount
        return super().rowcount

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        return super().stream(self._inline(query, params), None, **kwargs)

    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return super().copy(self._inline(statement, params), None, **kwargs)


def carrying_cursor_class(cursor_factory: Any) -> type[psycopg.Cursor[Any]] | None:
    """The carrying class that stands in for Django's own cursor class, or None for any other."""
    if cursor_factory is DjangoClientCursor:
        return CarryingClientCursor
    if cursor_factory is DjangoServerBindingCursor:
        return CarryingServerBindingCursor
    return None
