from __future__ import annotations

from django.urls import include, path

from tests.tenantproject.shop import views

urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("articles/", views.articles),
    path("articles/new/", views.new_article),
    path("api/articles/", views.ArticleApi.as_view()),
    path("emails/", views.my_emails),
]
