"""A read-only model over the audit trail (rls_audit.log), which the extension owns and writes."""

from __future__ import annotations

from typing import Any

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Col
from django.db.models.lookups import Lookup
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND


class TextArrayField(models.Field):
    """A ``text[]`` column, read as a list of str (psycopg returns arrays as lists).

    The audit trail needs only this much of an array field, and django.contrib.postgres's
    ArrayField would require that app in INSTALLED_APPS (a system check error from Django 6).
    """

    description = "Array of text"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return "text[]"

    def get_prep_value(self, value: Any) -> Any:
        return None if value is None else [str(item) for item in value]


@TextArrayField.register_lookup
class TextArrayContains(models.Lookup):
    """``field__contains=[...]``: the array holds every given element (``@>``)."""

    lookup_name = "contains"

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} @> ({rhs})::text[]", [*lhs_params, *rhs_params]


# The conditions rls_audit.newest_statements() takes, by (field, lookup): its argument.
NEWEST_ARGUMENTS = {
    ("site_id", "exact"): "site_id => %s::bigint",
    ("site_uuid", "exact"): "site_uuid => %s::uuid",
    ("user_id", "exact"): "user_id => %s::bigint",
    ("user_uuid", "exact"): "user_uuid => %s::uuid",
    ("table_name", "exact"): "table_name => %s::text",
    ("operation", "exact"): "operation => %s::text",
    ("db_role", "exact"): "db_role => %s::name",
    ("logged_at", "gte"): "logged_from => %s::timestamptz",
    ("logged_at", "lt"): "logged_before => %s::timestamptz",
}


def newest_arguments(query: Query) -> dict[tuple[str, str], Any] | None:
    """The query's conditions as rls_audit.newest_statements() arguments, or None if it has any other.

    Only a conjunction of plain values compared with the statement columns the function
    filters on qualifies: anything else (a condition on the row key or the images, a search,
    an OR, NULL, an expression) would leave entries out if the statement rows were narrowed
    without it.
    """
    where = query.where
    if where.negated or where.connector != AND:
        return None
    found: dict[tuple[str, str], Any] = {}
    for child in where.children:
        if not isinstance(child, Lookup) or not isinstance(child.lhs, Col):
            return None
        key = (child.lhs.target.attname, child.lookup_name)
        if key not in NEWEST_ARGUMENTS or not child.rhs_is_direct_value() or child.rhs is None:
            return None
        if key in found and found[key] != child.rhs:
            return None
        found[key] = child.rhs
    return found


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def statement_conditions(self) -> dict[tuple[str, str], Any] | None:
        """This queryset's conditions as statement-row conditions (``newest_arguments()``), or None.

        None also when the query is more than a plain filtered read of the log's rows (sliced,
        distinct, annotated, grouped, combined or with ``extra()``): then its count or its range of
        times is not that of the entries its conditions match.
        """
        query = self.query
        if (
            query.is_sliced
            or query.distinct
            or query.combinator
            or query.annotations
            or query.extra
            or query.group_by is not None
            or query.values_select
        ):
            return None
        return newest_arguments(query)

    def _call(self, function: str, leading: list[Any], found: dict[tuple[str, str], Any]) -> tuple[Any, ...]:
        arguments = ["%s"] * len(leading) + [NEWEST_ARGUMENTS[key] for key in found]
        with connections[self.db].cursor() as cursor:
            cursor.execute(f"SELECT * FROM rls_audit.{function}({', '.join(arguments)})", [*leading, *found.values()])
            return cursor.fetchone()

    def readable_count(self, up_to: int | None = None) -> int:
        """How many entries this queryset holds, counting at most ``up_to`` (None: all of them).

        When every filter is one ``rls_audit.newest_statements()`` takes, ``rls_audit.count_entries()``
        counts them from the statement rows (the caller's readable entries only, as the view
        decides), without unnesting the row images or sorting them; otherwise the view counts
        (at most ``up_to`` of them).
        """
        if up_to is not None and up_to < 0:
            raise ValueError("readable_count() takes a limit of 0 or more, or None")
        found = None if self._result_cache is not None else self.statement_conditions()
        if found is None:
            if up_to is None:
                return super().count()
            return models.QuerySet.count(self[:up_to])
        return self._call("count_entries", [up_to], found)[0]

    def count(self) -> int:
        """``count()``, from the statement rows when the filters allow it (``readable_count()``)."""
        return self.readable_count()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``aggregate()``; only ``Min`` and ``Max`` of ``logged_at`` are read from the statement rows.

        When every filter is one ``rls_audit.newest_statements()`` takes, ``rls_audit.entry_times()``
        finds the oldest and newest readable entry from either end of the log's indexes (what
        the admin's date hierarchy asks first); anything else aggregates through the view.
        """
        ends: dict[str, bool] = {}
        for alias, aggregate in kwargs.items():
            if (
                type(aggregate) not in (models.Min, models.Max)
                or aggregate.filter is not None
                or getattr(aggregate, "default", None) is not None
                or getattr(aggregate, "order_by", None) is not None
                or len(aggregate.source_expressions) != 1
                or type(aggregate.source_expressions[0]) is not models.F
                or aggregate.source_expressions[0].name != "logged_at"
            ):
                break
            ends[alias] = type(aggregate) is models.Max
        else:
            found = None if args or not ends or self._result_cache is not None else self.statement_conditions()
            if found is not None:
                oldest, newest = self._call("entry_times", [], found)
                return {alias: newest if latest else oldest for alias, latest in ends.items()}
        return super().aggregate(*args, **kwargs)

    def newest(self, count: int) -> AuditEntryQuerySet:
        """The ``count`` newest entries of this queryset, newest first (by ``logged_at``, then ``id``).

        ``rls_audit.log`` is a security_barrier view, which PostgreSQL plans for full retrieval
        when the query sorts: ordered and sliced by hand, a site's latest entries read every
        statement row of the site. When every filter is one ``rls_audit.newest_statements()``
        takes (exact site, user, table name, operation or role; ``logged_at__gte``,
        ``logged_at__lt``), the statement rows holding the newest entries come from the log's
        indexes newest first, and only those are unnested; otherwise the view sorts.
        """
        if count < 0:
            raise ValueError("newest() takes a count of 0 or more")
        ordered = self.order_by("-logged_at", "-id")
        found = None if self.query.is_sliced else newest_arguments(self.query)
        if found is not None:
            ordered = ordered.filter(
                models.expressions.RawSQL(
                    "statement_id = ANY (rls_audit.newest_statements(%s"
                    + "".join(", " + NEWEST_ARGUMENTS[key] for key in found)
                    + "))",
                    [count, *found.values()],
                    output_field=models.BooleanField(),
                )
            )
        return ordered[:count]

    def for_object(self, obj: models.Model) -> AuditEntryQuerySet:
        """Every change of one row, oldest first (as far as the current context may see).

        The statement rows holding the row's key come from the row key index
        (``rls_audit.statements_of()``); only their entries are unnested.
        """
        key = str(obj.pk)
        return (
            self.filter(
                models.expressions.RawSQL(
                    "statement_id = ANY (rls_audit.statements_of(%s::regclass, %s))",
                    [connections[self.db].ops.quote_name(type(obj)._meta.db_table), key],
                    output_field=models.BooleanField(),
                )
            )
            .filter(row_key=key)
            .order_by("id")
        )

    def for_model(self, model: type[models.Model]) -> AuditEntryQuerySet:
        """Every entry of the model's table, by its trail id: also those written before a rename."""
        return self.filter(
            models.expressions.RawSQL(
                "trail_id = (SELECT trail_id FROM rls_audit.trails WHERE table_oid = %s::regclass)",
                [connections[self.db].ops.quote_name(model._meta.db_table)],
                output_field=models.BooleanField(),
            )
        )


