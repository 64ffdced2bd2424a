"""Committed test data, written as the BYPASSRLS role: two sites (and two UUID tenants), three users.

alice belongs to site 1, bob to site 2, carol to both (per SiteMembership).
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.contrib.sites.models import Site
from django.db import connections

from tests.testapp import models as m
from tests.thirdparty import models as tp

DB = "bypass"
TENANT_A = uuid.UUID("a0000000-0000-0000-0000-00000000000a")
TENANT_B = uuid.UUID("b0000000-0000-0000-0000-00000000000b")
OWNER_A = uuid.UUID("0a000000-0000-0000-0000-0000000000a1")
OWNER_B = uuid.UUID("0b000000-0000-0000-0000-0000000000b1")


def seed() -> None:
    Site.objects.using(DB).update_or_create(id=1, defaults={"domain": "megacorp1.test", "name": "megacorp1"})
    Site.objects.using(DB).update_or_create(id=2, defaults={"domain": "megacorp2.test", "name": "megacorp2"})
    site1, site2 = Site.objects.using(DB).get(id=1), Site.objects.using(DB).get(id=2)
    with connections[DB].cursor() as cursor:  # explicit ids leave the sequence behind
        cursor.execute("SELECT setval(pg_get_serial_sequence('django_site', 'id'), (SELECT max(id) FROM django_site))")
    alice = User.objects.db_manager(DB).create_user("alice", password="alice")
    bob = User.objects.db_manager(DB).create_user("bob", password="bob")
    carol = User.objects.db_manager(DB).create_user("carol", password="carol")
    User.objects.db_manager(DB).create_superuser("admin", password="admin")  # a Django admin, not a database superuser

    for site in (site1, site2):
        for i in range(3):
            m.Note.objects.using(DB).create(site=site, body=f"{site.name} note {i}")
    m.Task.objects.using(DB).create(site=site1, owner=alice, title="alice 1")
    m.Task.objects.using(DB).create(site=site1, owner=alice, title="alice 2")
    m.Task.objects.using(DB).create(site=site1, owner=carol, title="carol 1")
    m.Task.objects.using(DB).create(site=site2, owner=bob, title="bob 1")

    tenant_a = m.Tenant.objects.using(DB).create(id=TENANT_A, name="tenant a")
    tenant_b = m.Tenant.objects.using(DB).create(id=TENANT_B, name="tenant b")
    m.TenantDoc.objects.using(DB).create(tenant=tenant_a, owner_uuid=OWNER_A, body="a's doc")
    m.TenantDoc.objects.using(DB).create(tenant=tenant_b, owner_uuid=OWNER_B, body="b's doc")

    m.Category.objects.using(DB).create(site=None, name="shared")
    m.Category.objects.using(DB).create(site=site1, name="site 1 category")
    m.Category.objects.using(DB).create(site=site2, name="site 2 category")

    for user, site in ((alice, site1), (bob, site2), (carol, site1), (carol, site2)):
        m.SiteMembership.objects.using(DB).create(user=user, site=site)
    m.Project.objects.using(DB).create(site=site1, name="project 1")
    m.Project.objects.using(DB).create(site=site2, name="project 2")

    order1 = m.Order.objects.using(DB).create(site=site1, number=1)
    order2 = m.Order.objects.using(DB).create(site=site2, number=2)
    m.OrderLine.objects.using(DB).create(order=order1, product="widget")
    m.OrderLine.objects.using(DB).create(order=order1, product="gizmo")
    m.OrderLine.objects.using(DB).create(order=order2, product="doohickey")

    tag1 = m.Tag.objects.using(DB).create(site=site1, label="news")
    tag2 = m.Tag.objects.using(DB).create(site=site2, label="news")
    article1 = m.Article.objects.using(DB).create(site=site1, title="site 1 draft", published=False)
    article2 = m.Article.objects.using(DB).create(site=site2, title="site 2 draft", published=False)
    m.Article.objects.using(DB).create(site=site2, title="site 2 published", published=True)
    m.ArticleTag.objects.using(DB).create(article=article1, tag=tag1)
    m.ArticleTag.objects.using(DB).create(article=article2, tag=tag2)

    m.Bookmark.objects.using(DB).create(owner=alice, url="https://a.example/private")
    m.Bookmark.objects.using(DB).create(owner=alice, url="https://a.example/public", is_public=True)
    m.Bookmark.objects.using(DB).create(owner=bob, url="https://b.example/private")

    # Owner-or-member: alice owns team 1, bob team 2, carol belongs to both.
    team1 = m.Team.objects.using(DB).create(id=1, owner=alice, name="team 1")
    team2 = m.Team.objects.using(DB).create(id=2, owner=bob, name="team 2")
    with connections[DB].cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('testapp_team', 'id'), 2)")
    m.TeamMember.objects.using(DB).create(team=team1, user=carol)
    m.TeamMember.objects.using(DB).create(team=team2, user=carol)

    # The chain ping -> monitor -> space; one ping without a monitor, one public ping.
    space1 = m.Space.objects.using(DB).create(id=1, name="space 1")
    space2 = m.Space.objects.using(DB).create(id=2, name="space 2")
    monitor1 = m.Monitor.objects.using(DB).create(space=space1, name="monitor 1")
    monitor2 = m.Monitor.objects.using(DB).create(space=space2, name="monitor 2")
    m.Ping.objects.using(DB).create(monitor=monitor1, body="ping 1a")
    m.Ping.objects.using(DB).create(monitor=monitor1, body="ping 1b")
    m.Ping.objects.using(DB).create(monitor=monitor2, body="ping 2")
    m.Ping.objects.using(DB).create(monitor=monitor2, body="ping 2 public", public=True)
    m.Ping.objects.using(DB).create(monitor=None, body="ping without monitor")

    m.Folder.objects.using(DB).create(site=site1, name="folder 1")
    m.Folder.objects.using(DB).create(site=site2, name="folder 2")

    tp.Gadget.objects.using(DB).create(site_id=1, name="gadget 1")
    tp.Gadget.objects.using(DB).create(site_id=2, name="gadget 2")
    tp.Widget.objects.using(DB).create(owner_id=alice.id, name="alice widget")
    tp.Widget.objects.using(DB).create(owner_id=bob.id, name="bob widget")
    tp.Widget.objects.using(DB).create(owner_id=alice.id, name="hidden")  # refused by a Custom policy from settings
