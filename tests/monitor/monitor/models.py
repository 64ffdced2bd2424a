"""Projects (the tenants), their members, and a three-level chain of children: check, ping, alert."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

import django_rls
from django_rls.lookups import Lookup
from django_rls.policies import Custom, Members, ThroughParent

# A request that presented a key (a site, no user) sees its project; a user sees the projects they own or are
# a member of, only the request's one when it has a site (the URL named it).
OWNER_OR_MEMBER = """
    (rls.user_id() IS NULL AND id = rls.site_uuid())
    OR ((owner_id = rls.user_id()
         OR EXISTS (SELECT 1 FROM monitor_member m WHERE m.project_id = monitor_project.id AND m.user_id = rls.user_id()))
        AND (rls.site_uuid() IS NULL OR id = rls.site_uuid()))
"""


@django_rls.protect(
    Custom(OWNER_OR_MEMBER, check="owner_id = rls.user_id()", name="owner_or_member"),
    Lookup("api_key", site="id"),
)
class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    api_key = models.CharField(max_length=64, unique=True)


@django_rls.protect(Members("user", "project"))
class Member(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")


@django_rls.protect(ThroughParent("project"), Lookup("code", site="project"))
class Check(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    code = models.UUIDField(unique=True, default=uuid.uuid4)
    name = models.CharField(max_length=100)


@django_rls.protect(ThroughParent("for_check"))
class Ping(models.Model):
    for_check = models.ForeignKey(Check, on_delete=models.CASCADE)
    created = models.DateTimeField(auto_now_add=True)


@django_rls.protect(ThroughParent("ping"))
class Alert(models.Model):
    ping = models.OneToOneField(Ping, on_delete=models.CASCADE)
    sent_by = models.CharField(max_length=100)
