"""Create the demo's two companies, their users, admins, invoices and notes (as the maintenance role).

Each company's users are in an auth group named after it; that is how the admin
(/admin/, no company in its URL) knows whose rows to show (shop.middleware).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.sites.models import Site
from django.core.management.base import BaseCommand
from django.db import connections

import django_rls
from shop.models import Invoice, Note

COMPANIES = {
    "megacorp1": {"users": ["alice", "anna"], "admin": "admin1", "customers": ["Acme Ltd", "Globex", "Initech"]},
    "megacorp2": {"users": ["bob", "bert"], "admin": "admin2", "customers": ["Umbrella", "Hooli"]},
}


class Command(BaseCommand):
    help = "Seed the demo database."

    def handle(self, *args: Any, **options: Any) -> None:
        with django_rls.bypass("demo seed: rows for every company"):
            Site.objects.all().delete()
            User.objects.all().delete()
            Group.objects.all().delete()
            for number, (name, data) in enumerate(COMPANIES.items(), start=1):
                site = Site.objects.create(id=number, domain=f"{name}.localhost", name=name)
                group = Group.objects.create(name=name)
                for i, customer in enumerate(data["customers"], start=1):
                    invoice = Invoice.objects.create(site=site, customer=customer, amount=Decimal(100 * i * number))
                    if i == 1:  # one change per company, for the audit trail's diff
                        invoice.amount += Decimal("0.50")
                        invoice.save(update_fields=["amount"])
                for username in data["users"]:
                    user = User.objects.create_user(username, password="demo")
                    user.groups.add(group)
                    Note.objects.create(site=site, author=user, text=f"private note of {username} at {name}")
                # A Django superuser (not a database one): the admin still queries as the application role.
                User.objects.create_superuser(data["admin"], password="demo").groups.add(group)
            with connections["maintenance"].cursor() as cursor:  # explicit ids leave the sequence behind
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence('django_site', 'id'), (SELECT max(id) FROM django_site))"
                )
        self.stdout.write(
            "Seeded megacorp1 (alice, anna; admin admin1) and megacorp2 (bob, bert; admin admin2); "
            "every password is 'demo'."
        )
