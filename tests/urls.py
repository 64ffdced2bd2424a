from __future__ import annotations

from django.urls import path

from tests import views

urlpatterns = [
    path("nodb/", views.nodb),
    path("notes/", views.notes),
    path("notes/raw/", views.notes_raw),
    path("notes/async/", views.notes_async),
    path("notes/stream/", views.notes_stream),
    path("boom/", views.boom),
    path("whoami/", views.whoami),
]
