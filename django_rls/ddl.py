"""Run django_rls's DDL on a live database: short lock waits, retries, and a clear message when it gives up.

Changing a policy, switching row level security on, or adding audit triggers
locks the table (ACCESS EXCLUSIVE for policies, SHARE ROW EXCLUSIVE for
triggers). PostgreSQL queues lock requests in order, so a DDL statement waiting
behind one long report makes every later query of that table wait behind the
DDL. Every unit of work here therefore:

- runs in its own transaction (a savepoint when the caller is inside one),
- takes the locks it needs first, in one ``LOCK TABLE`` statement bounded by
  ``lock_timeout`` and ``statement_timeout``, so no other session queues
  behind it for longer than the lock timeout,
- and on a lock timeout rolls back, waits (exponential backoff with jitter)
  and tries again until the budget is spent. Then it raises
  :class:`LockWaitExhausted`, naming the table, the lock and the sessions that
  hold conflicting locks.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

T = TypeVar("T")

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"

# The modes of pg_locks that conflict with the mode asked for (PostgreSQL's lock conflict table).
_ALL_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
CONFLICTS = {
    ACCESS_EXCLUSIVE: _ALL_MODES,
    SHARE_ROW_EXCLUSIVE: _ALL_MODES[2:],
}
_STRENGTH = {SHARE_ROW_EXCLUSIVE: 1, ACCESS_EXCLUSIVE: 2}

FIRST_BACKOFF = 0.25  # seconds before the second attempt; doubles each time, up to MAX_BACKOFF
MAX_BACKOFF = 5.0
QUERY_START = 120  # characters of a blocking session's query shown in the message


@dataclass(frozen=True)
class LockRequest:
    """A table lock a unit of work takes before its statements.

    ``only`` locks the table alone; otherwise its partitions and inheritance
    children are locked in the same mode (audit triggers are created and
    dropped on them too).
    """

    table: str  # schema-qualified, quoted: what LOCK TABLE and regclass read back exactly
    display: str
    mode: str
    only: bool = True

    def merge(self, other: LockRequest) -> LockRequest:
        """One request covering both: the stronger mode, children if either wants them."""
        mode = self.mode if _STRENGTH[self.mode] >= _STRENGTH[other.mode] else other.mode
        return LockRequest(self.table, self.display, mode, self.only and other.only)

    def statement(self) -> str:
        return lock_statements([self])[0][1]


def lock_statements(locks: Sequence[LockRequest]) -> list[tuple[list[LockRequest], str]]:
    """As few LOCK TABLE statements as take ``locks``: one per mode and ONLY-ness, tables in the order given."""
    batches: dict[tuple[str, bool], list[LockRequest]] = {}
    for lock in locks:
        batches.setdefault((lock.mode, lock.only), []).append(lock)
    found = []
    for (mode, only), batch in batches.items():
        template = "LOCK TABLE ONLY {} IN {} MODE" if only else "LOCK TABLE {} IN {} MODE"
        tables = sql.SQL(", ").join(sql.SQL(lock.table) for lock in batch)
        found.append((batch, sql.SQL(template).format(tables, sql.SQL(mode)).as_string(None)))
    return found


@dataclass(frozen=True)
class Holder:
    """A session that holds (or waits for, ahead of us) a lock that conflicts with ours."""

    pid: int
    application_name: str
    role: str
    relation: str
    mode: str
    granted: bool
    state: str | None
    seconds: float | None
    query: str | None

    def describe(self) -> str:
        what = "holds" if self.granted else "is waiting ahead of it for"
        since = f"in its transaction for {self.seconds:.1f} s" if self.seconds is not None else "for an unknown time"
        if self.query is None:
            query = "query hidden (grant pg_read_all_stats to this role to see it)"
        else:
            start = " ".join(self.query.split())
            query = f"query: {start[:QUERY_START]}{'…' if len(start) > QUERY_START else ''}"
        state = f", {self.state}" if self.state else ""
        return (
            f"pid {self.pid} (application_name {self.application_name!r}, role {self.role}{state}) {what} "
            f"{self.mode} on {self.relation}, {since}, {query}"
        )


@dataclass(frozen=True)
class Bounds:
    """How long one lock wait may last, and how long all attempts of a run together may take (seconds)."""

    lock_timeout: float
    budget: float

    def timeout_setting(self) -> str:
        return f"{max(1, round(self.lock_timeout * 1000))}ms"


class LockWaitExhausted(Exception):
    """The budget is spent and the lock is still held elsewhere; nothing of the unit was changed."""

    def __init__(self, what: str, lock: LockRequest | None, holders: list[Holder], attempts: int, waited: float):
        self.what = what
        self.lock = lock
        self.holders = holders
        self.attempts = attempts
        self.waited = waited
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.lock is not None:
            article = "an" if self.lock.mode[0] in "AEIOU" else "a"
            needs = (
                f"it needs {article} {self.lock.mode} lock on {self.lock.display}"
                f"{'' if self.lock.only else ' and its partitions'}"
            )
        else:
            needs = (
                "a statement waited longer than the lock timeout for a row or catalog entry another transaction changed"
            )
        message = f"gave up on {self.what} after {self.attempts} attempt(s) in {self.waited:.1f} s: {needs}"
        if self.holders:
            message += "; " + "; ".join(h.describe() for h in self.holders)
        elif self.lock is not None:
            message += "; no session holds a conflicting lock any more (it ended just now): run it again"
        else:
            message += "; no write transaction is open any more (it ended just now): run it again"
        return message


def _sqlstate(exc: BaseException) -> str | None:
    while exc is not None:
        if isinstance(exc, psycopg.Error) and exc.sqlstate:
            return exc.sqlstate
        exc = exc.__cause__  # type: ignore[assignment]
    return None


LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"


class _LockPhaseTimeout(Exception):
    pass


def holders(connection: BaseDatabaseWrapper, lock: LockRequest) -> list[Holder]:
    """Sessions of this database that hold (or queue for) a lock conflicting with ``lock``, longest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE wanted AS (
                SELECT %s::regclass::oid AS rel
                UNION
                SELECT i.inhrelid FROM pg_inherits i JOIN wanted w ON i.inhparent = w.rel WHERE NOT %s
            )
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, '?'),
                   l.relation::regclass::text, l.mode, l.granted, a.state,
                   extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.query_start))::float8,
                   CASE WHEN a.query IS NOT NULL AND a.query <> '<insufficient privilege>' THEN a.query END
              FROM pg_locks l
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation'
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.relation IN (SELECT rel FROM wanted)
               AND l.mode = ANY(%s::text[])
               AND l.pid <> pg_backend_pid()
             ORDER BY l.granted DESC, 8 DESC NULLS LAST, a.pid
            """,
            [lock.table, lock.only, list(CONFLICTS[lock.mode])],
        )
        seen: set[int] = set()
        found = []
        for row in cursor.fetchall():
            if row[0] not in seen:
                seen.add(row[0])
                found.append(Holder(*row))
        return found


def advisory_holders(connection: BaseDatabaseWrapper, key: str) -> list[Holder]:
    """The sessions that hold the advisory lock ``hashtext(key)``."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, '?'),
                   'advisory lock ' || %s, 'ExclusiveLock', l.granted, a.state,
                   extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.backend_start))::float8,
                   CASE WHEN a.query IS NOT NULL AND a.query <> '<insufficient privilege>' THEN a.query END
              FROM pg_locks l
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
               AND ((l.classid::int8 << 32) | l.objid::int8) = hashtext(%s)::int8
               AND l.pid <> pg_backend_pid()
            """,
            [key, key],
        )
        return [Holder(*row) for row in cursor.fetchall()]


def open_writers(connection: BaseDatabaseWrapper, older_than: float) -> list[Holder]:
    """Sessions whose write transaction has been open longer than ``older_than`` seconds, longest first.

    For waits that lock no table (a concurrent change of the same role, grant
    or catalog row): PostgreSQL does not say whom a statement waited for once
    the wait is over, but such a wait is always for an open write transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, '?'),
                   'transaction ' || l.transactionid::text, 'an open write', true, a.state,
                   extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
                   CASE WHEN a.query IS NOT NULL AND a.query <> '<insufficient privilege>' THEN a.query END
              FROM pg_locks l
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'transactionid' AND l.granted AND l.mode = 'ExclusiveLock'
               AND l.pid <> pg_backend_pid()
               AND (a.xact_start IS NULL OR a.xact_start < clock_timestamp() - make_interval(secs => %s))
             ORDER BY 8 DESC NULLS LAST, a.pid
            """,
            [older_than],
        )
        return [Holder(*row) for row in cursor.fetchall()]


class Runner:
    """Runs units of DDL on one connection within one budget shared by every unit."""

    def __init__(
        self,
        connection: BaseDatabaseWrapper,
        bounds: Bounds,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection = connection
        self.bounds = bounds
        self.sleep = sleep
        self.clock = clock
        self.deadline = clock() + bounds.budget
        self.started = clock()

    def run(
        self,
        what: str,
        locks: Sequence[LockRequest],
        work: Callable[[Any], T],
        blocked_on: LockRequest | None = None,
    ) -> T:
        """Run ``work(cursor)`` in a transaction that first takes ``locks``; retry on lock timeouts.

        Raises :class:`LockWaitExhausted` once the budget is spent; the
        transaction of the failed attempt is rolled back, so nothing of this
        unit is changed. ``blocked_on`` names the lock to report when ``work``
        itself (not the lock phase) times out: for functions that lock what the
        caller may not lock first, such as the audit log's partitions.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(locks, work)
            except _LockPhaseTimeout as exc:
                lock: LockRequest | None = self._blocked(exc.args[0])
            except Exception as exc:
                if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
                    raise
                lock = blocked_on or (locks[0] if locks else None)
            remaining = self.deadline - self.clock()
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            # Another attempt only if it can wait its full lock timeout within the budget.
            if remaining < backoff + self.bounds.lock_timeout:
                if lock is not None:
                    found = holders(self.connection, lock)
                else:
                    found = open_writers(self.connection, self.bounds.lock_timeout)
                raise LockWaitExhausted(what, lock, found, attempt, self.clock() - self.started)
            self.sleep(backoff)

    def _blocked(self, batch: list[LockRequest]) -> LockRequest:
        """The first table of a LOCK statement that another session holds (the first one when none is now)."""
        if len(batch) > 1:
            for lock in batch:
                if holders(self.connection, lock):
                    return lock
        return batch[0]

    def advisory_lock(self, what: str, key: str) -> None:
        """Take the session advisory lock ``hashtext(key)``, retrying until the budget is spent.

        Release it with :meth:`advisory_unlock`. Only one run of a command that
        plans from the catalog may apply its plan at a time.
        """
        attempt = 0
        while True:
            attempt += 1
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
                if cursor.fetchone()[0]:
                    return
            remaining = self.deadline - self.clock()
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if remaining < backoff:
                raise LockWaitExhausted(
                    what, None, advisory_holders(self.connection, key), attempt, self.clock() - self.started
                )
            self.sleep(backoff)

    def advisory_unlock(self, key: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])

    def run_at_once(self, locks: Sequence[LockRequest], statements: Sequence[str]) -> bool:
        """Run ``statements`` in one transaction and one round trip if every lock is free right now.

        The locks are taken first with ``NOWAIT``: if another session holds (or
        queues for) any of them, nothing waits, nothing is changed, and the
        answer is False, as it is when any statement fails (a statement's own
        wait is bounded by the lock timeout, as in :meth:`run`). The caller then
        runs the same work unit by unit with :meth:`run`, so that a busy table
        delays only itself and an error names the unit it belongs to.
        """
        head = [f"SET LOCAL lock_timeout = '{self.bounds.timeout_setting()}'"]
        head += [f"{statement} NOWAIT" for _, statement in lock_statements(locks)]
        try:
            with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
                cursor.execute(";\n".join([*head, *statements]))
        except DatabaseError:
            return False
        return True

    def _attempt(self, locks: Sequence[LockRequest], work: Callable[[Any], T]) -> T:
        timeout = self.bounds.timeout_setting()
        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), current_setting('statement_timeout')", [timeout]
            )
            statement_timeout = cursor.fetchone()[1]
            # lock_timeout bounds each wait; the waits for several tables (or for each partition)
            # would add up, so statement_timeout bounds the lock phase as a whole to one lock timeout.
            ends = self.clock() + self.bounds.lock_timeout
            for batch, statement in lock_statements(locks):
                left = max(1, round((ends - self.clock()) * 1000))
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{left}ms"])
                try:
                    cursor.execute(statement)
                except Exception as exc:
                    if _sqlstate(exc) in (LOCK_NOT_AVAILABLE, QUERY_CANCELED):
                        raise _LockPhaseTimeout(batch) from exc
                    raise
            if locks:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [statement_timeout])
            return work(cursor)


