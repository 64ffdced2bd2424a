"""Every system check fires on a setup made to trigger it, and stays quiet otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest
from django.core import checks
from django.db import connections
from psycopg import sql

import django_rls
from django_rls import declarations
from django_rls.citus_checks import CitusTables
from django_rls.policies import BySite, Declaration
from tests.conftest import reset_max_token_lifetime, wait_for
from tests.roles import APP_ROLE


def ids(databases: list[str] | None = None) -> list[str]:
    """The django_rls check IDs raised."""
    messages = checks.run_checks(databases=databases)
    return sorted(m.id for m in messages if m.id and m.id.startswith("django_rls."))


def test_quiet_on_a_correct_setup(live_db):
    assert ids(["default", "owner"]) == []


def test_checks_are_registered():
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test import override_settings

    with override_settings(MIDDLEWARE=[]), pytest.raises(SystemCheckError, match=r"django_rls\.E002"):
        call_command("check")


def test_e001_bad_settings(settings):
    settings.DJANGO_RLS = {"SCOPE": "forever"}
    assert ids() == ["django_rls.E001"]


def test_e002_middleware_missing(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "django_rls" not in m]
    assert ids() == ["django_rls.E002"]


def test_e003_middleware_before_authentication(settings):
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django_rls.middleware.RlsMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    assert ids() == ["django_rls.E003"]


def test_e004_declared_twice(settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "MODELS": {"testapp.Note": {"policy": "site"}}}
    assert ids() == ["django_rls.E004"]


def test_e005_unknown_model(monkeypatch):
    monkeypatch.setitem(declarations._registry, "testapp.Nope", Declaration("testapp.Nope", (BySite(),), origin="here"))
    assert ids() == ["django_rls.E005"]


def test_e006_missing_column(monkeypatch):
    monkeypatch.setitem(
        declarations._registry, "testapp.Note", Declaration("testapp.Note", (BySite("tenant"),), origin="here")
    )
    assert ids() == ["django_rls.E006"]


def test_w001_w002_session_scope_with_reused_connections(settings, monkeypatch):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SCOPE": "session", "DATABASES": ["default"]}
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)
    monkeypatch.setitem(connections.settings["default"], "DISABLE_SERVER_SIDE_CURSORS", True)
    assert ids() == ["django_rls.W001", "django_rls.W002"]


def test_either_binding_is_quiet(monkeypatch):
    """W005 (client-side binding cannot carry the context) is gone: both bindings carry it."""
    assert connections.settings["default"]["OPTIONS"].get("server_side_binding") is not True
    assert connections.settings["replica"]["OPTIONS"].get("server_side_binding") is True
    assert ids() == []


def test_e010_unreachable_database(settings, extra_alias):
    alias = extra_alias("broken", "django_rls_does_not_exist")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": [alias]}
    assert ids([alias]) == ["django_rls.E010"]


def test_e011_extension_missing(settings, database, extra_alias):
    import psycopg

    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS django_rls_noext_check")
        admin.execute("CREATE DATABASE django_rls_noext_check")
    try:
        alias = extra_alias("noext_check", "django_rls_noext_check")
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": [alias]}
        assert ids([alias]) == ["django_rls.E011"]
    finally:
        connections[alias].close()
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute("DROP DATABASE django_rls_noext_check WITH (FORCE)")


def test_e012_extension_version(live_db, monkeypatch):
    monkeypatch.setattr(django_rls, "EXTENSION_VERSION", "9.9.9")
    assert "django_rls.E012" in ids(["default"])


def test_e013_superuser(settings, extra_alias):
    server = urlparse(os.environ["DATABASE_URL"])
    alias = extra_alias("superuser", user=server.username or "postgres", password=server.password or "")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": [alias]}
    assert ids([alias]) == ["django_rls.E013"]


def test_e014_bypassrls(live_db, settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": ["bypass"]}
    # The test's bypass role is also a member of the owner role, which E015 reports too; it keeps
    # TEMPORARY and the default search_path (E017, E018), which only the application role loses.
    assert ids(["bypass"]) == ["django_rls.E014", "django_rls.E015", "django_rls.E017", "django_rls.E018"]


def test_e015_owner_of_protected_tables(live_db, settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": ["owner"], "OWNER_DATABASE": None}
    assert ids(["owner"]) == ["django_rls.E015", "django_rls.E017", "django_rls.E018"]


def test_w003_catalog_problem(live_db):
    with connections["owner"].cursor() as cursor:
        cursor.execute("CREATE VIEW leaky_notes AS SELECT * FROM testapp_note")
    try:
        assert ids(["default"]) == ["django_rls.W003"]
    finally:
        with connections["owner"].cursor() as cursor:
            cursor.execute("DROP VIEW leaky_notes")


def test_w004_drift_and_e016_plan_error(live_db, settings):
    from django.core.management import call_command

    with connections["owner"].cursor() as cursor:
        cursor.execute("ALTER POLICY rls_site_select ON testapp_note USING (true)")
    try:
        assert ids(["owner"]) == ["django_rls.W004"]
    finally:
        call_command("rls_apply", verbosity=0)
    assert ids(["owner"]) == []
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APP_ROLE": "no_such_role"}
    assert ids(["owner"]) == ["django_rls.E016"]


@pytest.fixture
def loose_role_alias(database, extra_alias):
    """An alias of a role that may create temporary tables and has the server's default search_path."""
    import psycopg

    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS rls_t_loose")
        admin.execute("CREATE ROLE rls_t_loose LOGIN")
        admin.execute(f"GRANT TEMPORARY ON DATABASE {database.name} TO rls_t_loose")
        admin.execute("GRANT USAGE ON SCHEMA public TO rls_t_loose")
    alias = extra_alias("loose", user="rls_t_loose", password="")
    yield alias
    connections[alias].close()
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP OWNED BY rls_t_loose")
        admin.execute("DROP ROLE rls_t_loose")


