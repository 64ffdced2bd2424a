"""A shop with its own tenant model: companies, members, a category tree, articles, labels."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django_scopes import ScopedManager
from treebeard.mp_tree import MP_Node

import django_rls
from django_rls.policies import BySite, Members, Shared


class Company(models.Model):
    """The tenant. Not protected: the tenant middleware finds it by host before any site is known."""

    name = models.CharField(max_length=50)
    domain = models.CharField(max_length=100, unique=True)


@django_rls.protect(Members("user", "company"))
class Membership(models.Model):
    """A user's own memberships, and the members of the current company."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    company = models.ForeignKey(Company, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, default="member")


@django_rls.protect(BySite("company"))
class Category(MP_Node):
    """A tree per company. Its path is unique per company: a company computes the next path from
    the nodes it sees, so a path unique across companies would collide with hidden ones."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)
    path = models.CharField(max_length=255)
    node_order_by: ClassVar[list[str]] = ["name"]

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["company", "path"], name="category_path_per_company")
        ]


@django_rls.protect(BySite("company"))
class Article(models.Model):
    company = models.ForeignKey(Company, on_delete=models.CASCADE)
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    title = models.CharField(max_length=100)
    keywords = ArrayField(models.CharField(max_length=30), default=list)

    objects = ScopedManager(company="company")


@django_rls.protect(Shared("company"))
class Label(models.Model):
    """A company's labels and the shared ones (company NULL), which every company sees."""

    company = models.ForeignKey(Company, null=True, blank=True, on_delete=models.CASCADE)
    name = models.CharField(max_length=50)


@django_rls.protect(BySite("company"))
class Activity(models.Model):
    """Written by a post_save handler of Article, which queries first."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE)
    message = models.CharField(max_length=200)
