#!/usr/bin/env bash
# What the benchmarks need beyond the test dependencies: wrk (Debian) drives the
# request-path benchmark, gunicorn (the "bench" extra) serves it.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/deps.sh: wrk is missing; run as root or apt-get install wrk" >&2
        exit 1
    fi
    echo "bench/deps.sh: installing wrk"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ ! -x "$VENV/bin/gunicorn" ]; then
    "$VENV/bin/python" -m pip install -q -e ".[test,bench]"
fi
