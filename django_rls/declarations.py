"""Where declarations come from: a decorator next to the model, ``register()`` in an app's
``rls.py`` for models you cannot edit, or ``DJANGO_RLS["MODELS"]`` in settings.

    @django_rls.protect(BySite("site"), audit=True)
    class Invoice(models.Model): ...

    # yourapp/rls.py, imported automatically at startup
    django_rls.register("thirdparty.Thing", BySite("site"))
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import models

from django_rls import lookups, policies
from django_rls.conf import rls_settings
from django_rls.policies import Declaration, DeclarationError, Policy, as_policies

M = TypeVar("M", bound=type[models.Model])

_registry: dict[str, Declaration] = {}

# The shorthand names DJANGO_RLS["MODELS"] accepts for "policy".
SETTINGS_POLICIES: dict[str, Callable[..., Policy]] = {
    "site": policies.BySite,
    "owner": policies.ByOwner,
    "site_and_owner": policies.BySiteAndOwner,
    "shared": policies.Shared,
    "owner_or_shared": policies.OwnerOrShared,
    "membership": policies.Membership,
    "members": policies.Members,
    "owner_or_member": policies.OwnerOrMember,
    "parent": policies.ThroughParent,
    "custom": policies.Custom,
    "lookup": lookups.Lookup,
}
_DECLARATION_KEYS = ("audit", "audit_exclude", "audit_mask")


def _caller() -> str:
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _add(label: str, declaration: Declaration) -> None:
    existing = _registry.get(label)
    if existing is not None and existing != declaration:
        raise DeclarationError(
            f"{label} is declared twice, at {existing.origin} and at {declaration.origin}; keep one declaration"
        )
    _registry[label] = declaration


def protect(
    *model_policies: Policy,
    audit: bool = False,
    audit_exclude: tuple[str, ...] = (),
    audit_mask: tuple[str, ...] = (),
) -> Callable[[M], M]:
    """Class decorator: protect this model with these policies (combined with AND).

    ``audit=True`` records every write in the audit trail (``rls_apply`` switches it
    on); ``audit_exclude`` fields never reach it, ``audit_mask`` fields are logged as
    changed without their values. Audited models get an ``audit_history()`` method.
    """
    chosen = as_policies(model_policies)
    origin = _caller()

    def decorate(model: M) -> M:
        label = model._meta.label
        _add(label, Declaration(label, chosen, audit, tuple(audit_exclude), tuple(audit_mask), origin))
        if audit and not hasattr(model, "audit_history"):
            model.audit_history = _audit_history  # type: ignore[attr-defined]
        return model

    return decorate


def _audit_history(self: models.Model) -> Any:
    """This row's audit trail, oldest first, as far as the current context may see it."""
    from django_rls.models import AuditEntry

    return AuditEntry.objects.using(self._state.db or "default").for_object(self)


def register(
    model: str | type[models.Model],
    *model_policies: Policy,
    audit: bool = False,
    audit_exclude: tuple[str, ...] = (),
    audit_mask: tuple[str, ...] = (),
) -> None:
    """Protect a model you cannot edit: ``register("app_label.Model", BySite("site"))``.

    Its audit trail is ``AuditEntry.objects.for_object(obj)``.
    """
    label = model if isinstance(model, str) else model._meta.label
    if isinstance(model, str) and model.count(".") != 1:
        raise DeclarationError(f'register() takes "app_label.ModelName", not {model!r}')
    _add(
        label,
        Declaration(label, as_policies(model_policies), audit, tuple(audit_exclude), tuple(audit_mask), _caller()),
    )


def _policy_from_settings(where: str, spec: Any) -> Policy:
    """One policy of a settings entry: a Policy instance, or a dict naming its kind and arguments."""
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, dict) or "policy" not in spec:
        raise DeclarationError(
            f'{where} must be a django_rls policy (BySite("site"), Custom(...), ...) '
            f'or a dict with a "policy" key, not {spec!r}'
        )
    options = dict(spec)
    kind = options.pop("policy")
    if isinstance(kind, Policy):
        if options:
            raise DeclarationError(f"{where}: unexpected key(s) {', '.join(sorted(options))} beside a policy instance")
        return kind
    factory = SETTINGS_POLICIES.get(kind)
    if factory is None:
        raise DeclarationError(f"{where}: unknown policy {kind!r}; use one of {', '.join(SETTINGS_POLICIES)}")
    fields = options.pop("fields", None)
    try:
        return factory(*fields, **options) if fields is not None else factory(**options)
    except TypeError as exc:
        raise DeclarationError(f"{where}: {exc}") from None


def _from_settings(label: str, spec: Any) -> Declaration:
    """A settings entry: ``{"policy": ..., <arguments>}`` for one policy, or ``{"policies": [...]}`` for several.

    Each policy is a dict (``{"policy": "custom", "using": "...", "check": ...}``) or a
    policy instance, the same kinds ``register()`` takes; several are combined with AND.
    """
    where = f'DJANGO_RLS["MODELS"][{label!r}]'
    if not isinstance(spec, dict) or ("policy" in spec) == ("policies" in spec):
        raise DeclarationError(f'{where} must be a dict with either a "policy" key or a "policies" list')
    options = dict(spec)
    audit = options.pop("audit", False)
    if not isinstance(audit, bool):
        raise DeclarationError(f'{where}["audit"] must be True or False, not {audit!r}')
    audit_exclude = tuple(options.pop("audit_exclude", ()))
    audit_mask = tuple(options.pop("audit_mask", ()))
    if "policies" in options:
        listed = options.pop("policies")
        if options:
            raise DeclarationError(
                f'{where}: unexpected key(s) {", ".join(sorted(options))} beside "policies" '
                f"(put a policy's arguments in its own dict; {', '.join(_DECLARATION_KEYS)} apply to the model)"
            )
        if not isinstance(listed, list | tuple) or not listed:
            raise DeclarationError(f'{where}["policies"] must be a non-empty list of policies')
        chosen = tuple(_policy_from_settings(f'{where}["policies"][{i}]', item) for i, item in enumerate(listed))
    else:
        chosen = (_policy_from_settings(where, options),)
    return Declaration(label, chosen, audit, audit_exclude, audit_mask, "settings.DJANGO_RLS")


def all_declarations() -> dict[str, Declaration]:
    """Every declaration, keyed by model label; settings entries override nothing and may not duplicate."""
    combined = dict(_registry)
    for label, spec in rls_settings.MODELS.items():
        declaration = _from_settings(label, spec)
        if label in combined:
            raise DeclarationError(f"{label} is declared both in code ({combined[label].origin}) and in settings")
        combined[label] = declaration
    return combined
