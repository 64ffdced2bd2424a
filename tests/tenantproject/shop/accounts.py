"""django-allauth's account adapter, as docs/testing.md gives it: signup writes the new user's rows as that user."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter

import django_rls


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user = super().save_user(request, user, form, commit)
        if commit:
            # The signup request has no user yet: from here on it works for the account it has just created.
            django_rls.switch_context(user=user)
        return user
