"""The demo's data: invoices per company, private notes per user."""

from __future__ import annotations

from django.conf import settings
from django.contrib.sites.models import Site
from django.db import models

import django_rls
from django_rls.policies import BySite, BySiteAndOwner


@django_rls.protect(BySite("site"), audit=True)
class Invoice(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    customer = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.customer}: {self.amount}"


@django_rls.protect(BySiteAndOwner("site", "author"), audit=True)
class Note(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField()

    def __str__(self) -> str:
        return self.text
