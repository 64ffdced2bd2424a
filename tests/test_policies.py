"""Declarations compile to the policy groups rls.protect() takes, or fail with a message naming the fix."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.db.models import Q

from django_rls.expressions import CurrentSite, CurrentUser
from django_rls.policies import (
    ALL_COMMANDS as ALL,
)
from django_rls.policies import (
    BySite,
    BySiteAndOwner,
    Custom,
    Declaration,
    DeclarationError,
    Group,
    Membership,
    OwnerOrShared,
    Shared,
    ThroughParent,
)
from tests.testapp.models import ArticleTag, Bookmark, Category, Note, OrderLine, Project, TenantDoc


def groups(model, *policies):
    return Declaration(model._meta.label, policies).groups(connection)


def test_site_and_owner_pick_the_accessor_from_the_key_type():
    assert groups(Note, BySite("site")) == [Group("site", '"site_id" = rls.site_id()')]
    assert groups(TenantDoc, BySiteAndOwner("tenant", "owner_uuid")) == [
        Group("site", '"tenant_id" = rls.site_uuid()'),
        Group("owner", '"owner_uuid" = rls.user_uuid()'),
    ]


def test_shared_rows_are_read_everywhere_and_written_nowhere():
    writes = ("insert", "update", "delete")
    assert groups(Category, Shared("site")) == [
        Group("site", '"site_id" = rls.site_id()', None, writes),
        Group("shared", '"site_id" = rls.site_id() OR "site_id" IS NULL', None, ("select",)),
    ]
    assert groups(Bookmark, OwnerOrShared("owner", shared_field="is_public")) == [
        Group("owner", '"owner_id" = rls.user_id()', None, writes),
        Group("shared", '"owner_id" = rls.user_id() OR "is_public" IS TRUE', None, ("select",)),
    ]


def test_shared_rows_cannot_be_deleted_or_taken_over(live_db):
    """As the app role: a shared category and alice's public bookmark are read, never deleted or moved."""
    from django.db import connection

    import django_rls

    users = _user_ids()
    with django_rls.context(site=1, user=users["bob"]):
        assert Category.objects.filter(site=None).count() == 1
        assert Category.objects.filter(site=None).update(site_id=1) == 0
        assert Category.objects.filter(site=None)._raw_delete(connection.alias) == 0
        public = Bookmark.objects.filter(is_public=True)
        assert public.count() == 1
        assert public.update(owner_id=users["bob"]) == 0
        assert public._raw_delete(connection.alias) == 0


def test_membership_and_parents():
    assert groups(Project, Membership("testapp.SiteMembership")) == [
        Group(
            "membership",
            '"site_id" IN (SELECT m."site_id" FROM "testapp_sitemembership" m WHERE m."user_id" = rls.user_id())',
        )
    ]
    (group,) = groups(ArticleTag, ThroughParent("article", "tag"))
    assert group.using == (
        'EXISTS (SELECT 1 FROM "testapp_article" p WHERE p."id" = "testapp_articletag"."article_id") AND '
        'EXISTS (SELECT 1 FROM "testapp_tag" p WHERE p."id" = "testapp_articletag"."tag_id")'
    )


def test_custom_q_and_sql():
    (group,) = groups(
        Note, Custom(Q(site=CurrentSite()) | Q(author=CurrentUser(), body__startswith="50%"), commands=["select"])
    )
    assert group.commands == ("select",)
    assert "rls.site_id()" in group.using and "rls.user_id()" in group.using
    assert "LIKE  E'50\\\\%%'" in group.using  # the parameter is inlined as an escaped literal
    assert groups(Note, Custom("body <> ''", name="nonempty")) == [Group("nonempty", "body <> ''")]


