"""A post_save handler that queries, as real apps have: it runs in the request's context."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from tests.tenantproject.shop.models import Activity, Article


@receiver(post_save, sender=Article)
def record_activity(sender: type[Article], instance: Article, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    count = Article.objects.filter(company=instance.company_id).count()
    Activity.objects.create(company_id=instance.company_id, message=f"{instance.title}: article {count}")
