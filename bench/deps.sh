#!/usr/bin/env bash
# What the benchmarks need beyond the test dependencies: wrk (Debian) drives the
# request-path benchmark, gunicorn serves it, and the peers it measures come from PyPI at
# pinned versions: django-rls-tenants through the "bench" extra, django-rls into a directory
# of its own (it is imported as django_rls, as ours is; bench/request_path.py puts that
# directory first on the path of its processes only).  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
DJANGO_RLS_PEER="django-rls==2.0.1"
DJANGO_RLS_PEER_DIR="$VENV/peers/django-rls"

# valgrind counts instructions for bench/read_instructions.py.
for tool in wrk valgrind; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "bench/deps.sh: $tool is missing; run as root or apt-get install $tool" >&2
            exit 1
        fi
        echo "bench/deps.sh: installing $tool"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    fi
done
# The extra's pins, checked against what is installed: reinstall when pyproject.toml changed them.
if ! "$VENV/bin/python" - <<'PY'
import re, sys, tomllib
from importlib.metadata import PackageNotFoundError, version
with open("pyproject.toml", "rb") as f:
    wanted = tomllib.load(f)["project"]["optional-dependencies"]["bench"]
for requirement in wanted:
    name, pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:==(.+)|>=.+)", requirement).groups()
    try:
        installed = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if pinned is not None and installed != pinned:
        sys.exit(1)
PY
then
    "$VENV/bin/python" -m pip install -q -e ".[test,bench]"
fi
if [ ! -d "$DJANGO_RLS_PEER_DIR/django_rls-${DJANGO_RLS_PEER#*==}.dist-info" ]; then
    rm -rf "$DJANGO_RLS_PEER_DIR"
    "$VENV/bin/python" -m pip install -q --no-deps --target "$DJANGO_RLS_PEER_DIR" "$DJANGO_RLS_PEER"
fi
