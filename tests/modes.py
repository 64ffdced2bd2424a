"""Which django_rls the test suite runs against: the C library (default) or the SQL-only mode.

``DJANGO_RLS_TEST_MODE=sql`` (``make test`` sets it for its second pass) starts a
server without the library and installs the SQL-only mode as a non-superuser owner
(tests/conftest.py). Tests of what only the library does are marked ``library_only``;
each says why.
"""

from __future__ import annotations

import os

import pytest

SQL_MODE = os.environ.get("DJANGO_RLS_TEST_MODE") == "sql"


def library_only(reason: str) -> pytest.MarkDecorator:
    """Skip a test in the SQL-only mode, saying which feature of the library it shows."""
    return pytest.mark.skipif(SQL_MODE, reason=f"the C library only: {reason}")


# rls_apply's options for the test database: the same in both modes (the SQL-only mode audits too).
RLS_APPLY_OPTIONS: dict[str, bool] = {}
