from __future__ import annotations

from django.contrib import admin
from django.urls import path

from tests import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("nodb/", views.nodb),
    path("notes/", views.notes),
    path("notes/raw/", views.notes_raw),
    path("notes/async/", views.notes_async),
    path("notes/stream/", views.notes_stream),
    path("notes/stream/async/", views.notes_stream_async),
    path("boom/", views.boom),
    path("whoami/", views.whoami),
    path("count/", views.note_count),
    path("notes/atomic/", views.notes_atomic),
    path("notes/search/", views.notes_search),
    path("notes/on/<str:alias>/", views.notes_on),
    path("notes/query-by-query/<str:alias>/", views.notes_query_by_query),
    path("tasks/late-user/", views.user_then_tasks),
    path("tasks/drf/", views.DrfTasks.as_view()),
    path("inject/", views.inject),
    path("switch/", views.switch_site),
    path("switch/async/", views.switch_site_async),
]
