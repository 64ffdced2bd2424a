"""The test settings with ``django.contrib.postgres`` installed.

Its ``connection_created`` receiver queries ``pg_type`` through the Django cursor,
and it runs before django_rls's own receiver (tests/test_receiver_order.py).
"""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = ["django.contrib.postgres", *INSTALLED_APPS]
