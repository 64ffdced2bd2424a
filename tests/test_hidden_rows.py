"""Model.save() of a row the policies hide says so, instead of naming the insert policy (issue 14, item 13)."""

from __future__ import annotations

import pytest
from django.db import ProgrammingError, transaction

import django_rls
from django_rls.hidden_rows import RowNotUpdatable
from tests.testapp.models import Note


def _other_sites_note() -> Note:
    with django_rls.context(site=2):
        return Note.objects.filter(site_id=2).first()


@pytest.mark.django_db
def test_saving_another_sites_row_says_it_is_not_updatable():
    note = _other_sites_note()
    note.body = "edited from site 1"
    with django_rls.context(site=1), pytest.raises(RowNotUpdatable) as raised:
        with transaction.atomic():
            note.save()
    message = str(raised.value)
    assert "testapp.Note" in message and "matched no row visible" in message
    assert "Either the row exists" in message  # no claim that it does: see the module's docstring
    assert "violates row-level security policy" in str(raised.value.__cause__)
    assert isinstance(raised.value, ProgrammingError)  # code catching Django's error still does
    with django_rls.context(site=2):
        assert Note.objects.get(pk=note.pk).body != "edited from site 1"


def test_autocommit_save_says_it_too(live_db):
    note = _other_sites_note()
    with django_rls.context(site=1), pytest.raises(RowNotUpdatable):
        note.save()


@pytest.mark.django_db
def test_a_row_that_does_not_exist_gets_the_same_answer():
    """A missing row and a hidden one look the same, so the error cannot tell anyone which it was."""
    ghost = Note(pk=999_999, site_id=2, body="never existed")
    with django_rls.context(site=1), pytest.raises(RowNotUpdatable) as raised:
        with transaction.atomic():
            ghost.save()
    hidden = _other_sites_note()
    with django_rls.context(site=1), pytest.raises(RowNotUpdatable) as raised_hidden:
        with transaction.atomic():
            hidden.save()
    assert str(raised.value) == str(raised_hidden.value)


@pytest.mark.django_db
def test_other_refused_inserts_keep_their_own_error():
    """A plain INSERT the policy refuses (no UPDATE before it) is reported by the database as before."""
    with django_rls.context(site=1), pytest.raises(ProgrammingError) as raised:
        with transaction.atomic():
            Note.objects.create(site_id=2, body="into another site")
    assert not isinstance(raised.value, RowNotUpdatable)
    assert "violates row-level security policy" in str(raised.value)
