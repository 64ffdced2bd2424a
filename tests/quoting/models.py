"""Models whose names need quoting: a mixed-case table and column, and a table in another schema.

Django writes ``db_table`` in quotes unless it is quoted already, so ``'"other"."thing"'``
is how a Django project puts a model's table in a schema of its own.
"""

from __future__ import annotations

from django.contrib.sites.models import Site
from django.db import models

import django_rls
from django_rls.policies import BySite, ThroughParent


@django_rls.protect(BySite("site"), audit=True)
class MixedCase(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE, db_column="SiteId")
    body = models.TextField()

    class Meta:
        db_table = "MyTable"


@django_rls.protect(BySite("site"))
class Elsewhere(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    body = models.TextField()

    class Meta:
        db_table = '"other"."thing"'


@django_rls.protect(ThroughParent("parent"))
class ElsewhereChild(models.Model):
    parent = models.ForeignKey(Elsewhere, on_delete=models.CASCADE)
    label = models.TextField()

    class Meta:
        db_table = '"other"."Child"'