@pytest.mark.parametrize(
    ("model", "policies", "message"),
    [
        (Note, (BySite("tenant"),), "has no field 'tenant'"),
        (Note, (BySite("body"),), "must be integers or UUIDs"),
        (OrderLine, (BySite("order__site"),), "has no field"),
        (Note, (Custom(Q(site__domain="x")),), "follows a relation"),
        (Note, (BySite("site"), Shared("site")), "both define the 'site' group"),
        (Bookmark, (OwnerOrShared("owner", shared_field="url"),), "must be a BooleanField"),
        (Project, (Membership("testapp.Nope"),), "is not installed"),
        (Note, (ThroughParent("body"),), "must be a ForeignKey"),
    ],
)
def test_bad_declarations_say_what_to_fix(model, policies, message):
    with pytest.raises(DeclarationError, match=message):
        groups(model, *policies)


def test_commands_are_validated():
    with pytest.raises(DeclarationError, match="subset"):
        BySite("site", commands=["truncate"])


def test_members_reads_no_other_row_and_writes_in_the_current_site():
    from django_rls.policies import Members
    from tests.testapp.models import SiteMembership

    assert groups(SiteMembership, Members("user", "site")) == [
        Group("members", '"site_id" = rls.site_id() OR "user_id" = rls.user_id()', None, ("select",)),
        Group("members_site", '"site_id" = rls.site_id()', None, ("insert", "update", "delete")),
    ]


def test_policy_cycles():
    from django_rls.policies import Members, policy_cycles

    def declared(**policies):
        return {label.replace("__", "."): Declaration(label.replace("__", "."), (p,)) for label, p in policies.items()}

    assert policy_cycles(declared(testapp__SiteMembership=Membership("testapp.SiteMembership"))) == [
        ["testapp.SiteMembership", "testapp.SiteMembership"]
    ]
    assert (
        policy_cycles(
            declared(testapp__SiteMembership=Members(), testapp__Project=Membership("testapp.SiteMembership"))
        )
        == []
    )
    # A membership model that is not protected is no circle either.
    assert policy_cycles(declared(testapp__Project=Membership("testapp.SiteMembership"))) == []
    assert policy_cycles(declared(testapp__OrderLine=ThroughParent("order"), testapp__Order=BySite("site"))) == []


def test_members_as_the_app_role(live_db):
    """As the app role, the membership table protected by Members answers without recursion, and so does
    the Membership policy that reads it."""
    from django.contrib.auth.models import User

    import django_rls
    from tests.testapp.models import Project, SiteMembership

    users = {u.username: u.pk for u in User.objects.all()}
    names = {pk: name for name, pk in users.items()}

    def memberships(site, user):
        with django_rls.context(site=site, user=users[user]):
            rows = SiteMembership.objects.values_list("user_id", "site_id")
            return sorted((names[u], s) for u, s in rows)

    # alice on site 2: her own membership (site 1) and site 2's members; nothing else of site 1.
    assert memberships(2, "alice") == [("alice", 1), ("bob", 2), ("carol", 2)]
    assert memberships(1, "bob") == [("alice", 1), ("bob", 2), ("carol", 1)]
    with django_rls.context(site=1, user=users["carol"]):
        assert sorted(Project.objects.values_list("name", flat=True)) == ["project 1", "project 2"]
        # Writes stay in the current site.
        assert SiteMembership.objects.filter(site_id=2).update(site_id=2) == 0
        assert SiteMembership.objects.filter(site_id=1).update(site_id=1) == 2


