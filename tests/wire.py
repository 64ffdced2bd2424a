"""Count what really goes over the wire to PostgreSQL, with libpq's protocol trace."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg.pq import Trace


@dataclass
class WireLog:
    lines: list[str] = field(default_factory=list)

    @property
    def sent(self) -> list[str]:
        """Messages the client sent (F = frontend)."""
        return [line for line in self.lines if line.startswith("F\t")]

    @property
    def round_trips(self) -> int:
        """Simple queries plus extended-protocol syncs: each waits for the server once."""
        return sum(1 for line in self.sent if "\tQuery\t" in line or line.endswith("\tSync"))

    @property
    def statements(self) -> int:
        """Statements sent: simple queries and extended-protocol Parse messages."""
        return sum(1 for line in self.sent if "\tQuery\t" in line or "\tParse\t" in line)

    @property
    def carried(self) -> int:
        """Queries that carry their context as $1 (the /*django_rls:$1*/ marker)."""
        return sum(1 for line in self.sent if "\tParse\t" in line and "/*django_rls:$1*/" in line)

    @property
    def context_statements(self) -> int:
        return sum(
            1
            for line in self.sent
            if ("\tQuery\t" in line or "\tParse\t" in line)
            and ("rls.set_context" in line or "rls.clear_context" in line)
        )


def start(connection: Any) -> tuple[Any, Any, WireLog]:
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    output = tempfile.TemporaryFile("w+")
    pgconn.trace(output.fileno())
    pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
    return pgconn, output, WireLog()


def stop(state: tuple[Any, Any, WireLog]) -> WireLog:
    pgconn, output, log = state
    pgconn.untrace()
    output.seek(0)
    log.lines.extend(output.read().splitlines())
    output.close()
    return log


@contextmanager
def traced(connection: Any) -> Iterator[WireLog]:
    state = start(connection)
    try:
        yield state[2]
    finally:
        stop(state)
