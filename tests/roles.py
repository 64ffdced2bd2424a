"""Names and credentials of the roles and database the test suite creates on the test server."""

from __future__ import annotations

TEST_DB = "django_rls_pytest"
OWNER_ROLE = "rls_test_owner"  # owns the tables, runs migrate and rls_apply
APP_ROLE = "rls_test_app"  # what the application connects as: no superuser, no BYPASSRLS, owns nothing
BYPASS_ROLE = "rls_test_bypass"  # BYPASSRLS maintenance role for django_rls.bypass()
PASSWORD = "rls-test-password"  # the test server is disposable; trust auth usually ignores it anyway
