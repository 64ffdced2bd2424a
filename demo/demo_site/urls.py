from __future__ import annotations

from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.home),
    path("<slug:company>/", views.invoices),
    path("<slug:company>/unfiltered/", views.unfiltered),
    path("<slug:company>/forge/", views.forge),
    path("<slug:company>/login/<str:username>/", views.login_as),
    path("<slug:company>/notes/", views.my_notes),
    path("<slug:company>/audit/", views.audit),
]
