"""The demo's admin: each company's staff see their company's invoices and the audit trail of them.

The admin queries as the application role, like every page; the database shows it only the
rows, and the audit entries, of the logged-in user's company (shop.middleware).
"""

from __future__ import annotations

from django.contrib import admin

from django_rls.admin import AuditHistoryMixin

from .models import Invoice, Note


@admin.register(Invoice)
class InvoiceAdmin(AuditHistoryMixin, admin.ModelAdmin):
    list_display = ("customer", "amount", "site")


@admin.register(Note)
class NoteAdmin(AuditHistoryMixin, admin.ModelAdmin):
    list_display = ("text", "author", "site")
