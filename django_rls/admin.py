"""A read-only audit browser for the Django admin, and a mixin that links any model admin to it.

It queries as the application role, inside the admin request's django_rls
context, so an admin sees only the entries of rows the audited models'
policies let that context read (rls_audit.log's policy mirrors them).
"""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from django_rls.models import AuditEntry, AuditEntryQuerySet


class AuditPaginator(Paginator):
    """Counts the trail's entries only as far as ``count_limit``, then says "more than".

    A count of every entry a filter matches reads all of them (a second for a large site's
    100,000 entries through the view); the pages only need to know how far they go. So the
    count stops at ``count_limit + 1``: ``count_is_lower_bound`` is then true and the list says
    "more than count_limit" rather than a number. Below the limit the count is exact.
    """

    def __init__(
        self,
        object_list: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
        count_limit: int = 1000,
    ) -> None:
        super().__init__(object_list, per_page, orphans, allow_empty_first_page)
        self.count_limit = count_limit
        self.count_is_lower_bound = False

    @cached_property
    def count(self) -> int:
        counted = self.object_list.readable_count(self.count_limit + 1)
        self.count_is_lower_bound = counted > self.count_limit
        return counted


class _HierarchyQuerySet(AuditEntryQuerySet):
    """The admin list's queryset: its date hierarchy's periods are found without reading every entry.

    Django's date hierarchy lists the years, months or days holding entries with
    ``datetimes()``, a DISTINCT over every entry the filters match. Here each period between the
    oldest and the newest readable entry (``rls_audit.entry_times()``) is asked whether it holds
    one (``rls_audit.count_entries(1, …)``, which stops at the first), when the filters allow it.
    """

    PERIODS = 400  # more periods than this: the view answers

    def datetimes(self, field_name: str, kind: str, order: str = "ASC", tzinfo: Any = None) -> Any:
        found = self.statement_conditions() if (field_name, tzinfo) == ("logged_at", None) else None
        if found is None or kind not in ("year", "month", "day") or order not in ("ASC", "DESC"):
            return super().datetimes(field_name, kind, order, tzinfo)
        oldest, newest = self._call("entry_times", [], found)
        if oldest is None:
            return []
        zone = timezone.get_current_timezone() if settings.USE_TZ else None
        starts: list[datetime.datetime] = []
        start = _period_start(oldest, kind, zone)
        last = _period_start(newest, kind, zone)
        while start <= last:
            starts.append(start)
            if len(starts) > self.PERIODS:
                return super().datetimes(field_name, kind, order, tzinfo)
            start = _next_period(start, kind)
        held = []
        lower, upper = found.get(("logged_at", "gte")), found.get(("logged_at", "lt"))
        for start in starts:
            begin = start if zone is None else timezone.make_aware(start, zone)
            end = _next_period(start, kind)
            end = end if zone is None else timezone.make_aware(end, zone)
            bounded = {
                **found,
                ("logged_at", "gte"): begin if lower is None else max(lower, begin),
                ("logged_at", "lt"): end if upper is None else min(upper, end),
            }
            if self._call("count_entries", [1], bounded)[0]:
                held.append(begin)
        return held if order == "ASC" else held[::-1]


def _period_start(moment: datetime.datetime, kind: str, zone: Any) -> datetime.datetime:
    """The naive local start of the year, month or day holding ``moment``."""
    if zone is not None:
        moment = timezone.localtime(moment, zone)
    moment = moment.replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    if kind in ("year", "month"):
        moment = moment.replace(day=1)
    if kind == "year":
        moment = moment.replace(month=1)
    return moment


def _next_period(start: datetime.datetime, kind: str) -> datetime.datetime:
    if kind == "day":
        return start + datetime.timedelta(days=1)
    if kind == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


