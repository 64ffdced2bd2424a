"""First light: migrate + rls_apply + seed worked, and the ORM sees only the context's rows."""

from __future__ import annotations

import pytest

import django_rls
from tests.testapp.models import Note


@pytest.mark.django_db
def test_orm_sees_only_the_context_site():
    with django_rls.context(site=1):
        assert {n.site_id for n in Note.objects.all()} == {1}
    with django_rls.context(site=2):
        assert {n.site_id for n in Note.objects.all()} == {2}
    assert Note.objects.count() == 0


def test_autocommit_queries_carry_the_context(live_db):
    with django_rls.context(site=2):
        assert {n.site_id for n in Note.objects.all()} == {2}
    assert Note.objects.count() == 0
