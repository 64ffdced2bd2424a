"""Patterns met running third-party apps' own test suites with django_rls on (docs/testing.md).

Each test reproduces, with this project's own models and settings, what broke in one of
those suites, so that it stays fixed without the third-party package as a dependency.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_checks_run_without_django_contrib_auth():
    """django-model-utils' test settings install no django.contrib.auth: the middleware checks ran into it.

    Importing AuthenticationMiddleware imports the auth models, which raise RuntimeError (not
    ImportError) when the app is not installed, so `manage.py check` (and every command that runs
    the checks, rls_roles first) crashed instead of reporting E002/E003.
    """
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings
        from django.core import checks

        settings.configure(
            INSTALLED_APPS=["django_rls"],
            MIDDLEWARE=MIDDLEWARE,
            DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}},
            SITE_ID=1,
        )
        django.setup()
        print(sorted(m.id for m in checks.run_checks() if m.id and m.id.startswith("django_rls.")))
        """
    )
    for middleware, expected in (
        (["django_rls.middleware.RlsMiddleware"], "[]"),
        ([], "['django_rls.E002']"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", f"MIDDLEWARE = {middleware!r}\n" + script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected
