"""manage.py rls_keygen: make a signing key for DJANGO_RLS["SIGNING_KEY"] and the server's key file."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from django_rls.tokens import generate_key


class Command(BaseCommand):
    help = "Print a new random signing key and how to install it on both sides."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, *args: Any, **options: Any) -> None:
        key = generate_key()
        if options["quiet"]:
            self.stdout.write(key)
            return
        self.stdout.write(
            f"""{key}

1. On the database server, as the postgres OS user:
     echo '{key}' >> "$PGDATA/django_rls.key" && chmod 600 "$PGDATA/django_rls.key"
     psql -c "ALTER SYSTEM SET django_rls.signing_key_file = 'django_rls.key'" -c "SELECT pg_reload_conf()"
2. In Django settings, below your DJANGO_RLS dict (the key from a secret store, not from source control):
     DJANGO_RLS["SIGNING_KEY"] = os.environ["DJANGO_RLS_SIGNING_KEY"]
3. When both sides have it, make signatures mandatory:
     ALTER ROLE <app role> SET django_rls.require_signature = on;
"""
        )
