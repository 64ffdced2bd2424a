"""A throwaway Citus cluster: a coordinator and two workers on loopback, with django_rls.

    .venv/bin/python -m tests.harness.citus_cluster run -- psql

Each node is a tests.harness.cluster.Cluster started from PG_BINDIR with
``shared_preload_libraries = 'citus, django_rls'``. One database (``DATABASE``)
is created on every node with the citus extension; the coordinator registers
itself and adds the workers, then creates django_rls, which Citus propagates to
the workers. ``run`` points PGHOST/PGPORT/PGDATABASE/DATABASE_URL at the
coordinator as the superuser, exports CITUS_WORKER_URLS (space separated), runs
the command and removes the cluster afterwards, whatever happened.

Citus is not in any package registry these machines use: build it with
tests/harness/citus.sh (docs/scale-out.md). ``citus_missing()`` says why the
cluster cannot start, for tests to skip with.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from tests.harness.cluster import BINDIR, Cluster, as_postgres, main, supervise

DATABASE = "django_rls_citus"
# Relative to each node's data directory, so protected without a mode of its own.
SIGNING_KEY_FILE = "django_rls_signing_key"

# Citus must come first. Multi-shard writes commit with two-phase commit, shard
# moves use logical replication.
CITUS_SETTINGS = f"""
shared_preload_libraries = 'citus, django_rls'
max_prepared_transactions = 20
wal_level = logical
citus.log_remote_commands = off
django_rls.signing_key_file = '{SIGNING_KEY_FILE}'
"""

SKIP_REASON = "Citus is not installed for this PostgreSQL: see docs/scale-out.md"


def pkglibdir() -> Path | None:
    try:
        out = subprocess.run(
            [str(BINDIR / "pg_config"), "--pkglibdir"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out.strip())


def citus_missing() -> str | None:
    """None when Citus and django_rls are installed for the server in PG_BINDIR, else why not."""
    libdir = pkglibdir()
    if libdir is None or not (libdir / "citus.so").exists():
        return f"{SKIP_REASON} (no citus.so in {libdir or BINDIR})"
    if not (libdir / "django_rls.so").exists():
        return f"django_rls is not installed in {libdir}: run make install"
    return None


class CitusCluster:
    """A coordinator and ``workers`` workers, each a throwaway Cluster on a free loopback port."""

    def __init__(self, workers: int = 2) -> None:
        self.coordinator = Cluster(preload=False)
        self.workers = [Cluster(preload=False) for _ in range(workers)]
        # The key every node shares (docs/scale-out.md); tests sign with it too.
        self.signing_key = secrets.token_urlsafe(48)

    @property
    def nodes(self) -> list[Cluster]:
        return [self.coordinator, *self.workers]

    @staticmethod
    def url(node: Cluster, user: str = "postgres", dbname: str = DATABASE) -> str:
        return f"postgresql://{user}@127.0.0.1:{node.port}/{dbname}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.coordinator.env,
            "PGDATABASE": DATABASE,
            "DATABASE_URL": self.url(self.coordinator),
            "CITUS_WORKER_URLS": " ".join(self.url(worker) for worker in self.workers),
        }

    def start(self) -> None:
        """Start every node, create the database and citus on each, add the workers, create django_rls."""
        for node in self.nodes:
            node.init()
            subprocess.run(
                as_postgres(["sh", "-c", f"cat >> '{node.data_dir}/postgresql.conf'"]),
                input=CITUS_SETTINGS.encode(),
                check=True,
            )
            subprocess.run(
                as_postgres(["sh", "-c", f"umask 077; cat > '{node.data_dir}/{SIGNING_KEY_FILE}'"]),
                input=(self.signing_key + "\n").encode(),
                check=True,
            )
            node.start()
        for node in self.nodes:
            with psycopg.connect(self.url(node, dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            with psycopg.connect(self.url(node), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        with self.connect() as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
            for worker in self.workers:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
            conn.execute("CREATE EXTENSION django_rls")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()

    def connect(
        self, user: str = "postgres", password: str | None = None, node: Cluster | None = None
    ) -> psycopg.Connection:
        """An autocommit connection to the coordinator (or ``node``) as ``user``."""
        return psycopg.connect(self.url(node or self.coordinator, user), password=password, autocommit=True)

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {'coordinator' if node is self.coordinator else 'worker'} :{node.port}\n{node.log_tail()}"
            for node in self.nodes
        )


@contextmanager
def running_cluster(workers: int = 2) -> Iterator[CitusCluster]:
    """A started cluster for a test module's fixture: the nodes' log tails printed if anything inside fails, the
    cluster stopped and removed afterwards whatever happened."""
    cluster = CitusCluster(workers)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        print(cluster.log_tails())
        raise
    finally:
        cluster.stop()
        cluster.remove()


def create_role(admin: psycopg.Connection, role: str, options: str, password: str) -> None:
    """``CREATE ROLE role LOGIN options PASSWORD password`` on the coordinator (Citus propagates it)."""
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN " + options + " PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
    )


def on_placements(admin: psycopg.Connection, table: str, command: str) -> list[str]:
    """The result of ``command`` on every shard placement of ``table`` (``%s`` is the shard's name), as a superuser;
    fails if it failed on any."""
    rows = admin.execute(
        "SELECT success, result FROM run_command_on_placements(%s, %s) ORDER BY shardid", (table, command)
    ).fetchall()
    assert rows, f"{table} has no shard placements"
    failed = [result for success, result in rows if not success]
    assert not failed, failed
    return [result for _, result in rows]


def move_shard(admin: psycopg.Connection, shard: int) -> tuple[int, int]:
    """Move ``shard`` to another active worker (citus_move_shard_placement, block_writes): (source, target) ports."""
    (source,) = admin.execute(
        "SELECT nodeport FROM pg_dist_placement JOIN pg_dist_node USING (groupid) WHERE shardid = %s", (shard,)
    ).fetchone()
    (target,) = admin.execute(
        "SELECT nodeport FROM pg_dist_node WHERE nodeport <> %s AND shouldhaveshards AND isactive AND groupid <> 0 "
        "ORDER BY nodeport LIMIT 1",
        (source,),
    ).fetchone()
    admin.execute(
        "SELECT citus_move_shard_placement(%s, '127.0.0.1', %s, '127.0.0.1', %s, shard_transfer_mode => 'block_writes')",
        (shard, source, target),
    )
    return source, target


def run(command: list[str]) -> int:
    missing = citus_missing()
    if missing:
        print(f"citus_cluster.py: {missing}", file=sys.stderr)
        return 1
    cluster = CitusCluster()

    def start() -> str:
        cluster.start()
        return f"coordinator and workers on 127.0.0.1 ports {', '.join(str(node.port) for node in cluster.nodes)}"

    def teardown() -> None:
        cluster.stop()
        cluster.remove()

    return supervise(command, "citus_cluster.py", start, lambda: cluster.env, cluster.log_tails, teardown)


if __name__ == "__main__":
    sys.exit(main(__doc__ or "", run))
