"""The send_alerts command: every project's pings, through bypass(), from a thread pool."""

from __future__ import annotations

import io

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import TransactionTestCase

import django_rls
from django_rls.test_runner import FlushAsOwner
from monitor.models import Alert, Check, Ping, Project


class SendAlertsTests(FlushAsOwner, TransactionTestCase):
    # Worker threads read committed rows only: a TransactionTestCase, emptied by the owner after each test.
    databases = frozenset({"default", "bypass"})

    def setUp(self) -> None:
        with django_rls.bypass("test data of two projects"):
            owner = User.objects.create(username="owner")
            for name in ("one", "two"):
                project = Project.objects.create(name=name, owner=owner, api_key=name.ljust(64, "x"))
                check = Check.objects.create(project=project, name=f"{name}-a")
                for _ in range(3):
                    Ping.objects.create(for_check=check)
        self.projects = {name: Project.objects.using("bypass").get(name=name).id for name in ("one", "two")}

    def test_alerts_for_every_project_from_worker_threads(self):
        out = io.StringIO()
        call_command("send_alerts", "--workers", "3", stdout=out)
        self.assertRegex(out.getvalue(), r"^sent 6 alert\(s\) from [1-3] thread\(s\)")
        for project in self.projects.values():
            with django_rls.context(site=project):
                self.assertEqual(Alert.objects.count(), 3)
                self.assertTrue(
                    all(s.startswith("ThreadPoolExecutor") for s in Alert.objects.values_list("sent_by", flat=True))
                )
        self.assertEqual(Alert.objects.count(), 0)  # no context, no rows
        out = io.StringIO()
        call_command("send_alerts", stdout=out)
        self.assertTrue(out.getvalue().startswith("sent 0 alert(s)"))

    def test_the_tables_were_emptied_as_the_owner(self):
        with django_rls.bypass("count what the last test left"):
            self.assertEqual(Ping.objects.count(), 6)  # this test's own setUp only
