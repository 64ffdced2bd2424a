"""Small promises of the commands and checks: what rls_keygen prints, one message per wrong field."""

from __future__ import annotations

import io
import os
import re

from django.core import checks
from django.core.management import call_command

from django_rls import declarations
from django_rls.policies import BySite, Declaration


def test_keygen_prints_a_line_that_keeps_the_other_settings(monkeypatch):
    out = io.StringIO()
    call_command("rls_keygen", stdout=out)
    key = out.getvalue().splitlines()[0]
    [line] = [line.strip() for line in out.getvalue().splitlines() if "SIGNING_KEY" in line and "os.environ" in line]
    monkeypatch.setenv("DJANGO_RLS_SIGNING_KEY", key)
    namespace = {"os": os, "DJANGO_RLS": {"OWNER_DATABASE": "owner", "APPLY_AFTER_MIGRATE": True}}
    exec(line, namespace)  # the settings line as printed, run against an existing dict
    assert namespace["DJANGO_RLS"] == {"OWNER_DATABASE": "owner", "APPLY_AFTER_MIGRATE": True, "SIGNING_KEY": key}
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", key)


def test_a_wrong_field_is_reported_once(live_db, monkeypatch):
    """E006 names a wrong field; the drift check on the owner database (E016) does not repeat it."""
    monkeypatch.setitem(
        declarations._registry, "testapp.Note", Declaration("testapp.Note", (BySite("tenant"),), origin="here")
    )
    messages = [m for m in checks.run_checks(databases=["default", "owner"]) if "has no field 'tenant'" in m.msg]
    assert [m.id for m in messages] == ["django_rls.E006"]