def test_e017_e018_temporary_objects_and_search_path(settings, loose_role_alias):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": [loose_role_alias]}
    assert ids([loose_role_alias]) == ["django_rls.E017", "django_rls.E018"]
    messages = {m.id: m for m in checks.run_checks(databases=[loose_role_alias])}
    assert "rls_roles" in messages["django_rls.E017"].hint and "PUBLIC" in messages["django_rls.E017"].hint
    assert "pg_temp last" in messages["django_rls.E018"].hint


def test_the_app_role_of_the_test_suite_is_hardened(live_db):
    """The suite's app role is set up by rls_roles' own plan: no TEMPORARY, pg_temp last."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY'), current_setting('search_path')")
        assert cursor.fetchone() == (False, "public, pg_temp")


def test_e031_the_server_refuses_what_the_application_signs(live_db, settings, signing_keys, admin_conn):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": "a key the server does not have, " * 2}
    with require_signature(admin_conn):
        assert ids(["default"]) == ["django_rls.E031"]
        [message] = checks.run_checks(databases=["default"])
    assert "does not match any key" in message.msg and "signing_key_file" in message.hint
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0], "TOKEN_LIFETIME": 300}
    admin_conn.execute("ALTER SYSTEM SET django_rls.max_token_lifetime = 60")
    admin_conn.execute("SELECT pg_reload_conf()")
    try:
        with require_signature(admin_conn):
            connections.close_all()
            assert wait_for(lambda: _only(ids(["default"]), "django_rls.E031"))
            [message] = checks.run_checks(databases=["default"])
        assert "lives too long" in message.msg
    finally:
        reset_max_token_lifetime(admin_conn)
        connections.close_all()


def test_w015_signing_without_requiring_signatures(live_db, settings, signing_keys, admin_conn):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    assert ids(["default"]) == ["django_rls.W015"]
    [message] = checks.run_checks(databases=["default"])
    assert "require_signature = on" in message.hint
    with require_signature(admin_conn):
        assert ids(["default"]) == []


def _only(found: list[str], wanted: str) -> bool:
    assert found == [wanted], found
    return True


@contextmanager
def require_signature(admin_conn) -> Iterator[None]:
    role = sql.Identifier(APP_ROLE)
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(role))
    connections.close_all()
    try:
        yield
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(role))
        connections.close_all()


def test_w006_prepared_statements(monkeypatch):
    monkeypatch.setitem(
        connections.settings["default"], "OPTIONS", {"server_side_binding": True, "prepare_threshold": 5}
    )
    assert ids() == ["django_rls.W006"]


def test_no_hint_tells_a_superuser_to_demote_itself(settings, extra_alias):
    """E013 and E016 (the application connects as the cluster's superuser) name another role instead."""
    server = urlparse(os.environ["DATABASE_URL"])
    superuser = server.username or "postgres"
    alias = extra_alias("superuser", user=superuser, password=server.password or "")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "DATABASES": [alias], "APP_ROLE": superuser}
    messages = [
        m for m in checks.run_checks(databases=[alias, "owner"]) if m.id in ("django_rls.E013", "django_rls.E016")
    ]
    assert sorted(m.id for m in messages) == ["django_rls.E013", "django_rls.E016"]
    for message in messages:
        text = f"{message.msg} {message.hint or ''}"
        assert "ALTER ROLE" not in text, text  # the harmful advice: demoting the role in use
        assert "another role" in text, text


