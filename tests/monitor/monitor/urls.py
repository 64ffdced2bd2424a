from __future__ import annotations

from django.urls import path

from monitor import views

urlpatterns = [
    path("projects/", views.my_projects),
    path("projects/new/", views.new_project),
    path("projects/<uuid:project>/checks/", views.project_checks),
    path("api/v1/checks/", views.api_checks),
    path("ping/<uuid:code>/", views.ping),
]
