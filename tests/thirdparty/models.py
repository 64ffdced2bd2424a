"""A stand-in for a third-party app: its models are protected without editing this file."""

from __future__ import annotations

from django.db import models


class Gadget(models.Model):
    site_id = models.IntegerField()
    name = models.CharField(max_length=50)


class Widget(models.Model):
    owner_id = models.IntegerField(null=True)
    name = models.CharField(max_length=50)
