"""manage.py send_alerts: an alert for every ping that has none, in every project, from a thread pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connections

import django_rls
from monitor.models import Alert, Ping


def send(ping_id: int) -> str:
    try:
        Alert.objects.create(ping_id=ping_id, sent_by=threading.current_thread().name)
        return threading.current_thread().name
    finally:
        connections.close_all()  # each worker thread has connections of its own


class Command(BaseCommand):
    help = "Send an alert for every ping that has none, across all projects."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--workers", type=int, default=4)

    def handle(self, *args: Any, **options: Any) -> None:
        with django_rls.bypass("send_alerts: alerts of every project"):
            pending = list(Ping.objects.filter(alert__isnull=True).order_by("id").values_list("id", flat=True))
            with ThreadPoolExecutor(options["workers"]) as pool:
                threads = set(pool.map(django_rls.propagate(send), pending))
        self.stdout.write(f"sent {len(pending)} alert(s) from {len(threads)} thread(s)")