def test_a_membership_table_through_itself_really_recurses(owner_conn, app_conn):
    """What E020 refuses, as PostgreSQL runs it for the app role; and the Members() condition on the same table."""
    import psycopg
    from psycopg import sql as pgsql

    from tests.roles import APP_ROLE

    owner_conn.execute("DROP TABLE IF EXISTS members_demo")
    owner_conn.execute("CREATE TABLE members_demo (id serial PRIMARY KEY, user_id bigint, site_id bigint)")
    owner_conn.execute("INSERT INTO members_demo (user_id, site_id) VALUES (1, 1), (2, 1), (1, 2), (3, 2)")
    owner_conn.execute(pgsql.SQL("GRANT SELECT ON members_demo TO {}").format(pgsql.Identifier(APP_ROLE)))
    try:
        owner_conn.execute(
            "SELECT rls.protect('members_demo', 'membership', "
            "'site_id IN (SELECT m.site_id FROM members_demo m WHERE m.user_id = rls.user_id())', to_role => %s)",
            (APP_ROLE,),
        )
        app_conn.execute("SELECT rls.set_context('2', '3', is_local => false)")
        with pytest.raises(psycopg.errors.InvalidObjectDefinition, match="infinite recursion detected in policy"):
            app_conn.execute("SELECT count(*) FROM members_demo")
        owner_conn.execute("SELECT rls.unprotect('members_demo')")
        owner_conn.execute(
            "SELECT rls.protect('members_demo', 'members', 'site_id = rls.site_id() OR user_id = rls.user_id()', "
            "to_role => %s)",
            (APP_ROLE,),
        )
        rows = app_conn.execute("SELECT user_id, site_id FROM members_demo ORDER BY 1, 2").fetchall()
        assert rows == [(1, 2), (3, 2)]  # user 3 in site 2: site 2's members (user 3 has no other membership)
    finally:
        owner_conn.execute("DROP TABLE members_demo")


def test_owner_or_member_reads_memberships_with_member_of():
    from django_rls.policies import OwnerOrMember
    from tests.testapp.models import Team

    member = "rls.member_of('\"testapp_teammember\"'::regclass, 'team_id', 'user_id', \"id\")"
    assert groups(Team, OwnerOrMember("testapp.TeamMember", member_field="team")) == [
        Group("owner_or_member", f'"owner_id" = rls.user_id() OR {member}', None, ("select",)),
        Group("owner", '"owner_id" = rls.user_id()', None, ("insert", "update", "delete")),
    ]
    (both,) = groups(Team, OwnerOrMember("testapp.TeamMember", member_field="team", member_commands=ALL))
    assert both.commands == ALL
    with pytest.raises(DeclarationError, match=r"must point at testapp\.Team"):
        groups(Team, OwnerOrMember("testapp.SiteMembership", member_field="site"))


def test_members_with_parent_shows_and_deletes_the_members_of_visible_parents():
    from django_rls.policies import Members
    from tests.testapp.models import TeamMember

    visible = 'EXISTS (SELECT 1 FROM "testapp_team" p WHERE p."id" = "testapp_teammember"."team_id")'
    assert groups(TeamMember, Members("user", "team", parent=True)) == [
        Group("members", f'"team_id" = rls.site_id() OR "user_id" = rls.user_id() OR {visible}', None, ("select",)),
        Group("members_site", '"team_id" = rls.site_id()', None, ("insert", "update")),
        Group("members_parent", f'"team_id" = rls.site_id() OR {visible}', None, ("delete",)),
    ]


def test_through_parent_options():
    from tests.testapp.models import Ping

    monitor = 'EXISTS (SELECT 1 FROM "testapp_monitor" p WHERE p."id" = "testapp_ping"."monitor_id")'
    assert groups(Ping, ThroughParent("monitor", commands=["select", "delete"], null_parent="hide")) == [
        Group("parent", monitor, None, ("select", "delete"))
    ]
    # NULL parents read by every request, written by none; or_where widens reads, or_check writes.
    assert groups(Ping, ThroughParent("monitor", null_parent="read", or_where=Q(public=True))) == [
        Group("parent", monitor, None, ("insert", "update", "delete")),
        Group("parent_read", f'(("monitor_id" IS NULL OR {monitor})) OR ("testapp_ping"."public")', None, ("select",)),
    ]
    assert groups(Ping, ThroughParent("monitor", null_parent="write", or_check="public")) == [
        Group("parent", f'(("monitor_id" IS NULL OR {monitor})) OR (public)', None, ("insert", "update", "delete")),
        Group("parent_read", f'("monitor_id" IS NULL OR {monitor})', None, ("select",)),
    ]
    with pytest.raises(DeclarationError, match="null_parent must be one of hide, read, write"):
        ThroughParent("monitor", null_parent="show")


