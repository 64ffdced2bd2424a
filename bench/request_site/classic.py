"""The middleware most RLS-with-Django tutorials show: a session-level setting before the view
and a RESET after it, on every request, whether the view touches the database or not.

With server-side binding SET cannot take a parameter, so the value goes through set_config().
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse


class ClassicSiteMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.site', %s, false)", [str(settings.SITE_ID)])
        try:
            return self.get_response(request)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET app.site")