@pytest.fixture
def app_can_set_role(database):
    """The app role made a member of a BYPASSRLS role and of a superuser role (which it cannot use by inheritance)."""
    import psycopg

    from tests.roles import APP_ROLE

    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS rls_t_bypasser, rls_t_super")
        admin.execute("CREATE ROLE rls_t_bypasser NOLOGIN BYPASSRLS")
        admin.execute("CREATE ROLE rls_t_super NOLOGIN SUPERUSER")
        admin.execute(f"GRANT rls_t_bypasser, rls_t_super TO {APP_ROLE}")
    connections["default"].close()
    yield
    connections["default"].close()
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE rls_t_bypasser, rls_t_super")


def test_e019_app_role_can_set_role_to_a_bypassing_role(live_db, app_can_set_role):
    # Reported once, as E019: rls.problems' line for the same role (W003) is left out.
    assert ids(["default"]) == ["django_rls.E019"]
    [message] = [m for m in checks.run_checks(databases=["default"]) if m.id == "django_rls.E019"]
    assert "can SET ROLE to rls_t_bypasser (has BYPASSRLS), rls_t_super (a superuser)" in message.msg
    assert "rls_roles" in message.hint
    with connections["owner"].cursor() as cursor:
        cursor.execute("SELECT problem FROM rls.problems WHERE problem LIKE '%%SET ROLE%%' ORDER BY 1")
        assert [r[0] for r in cursor.fetchall()] == [
            "role rls_test_app is named in the policies but can SET ROLE to rls_t_bypasser, which has BYPASSRLS, "
            "so any SQL it runs can bypass row level security",
            "role rls_test_app is named in the policies but can SET ROLE to rls_t_super, which is a superuser, "
            "so any SQL it runs can bypass row level security",
        ]


def test_e020_membership_through_itself(monkeypatch):
    """The membership model protected through itself: every query on it would recurse."""
    from django_rls.policies import Membership

    monkeypatch.setitem(
        declarations._registry,
        "testapp.SiteMembership",
        Declaration("testapp.SiteMembership", (Membership("testapp.SiteMembership"),), origin="here"),
    )
    assert ids() == ["django_rls.E020"]
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.E020"]
    assert message.msg.startswith("the policy of testapp.SiteMembership reads its own table")
    assert "Members(user_field, site_field)" in message.hint


def test_e020_a_circle_of_parents(monkeypatch):
    """Order protected through Project's membership table, which is protected through Order: a circle of three."""
    from django_rls.policies import Membership, ThroughParent

    monkeypatch.setitem(
        declarations._registry,
        "testapp.SiteMembership",
        Declaration("testapp.SiteMembership", (ThroughParent("site"),), origin="here"),
    )
    monkeypatch.setitem(
        declarations._registry,
        "sites.Site",
        Declaration("sites.Site", (Membership("testapp.SiteMembership", field="id"),), origin="here"),
    )
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.E020"]
    assert "sites.Site -> testapp.SiteMembership -> sites.Site read each other's tables" in message.msg


