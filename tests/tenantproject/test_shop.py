"""The second test project's own tests: as the application role, through the documented plugin only."""

from __future__ import annotations

import os

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.db import connection
from django_scopes import scope
from rest_framework.authtoken.models import Token

from tests.tenantproject.shop.models import Activity, Article, Category, Company, Label, Membership


@pytest.fixture
def shop(rls_bypass):
    """Two companies with a member, a label, an email address, a tree and an article each, built across
    companies inside the test's transaction; the trees and articles in each company's scope, as the app
    role, so that each tree's paths are computed from its own company's nodes."""
    with rls_bypass():
        one = Company.objects.create(name="one", domain="one.test")
        two = Company.objects.create(name="two", domain="two.test")
        ann = User.objects.create_user("ann", password="ann-password")
        ben = User.objects.create_user("ben", password="ben-password")
        for user, company in ((ann, one), (ben, two)):
            Membership.objects.create(user=user, company=company)
            Label.objects.create(company=company, name=f"{company.name} label")
            Activity.objects.create(company=company, message=f"{company.name} started")
            EmailAddress.objects.create(user=user, email=f"{user.username}@{company.domain}", primary=True)
    for user, company in ((ann, one), (ben, two)):
        with scope(company=company):
            root = Category.add_root(company=company, name=f"{company.name} root")
            Article.objects.create(
                company=company, category=root, author=user, title=f"{company.name} article", keywords=[company.name]
            )
    return {"one": one, "two": two, "ann": ann, "ben": ben}


@pytest.mark.django_db
def test_built_by_the_owner_served_as_the_app_role():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (os.environ["TENANTPROJECT_APP"],)
        cursor.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False,)
        cursor.execute("SELECT tableowner <> current_user FROM pg_tables WHERE tablename = 'account_emailaddress'")
        assert cursor.fetchone() == (True,)
    # The data migration that wrote through the default alias ran as the owner: the shared labels.
    assert sorted(Label.objects.values_list("name", flat=True)) == ["archived", "urgent"]


@pytest.mark.django_db
def test_a_request_sees_its_companys_rows_and_the_shared_ones(shop, client):
    response = client.get("/articles/", HTTP_HOST="one.test")
    assert response.json() == {"articles": ["one article"], "labels": ["archived", "one label", "urgent"]}
    assert client.get("/articles/", HTTP_HOST="two.test").json()["articles"] == ["two article"]


@pytest.mark.django_db
def test_a_post_save_handler_that_queries_runs_in_the_requests_context(shop, client):
    response = client.post("/articles/new/", {"title": "fresh"}, HTTP_HOST="two.test")
    assert response.status_code == 200
    # The handler counted the company's articles (the fixture's and this one) and saw no other company's.
    assert sorted(response.json()["activity"]) == ["fresh: article 2", "two article: article 1", "two started"]


@pytest.mark.django_db
def test_drf_token_authentication(shop, client):
    token = Token.objects.create(user=shop["ben"])
    response = client.get("/api/articles/", HTTP_HOST="two.test", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.json() == {"user": "ben", "articles": ["two article"]}
    assert client.get("/api/articles/", HTTP_HOST="two.test").status_code == 401


@pytest.mark.django_db
def test_allauth_login_and_a_users_own_email_addresses(shop, client):
    response = client.post("/accounts/login/", {"login": "ann", "password": "ann-password"})
    assert response.status_code == 302, response.content[:500]
    assert client.get("/emails/", HTTP_HOST="one.test").json() == {"emails": ["ann@one.test"]}


@pytest.mark.django_db
def test_allauth_signup_writes_the_new_users_email_address_as_that_user(shop, client, rls_bypass):
    """The signup request has no user when allauth saves the new user's address: the project's account
    adapter (docs/testing.md) switches the request to the user it has just created."""
    form = {"username": "cat", "email": "cat@one.test", "password1": "cat-pass-9x!", "password2": "cat-pass-9x!"}
    response = client.post("/accounts/signup/", form, HTTP_HOST="one.test")
    assert response.status_code == 302, response.content[:800]
    cat = User.objects.get(username="cat")
    # Logged in as cat: cat's own address, not ann's, on ann's company's host.
    assert client.get("/emails/", HTTP_HOST="one.test").json() == {"emails": ["cat@one.test"]}
    with rls_bypass():
        assert list(EmailAddress.objects.filter(email="cat@one.test").values_list("user", flat=True)) == [cat.pk]
    # Another visitor cannot sign up with cat's address: allauth's check, which cannot see cat's EmailAddress
    # row, still finds it in auth_user, where signup put it too.
    client.logout()
    taken = {**form, "username": "dan"}
    assert client.post("/accounts/signup/", taken, HTTP_HOST="one.test").status_code == 200
    assert not User.objects.filter(username="dan").exists()


@pytest.mark.django_db
def test_each_company_grows_its_own_tree(shop):
    for company in (shop["one"], shop["two"]):
        with scope(company=company):
            root = Category.objects.get()
            root.add_child(company=company, name="child")
            assert [c.name for c in Category.get_tree()] == [f"{company.name} root", "child"]
            assert Category.objects.get(name="child").path == "00010001"  # the same path in both: unique per company


@pytest.mark.django_db
def test_leak_matrix(shop, rls_leak_matrix):
    rls_leak_matrix(
        [
            {"site": shop["one"].pk, "user": shop["ann"].pk},
            {"site": shop["two"].pk, "user": shop["ben"].pk},
        ]
    )