def test_a_parent_protected_on_its_key_is_not_read():
    """Monitor's parent Space is protected by BySite on its primary key: Monitor compares its own column."""
    from tests.testapp.models import Monitor

    assert groups(Monitor, ThroughParent("space")) == [
        Group("parent", '"space_id" IS NOT NULL AND ("space_id" = rls.site_id())')
    ]
    # A parent keyed by site in another column is read (Order is BySite("site")).
    (line,) = groups(OrderLine, ThroughParent("order"))
    assert line.using.startswith('EXISTS (SELECT 1 FROM "testapp_order" p')


def test_by_site_movable_to():
    from tests.testapp.models import Folder

    target = "\"site_id\" = rls.claim('move_to')::bigint"
    assert groups(Folder, BySite("site", movable_to="move_to")) == [
        Group("site", '"site_id" = rls.site_id()', None, ("insert", "delete")),
        Group("site_moving", f'"site_id" = rls.site_id() OR {target}', None, ("select",)),
        Group("site_move", '"site_id" = rls.site_id()', f'"site_id" = rls.site_id() OR {target}', ("update",)),
    ]
    assert groups(TenantDoc, BySite("tenant", movable_to="to"))[1].using.endswith("rls.claim('to')::uuid")
    with pytest.raises(DeclarationError, match="movable_to must name a claim"):
        BySite("site", movable_to="x'); DROP TABLE y; --")


def _user_ids():
    from django.contrib.auth.models import User

    return {u.username: u.pk for u in User.objects.all()}


def test_owner_or_member_as_the_app_role(live_db):
    """Teams: the owner's and those a user belongs to; every member of a visible team; owners alone write."""
    from django.db import connection, transaction

    import django_rls
    from tests.testapp.models import Team, TeamMember

    users = _user_ids()
    names = {pk: name for name, pk in users.items()}

    def seen(user, site=None):
        with django_rls.context(site=site, user=users[user]):
            teams = sorted(Team.objects.values_list("name", flat=True))
            rows = TeamMember.objects.values_list("team_id", "user_id")
            return teams, sorted((team, names[member]) for team, member in rows)

    assert seen("alice") == (["team 1"], [(1, "carol")])
    assert seen("bob") == (["team 2"], [(2, "carol")])
    assert seen("carol") == (["team 1", "team 2"], [(1, "carol"), (2, "carol")])
    with django_rls.context(user=users["carol"]):
        assert Team.objects.filter(pk=1).update(name="renamed by a member") == 0
    # The owner deletes a team outside any site: the cascade finds and deletes every membership,
    # other users' included, so the deferred foreign key holds.
    with django_rls.context(user=users["bob"]), transaction.atomic():
        _, per_model = Team.objects.filter(pk=2).delete()
        assert per_model == {"testapp.TeamMember": 1, "testapp.Team": 1}
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        transaction.set_rollback(True)
    assert seen("bob") == (["team 2"], [(2, "carol")])


def test_a_chain_reads_one_table_per_request(live_db):
    """ping -> monitor -> space: monitors compare their own key with the site, so a ping query reads one
    other table (monitors) and never the spaces; NULL-parent and public pings are read, not written."""
    from django.db import DatabaseError, connection, transaction

    import django_rls
    from tests.testapp.models import Monitor, Ping

    with django_rls.context(site=1):
        assert sorted(Ping.objects.values_list("body", flat=True)) == [
            "ping 1a",
            "ping 1b",
            "ping 2 public",
            "ping without monitor",
        ]
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (COSTS OFF) SELECT * FROM testapp_ping")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        # The tables scanned (a bitmap index scan names an index, not a table).
        scans = re.findall(r"(?:Seq Scan|Heap Scan|Index Scan using \S+|Index Only Scan using \S+) on (\w+)", plan)
        assert scans == ["testapp_ping", "testapp_monitor"], plan
        assert Ping.objects.filter(body__in=["ping 2 public", "ping without monitor"]).update(body="x") == 0
        assert Ping.objects.filter(body="ping without monitor")._raw_delete(connection.alias) == 0
        # rls_base_insert carries the same check as rls_parent_insert and PostgreSQL checks the permissive
        # policies first, so the error names the table, not the group's policy.
        with pytest.raises(DatabaseError, match='new row violates row-level security policy for table "testapp_ping"'):
            with transaction.atomic():
                Ping.objects.create(monitor=None, body="orphan")
        monitor = Monitor.objects.get()
        with transaction.atomic():
            Ping.objects.create(monitor=monitor, body="new")
            transaction.set_rollback(True)
    with django_rls.context(site=2):
        assert sorted(Ping.objects.values_list("body", flat=True)) == [
            "ping 2",
            "ping 2 public",
            "ping without monitor",
        ]


