"""A minimal Django site for bench/request_path.py, in one of four variants (BENCH_VARIANT):

- none:        no middleware, an unprotected table: the floor;
- ours:        django_rls's middleware, the table protected by rls.protect_by_site();
- ours-client: the same with Django's default client-side binding, where the context
               cannot ride in the query and goes in its own pipelined statements;
- ours-signed: ours in signed mode, with the key in BENCH_SIGNING_KEY;
- classic:     the tutorial middleware (a session-level set before and a RESET after every
               request) and the tutorial policy site_id = current_setting('app.site')::int.

Every variant but ours-client binds parameters server-side, as docs/getting-started.md advises.

No sessions, no auth: the site comes from SITE_ID, so the middleware under test is the
only thing between the request and the view.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

VARIANT = os.environ.get("BENCH_VARIANT", "none")
if VARIANT not in ("none", "ours", "ours-client", "ours-signed", "classic"):
    raise RuntimeError(f"BENCH_VARIANT must be none, ours, ours-client, ours-signed or classic, not {VARIANT!r}")
TABLE = "items_" + VARIANT.split("-")[0]

_server = urlparse(os.environ["BENCH_DATABASE_URL"])

SECRET_KEY = "benchmark only, not secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
ROOT_URLCONF = "request_site.urls"
USE_TZ = True
SITE_ID = 42
INSTALLED_APPS = ["request_site"]
MIDDLEWARE: list[str] = []
if VARIANT.startswith("ours"):
    INSTALLED_APPS.insert(0, "django_rls")
    MIDDLEWARE.append("django_rls.middleware.RlsMiddleware")
elif VARIANT == "classic":
    MIDDLEWARE.append("request_site.classic.ClassicSiteMiddleware")
if VARIANT == "ours-signed":
    DJANGO_RLS = {"SIGNING_KEY": os.environ["BENCH_SIGNING_KEY"]}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _server.path.lstrip("/"),
        "USER": _server.username,
        "PASSWORD": _server.password,
        "HOST": _server.hostname,
        "PORT": str(_server.port),
        "CONN_MAX_AGE": None,  # persistent connections, as a production site would run
        "OPTIONS": {"server_side_binding": VARIANT != "ours-client"},
    }
}
