"""Probe rows: throwaway rows that rls_verify and the leak matrix write to test the policies.

A probe goes in as one INSERT through the model's fields (``QuerySet._insert``,
what ``save()`` runs underneath), never through ``save()``: an application's
``pre_save``/``post_save`` handlers must not run for rows that exist only
inside a rolled-back transaction, and one that raises must not stop the test.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Set
from typing import Any

from django.db import models

MARK = "rls-verify"


class Unprobeable(Exception):
    """A probe row cannot be built for this model; the reason says why."""


def filler(model_field: models.Field[Any, Any]) -> Any:
    """A throwaway value for a required column."""
    if isinstance(model_field, models.UUIDField):
        return uuid.uuid4()
    if isinstance(model_field, models.BooleanField):
        return False
    if isinstance(model_field, models.DecimalField):
        return decimal.Decimal(0)
    if isinstance(model_field, models.IntegerField | models.FloatField):
        return 0
    if isinstance(model_field, models.DateTimeField):
        return datetime.datetime.now(datetime.UTC)
    if isinstance(model_field, models.DateField):
        return datetime.date.today()
    if isinstance(model_field, models.TimeField):
        return datetime.time()
    if isinstance(model_field, models.DurationField):
        return datetime.timedelta()
    if isinstance(model_field, models.JSONField):
        return {}
    if isinstance(model_field, models.GenericIPAddressField):
        return "127.0.0.1"
    if isinstance(model_field, models.EmailField):
        return f"{uuid.uuid4().hex[:12]}@{MARK}.invalid"
    if isinstance(model_field, models.CharField | models.TextField):
        text = f"{MARK}-{uuid.uuid4().hex}"
        return text[: model_field.max_length] if model_field.max_length else text
    raise Unprobeable(f"cannot invent a value for {model_field.name} ({model_field.get_internal_type()})")


def insert(row: models.Model, using: str, *, returning: bool = True) -> Any:
    """INSERT ``row`` without signals; returns (and sets) its primary key when ``returning``.

    Without ``returning`` the statement has no RETURNING clause, which the
    SELECT policy would check too: what a WITH CHECK alone lets through shows.
    """
    model = type(row)
    meta = model._meta.concrete_model._meta  # a proxy model writes its concrete model's table
    if meta.parents:
        raise Unprobeable("multi-table inheritance: a probe row would need rows in the parent tables too")
    fields = [
        f
        for f in meta.local_concrete_fields
        if not (f.primary_key and row.pk is None) and not getattr(f, "generated", False)
    ]
    manager = model._base_manager.using(using)
    result = manager._insert([row], fields=fields, returning_fields=[meta.pk] if returning else None, using=using)
    row._state.adding, row._state.db = False, using
    if returning:
        row.pk = result[0][0]
        return row.pk
    return None


def parent_row(relation: Any, using: str, protected: Set[str]) -> Any:
    """Insert a throwaway row for a foreign key to point at; returns its primary key."""
    target = relation.related_model
    if target._meta.label in protected:
        raise Unprobeable(f"its {relation.name} needs a {target._meta.label} row, which is protected itself")
    return insert(build(target, using, protected, {}), using)


def build(model: type[models.Model], using: str, protected: Set[str], overrides: dict[str, Any]) -> models.Model:
    """An unsaved row with every required field filled; parents of required foreign keys are inserted."""
    values: dict[str, Any] = {}
    for model_field in model._meta.concrete_fields:
        if model_field.name in overrides:
            values[model_field.attname] = overrides[model_field.name]
            continue
        if model_field.primary_key and isinstance(model_field, models.AutoField):
            continue
        if model_field.has_default() or model_field.null:
            continue
        if model_field.is_relation:
            values[model_field.attname] = parent_row(model_field, using, protected)
        else:
            values[model_field.attname] = filler(model_field)
    return model(**values)
