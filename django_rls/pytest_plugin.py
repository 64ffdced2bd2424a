"""pytest fixtures for projects that use django_rls (registered automatically; needs pytest-django).

- ``rls_context``: ``django_rls.context``, to run code as a site and user.
- ``rls_leak_matrix``: ``check(contexts, models=None, using="default")`` runs
  :func:`django_rls.testing.leak_matrix` and fails the test with every leak found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest


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