def merge_locks(locks: Sequence[LockRequest]) -> list[LockRequest]:
    """One request per table, in first-seen order."""
    merged: dict[str, LockRequest] = {}
    for lock in locks:
        merged[lock.table] = merged[lock.table].merge(lock) if lock.table in merged else lock
    return list(merged.values())


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, not {value!r}")
    return seconds


def add_lock_options(parser: Any) -> None:
    """--lock-timeout and --lock-budget, shared by every command that runs DDL."""
    parser.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="How long one lock may be waited for (and other queries held up behind it) before the transaction "
        'rolls back and is tried again (default: DJANGO_RLS["LOCK_TIMEOUT"], 2).',
    )
    parser.add_argument(
        "--lock-budget",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="How long all attempts may take together before the command gives up, names the session in the way "
        'and exits 1 (default: DJANGO_RLS["LOCK_BUDGET"], 60).',
    )


def bounds_from(lock_timeout: float | None, budget: float | None) -> Bounds:
    """The bounds of one run: the options given, else DJANGO_RLS["LOCK_TIMEOUT"] and ["LOCK_BUDGET"]."""
    from django_rls.conf import rls_settings

    return Bounds(
        lock_timeout=rls_settings.LOCK_TIMEOUT if lock_timeout is None else lock_timeout,
        budget=rls_settings.LOCK_BUDGET if budget is None else budget,
    )
