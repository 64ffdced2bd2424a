"""Django's own test runner (``manage.py test``) for projects that use django_rls; docs/testing.md.

``TEST_RUNNER = "django_rls.test_runner.RlsDiscoverRunner"`` (or ``RlsRunnerMixin``
before your own runner class):

- the test databases are created, migrated, cloned for ``--parallel`` and destroyed
  by the owner role (``DJANGO_RLS["OWNER_DATABASE"]``'s ``USER`` and ``PASSWORD``),
  through the protected aliases themselves, so data migrations run as the owner too;
- ``rls_apply`` runs on each test database right after its migrations, before
  ``--parallel`` clones it, and the test bypass role (``TEST_BYPASS_ROLE``) gets the
  application role's privileges there;
- tests then connect as the application role, with the policies of production.

``BypassFixtures`` (for ``TestCase``) loads ``fixtures`` and runs ``setUpTestData``
inside ``django_rls.testing.test_bypass()``; ``FlushAsOwner`` (for
``TransactionTestCase``) empties the tables as the owner, since the application
role may not TRUNCATE. The runner does the same for every
``TransactionTestCase`` of the suite that is not a ``TestCase``, so the suites of
apps you cannot edit empty their tables too. Neither mixin sends a query of its own inside a test, so
``assertNumQueries`` counts what it counted before.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.db.models.signals import post_migrate
from django.test import TransactionTestCase
from django.test.runner import DiscoverRunner

from django_rls.conf import app_role, rls_settings
from django_rls.database import protected_aliases
from django_rls.testing import grant_like_application, test_bypass

# The settings of an alias that say who connects; the owner's are swapped in while the databases are built.
CREDENTIALS = ("USER", "PASSWORD")
_APPLY_UID = "django_rls.test_runner.apply"


def owner_alias(builder: str = "django_rls.test_runner") -> str:
    """The alias of the owner role, which builds the test databases (the runner's and the pytest plugin's).

    ``builder`` names what builds them, for the error when ``DJANGO_RLS["OWNER_DATABASE"]`` is unset, is
    ``"default"`` (the application role's alias) or names no alias.
    """
    owner = rls_settings.OWNER_DATABASE
    if not owner or owner == "default" or owner not in connections.settings:
        raise ImproperlyConfigured(
            f'{builder} builds the test databases as the owner role: set DJANGO_RLS["OWNER_DATABASE"] '
            "to the alias that connects as it (docs/testing.md)"
        )
    return str(owner)


@contextmanager
def connected_as_owner(aliases: Iterable[str]) -> Iterator[None]:
    """These aliases connect as the owner role inside the block, and as themselves again after it."""
    owner = connections[owner_alias()].settings_dict
    saved: dict[str, dict[str, Any]] = {}
    for alias in aliases:
        connection = connections[alias]
        connection.close()
        saved[alias] = {key: connection.settings_dict.get(key) for key in CREDENTIALS}
        connection.settings_dict.update({key: owner.get(key) for key in CREDENTIALS})
    try:
        yield
    finally:
        for alias, credentials in saved.items():
            connections[alias].close()
            connections[alias].settings_dict.update(credentials)


def _apply_after_last_migration(sender: Any, using: str, **kwargs: Any) -> None:
    """post_migrate fires once per app with models: on the last, every table exists; protect them."""
    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if using not in protected_aliases() or not with_models or sender is not with_models[-1]:
        return
    call_command("rls_apply", database=using, verbosity=0, stdout=io.StringIO())
    bypass_role = rls_settings.TEST_BYPASS_ROLE
    role = app_role()
    if bypass_role and role:
        with connections[using].cursor() as cursor:
            grant_like_application(cursor, role, bypass_role)


def _harden(connection: Any, parallel: int) -> None:
    """What ``rls_roles`` sets per database, for the new test databases and their clones, as their owner.

    A new database (and a clone) starts with TEMPORARY granted to PUBLIC and none of the
    per-database settings of the template (checks E017, E018): revoke it, and pin a
    search_path with pg_temp last for the database.
    """
    from psycopg import sql

    from django_rls.roles import pinned_search_path

    names = [connection.settings_dict["NAME"]]
    if parallel > 1:
        names += [connection.creation.get_test_db_clone_settings(str(i + 1))["NAME"] for i in range(parallel)]
    search_path = sql.SQL(", ").join(sql.Identifier(schema) for schema in pinned_search_path(None))
    with connection.cursor() as cursor:  # database-wide statements: the clones are reached from here too
        for name in names:
            database = sql.Identifier(name)
            cursor.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
            cursor.execute(sql.SQL("ALTER DATABASE {} SET search_path = {}").format(database, search_path))


class RlsRunnerMixin:
    """Build, clone and destroy the test databases as the owner role, with the policies applied before cloning.

    Every ``TransactionTestCase`` of the run (not a ``TestCase``, which rolls back) empties
    its tables as the owner, as ``FlushAsOwner`` does, also those of third-party apps' suites;
    fixtures reset their sequences as the owner (``fixture_sequences_reset_as_owner``).
    """

    def setup_test_environment(self, **kwargs: Any) -> None:
        super().setup_test_environment(**kwargs)  # type: ignore[misc]
        self._rls_environment = ExitStack()
        self._rls_environment.enter_context(flushing_as_owner())
        self._rls_environment.enter_context(fixture_sequences_reset_as_owner())

    def teardown_test_environment(self, **kwargs: Any) -> None:
        self._rls_environment.close()
        super().teardown_test_environment(**kwargs)  # type: ignore[misc]

    def setup_databases(self, **kwargs: Any) -> Any:
        protected = protected_aliases()
        post_migrate.connect(_apply_after_last_migration, dispatch_uid=_APPLY_UID)
        try:
            with connected_as_owner(protected):
                old_config = super().setup_databases(**kwargs)  # type: ignore[misc]
                for connection, _, created in old_config:
                    if created and connection.alias in protected:
                        _harden(connection, self.parallel)  # type: ignore[attr-defined]
        finally:
            post_migrate.disconnect(dispatch_uid=_APPLY_UID)
        return old_config

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        with connected_as_owner(protected_aliases()):
            super().teardown_databases(old_config, **kwargs)  # type: ignore[misc]


class RlsDiscoverRunner(RlsRunnerMixin, DiscoverRunner):
    """Django's DiscoverRunner with django_rls's test databases (``TEST_RUNNER``)."""


class BypassFixtures:
    """TestCase mixin: ``fixtures`` and ``setUpTestData`` run in ``test_bypass()``, every site's rows writable.

    The bypass covers the class's setup only, on the protected aliases the test case
    uses; each test then runs as the application role, with no context until it
    enters one (``django_rls.context()``) or makes a request.
    """

    # Open while setUpClass runs: TestCase enters its atomic blocks there and again before each test.
    _rls_fixture_bypass: ExitStack | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls._rls_fixture_bypass = ExitStack()
        try:
            super().setUpClass()  # type: ignore[misc]
        finally:
            cls._rls_fixture_bypass.close()
            cls._rls_fixture_bypass = None

    @classmethod
    def _enter_atomics(cls) -> Any:
        atomics = super()._enter_atomics()  # type: ignore[misc]
        if cls._rls_fixture_bypass is not None:
            protected = protected_aliases()
            for alias in cls._databases_names(include_mirrors=False):  # type: ignore[attr-defined]
                if alias in protected:
                    cls._rls_fixture_bypass.enter_context(test_bypass(alias))
        return atomics


def _flush_as_owner(test: Any, flush: Any) -> None:
    protected = protected_aliases()
    aliases = [a for a in test._databases_names(include_mirrors=False) if a in protected]
    with connected_as_owner(aliases):
        flush(test)


class FlushAsOwner:
    """TransactionTestCase mixin: empty the tables after each test as the owner role (TRUNCATE is the owner's)."""

    def _fixture_teardown(self) -> None:
        _flush_as_owner(self, super()._fixture_teardown.__func__)  # type: ignore[misc]


@contextmanager
def flushing_as_owner() -> Iterator[None]:
    """Inside the block every TransactionTestCase empties its tables as the owner, as FlushAsOwner does.

    For test cases nobody can add the mixin to: a third-party app's own suite, and the
    ``TransactionTestCase`` pytest-django runs ``transactional_db`` tests in. ``TestCase``
    rolls back instead and is left alone. The method is replaced on ``TransactionTestCase``
    itself, not on a subclass, so ``--parallel`` still pickles the tests by name (its
    workers are forked after the test environment is set up).
    """
    flush = TransactionTestCase.__dict__["_fixture_teardown"]
    if getattr(flush, "flushes_as_owner", False):  # already inside such a block
        yield
        return

    def _fixture_teardown(self: Any) -> None:
        if isinstance(self, FlushAsOwner):
            flush(self)  # FlushAsOwner called us with the owner's connections already
        else:
            _flush_as_owner(self, flush)

    _fixture_teardown.flushes_as_owner = True  # type: ignore[attr-defined]
    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = flush  # type: ignore[method-assign]


def _sequence_values(connection: Any, models: Iterable[Any]) -> list[tuple[str, int, bool]]:
    """What ``loaddata`` would ``setval()`` each model's sequence to, read in ``test_bypass()``: every row counts.

    The same values Django's ``sequence_reset_sql()`` computes on PostgreSQL: the highest id
    (1 and not called when the table is empty) of the model's first auto field.
    """
    from django.db.models import AutoField

    values = []
    with test_bypass(connection.alias), connection.cursor() as cursor:
        for model in models:
            field = next((f for f in model._meta.local_fields if isinstance(f, AutoField)), None)
            if field is None:
                continue
            column = connection.ops.quote_name(field.column)
            cursor.execute(
                f"SELECT pg_get_serial_sequence(%s, %s), coalesce(max({column}), 1), max({column}) IS NOT NULL "
                f"FROM {connection.ops.quote_name(model._meta.db_table)}",
                [connection.ops.quote_name(model._meta.db_table), field.column],
            )
            sequence, value, called = cursor.fetchone()
            if sequence is not None:
                values.append((sequence, value, called))
    return values


def _set_sequences_as_owner(connection: Any, values: list[tuple[str, int, bool]]) -> None:
    """``setval()`` as the owner role, on a connection of its own to the same test database.

    Sequences are not transactional, so the test's transaction sees the new values at once.
    """
    import psycopg

    owner = connections[owner_alias()].settings_dict
    params = {
        key: value
        for key, value in connection.get_connection_params().items()
        if key not in ("cursor_factory", "context", "prepare_threshold")
    }
    params.update(user=owner.get("USER"), password=owner.get("PASSWORD") or None)
    with psycopg.connect(**params, autocommit=True) as conn:
        for sequence, value, called in values:
            conn.execute("SELECT setval(%s::regclass, %s, %s)", (sequence, value, called))


@contextmanager
def fixture_sequences_reset_as_owner() -> Iterator[None]:
    """Inside the block ``loaddata`` resets the sequences of the tables it loaded as the owner role.

    After loading, ``loaddata`` (``fixtures`` of every test case) sets each loaded table's
    sequence past its highest id: ``setval()``, which needs ``UPDATE`` on the sequence. The
    application role has ``USAGE`` only (rls_apply never grants more), so every test case
    with fixtures failed with ``permission denied for sequence``, whatever its rows, a
    third-party app's own as well as ``BypassFixtures``. The highest ids are read on the
    test's own connection in ``test_bypass()`` (``TEST_BYPASS_ROLE``), which sees the rows
    loaded so far for every site, not only those the policies show the application role;
    the owner sets the sequences. Without ``TEST_BYPASS_ROLE`` nothing changes. The rows
    themselves are written as the test case writes them.
    """
    from django.core.management.commands import loaddata

    reset = loaddata.Command.__dict__["reset_sequences"]
    if getattr(reset, "resets_as_owner", False) or not rls_settings.TEST_BYPASS_ROLE:
        yield
        return

    def reset_sequences(self: Any, connection: Any, models: Any) -> None:
        if connection.alias not in protected_aliases():
            reset(self, connection, models)
            return
        # loaddata holds its atomic block open here; test_bypass() refuses outside a test database.
        _set_sequences_as_owner(connection, _sequence_values(connection, models))

    reset_sequences.resets_as_owner = True  # type: ignore[attr-defined]
    loaddata.Command.reset_sequences = reset_sequences  # type: ignore[method-assign]
    try:
        yield
    finally:
        loaddata.Command.reset_sequences = reset  # type: ignore[method-assign]
