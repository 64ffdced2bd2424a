#!/usr/bin/env bash
# Build Citus from source and install it into the PostgreSQL that PG_CONFIG
# describes, so that tests/test_citus.py can start a coordinator and two
# workers.  `make test` never calls this: without Citus those tests skip.
#
#   tests/harness/citus.sh [--deps] [SOURCE]
#
# SOURCE is a Citus source tree (a checkout or an unpacked release tarball,
# built as it is unless CITUS_REF is set), a git repository (a bare mirror
# works) or a git URL; by default https://github.com/citusdata/citus.git.
# From git the script takes CITUS_REF, by default the newest release known to
# support the server's major version:
#
#   PostgreSQL 14      v12.1.12   (Citus 12.1 supports 14-16)
#   PostgreSQL 15      v13.2.2    (Citus 13 supports 15-17; the last for 15)
#   PostgreSQL 16-18   v14.0.1    (Citus 14 supports 16-18)
#
# The source is copied to a scratch directory (CITUS_BUILD_DIR, by default a
# new temporary one that is removed afterwards) and built there, so the
# source is never changed.  One change is applied when needed: Citus 13.2.2
# defines its own static have_createdb_privilege() for PostgreSQL 15, but
# recent 15.x minors (15.20, for one) export that function from
# commands/dbcommands.h and the build fails on the clash; when the server
# headers declare it, the copy is removed and the server's is used.
#
# --deps installs the Debian build dependencies with apt-get (as root).
# Citus is configured --without-libcurl: a test cluster has no business
# sending Citus's anonymous usage statistics anywhere.
#
# Environment: PG_CONFIG (default $PG_BINDIR/pg_config, else pg_config on
# PATH), CITUS_REF, CITUS_BUILD_DIR, MAKE_JOBS (default: number of CPUs).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

install_deps=0
source_arg=""
while [ $# -gt 0 ]; do
    case "$1" in
    --deps) install_deps=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*)
        echo "citus.sh: unknown option $1" >&2
        exit 2
        ;;
    *) source_arg="$1" ;;
    esac
    shift
done
source_arg="${source_arg:-https://github.com/citusdata/citus.git}"

if [ -n "${PG_CONFIG:-}" ]; then
    :
elif [ -n "${PG_BINDIR:-}" ]; then
    PG_CONFIG="$PG_BINDIR/pg_config"
else
    PG_CONFIG="$(command -v pg_config)"
fi
if [ ! -x "$PG_CONFIG" ]; then
    echo "citus.sh: no pg_config at '$PG_CONFIG'; set PG_CONFIG or PG_BINDIR" >&2
    exit 1
fi
pg_major="$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')"
server_include="$("$PG_CONFIG" --includedir-server)"
if [ ! -f "$server_include/postgres.h" ]; then
    echo "citus.sh: no server headers in $server_include (install postgresql-server-dev-$pg_major)" >&2
    exit 1
fi

case "$pg_major" in
14) default_ref=v12.1.12 ;;
15) default_ref=v13.2.2 ;;
16 | 17 | 18) default_ref=v14.0.1 ;;
*)
    echo "citus.sh: no known Citus release for PostgreSQL $pg_major" >&2
    exit 1
    ;;
esac
ref="${CITUS_REF:-$default_ref}"

if [ "$install_deps" -eq 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "citus.sh: --deps needs root (apt-get)" >&2
        exit 1
    fi
    # The server headers include OpenSSL, GSSAPI and ICU headers when the server was built with
    # them (Debian's is); lz4 and zstd are for Citus's columnar storage; configure is shipped,
    # so autoconf is not needed.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        build-essential git libssl-dev libkrb5-dev libicu-dev liblz4-dev libzstd-dev >/dev/null
fi

scratch_owned=0
if [ -n "${CITUS_BUILD_DIR:-}" ]; then
    build_dir="$CITUS_BUILD_DIR"
    rm -rf "$build_dir"
    mkdir -p "$build_dir"
else
    build_dir="$(mktemp -d -t citus-build.XXXXXX)"
    scratch_owned=1
fi
cleanup() {
    if [ "$scratch_owned" -eq 1 ]; then
        rm -rf "$build_dir"
    fi
}
trap cleanup EXIT

is_tree=0
if [ -f "$source_arg/configure" ] && [ -d "$source_arg/src/backend/distributed" ]; then
    is_tree=1
fi
if [ "$is_tree" -eq 1 ] && [ -z "${CITUS_REF:-}" ]; then
    echo "citus.sh: building the source tree $source_arg as it is"
    cp -a "$source_arg/." "$build_dir/"
    rm -rf "$build_dir/.git"
elif git --git-dir="$source_arg" rev-parse --git-dir >/dev/null 2>&1 && [ "$is_tree" -eq 0 ]; then
    echo "citus.sh: building $ref from the git repository $source_arg"
    git --git-dir="$source_arg" archive "$ref" | tar -x -C "$build_dir"
elif git -C "$source_arg" rev-parse --git-dir >/dev/null 2>&1; then
    echo "citus.sh: building $ref from the checkout $source_arg"
    git -C "$source_arg" archive "$ref" | tar -x -C "$build_dir"
elif [ "$is_tree" -eq 1 ]; then
    echo "citus.sh: CITUS_REF is set but $source_arg is not a git checkout" >&2
    exit 1
else
    echo "citus.sh: cloning $ref from $source_arg"
    git clone --quiet --depth 1 --branch "$ref" "$source_arg" "$build_dir/clone"
    git -C "$build_dir/clone" archive HEAD | tar -x -C "$build_dir"
    rm -rf "$build_dir/clone"
fi

# The clash described at the top: only when the server exports the function
# and this Citus still defines its own static copy.
compat="$build_dir/src/include/pg_version_compat.h"
if grep -qs 'extern bool have_createdb_privilege(void)' "$server_include/commands/dbcommands.h" &&
    grep -qs '^have_createdb_privilege(void)' "$compat"; then
    echo "citus.sh: the server exports have_createdb_privilege(); removing Citus's static copy"
    perl -0pi -e 's/static inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n//s' "$compat"
    if grep -q '^have_createdb_privilege(void)' "$compat"; then
        echo "citus.sh: could not remove have_createdb_privilege from $compat" >&2
        exit 1
    fi
fi

cd "$build_dir"
./configure --quiet PG_CONFIG="$PG_CONFIG" --without-libcurl
make -s -j"${MAKE_JOBS:-$(nproc)}"
make -s install
echo "citus.sh: installed Citus $ref into $("$PG_CONFIG" --pkglibdir)"
