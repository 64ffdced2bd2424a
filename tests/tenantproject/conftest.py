from __future__ import annotations

from django_rls.pytest_plugin import rls_django_db_modify_db_settings as django_db_modify_db_settings  # noqa: F401
from django_rls.pytest_plugin import rls_django_db_setup as django_db_setup  # noqa: F401
