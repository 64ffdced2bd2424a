"""Create the demo's two companies, their users, invoices and notes (as the maintenance role)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.contrib.sites.models import Site
from django.core.management.base import BaseCommand
from django.db import connections

import django_rls
from shop.models import Invoice, Note

COMPANIES = {
    "megacorp1": {"users": ["alice", "anna"], "customers": ["Acme Ltd", "Globex", "Initech"]},
    "megacorp2": {"users": ["bob", "bert"], "customers": ["Umbrella", "Hooli"]},
}


class Command(BaseCommand):
    help = "Seed the demo database."

    def handle(self, *args: Any, **options: Any) -> None:
        with django_rls.bypass("demo seed: rows for every company"):
            Site.objects.all().delete()
            for number, (name, data) in enumerate(COMPANIES.items(), start=1):
                site = Site.objects.create(id=number, domain=f"{name}.localhost", name=name)
                for i, customer in enumerate(data["customers"], start=1):
                    Invoice.objects.create(site=site, customer=customer, amount=Decimal(100 * i * number))
                for username in data["users"]:
                    user = User.objects.create_user(username, password="demo")
                    Note.objects.create(site=site, author=user, text=f"private note of {username} at {name}")
            with connections["maintenance"].cursor() as cursor:  # explicit ids leave the sequence behind
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence('django_site', 'id'), (SELECT max(id) FROM django_site))"
                )
        self.stdout.write("Seeded megacorp1 (alice, anna) and megacorp2 (bob, bert); every password is 'demo'.")