def test_w007_default_site_resolver_without_contrib_sites(monkeypatch, settings):
    from django.apps import apps

    installed = apps.is_installed
    monkeypatch.setattr(apps, "is_installed", lambda name: name != "django.contrib.sites" and installed(name))
    assert ids() == ["django_rls.W007"]
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.W007"]
    assert "SITE_RESOLVER" in message.hint and "from_attribute" in message.hint
    settings.SITE_ID = 1  # one site for every request: the default resolver works
    assert ids() == []
    del settings.SITE_ID
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SITE_RESOLVER": lambda request: 1}
    assert ids() == []  # a resolver of the project's own


def test_w007_is_quiet_when_no_model_keys_its_rows_by_site(monkeypatch, settings):
    """Only owner-protected models (thirdparty.Widget, from settings): no request needs a site, so the
    default resolver finding none is no problem; a condition on the site brings the warning back."""
    from django.apps import apps

    installed = apps.is_installed
    monkeypatch.setattr(apps, "is_installed", lambda name: name != "django.contrib.sites" and installed(name))
    monkeypatch.setattr(declarations, "_registry", {})
    owner = {"policy": "owner", "field": "owner_id"}
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "MODELS": {"thirdparty.Widget": {"policies": [owner]}}}
    assert ids() == []
    on_site = {"policy": "custom", "using": "owner_id <> rls.site_id()", "name": "not_the_site"}
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "MODELS": {"thirdparty.Widget": {"policies": [owner, on_site]}}}
    assert ids() == ["django_rls.W007"]


def test_w008_default_site_resolver_with_a_tenant_model_of_its_own(monkeypatch, settings):
    """Every site key points at the project's own tenant model: Site ids would find none of its rows."""
    from django_rls.policies import BySiteAndOwner

    doc = Declaration("testapp.TenantDoc", (BySiteAndOwner("tenant", "owner_uuid"),), origin="here")
    monkeypatch.setattr(declarations, "_registry", {"testapp.TenantDoc": doc})
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "MODELS": {}}
    assert ids() == ["django_rls.W008"]
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.W008"]
    assert "testapp.TenantDoc.tenant (testapp.Tenant)" in message.msg
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SITE_RESOLVER": lambda request: None}
    assert ids() == []


def test_w003_app_role_that_injection_could_switch(live_db, unbound_app_role):
    """Neither statement-bound nor required to sign: rls.problems, and so W003, say injection could choose a context."""
    messages = [m for m in checks.run_checks(databases=["default"]) if m.id == "django_rls.W003"]
    assert [m for m in messages if "neither django_rls.statement_bound nor django_rls.require_signature" in m.msg]
    assert any("SET django_rls.statement_bound = on" in m.hint for m in messages)


def test_e023_owner_or_member_through_a_table_that_hides_own_rows(monkeypatch):
    """rls.member_of() would refuse every query on Team: the membership model shows only its site's rows."""
    monkeypatch.setitem(
        declarations._registry,
        "testapp.TeamMember",
        Declaration("testapp.TeamMember", (BySite("team"),), origin="here"),
    )
    assert ids() == ["django_rls.E023"]
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.E023"]
    assert message.msg.startswith("testapp.Team is protected with OwnerOrMember through testapp.TeamMember")
    assert 'Members("user", "team")' in message.hint


def test_w010_a_nullable_parent_key_without_null_parent(monkeypatch):
    from django_rls.policies import ThroughParent

    monkeypatch.setitem(
        declarations._registry, "testapp.Ping", Declaration("testapp.Ping", (ThroughParent("monitor"),), origin="here")
    )
    assert ids() == ["django_rls.W010"]
    monkeypatch.setitem(
        declarations._registry,
        "testapp.Ping",
        Declaration("testapp.Ping", (ThroughParent("monitor", null_parent="hide"),), origin="here"),
    )
    assert ids() == []


