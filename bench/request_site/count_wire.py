"""Print what each view sends to PostgreSQL per request, for the variant in BENCH_VARIANT.

Run by bench/request_path.py in a subprocess per variant (one Django settings per process):
the views go through Django's full request handler and middleware, and libpq's protocol
trace counts statements and round trips on the real connection.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REQUESTS = 50

# The repository (for tests.wire) goes last: a peer's package may be imported as django_rls too,
# from the directory bench/request_path.py puts first on PYTHONPATH.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "request_site.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from tests.wire import traced  # noqa: E402


def main() -> None:
    client = Client()
    counts = {}
    for url in ("/one-query/", "/ten-queries/", "/no-query/"):
        assert client.get(url).status_code == 200  # warm up: connect, load types
        with traced(connection) as log:
            for _ in range(REQUESTS):
                response = client.get(url)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}")
        counts[url] = {"statements": log.statements / REQUESTS, "round_trips": log.round_trips / REQUESTS}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
