"""The demo's own site middleware: /megacorp1/... picks site megacorp1 (sets request.site).

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
        request.site = self._site_id(slug) if slug else None
        request.company = slug
        return self.get_response(request)

    def _site_id(self, slug: str) -> int | None:
        if slug not in self._sites:
            site = Site.objects.filter(name=slug).values_list("id", flat=True).first()
            if site is None:
                return None
            self._sites[slug] = site
        return self._sites[slug]
