"""A TransactionTestCase as a third-party app's own suite has it: no django_rls mixin.

The application role may not TRUNCATE; RlsDiscoverRunner empties the tables after each test
as the owner all the same, as FlushAsOwner does. Both tests create the same unique username:
whichever runs second passes only if the first one's row was flushed.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import TransactionTestCase

from django_rls.test_runner import FlushAsOwner


class UnmixedTransactionTests(TransactionTestCase):
    def test_first_user(self):
        User.objects.create(username="unmixed")
        self.assertEqual(User.objects.count(), 1)

    def test_second_user(self):
        User.objects.create(username="unmixed")
        self.assertEqual(User.objects.count(), 1)

    def test_the_runner_flushes_it_as_the_owner(self):
        self.assertNotIsInstance(self, FlushAsOwner)
        self.assertTrue(type(self)._fixture_teardown.flushes_as_owner)
