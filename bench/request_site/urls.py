from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("one-query/", views.one_query),
    path("ten-queries/", views.ten_queries),
    path("no-query/", views.no_query),
]
