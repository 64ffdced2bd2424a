"""A read-only audit browser for the Django admin, and a mixin that links any model admin to it.

It queries as the application role, inside the admin request's django_rls
context, so an admin sees only the entries of rows the audited models'
policies let that context read (rls_audit.log's policy mirrors them).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from django_rls.models import AuditEntry


class AuditChangeList(ChangeList):
    """The audit trail's list: a page newest first reads only the statement rows holding it.

    The list is ordered newest first and sliced to a page; rls_audit.log is a security_barrier
    view, planned for full retrieval when the query sorts, so such a page would read and sort
    every statement row the filters match. AuditEntryQuerySet.newest() finds the statement rows
    holding the page's entries from the log's indexes when the filters allow it.
    """

    NEWEST_FIRST = ("-logged_at", "-id")

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        page = self.result_list.query
        # (the ChangeList may name the ordering twice: the admin's, then again to make it deterministic)
        if tuple(dict.fromkeys(page.order_by)) == self.NEWEST_FIRST and page.high_mark is not None:
            self.result_list = self.queryset.newest(page.high_mark)[page.low_mark : page.high_mark]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("logged_at", "operation", "table_name", "row_key", "changed", "site", "user", "db_role")
    list_filter = ("operation", "table_name", "site_id", "user_id", "db_role", ("logged_at", admin.DateFieldListFilter))
    search_fields = ("row_key", "table_name")
    date_hierarchy = "logged_at"
    # Newest first by time: the log's (site_id, logged_at) and (user_id, logged_at) indexes give
    # a filtered list in this order, while no index gives a site's entries by id (docs/audit.md).
    ordering = ("-logged_at", "-id")
    list_per_page = 50
    show_full_result_count = False  # counting a large trail is slow; the paginator does not need it
    change_form_template = "admin/django_rls/auditentry/change_form.html"
    actions = None  # no bulk actions, and no selection column, on a read-only trail
    readonly_fields = tuple(f.name for f in AuditEntry._meta.fields)

    @admin.display(description="changed columns")
    def changed(self, entry: AuditEntry) -> str:
        return ", ".join(entry.changed_columns or [])

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditChangeList

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
