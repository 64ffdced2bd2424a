"""What the test runner built: a database of the owner's, served to the tests as the application role."""

from __future__ import annotations

import os

from django.db import connection
from django.test import TestCase


class BuiltAsTheOwnerTests(TestCase):
    def test_tests_run_as_the_application_role_on_a_protected_clone(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_database()")
            user, database = cursor.fetchone()
            cursor.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'monitor_alert'")
            (owner,) = cursor.fetchone()
            cursor.execute(
                "SELECT relforcerowsecurity, (SELECT count(*) FROM pg_policies WHERE tablename = 'monitor_alert') "
                "FROM pg_class WHERE relname = 'monitor_alert'"
            )
            forced, policies = cursor.fetchone()
        self.assertEqual(user, os.environ["MONITOR_APP"])
        self.assertEqual(owner, os.environ["MONITOR_OWNER"])
        # --parallel 2: each worker has its clone, which the policies were applied to before cloning.
        self.assertIn(database, ("test_monitor_1", "test_monitor_2"))
        self.assertTrue(forced)
        self.assertGreater(policies, 0)
