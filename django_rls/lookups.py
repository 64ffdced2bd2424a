"""Declared lookups: find the site of a request from a key it carries (an API key, a slug, a UUID in the URL).

Before its site is known, a request sees no protected row, so a resolver cannot
read the project an API key belongs to. A ``Lookup`` declared on the model lets
exactly one kind of statement through: the one ``find()`` sends, which carries
the key in its own context (no site, no user, one reserved claim) and may see
the one row whose key column equals it, nothing else::

    @django_rls.protect(BySite("id"), Lookup("api_key", site="id"))
    class Project(models.Model): ...

    project = django_rls.lookups.find(Project, "api_key", key)   # the row, or None

Every other statement carries the request's own context, in which the claim is
absent and the condition is false; injected SQL cannot set it (statement-bound
contexts). ``django_rls.resolvers.by_lookup()`` wraps ``find()`` as a site
resolver and hands the row to the view as a request attribute.
"""

from __future__ import annotations

import json
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, models
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.sql import Literal

from django_rls.policies import DeclarationError, Group, Policy, _field, _qn, key_column
from django_rls.state import FixedFrame, Values, enter_frame, reset_frame

# Longer keys are refused without a query (the context's claims are limited to 8 kB).
MAX_KEY_LENGTH = 1024
# Claims with this prefix are the lookups' own: make_values() refuses them anywhere else.
CLAIM_PREFIX = "lookup:"

_TEXT_TYPES = frozenset({"CharField", "SlugField", "TextField", "EmailField"})
_INTEGER_TYPES = frozenset(
    {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField", "SmallIntegerField"}
)


class Lookup(Policy):
    """Let ``django_rls.lookups.find()`` read one row by an exact, unique key, before the request has a site.

    ``field`` is the key (a unique text, UUID or integer column); ``site`` names the
    field holding the row's site (``"id"`` on the tenant model itself). Unlike every
    other policy kind, it widens rather than narrows: each of the model's other
    policy groups lets SELECT also see the row whose key equals the lookup's claim
    (the group is split into a ``<group>_lookup`` SELECT group and the rest).
    """

    def __init__(self, field: str, site: str = "site") -> None:
        self.field = field
        self.site = site

    def claim(self, model: type[models.Model]) -> str:
        return f"{CLAIM_PREFIX}{model._meta.db_table}.{_field(model, self.field).column}"

    def site_attname(self, model: type[models.Model]) -> str:
        key_column(model, self.site)  # an integer or UUID key, like every site
        return _field(model, self.site).attname

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        return []

    def select_also(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> str:
        key = _field(model, self.field)
        self.site_attname(model)
        kind = key.get_internal_type()
        claim = f"rls.claim({Literal(self.claim(model)).as_string(None)})"
        if kind in _TEXT_TYPES:
            value = claim
        elif kind == "UUIDField":
            value = f"{claim}::uuid"
        elif kind in _INTEGER_TYPES:
            value = f"{claim}::bigint"
        else:
            raise DeclarationError(
                f"Lookup({self.field!r}) on {model._meta.label}: a {kind} cannot be a lookup key; "
                "use a text, UUID or integer field"
            )
        if not (key.unique or key.primary_key):
            raise DeclarationError(
                f"Lookup({self.field!r}) on {model._meta.label}: the field is not unique, so one key could reveal "
                "several rows; look up by a unique field (unique=True)"
            )
        return f"{_qn(key.column)} = {value}"


def declared_lookup(model: type[models.Model], field: str) -> Lookup:
    """The Lookup declared for this model and field, or DeclarationError saying how to declare it."""
    from django_rls.declarations import all_declarations

    declaration = all_declarations().get(model._meta.label)
    for policy in declaration.policies if declaration is not None else ():
        if isinstance(policy, Lookup) and policy.field == field:
            return policy
    raise DeclarationError(
        f"{model._meta.label} declares no Lookup({field!r}): add it to the model's policies, e.g. "
        f'@django_rls.protect(BySite("site"), Lookup({field!r}, site="site")), and run rls_apply'
    )


def find(model: type[models.Model] | str, field: str, value: Any, using: str = DEFAULT_DB_ALIAS) -> Any:
    """The row of ``model`` whose ``field`` equals ``value`` exactly, through its declared Lookup; or None.

    One statement, which sees at most that row, or none for one no row has; no
    statement at all for an empty value or one the field cannot hold (a malformed
    UUID, text longer than its ``max_length``, or than 1024 characters). The row's
    site is its Lookup's ``site`` field. The search is an index search, not a
    constant-time comparison: use long random keys (UUID4, ``secrets``).
    """
    if isinstance(model, str):
        model = apps.get_model(model)
    lookup = declared_lookup(model, field)
    try:
        key = _field(model, field).to_python(value)
    except ValidationError:
        return None
    text = "" if key is None else str(key)
    longest = getattr(_field(model, field), "max_length", None) if isinstance(key, str) else None
    if not text or len(text) > (longest or MAX_KEY_LENGTH):
        return None
    claims = json.dumps({lookup.claim(model): text}, separators=(",", ":"))
    entry = enter_frame(FixedFrame(Values(None, None, claims)))
    try:
        rows = list(model._base_manager.using(using).filter(**{field: key})[:2])
    finally:
        reset_frame(entry)
    return rows[0] if len(rows) == 1 else None


def site_of(model: type[models.Model] | str, field: str, row: models.Model) -> Any:
    """The site id of a row ``find()`` returned: the value of its Lookup's ``site`` field."""
    if isinstance(model, str):
        model = apps.get_model(model)
    return getattr(row, declared_lookup(model, field).site_attname(model))