class RecentValuesFilter(admin.AllValuesFieldListFilter):
    """Django's filter by a column's values, offering those of the caller's newest entries.

    Django offers every distinct value of the column, a DISTINCT over the caller's whole trail
    for each filter. Here the choices are the values among the newest ``RECENT`` entries the
    caller may read (``AuditEntryQuerySet.newest()``), read once per request for every filter
    on a statement column; a filter by any other value works as before (by its URL parameter).
    """

    RECENT = 1000
    # The statement columns the filters share one read of the newest entries for.
    COLUMNS = ("operation", "table_name", "site_id", "site_uuid", "user_id", "user_uuid", "db_role")

    def __init__(
        self, field: Any, request: HttpRequest, params: Any, model: Any, model_admin: Any, field_path: str
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        newest = model_admin.get_queryset(request).newest(self.RECENT)
        if field.name in self.COLUMNS:
            rows = getattr(request, "_django_rls_recent_entries", None)
            if rows is None:
                rows = list(newest.values_list(*self.COLUMNS))
                request._django_rls_recent_entries = rows
            recent = {row[self.COLUMNS.index(field.name)] for row in rows}
        else:
            recent = set(newest.values_list(field.name, flat=True))
        self.lookup_choices = sorted(value for value in recent if value is not None) + (
            [None] if None in recent else []
        )


class AuditChangeList(ChangeList):
    """The audit trail's list: a page newest first reads only the statement rows holding it.

    The list is ordered newest first and sliced to a page; rls_audit.log is a security_barrier
    view, planned for full retrieval when the query sorts, so such a page would read and sort
    every statement row the filters match. AuditEntryQuerySet.newest() finds the statement rows
    holding the page's entries from the log's indexes when the filters allow it.
    """

    NEWEST_FIRST = ("-logged_at", "-id")

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        queryset = super().get_queryset(request, exclude_parameters)
        queryset.__class__ = _HierarchyQuerySet
        return queryset

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # (a count that stopped at the limit: the search form and the paginator say "more than")
        self.count_is_lower_bound = getattr(self.paginator, "count_is_lower_bound", False)
        page = self.result_list.query
        # (the ChangeList may name the ordering twice: the admin's, then again to make it deterministic)
        if tuple(dict.fromkeys(page.order_by)) == self.NEWEST_FIRST and page.high_mark is not None:
            self.result_list = self.queryset.newest(page.high_mark)[page.low_mark : page.high_mark]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("logged_at", "operation", "table_name", "row_key", "changed", "site", "user", "db_role")
    list_filter = (
        ("operation", RecentValuesFilter),
        ("table_name", RecentValuesFilter),
        ("site_id", RecentValuesFilter),
        ("user_id", RecentValuesFilter),
        ("db_role", RecentValuesFilter),
        ("logged_at", admin.DateFieldListFilter),
    )
    search_fields = ("row_key", "table_name")
    date_hierarchy = "logged_at"
    # Newest first by time: the log's (site_id, logged_at) and (user_id, logged_at) indexes give
    # a filtered list in this order, while no index gives a site's entries by id (docs/audit.md).
    ordering = ("-logged_at", "-id")
    list_per_page = 50
    show_full_result_count = False  # counting a large trail is slow; the paginator does not need it
    # The paginator counts at most this many entries (or as far as the page after the one asked
    # for), then says "more than" (AuditPaginator).
    list_count_limit = 1000
    change_form_template = "admin/django_rls/auditentry/change_form.html"
    actions = None  # no bulk actions, and no selection column, on a read-only trail
    readonly_fields = tuple(f.name for f in AuditEntry._meta.fields)

    @admin.display(description="changed columns")
    def changed(self, entry: AuditEntry) -> str:
        return ", ".join(entry.changed_columns or [])

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> AuditPaginator:
        try:
            page = max(int(request.GET.get(PAGE_VAR, 1)), 1)
        except ValueError:
            page = 1
        # the page asked for and the one after it are counted, so that their links are right
        limit = max(self.list_count_limit, (page + 1) * per_page)
        return AuditPaginator(queryset, per_page, orphans, allow_empty_first_page, count_limit=limit)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        entry = context.get("original")
        if entry is not None:
            context["changes"] = entry.changes()
        return super().render_change_form(request, context, *args, **kwargs)


class AuditHistoryMixin:
    """Add to a ModelAdmin of an audited model: its history page shows the object's audit trail."""

    object_history_template = "admin/django_rls/auditentry/object_history.html"

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().history_view(request, object_id, extra_context)  # type: ignore[misc]
        if isinstance(response, TemplateResponse) and "object" in (response.context_data or {}):
            obj = response.context_data["object"]
            entries = AuditEntry.objects.for_object(obj).order_by("id")
            response.context_data["audit_entries"] = [
                (
                    entry,
                    format_html(
                        '<a href="{}">{}</a>', reverse("admin:django_rls_auditentry_change", args=[entry.pk]), entry.pk
                    ),
                )
                for entry in entries
            ]
        return response
