"""Context values as ORM expressions, for Custom() policies and for queries.

Custom(Q(site=CurrentSite()) | Q(public=True))
"""

from __future__ import annotations

from typing import Any

from django.db import models


class _Accessor(models.Func):
    arity = 0

    def __init__(self, **extra: Any) -> None:
        super().__init__(**extra)


class CurrentSite(_Accessor):
    """``rls.site_id()``: the context's integer site id."""

    template = "rls.site_id()"
    output_field = models.BigIntegerField()


class CurrentUser(_Accessor):
    """``rls.user_id()``: the context's integer user id."""

    template = "rls.user_id()"
    output_field = models.BigIntegerField()


class CurrentSiteUuid(_Accessor):
    """``rls.site_uuid()``: the context's UUID site id."""

    template = "rls.site_uuid()"
    output_field = models.UUIDField()


class CurrentUserUuid(_Accessor):
    """``rls.user_uuid()``: the context's UUID user id."""

    template = "rls.user_uuid()"
    output_field = models.UUIDField()


class Claim(models.Func):
    """``rls.claim(key)``: one claim of the context as text."""

    function = "rls.claim"
    output_field = models.TextField()

    def __init__(self, key: str, **extra: Any) -> None:
        super().__init__(models.Value(key), **extra)