def test_e020_owner_or_member_written_as_two_queries(monkeypatch):
    """Team read through its memberships with a query, memberships through the team: refused, and the hint
    names OwnerOrMember, which reads memberships with rls.member_of() instead."""
    from django_rls.policies import Membership

    monkeypatch.setitem(
        declarations._registry,
        "testapp.Team",
        Declaration("testapp.Team", (Membership("testapp.TeamMember", field="id", site_field="team"),), origin="x"),
    )
    assert ids() == ["django_rls.E020"]
    [message] = [m for m in checks.run_checks() if m.id == "django_rls.E020"]
    assert "testapp.Team -> testapp.TeamMember -> testapp.Team" in message.msg
    assert "OwnerOrMember" in message.hint


def _citus(*tables: str, kind: str = "distributed") -> CitusTables:
    """What citus_tables() would find were Citus to hold these tables, all of one kind."""
    return CitusTables(kinds=dict.fromkeys(tables, kind))


def test_e022_e024_what_a_table_citus_distributes_cannot_hold(live_db):
    """Decided from the declarations and the set of distributed tables (tests/test_citus.py runs the query)."""
    from django_rls.checks import citus_refusals

    assert citus_refusals(_citus(), connections["default"]) == []
    assert citus_refusals(_citus("testapp_tag"), connections["default"]) == []
    found = citus_refusals(_citus("testapp_tag", "testapp_task", "testapp_orderline"), connections["default"])
    assert [(m.id, m.obj._meta.label) for m in found] == [
        ("django_rls.E022", "testapp.OrderLine"),
        ("django_rls.E024", "testapp.Task"),
    ]
    assert "reads testapp_order in a sub-select" in found[0].msg
    assert "(delete: site, owner; insert: site, owner; select: site, owner; update: site, owner)" in found[1].msg
    assert "a reference table refuses such a policy too" in found[0].hint


def test_e026_owner_or_member_on_a_citus_table(live_db):
    """rls.member_of() reads the membership table below Citus: on the workers an empty shell."""
    from django_rls.checks import citus_refusals

    [message] = citus_refusals(_citus("testapp_team"), connections["default"])
    assert (message.id, message.obj._meta.label) == ("django_rls.E026", "testapp.Team")
    assert "rls.member_of() reads the membership table itself" in message.msg
    assert "BySite" in message.hint


def test_e033_an_audited_model_on_a_citus_table(live_db):
    """rls_audit.enable() refuses a table of Citus (tests/test_citus.py): a declared audited model whose table Citus
    holds is an error, whatever the kind of table, and whatever else is said about it; an unaudited one is not."""
    from django_rls.checks import citus_refusals

    for kind, what in (
        ("distributed", "a distributed table of Citus"),
        ("reference", "a reference table of Citus"),
        ("local", "a Citus local table"),
    ):
        [message] = citus_refusals(_citus("testapp_note", "testapp_tag", kind=kind), connections["default"])
        assert (message.id, message.obj._meta.label) == ("django_rls.E033", "testapp.Note")
        assert f"its table testapp_note is {what}" in message.msg
        assert "undistribute_table()" in message.hint and "audit=False" in message.hint
    found = citus_refusals(_citus("testapp_tenantdoc"), connections["default"])
    assert [(m.id, m.obj._meta.label) for m in found] == [
        ("django_rls.E033", "testapp.TenantDoc"),
        ("django_rls.E024", "testapp.TenantDoc"),
    ]
    assert [m.id for m in citus_refusals(_citus("testapp_note"), connections["default"], "sql")] == [
        "django_rls.E033",
        "django_rls.E030",
    ]


def test_e030_the_sql_only_mode_protects_no_citus_table(live_db):
    """The SQL-only mode reads the context in sub-selects: every declared model Citus holds is refused, whatever
    its policies, and nothing else is said about it."""
    from django_rls.checks import citus_refusals

    found = citus_refusals(_citus("testapp_tag", "testapp_task", "testapp_team"), connections["default"], "sql")
    assert sorted((m.id, m.obj._meta.label) for m in found) == [
        ("django_rls.E030", "testapp.Tag"),
        ("django_rls.E030", "testapp.Task"),
        ("django_rls.E030", "testapp.Team"),
    ]
    assert "shared_preload_libraries = 'citus, django_rls'" in found[0].hint
    assert citus_refusals(_citus(), connections["default"], "sql") == []
