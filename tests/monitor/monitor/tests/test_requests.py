"""Requests as the application role: the project from an API key, a ping URL or the URL; switch_context."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db import connection
from django.test import TestCase

import django_rls
from django_rls.lookups import find
from django_rls.test_runner import BypassFixtures
from django_rls.testing import test_bypass
from monitor.models import Alert, Check, Member, Ping, Project


class MonitorData(BypassFixtures, TestCase):
    """Two projects: alice owns "one" (carol is a member), bob owns "two"; each has checks, pings and alerts."""

    @classmethod
    def setUpTestData(cls) -> None:
        # Runs in test_bypass(): every project's rows, written as the application role would never be allowed to.
        cls.alice, cls.bob, cls.carol = (User.objects.create(username=name) for name in ("alice", "bob", "carol"))
        cls.one = Project.objects.create(name="one", owner=cls.alice, api_key="k" * 64)
        cls.two = Project.objects.create(name="two", owner=cls.bob, api_key="z" * 64)
        Member.objects.create(project=cls.one, user=cls.carol)
        cls.one_check = Check.objects.create(project=cls.one, name="one-a")
        Check.objects.create(project=cls.one, name="one-b")
        cls.two_check = Check.objects.create(project=cls.two, name="two-a")
        for check in (cls.one_check, cls.two_check):
            Alert.objects.create(ping=Ping.objects.create(for_check=check), sent_by="fixture")


class ApiKeyTests(MonitorData):
    def test_the_api_key_names_the_project_and_the_view_gets_it_without_a_query(self):
        # One query finds the project by its key; one lists its checks. django_rls adds none of its own.
        with self.assertNumQueries(2):
            response = self.client.get("/api/v1/checks/", headers={"x-api-key": "k" * 64})
        self.assertEqual(response.json(), {"project": "one", "checks": ["one-a", "one-b"]})
        response = self.client.get("/api/v1/checks/", headers={"x-api-key": "z" * 64})
        self.assertEqual(response.json(), {"project": "two", "checks": ["two-a"]})

    def test_an_unknown_or_missing_key_finds_nothing(self):
        for headers in ({"x-api-key": "k" * 63}, {"x-api-key": ""}, {}):
            response = self.client.get("/api/v1/checks/", headers=headers)
            self.assertEqual(response.status_code, 401, headers)

    def test_a_ping_url_names_the_check_and_only_it(self):
        with self.assertNumQueries(2):  # the check by its code, the ping's INSERT
            self.assertEqual(self.client.post(f"/ping/{self.one_check.code}/").content, b"OK")
        self.assertEqual(self.client.post(f"/ping/{uuid.uuid4()}/").status_code, 404)
        with django_rls.context(site=self.one.id):
            self.assertEqual(Ping.objects.filter(for_check=self.one_check).count(), 2)
        with django_rls.context(site=self.two.id):
            self.assertEqual(Ping.objects.count(), 1)  # two's own, untouched

    def test_the_lookup_reveals_one_row_and_nothing_after_it(self):
        self.assertEqual(find(Project, "api_key", "k" * 64), self.one)
        self.assertIsNone(find(Project, "api_key", "k%"))  # exact keys only
        with self.assertNumQueries(0):  # what no row can hold is not looked for
            self.assertIsNone(find(Check, "code", "not-a-uuid"))
            self.assertIsNone(find(Project, "api_key", "k" * 65))
            self.assertIsNone(find(Project, "api_key", ""))
        # Inside the same transaction, the next statement carries its own context: the lookup's is gone.
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM monitor_project WHERE api_key = %s", ["k" * 64])
            self.assertEqual(cursor.fetchone(), (0,))
        with self.assertRaisesMessage(ValueError, "lookup:"):
            django_rls.context(claims={"lookup:monitor_project.api_key": "k" * 64})


class UrlTests(MonitorData):
    def test_owners_and_members_see_the_project_named_by_the_url(self):
        for user in (self.alice, self.carol):
            self.client.force_login(user)
            response = self.client.get(f"/projects/{self.one.id}/checks/")
            self.assertEqual(response.json(), {"project": "one", "checks": ["one-a", "one-b"]})

    def test_anyone_else_gets_a_404(self):
        self.client.force_login(self.bob)
        self.assertEqual(self.client.get(f"/projects/{self.one.id}/checks/").status_code, 404)
        self.client.logout()
        self.assertEqual(self.client.get(f"/projects/{self.one.id}/checks/").status_code, 404)

    def test_a_user_lists_the_projects_they_own_or_belong_to(self):
        for user, names in ((self.alice, ["one"]), (self.bob, ["two"]), (self.carol, ["one"])):
            self.client.force_login(user)
            self.assertEqual(self.client.get("/projects/").json(), {"projects": names})

    def test_a_new_project_is_worked_in_for_the_rest_of_the_request(self):
        self.client.force_login(self.carol)
        body = self.client.post("/projects/new/", {"name": "three"}).json()
        self.assertEqual(body["checks"], ["first check"])
        with django_rls.context(site=body["project"]):
            self.assertEqual(Member.objects.filter(user=self.carol).count(), 1)  # its members: carol
        with django_rls.context(user=self.carol):
            self.assertEqual(Member.objects.count(), 2)  # her own memberships: "one" and the new one
        self.assertEqual(self.client.get("/projects/").json(), {"projects": ["one", "three"]})


class ChainTests(MonitorData):
    def test_three_levels_of_children_follow_their_project(self):
        with django_rls.context(site=self.one.id):
            self.assertEqual((Check.objects.count(), Ping.objects.count(), Alert.objects.count()), (2, 1, 1))
        with django_rls.context(site=self.two.id):
            self.assertEqual(list(Alert.objects.values_list("ping__for_check__name", flat=True)), ["two-a"])
        self.assertEqual((Check.objects.count(), Alert.objects.count()), (0, 0))  # no context, no rows

    def test_the_bypass_is_the_class_setup_only_and_counts_no_query(self):
        self.assertEqual(Project.objects.count(), 0)
        with test_bypass():
            self.assertEqual(Project.objects.count(), 2)
            with self.assertNumQueries(2):  # test_bypass()'s own statements are not among them
                response = self.client.get("/api/v1/checks/", headers={"x-api-key": "k" * 64})
        self.assertEqual(response.json()["checks"], ["one-a", "one-b"])  # the request ran as the app role
        self.assertEqual(Project.objects.count(), 0)
