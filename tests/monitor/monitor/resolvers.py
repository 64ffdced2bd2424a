"""How a request finds its project: DJANGO_RLS["SITE_RESOLVER"] is ``project``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from django_rls.resolvers import by_lookup, first_of, from_url_kwarg

# Keys that are themselves the permission: found through the models' declared Lookups.
project_of_api_key = by_lookup("monitor.Project", "api_key", header="X-Api-Key")
check_of_ping_url = by_lookup("monitor.Check", "code", url_kwarg="code")

_project_in_url = from_url_kwarg("project")


def project_of_signed_in_user(request: HttpRequest) -> Any:
    """``/projects/<uuid:project>/…`` names the site of a signed-in user's request; the Project policy then shows
    it only to its owner and members. Anonymous requests get no site from the URL: a site without a user is how
    requests that present a key see their project."""
    user = getattr(request, "user", None)
    return _project_in_url(request) if user is not None and user.is_authenticated else None


project = first_of(project_of_api_key, check_of_ping_url, project_of_signed_in_user)
