from __future__ import annotations

from django.contrib import admin

from django_rls.admin import AuditHistoryMixin
from tests.testapp.models import Note


@admin.register(Note)
class NoteAdmin(AuditHistoryMixin, admin.ModelAdmin):
    list_display = ("id", "site", "body")