class AuditEntry(models.Model):
    """One changed row of an audited table, with the django_rls context that changed it.

    Rows are written only by the database's audit triggers; this model cannot save or delete.
    Reading it as the application role shows only the entries of rows the model's policies
    let the current context read (see ``read_rule``); the table's owner and the bypass alias
    read every entry. Excluded and masked columns are never stored, so no reader sees them.
    """

    OPERATIONS = tuple((op, op.title()) for op in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"))
    MASKED = "(masked)"

    id = models.BigIntegerField(primary_key=True)
    logged_at = models.DateTimeField(help_text="When the statement started.")
    xact_started_at = models.DateTimeField(help_text="When the transaction started.")
    xact_id = models.TextField(help_text="Transaction id (xid8).")
    table_oid = models.PositiveIntegerField()
    table_name = models.TextField()
    operation = models.TextField(choices=OPERATIONS)
    # NULL and "" differ in the log (TRUNCATE has no row), so these text columns keep NULL.
    row_key = models.TextField(null=True, help_text="The row's primary key (JSON for composite keys).")  # noqa: DJ001
    old_values = models.JSONField(null=True)
    new_values = models.JSONField(null=True)
    changed_columns = TextArrayField(null=True)
    site_id = models.BigIntegerField(null=True)
    site_uuid = models.UUIDField(null=True)
    user_id = models.BigIntegerField(null=True)
    user_uuid = models.UUIDField(null=True)
    claims = models.JSONField(null=True)
    db_role = models.TextField()
    application_name = models.TextField(null=True)  # noqa: DJ001
    client_addr = models.GenericIPAddressField(null=True)
    read_rule = models.TextField(  # noqa: DJ001
        null=True, help_text="Which of the row's values a reader's context must match; empty: owner only."
    )
    read_keys = TextArrayField(null=True, help_text="The row's own site/owner values.")

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = 'rls_audit"."log'
        ordering = ("-id",)
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"{self.operation} {self.table_name} {self.row_key} at {self.logged_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the audit trail is written only by the database's audit triggers")

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "audit entries cannot be deleted; retention drops whole months (rls_audit.drop_partitions_before)"
        )

    @property
    def site(self) -> Any:
        return self.site_id if self.site_id is not None else self.site_uuid

    @property
    def user(self) -> Any:
        return self.user_id if self.user_id is not None else self.user_uuid

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(column, old, new) for each changed column; masked columns show MASKED on both sides."""
        old, new = self.old_values or {}, self.new_values or {}
        columns = self.changed_columns or list(dict.fromkeys([*old, *new]))
        return [(c, old.get(c), new.get(c)) if c in old or c in new else (c, self.MASKED, self.MASKED) for c in columns]
