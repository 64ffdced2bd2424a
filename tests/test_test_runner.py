"""django_rls.test_runner refuses clearly what it cannot do; tests/test_monitor_project.py runs it for real."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models.signals import post_migrate

from django_rls.test_runner import RlsDiscoverRunner


def test_the_runner_needs_the_owner_alias(settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "OWNER_DATABASE": None}
    user = connections["default"].settings_dict["USER"]
    with pytest.raises(ImproperlyConfigured, match=r'set DJANGO_RLS\["OWNER_DATABASE"\]'):
        RlsDiscoverRunner(verbosity=0).setup_databases()
    assert connections["default"].settings_dict["USER"] == user  # nothing was switched
    assert not post_migrate.disconnect(dispatch_uid="django_rls.test_runner.apply")  # and no receiver left behind
