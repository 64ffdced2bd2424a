"""The demo's own site middleware: /megacorp1/... picks site megacorp1 (sets request.site).

The admin (/admin/...) belongs to no company in its URL: there the company is the
logged-in user's, the auth group named after it (demo_seed puts each user in one).
django_rls reads it through DJANGO_RLS["SITE_RESOLVER"] = from_attribute("site").
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.sites.models import Site
from django.http import HttpRequest, HttpResponse


class SiteFromPathMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._sites: dict[str, int] = {}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        slug = request.path.strip("/").split("/", 1)[0]
        if slug == "admin":
            slug = self._company_of(request)
        request.site = self._site_id(slug) if slug else None
        request.company = slug
        return self.get_response(request)

    @staticmethod
    def _company_of(request: HttpRequest) -> str:
        """The company of the logged-in user: the name of their auth group ("" when anonymous)."""
        user = request.user
        if not user.is_authenticated:
            return ""
        return user.groups.order_by("name").values_list("name", flat=True).first() or ""

    def _site_id(self, slug: str) -> int | None:
        if slug not in self._sites:
            site = Site.objects.filter(name=slug).values_list("id", flat=True).first()
            if site is None:
                return None
            self._sites[slug] = site
        return self._sites[slug]
