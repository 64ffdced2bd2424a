"""The pytest fixtures every Citus test module shares (tests/test_citus.py, tests/test_citus_django.py).

Each module defines its own module-scoped ``citus`` fixture (a cluster from
``tests.harness.citus_cluster.running_cluster``, set up for its tests) and imports these, which build on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.harness.citus_cluster import CitusCluster


@pytest.fixture
def admin(citus: CitusCluster) -> Iterator[psycopg.Connection]:
    """The superuser on the coordinator, in autocommit: it sets up and compares, never asserts what a site sees."""
    with citus.connect() as conn:
        yield conn
