"""DJANGO_RLS["MODELS"] offers what register() offers: every policy kind, Custom included, and several policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db.models import Q

from django_rls import context, lookups, policies
from django_rls.declarations import SETTINGS_POLICIES, _from_settings, all_declarations
from django_rls.expressions import CurrentSite
from django_rls.policies import BySite, Custom, DeclarationError
from tests.thirdparty.models import Widget


def test_every_policy_kind_has_a_settings_name():
    defined = [*vars(policies).values(), *vars(lookups).values()]
    kinds = {cls for cls in defined if isinstance(cls, type) and issubclass(cls, policies.Policy)}
    kinds.discard(policies.Policy)
    assert kinds == set(SETTINGS_POLICIES.values())


def test_several_policies_and_custom_from_settings():
    declaration = _from_settings(
        "testapp.Note",
        {
            "policies": [
                {"policy": "site", "field": "site"},
                {"policy": "custom", "using": Q(body__startswith="x"), "check": "true", "name": "x"},
                Custom("body <> ''", name="nonempty"),
            ],
            "audit": True,
            "audit_exclude": ["body"],
        },
    )
    site, custom_x, nonempty = declaration.policies
    assert isinstance(site, BySite) and site.field == "site"
    assert isinstance(custom_x, Custom) and custom_x.using == Q(body__startswith="x") and custom_x.check == "true"
    assert nonempty.name == "nonempty"
    assert declaration.audit and declaration.audit_exclude == ("body",)


def test_a_policy_instance_in_place_of_a_dict():
    declaration = _from_settings("testapp.Note", {"policy": Custom(Q(site=CurrentSite())), "audit": False})
    assert isinstance(declaration.policies[0], Custom)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"field": "site"}, 'either a "policy" key or a "policies" list'),
        ({"policy": "site", "policies": []}, 'either a "policy" key or a "policies" list'),
        ({"policies": []}, "non-empty list"),
        ({"policies": [{"policy": "site"}], "field": "site"}, 'unexpected key(s) field beside "policies"'),
        ({"policies": ["site"]}, '["policies"][0] must be a django_rls policy'),
        ({"policies": [{"policy": "nope"}]}, "unknown policy 'nope'"),
        ({"policy": "custom"}, "using"),
        ({"policy": "site", "audit": "yes"}, '["audit"] must be True or False'),
        ({"policy": BySite(), "field": "site"}, "beside a policy instance"),
    ],
)
def test_bad_settings_entries_say_what_to_fix(spec, message):
    with pytest.raises(DeclarationError) as excinfo:
        _from_settings("testapp.Note", spec)
    assert message in str(excinfo.value)


def test_the_suite_protects_a_model_with_two_policies_from_settings():
    declaration = all_declarations()["thirdparty.Widget"]
    assert [type(policy) for policy in declaration.policies] == [policies.ByOwner, Custom]


@pytest.mark.django_db(databases=["default", "bypass"])
def test_settings_policies_are_all_enforced_as_the_app_role():
    alice = User.objects.using("bypass").get(username="alice")
    assert sorted(Widget.objects.using("bypass").filter(owner_id=alice.id).values_list("name", flat=True)) == [
        "alice widget",
        "hidden",
    ]
    with context(user=alice.id):
        # The owner policy hides bob's widget, the Custom one alice's "hidden" widget.
        assert list(Widget.objects.values_list("name", flat=True)) == ["alice widget"]


def test_the_documented_example_declares_what_it_says():
    text = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    section = text[text.index("## Declarations in settings") :]
    code = section[
        section.index("```python") + len("```python") : section.index("```\n", section.index("```python") + 9)
    ]
    namespace: dict[str, object] = {}
    exec(code, namespace)
    declared = {label: _from_settings(label, spec) for label, spec in namespace["DJANGO_RLS"]["MODELS"].items()}
    assert [type(p) for p in declared["thirdparty.Gadget"].policies] == [BySite, Custom]
    assert declared["thirdparty.Gadget"].policies[1].commands == ("select",)
    assert isinstance(declared["thirdparty.Page"].policies[0].using, Q)
    assert declared["thirdparty.Widget"].audit


@pytest.mark.parametrize(
    ("label", "spec", "instance"),
    [
        (
            "testapp.Team",
            {"policy": "owner_or_member", "through": "testapp.TeamMember", "member_field": "team"},
            policies.OwnerOrMember("testapp.TeamMember", member_field="team"),
        ),
        (
            "testapp.TeamMember",
            {"policy": "members", "user_field": "user", "site_field": "team", "parent": True},
            policies.Members("user", "team", parent=True),
        ),
        (
            "testapp.Ping",
            {
                "policy": "parent",
                "fields": ["monitor"],
                "commands": ["select", "update"],
                "null_parent": "read",
                "or_where": Q(public=True),
                "or_check": "public",
            },
            policies.ThroughParent(
                "monitor", commands=["select", "update"], null_parent="read", or_where=Q(public=True), or_check="public"
            ),
        ),
        (
            "testapp.Folder",
            {"policy": "site", "field": "site", "movable_to": "move_to"},
            BySite("site", movable_to="move_to"),
        ),
    ],
)
def test_the_issue_15_kinds_compile_the_same_from_settings(label, spec, instance):
    from django.db import connection

    from django_rls.policies import Declaration

    from_settings = _from_settings(label, spec)
    assert from_settings.groups(connection) == Declaration(label, (instance,)).groups(connection)
