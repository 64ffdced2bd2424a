"""A connection first opened inside a context, with another app's connection_created receiver
that queries before django_rls's own (django.contrib.postgres reads pg_type)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each case runs in a fresh process, so the connection is new and contrib.postgres's
# lru_cache of type oids is empty: its receiver queries on that connection.
SCRIPT = """
import json, sys
import django
django.setup()
from django.apps import apps
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import Client
from django_rls import context
from tests.testapp.models import Note

receivers = [r[1]() for r in connection_created.receivers]
names = [getattr(r, "__module__", "") for r in receivers]
assert apps.is_installed("django.contrib.postgres")
assert names.index("django.contrib.postgres.signals") < names.index("django_rls.database"), names
case = sys.argv[1]
if case == "request":
    response = Client().get("/count/", HTTP_HOST="megacorp2.test")
    print(json.dumps({"status": response.status_code, "count": int(response.content)}))
else:
    with context(site=1):
        print(json.dumps({"count": Note.objects.using(case).count()}))
"""


def _run(case: str) -> dict[str, int]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_contrib_postgres", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, case], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("alias", ["default", "replica", "pooled"])
def test_connection_first_opened_inside_context(live_db: None, alias: str):
    # Default (client-side) binding, server-side binding and Django's pool: three notes of site 1.
    assert _run(alias) == {"count": 3}


def test_connection_first_opened_inside_request(live_db: None):
    assert _run("request") == {"status": 200, "count": 3}
