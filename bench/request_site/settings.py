"""A minimal Django site for bench/request_path.py, in one variant per process (BENCH_VARIANT):

- none:        no RLS middleware, an unprotected table: the floor;
- ours:        django_rls's middleware, the table protected by rls.protect_by_site(), the
               application role statement-bound and no signing key (the default setup);
- ours-signed: the same with DJANGO_RLS["SIGNING_KEY"] (BENCH_SIGNING_KEY, the key the
               server's django_rls.signing_key_file holds);
- classic:     the tutorial middleware (a session-level set before and a RESET after every
               request) and the tutorial policy site_id = current_setting('app.site')::int;
- rls-tenants: django-rls-tenants as its README sets it up (RLS_TENANTS["TENANT_MODEL"],
               RLSTenantMiddleware after authentication, an RLSProtectedModel);
- django-rls:  django-rls as its docs set it up (its ENGINE, RLSContextMiddleware after
               authentication, an RLSModel with a tenant ModelPolicy, request.tenant);
- sqlonly, sqlonly-signed: ours and ours-signed on a server without the C library, in the
               SQL-only mode (a database of its own on a second cluster);
- none-server, ours-server: none and ours with OPTIONS={"server_side_binding": True}.

Every other variant uses Django's default client-side binding. Each peer has a database of its
own (its tables come from `migrate`); the others share one. No sessions: BenchAuthMiddleware
(auth.py) gives every variant, the floor included, the same user and tenant without a query.
Every view but ten-queries is marked non-atomic; ten-queries runs in ATOMIC_REQUESTS.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

VARIANTS = (
    "none",
    "ours",
    "ours-signed",
    "sqlonly",
    "sqlonly-signed",
    "classic",
    "rls-tenants",
    "django-rls",
    "none-server",
    "ours-server",
)
VARIANT = os.environ.get("BENCH_VARIANT", "none")
if VARIANT not in VARIANTS:
    raise RuntimeError(f"BENCH_VARIANT must be one of {', '.join(VARIANTS)}, not {VARIANT!r}")
PEER = VARIANT in ("rls-tenants", "django-rls")
# The table the variant's database holds (bench/request_path.py creates it); a peer's comes from migrate.
TABLE = "items_" + VARIANT.replace("-", "_") if PEER else "items_" + VARIANT.split("-")[0]

_server = urlparse(os.environ["BENCH_DATABASE_URL"])

SECRET_KEY = "benchmark only, not secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
ROOT_URLCONF = "request_site.urls"
USE_TZ = True
SITE_ID = 42
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["request_site"]
MIDDLEWARE = ["request_site.auth.BenchAuthMiddleware"]
ENGINE = "django.db.backends.postgresql"
if VARIANT.startswith(("ours", "sqlonly")):
    INSTALLED_APPS.insert(0, "django_rls")
    MIDDLEWARE.append("django_rls.middleware.RlsMiddleware")
    DJANGO_RLS = {"USER_RESOLVER": "request_site.auth.user_id"}
    if VARIANT.endswith("-signed"):
        DJANGO_RLS["SIGNING_KEY"] = os.environ["BENCH_SIGNING_KEY"]
elif VARIANT == "classic":
    MIDDLEWARE.append("request_site.classic.ClassicSiteMiddleware")
elif VARIANT == "rls-tenants":
    INSTALLED_APPS[:0] = ["django.contrib.contenttypes", "django.contrib.auth", "django_rls_tenants"]
    RLS_TENANTS = {"TENANT_MODEL": "request_site.Tenant"}
    MIDDLEWARE.append("django_rls_tenants.RLSTenantMiddleware")
elif VARIANT == "django-rls":
    INSTALLED_APPS[:0] = ["django.contrib.contenttypes", "django.contrib.auth", "django_rls"]
    MIDDLEWARE.append("django_rls.middleware.RLSContextMiddleware")
    ENGINE = "django_rls.backends.postgresql"

DATABASES = {
    "default": {
        "ENGINE": ENGINE,
        "NAME": _server.path.lstrip("/"),
        "USER": _server.username,
        "PASSWORD": _server.password,
        "HOST": _server.hostname,
        "PORT": str(_server.port),
        "CONN_MAX_AGE": None,  # persistent connections, as a production site would run
        "ATOMIC_REQUESTS": True,
        "OPTIONS": {"server_side_binding": VARIANT.endswith("-server")},
    }
}
