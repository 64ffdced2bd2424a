"""pytest fixtures for projects that use django_rls (registered automatically; needs pytest-django).

- ``rls_context``: ``django_rls.context``, to run code as a site and user.
- ``rls_leak_matrix``: ``check(contexts, models=None, using="default")`` runs
  :func:`django_rls.testing.leak_matrix` and fails the test with every leak found.
- ``rls_django_db_modify_db_settings`` and ``rls_django_db_setup``: pytest-django
  builds the test database through ``"default"``, the application role, which may not
  create databases or tables. Put them in place of pytest-django's fixtures of the same
  name, in your ``conftest.py``, and the test database is created and migrated by the
  owner role (``DJANGO_RLS["OWNER_DATABASE"]``), ``rls_apply`` runs on it, and every test
  then connects to it as the application role; ``transactional_db`` tests empty the tables
  as the owner (docs/testing.md)::

      from django_rls.pytest_plugin import rls_django_db_modify_db_settings as django_db_modify_db_settings
      from django_rls.pytest_plugin import rls_django_db_setup as django_db_setup
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pytest

# The settings of "default" that say who connects; swapped for the owner's while the test database is built.
_CREDENTIALS = ("USER", "PASSWORD")


def _connect_default_as(credentials: Mapping[str, Any]) -> None:
    from django.db import connections

    connection = connections["default"]
    connection.close()
    connection.settings_dict.update(credentials)


@pytest.fixture(scope="session")
def rls_django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> dict[str, Any]:
    """Until ``rls_django_db_setup`` has built the test database, "default" connects as the owner role.

    Django creates and migrates the test database through "default" (data migrations
    of other apps use it too), so the owner does all of it. Returns the application
    role's own credentials.
    """
    from django.db import connections

    from django_rls.test_runner import owner_alias

    owner = connections[owner_alias("rls_django_db_setup")].settings_dict
    default = connections["default"].settings_dict
    application = {key: default.get(key) for key in _CREDENTIALS}
    _connect_default_as({key: owner.get(key) for key in _CREDENTIALS})
    return application


@pytest.fixture(scope="session")
def rls_django_db_setup(
    django_db_setup: None, django_db_modify_db_settings: dict[str, Any], django_db_blocker: Any
) -> Iterator[None]:
    """pytest-django's test database, built by the owner; then ``rls_apply`` on it, and "default" as the app role.

    The owner role needs ``CREATEDB`` (``manage.py rls_roles --owner-createdb``), and
    the test database needs the extension: create it in the template Django copies
    (``template1``, or ``DATABASES["default"]["TEST"]["TEMPLATE"]``).
    """
    from django.core.management import call_command
    from django.db import connections

    from django_rls.conf import app_role, rls_settings
    from django_rls.test_runner import fixture_sequences_reset_as_owner, flushing_as_owner, owner_alias
    from django_rls.testing import grant_like_application

    if not isinstance(django_db_modify_db_settings, dict):
        raise pytest.UsageError(
            "rls_django_db_setup needs rls_django_db_modify_db_settings in place of django_db_modify_db_settings "
            "(docs/testing.md): without it the application role would have built the test database"
        )
    owner = owner_alias("rls_django_db_setup")
    owner_credentials = {key: connections[owner].settings_dict.get(key) for key in _CREDENTIALS}
    # pytest-django sets up only the aliases its tests use; the owner must reach the test database all the same.
    connections[owner].creation.set_as_test_mirror(connections["default"].settings_dict)
    # Back to the application role first: rls_apply grants to the USER of "default" (or APP_ROLE).
    _connect_default_as(django_db_modify_db_settings)
    with django_db_blocker.unblock():
        call_command("rls_apply", database=owner, verbosity=0, stdout=io.StringIO())
        if rls_settings.TEST_BYPASS_ROLE:
            with connections[owner].cursor() as cursor:
                grant_like_application(
                    cursor, app_role() or django_db_modify_db_settings["USER"], rls_settings.TEST_BYPASS_ROLE
                )
    for connection in connections.all():
        connection.close()
    # transactional_db tests run in a TransactionTestCase that empties the tables after each: as the owner.
    # Fixtures of Django test cases reset their sequences as the owner.
    with flushing_as_owner(), fixture_sequences_reset_as_owner():
        yield
    # pytest-django drops the test database through "default": as its owner, with no session left on it.
    for connection in connections.all():
        connection.close()
    _connect_default_as(owner_credentials)


@pytest.fixture
def rls_bypass(db: None) -> Any:
    """``django_rls.testing.test_bypass``: every site's rows on the test's own connection (docs/testing.md)."""
    from django_rls.testing import test_bypass

    return test_bypass


@pytest.fixture
def rls_context() -> Any:
    from django_rls.state import context

    return context


@pytest.fixture
def rls_leak_matrix(db: None) -> Callable[..., None]:
    from django_rls.testing import leak_matrix

    def check(
        contexts: Sequence[Mapping[str, Any]], models: Iterable[Any] | None = None, using: str = "default"
    ) -> None:
        leaks = leak_matrix(contexts, models, using)
        if leaks:
            pytest.fail("django_rls leak matrix found:\n" + "\n".join(f"  - {leak}" for leak in leaks), pytrace=False)

    return check
