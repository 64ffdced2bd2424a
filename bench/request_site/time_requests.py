"""Print the Python CPU time each view costs per request, in-process, for the variant in BENCH_VARIANT.

A direct WSGI loop (no server, no network, no load generator) timed in this process's CPU
time, so neither the database server's work nor waiting for it counts: far less noisy than wrk
on a loaded machine. The best of BATCHES batches of REQUESTS requests per view, in microseconds.
bench/request_path.py runs it per variant when BENCH_INPROCESS=1. Run by hand with
BENCH_PROFILE=<view> (and the environment bench/request_path.py gives a variant) it prints a
cProfile of that view's requests in CPU time instead, the functions matching
BENCH_PROFILE_FILTER (default django_rls) by cumulative time.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

REQUESTS = int(os.environ.get("BENCH_INPROCESS_REQUESTS", "500"))
BATCHES = 7
VIEWS = ("/one-query/", "/ten-queries/", "/no-query/")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "request_site.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()


def environ(path: str) -> dict[str, object]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def request(path: str) -> None:
    statuses = []
    body = application(environ(path), lambda status, headers: statuses.append(status))
    b"".join(body)
    body.close()
    if not statuses[0].startswith("200"):
        raise SystemExit(f"{path} answered {statuses[0]}")


def best_microseconds(path: str) -> float:
    for _ in range(50):  # warm up: connect, load types, fill caches
        request(path)
    best = float("inf")
    for _ in range(BATCHES):
        started = time.process_time()
        for _ in range(REQUESTS):
            request(path)
        best = min(best, (time.process_time() - started) / REQUESTS * 1e6)
    return best


def main() -> None:
    profiled = os.environ.get("BENCH_PROFILE")
    if profiled:
        path = f"/{profiled}/"
        for _ in range(50):
            request(path)
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for _ in range(REQUESTS):
            request(path)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(os.environ.get("BENCH_PROFILE_FILTER", "django_rls"), 40)
        return
    print(json.dumps({path: best_microseconds(path) for path in VIEWS}))


if __name__ == "__main__":
    main()
