from __future__ import annotations

from django.conf import settings
from django.db import models


class Item(models.Model):
    """One table per variant (bench/request_path.py creates them); the ORM query is the same."""

    site_id = models.IntegerField()
    name = models.CharField(max_length=50)
    price = models.IntegerField()

    class Meta:
        managed = False
        db_table = settings.TABLE

    def __str__(self) -> str:
        return self.name