def test_a_permitted_move_works_and_others_fail_clearly(live_db):
    """BySite(movable_to="move_to"): with the claim, a row moves to the claimed site; without it, or to
    another site, PostgreSQL refuses (naming the table: rls_base_update, which carries the move policy's
    check too, is checked first)."""
    from django.db import DatabaseError, transaction

    import django_rls
    from tests.testapp.models import Folder

    with django_rls.context(site=1, claims={"move_to": 2}), transaction.atomic():
        assert sorted(Folder.objects.values_list("name", flat=True)) == ["folder 1", "folder 2"]
        assert Folder.objects.filter(name="folder 2").delete()[0] == 0  # the target's rows: read, never deleted
        assert Folder.objects.filter(name="folder 2").update(name="x") == 0
        assert Folder.objects.filter(name="folder 1").update(site_id=2) == 1
        transaction.set_rollback(True)
    refused = 'new row violates row-level security policy for table "testapp_folder"'
    for claims in (None, {"move_to": 1}):
        with django_rls.context(site=1, claims=claims), transaction.atomic():
            with pytest.raises(DatabaseError, match=refused):
                Folder.objects.filter(name="folder 1").update(site_id=2)
    with django_rls.context(site=1, claims={"move_to": 2}), transaction.atomic():
        # Site 3 does not exist: the policy refuses before the (deferred) foreign key is checked.
        with pytest.raises(DatabaseError, match=refused):
            Folder.objects.filter(name="folder 1").update(site_id=3)
    with django_rls.context(site=1):
        assert list(Folder.objects.values_list("name", "site_id")) == [("folder 1", 1)]


def test_widening_only_the_update_check_does_not_permit_a_move(owner_conn, app_conn):
    """PostgreSQL checks the updated row against the SELECT policies too: the move fails there."""
    import psycopg
    from psycopg import sql as pgsql

    from tests.roles import APP_ROLE

    owner_conn.execute("DROP TABLE IF EXISTS kinds_move")
    owner_conn.execute("CREATE TABLE kinds_move (id int PRIMARY KEY, site_id bigint NOT NULL)")
    owner_conn.execute("INSERT INTO kinds_move VALUES (1, 1)")
    owner_conn.execute(pgsql.SQL("GRANT SELECT, UPDATE ON kinds_move TO {}").format(pgsql.Identifier(APP_ROLE)))
    try:
        for group, check, commands in (
            ("site", None, "{select,insert,delete}"),
            ("site_write", "site_id IN (rls.site_id(), 2)", "{update}"),
        ):
            owner_conn.execute(
                "SELECT rls.protect('kinds_move', %s, 'site_id = rls.site_id()', %s, %s, to_role => %s)",
                (group, check, commands, APP_ROLE),
            )
        app_conn.execute("SELECT rls.set_context('1', NULL, is_local => false)")
        # The update's own policies admit site 2 (rls_base_update carries site_write's check alone), so
        # the refusal comes from the SELECT policies.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='policy for table "kinds_move"'):
            app_conn.execute("UPDATE kinds_move SET site_id = 2 WHERE id = 1")
        checks = dict(
            owner_conn.execute(
                "SELECT polname, pg_get_expr(polwithcheck, polrelid) FROM pg_policy "
                "WHERE polrelid = 'kinds_move'::regclass AND polname IN ('rls_base_update', 'rls_site_write_update')"
            ).fetchall()
        )
        assert checks["rls_base_update"] == checks["rls_site_write_update"], checks
    finally:
        owner_conn.execute("DROP TABLE kinds_move")
