"""django_rls settings: one ``DJANGO_RLS`` dict, defaults here, unknown keys rejected.

Every key is documented in docs/settings.md. Values are read on each access
(cached until Django's ``setting_changed`` fires), so ``override_settings``
works in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_rls.tokens import SERVER_MAX_LIFETIME

DEFAULTS: dict[str, Any] = {
    # Callable(request) -> site (model instance, pk or None); dotted path or callable.
    "SITE_RESOLVER": "django_rls.resolvers.current_site",
    # Callable(request) -> user (model instance, pk or None).
    "USER_RESOLVER": "django_rls.resolvers.authenticated_user",
    # Callable(request) -> dict of claims or None.
    "CLAIMS_RESOLVER": None,
    # Key shared with the server's django_rls.signing_key_file; None sends unsigned contexts.
    "SIGNING_KEY": None,
    # Lifetime of each signed token, in seconds (at most the server's django_rls.max_token_lifetime, 300 by default).
    "TOKEN_LIFETIME": 30,
    # "transaction" (pool-safe, the default) or "session".
    "SCOPE": "transaction",
    # Aliases that get the context; None means every PostgreSQL alias but OWNER/BYPASS ones.
    "DATABASES": None,
    # Alias whose role owns the tables; rls_apply runs there. None means --database.
    "OWNER_DATABASE": None,
    # Alias of a BYPASSRLS role for django_rls.bypass(); None disables bypass().
    "BYPASS_DATABASE": None,
    # Role the policies apply to and that gets grants; None means the USER of "default" as configured at startup.
    "APP_ROLE": None,
    # Declarations for models you cannot edit: {"app_label.Model": {"policy": "site", ...}}.
    "MODELS": {},
    # Run rls_apply after every migrate on the owner database.
    "APPLY_AFTER_MIGRATE": False,
    # Seconds one DDL statement of rls_apply / rls_roles may wait for a table lock (and so
    # hold up the queries queued behind it) before it rolls back and tries again.
    "LOCK_TIMEOUT": 2,
    # Seconds all attempts of one run may take together before it gives up and names the blocker.
    "LOCK_BUDGET": 60,
    # The django-scopes keyword that holds the site (e.g. "space"): the site comes from the active
    # scope, in requests and in any code or thread that enters a scope itself. None: not used.
    "DJANGO_SCOPES_SITE": None,
    # A BYPASSRLS role the application role may SET ROLE to in test databases only (names starting
    # with "test_"), for django_rls.testing.test_bypass(); None disables it. docs/testing.md.
    "TEST_BYPASS_ROLE": None,
    # Add "<site column> = <the context's site>" to the queries Django builds on BySite models (router.py).
    "FILTER_BY_SITE": False,
}

IMPORT_STRINGS = {"SITE_RESOLVER", "USER_RESOLVER", "CLAIMS_RESOLVER"}
SCOPES = ("transaction", "session")


class Settings:
    """Attribute access to the merged DJANGO_RLS settings.

    A setting read once is kept as an attribute (the bridge reads several before every
    query); a change of DJANGO_RLS (``override_settings``) forgets them all.
    """

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown django_rls setting {name!r}")
        value = _resolved()[name]
        setattr(self, name, value)
        return value

    def forget(self) -> None:
        self.__dict__.clear()


def _import(name: str, value: Any) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        try:
            return import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(f'DJANGO_RLS["{name}"] = {value!r} cannot be imported: {exc}') from exc
    raise ImproperlyConfigured(f'DJANGO_RLS["{name}"] must be a callable or a dotted path, not {type(value).__name__}')


def validate(user_settings: Any) -> dict[str, Any]:
    """Merge user settings over the defaults, or raise ImproperlyConfigured saying what is wrong."""
    if not isinstance(user_settings, dict):
        raise ImproperlyConfigured(f"DJANGO_RLS must be a dict, not {type(user_settings).__name__}")
    unknown = sorted(set(user_settings) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown DJANGO_RLS key(s): {', '.join(unknown)}; valid keys are {', '.join(sorted(DEFAULTS))}"
        )
    merged = {**DEFAULTS, **user_settings}
    if merged["SCOPE"] not in SCOPES:
        raise ImproperlyConfigured(f'DJANGO_RLS["SCOPE"] must be one of {SCOPES}, not {merged["SCOPE"]!r}')
    key = merged["SIGNING_KEY"]
    if key is not None and (not isinstance(key, str | bytes) or len(key) < 32):
        raise ImproperlyConfigured(
            'DJANGO_RLS["SIGNING_KEY"] must be a string of at least 32 characters '
            "(the same key as in the server's django_rls.signing_key_file); generate one with manage.py rls_keygen"
        )
    lifetime = merged["TOKEN_LIFETIME"]
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 1 <= lifetime <= SERVER_MAX_LIFETIME:
        raise ImproperlyConfigured(
            f'DJANGO_RLS["TOKEN_LIFETIME"] must be an int of seconds between 1 and {SERVER_MAX_LIFETIME}, '
            f"not {lifetime!r}: the server refuses tokens that live longer than its django_rls.max_token_lifetime "
            f"({SERVER_MAX_LIFETIME} s by default). A context's token is signed again when half of it is gone, "
            "so a few seconds to a minute is plenty"
        )
    for name in ("LOCK_TIMEOUT", "LOCK_BUDGET"):
        value = merged[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 86400:
            raise ImproperlyConfigured(
                f'DJANGO_RLS["{name}"] must be a number of seconds greater than 0 (at most a day), not {value!r}'
            )
    if not isinstance(merged["FILTER_BY_SITE"], bool):
        raise ImproperlyConfigured(
            f'DJANGO_RLS["FILTER_BY_SITE"] must be True or False, not {merged["FILTER_BY_SITE"]!r}'
        )
    if merged["DATABASES"] is not None and not isinstance(merged["DATABASES"], list | tuple):
        raise ImproperlyConfigured('DJANGO_RLS["DATABASES"] must be a list of database aliases or None')
    if not isinstance(merged["MODELS"], dict):
        raise ImproperlyConfigured('DJANGO_RLS["MODELS"] must be a dict of "app_label.Model" -> declaration')
    for label, spec in merged["MODELS"].items():
        if not isinstance(label, str) or label.count(".") != 1 or not isinstance(spec, dict):
            raise ImproperlyConfigured(
                f'DJANGO_RLS["MODELS"] maps "app_label.Model" to a dict (one "policy" with its arguments, or a '
                f'"policies" list), not {label!r}: {spec!r}'
            )
    scopes_site = merged["DJANGO_SCOPES_SITE"]
    if scopes_site is not None:
        if not isinstance(scopes_site, str) or not scopes_site.isidentifier():
            raise ImproperlyConfigured(
                'DJANGO_RLS["DJANGO_SCOPES_SITE"] must be the keyword your code passes to django_scopes.scope() '
                f'for the site (for scope(space=...), "space"), not {scopes_site!r}'
            )
        if "SITE_RESOLVER" in user_settings:
            raise ImproperlyConfigured(
                'DJANGO_RLS sets both "DJANGO_SCOPES_SITE" and "SITE_RESOLVER": with DJANGO_SCOPES_SITE the site '
                "comes from the active django-scopes scope; remove one of them"
            )
        merged["SITE_RESOLVER"] = "django_rls.resolvers.scoped_site"
    for name in IMPORT_STRINGS:
        merged[name] = _import(name, merged[name])
    return merged


@cache
def _resolved() -> dict[str, Any]:
    return validate(getattr(django_settings, "DJANGO_RLS", {}))


@cache
def _configured_default_user() -> str | None:
    return django_settings.DATABASES.get("default", {}).get("USER") or None


def app_role() -> str | None:
    """The role policies apply to and grants go to: ``APP_ROLE``, else the ``USER`` that ``DATABASES["default"]``
    named when Django started.

    Read once (``AppConfig.ready()``), never from the live connection settings: test runners
    (``django_rls.test_runner``, the pytest plugin) connect ``"default"`` as the owner while they
    build the test database, and the policies must still name the application role.
    ``override_settings(DATABASES=...)`` reads it again.
    """
    return rls_settings.APP_ROLE or _configured_default_user()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in ("DJANGO_RLS", "DATABASES"):
        _resolved.cache_clear()
        rls_settings.forget()
    if setting == "DATABASES":
        _configured_default_user.cache_clear()


rls_settings = Settings()
