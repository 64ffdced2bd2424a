#!/usr/bin/env bash
# Build and install the django_rls extension for one PostgreSQL major version.
#
# Used by docker/Dockerfile (on the official postgres image) and by the test
# suite (on this machine), so the container build runs the same steps the tests
# exercise. Installs the server headers and a compiler when they are missing.
#   PG_MAJOR=15 docker/build-extension.sh [source dir]
# PG_CONFIG, when set, names the installation to build for (a relocated copy,
# say); it must be of the same major.  By default: Debian's layout.
set -euo pipefail
# The supported majors; tests/harness/matrix.py and docs/getting-started.md list the same.
SUPPORTED_MAJORS="14 15 16 17 18"
PG_MAJOR="${PG_MAJOR:?set PG_MAJOR to the PostgreSQL major version (one of ${SUPPORTED_MAJORS})}"
case " ${SUPPORTED_MAJORS} " in
    *" ${PG_MAJOR} "*) ;;
    *) echo "build-extension.sh: PostgreSQL ${PG_MAJOR} is not supported; use one of ${SUPPORTED_MAJORS}" >&2; exit 2 ;;
esac
SRC="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
if [ -x "$PG_CONFIG" ]; then
    found=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
    if [ "$found" != "$PG_MAJOR" ]; then
        echo "build-extension.sh: ${PG_CONFIG} is PostgreSQL ${found}, not ${PG_MAJOR}; set PG_MAJOR=${found} or point PG_CONFIG at a ${PG_MAJOR} installation" >&2
        exit 2
    fi
    headers="$("$PG_CONFIG" --includedir-server)/postgres.h"
else
    headers="/usr/include/postgresql/${PG_MAJOR}/server/postgres.h"
fi

if [ ! -f "$headers" ] || ! command -v make >/dev/null || ! command -v gcc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-server-dev-${PG_MAJOR}" make gcc libc6-dev >/dev/null
fi
# The JIT bitcode needs clang; skip it where clang is absent (the slim image).
llvm=$(command -v clang >/dev/null && echo yes || echo no)
make -C "$SRC" -s PG_CONFIG="$PG_CONFIG" with_llvm="$llvm" install
echo "build-extension.sh: django_rls installed for PostgreSQL ${PG_MAJOR}"
