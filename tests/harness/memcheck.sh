#!/usr/bin/env bash
# Run pg_regress and pytest with the server under valgrind memcheck, and fail on any
# error whose stack passes through the django_rls library.
#
# The Debian server is not built for valgrind, so PostgreSQL's own code produces
# reports valgrind cannot tell from real ones (uninitialised padding written to
# disk, pool allocators); only reports that involve django_rls.so fail the run,
# and the rest are counted. (AddressSanitizer is not used: its runtime, preloaded
# into this uninstrumented server binary, hangs the server at start.)
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v valgrind >/dev/null || { echo "memcheck.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
reports="$(mktemp -d /tmp/django_rls-memcheck-XXXXXX)"
chmod 777 "$reports"

export DJANGO_RLS_SERVER_WRAPPER="valgrind --quiet --leak-check=no --error-limit=no --num-callers=30 --log-file=$reports/vg.%p.log"
status=0
.venv/bin/python tests/harness/cluster.py run -- make -s test-sql test-python || status=$?

ours=0
total=0
for log in "$reports"/vg.*.log; do
    [ -s "$log" ] || continue
    total=$((total + 1))
    # frames of our code show the library name, or the source file when built with debug info
    if grep -qE 'django_rls\.so|(accessors|audit|context|django_rls|info|keys|replay|token)\.c:' "$log"; then
        ours=$((ours + 1))
        echo "memcheck.sh: error involving django_rls in $log:" >&2
        cat "$log" >&2
    fi
done
echo "memcheck.sh: $ours report(s) involving django_rls, $total server process(es) with any report; suites exit status $status"
[ "$ours" -eq 0 ] && exit "$status"
exit 1
