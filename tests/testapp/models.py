"""Models covering every policy kind, with integer and UUID keys."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.sites.models import Site
from django.db import models
from django.db.models import Q

import django_rls
from django_rls.expressions import CurrentSite
from django_rls.policies import (
    BySite,
    BySiteAndOwner,
    Custom,
    Members,
    Membership,
    OwnerOrMember,
    OwnerOrShared,
    Shared,
    ThroughParent,
)


@django_rls.protect(BySite("site"), audit=True)
class Note(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    body = models.TextField()


@django_rls.protect(BySiteAndOwner("site", "owner"))
class Task(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)


class Tenant(models.Model):
    """A site with a UUID key, as SaaS apps often have."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50)


@django_rls.protect(BySiteAndOwner("tenant", "owner_uuid"), audit=True, audit_mask=("body",))
class TenantDoc(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
    owner_uuid = models.UUIDField()
    body = models.TextField()


@django_rls.protect(Shared("site"))
class Category(models.Model):
    site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)


# The membership table itself: a user's own memberships and the current site's members (Membership()
# through itself would recurse, check E020).
@django_rls.protect(Members("user", "site"))
class SiteMembership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    site = models.ForeignKey(Site, on_delete=models.CASCADE)


@django_rls.protect(Membership("testapp.SiteMembership", field="site"))
class Project(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)


@django_rls.protect(BySite("site"))
class Order(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    number = models.IntegerField()


@django_rls.protect(ThroughParent("order"))
class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE)
    product = models.CharField(max_length=50)


@django_rls.protect(BySite("site"))
class Tag(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    label = models.CharField(max_length=50)


@django_rls.protect(
    BySite("site", commands=["insert", "update", "delete"]),
    Custom(Q(published=True) | Q(site=CurrentSite()), commands=["select"]),
)
class Article(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)
    published = models.BooleanField(default=False)
    tags = models.ManyToManyField(Tag, through="ArticleTag")


@django_rls.protect(ThroughParent("article", "tag"))
class ArticleTag(models.Model):
    article = models.ForeignKey(Article, on_delete=models.CASCADE)
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE)


@django_rls.protect(OwnerOrShared("owner", shared_field="is_public"))
class Bookmark(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    url = models.URLField()
    is_public = models.BooleanField(default=False)


# Owner-or-member without recursion: a team's policy reads memberships with rls.member_of(), so the
# membership policy may read the team (every member of a team its viewer sees) without a circle.
@django_rls.protect(OwnerOrMember("testapp.TeamMember", owner_field="owner", member_field="team", user_field="user"))
class Team(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=50)


@django_rls.protect(Members("user", "team", parent=True))
class TeamMember(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")


# A three-level chain, ping -> monitor -> space, where the space is the site itself (its primary key is
# the site id): monitors compare their own key, pings read monitors, one subquery in all.
@django_rls.protect(BySite("id"))
class Space(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=50)


@django_rls.protect(ThroughParent("space"))
class Monitor(models.Model):
    space = models.ForeignKey(Space, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)


@django_rls.protect(ThroughParent("monitor", null_parent="read", or_where=Q(public=True)))
class Ping(models.Model):
    monitor = models.ForeignKey(Monitor, null=True, blank=True, on_delete=models.CASCADE)
    public = models.BooleanField(default=False)
    body = models.CharField(max_length=50)


# Rows a request may move to the site named by its "move_to" claim.
@django_rls.protect(BySite("site", movable_to="move_to"))
class Folder(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)
