"""A throwaway PgBouncer in front of the test server, for the pooling tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.cluster import as_postgres, free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

CONFIG = """
[databases]
{dbname} = host={host} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 200
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


class PgBouncer:
    """Runs pgbouncer as the postgres OS user (it refuses root) on a free loopback port."""

    def __init__(self, dbname: str, host: str, port: int, users: list[str], pool_mode: str, pool_size: int = 2) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="django_rls-pgbouncer-"))
        self.port = free_port()
        (self.dir / "users.txt").write_text("".join(f'"{user}" ""\n' for user in users))
        (self.dir / "pgbouncer.ini").write_text(
            CONFIG.format(
                dbname=dbname,
                host=host,
                port=port,
                listen_port=self.port,
                dir=self.dir,
                pool_mode=pool_mode,
                pool_size=pool_size,
            )
        )
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        subprocess.run(as_postgres([PGBOUNCER, "-d", str(self.dir / "pgbouncer.ini")]), check=True)
        deadline = time.monotonic() + 10
        while not (self.dir / "pgbouncer.pid").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not start: {(self.dir / 'pgbouncer.log').read_text(errors='replace')}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        pidfile = self.dir / "pgbouncer.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while pidfile.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)
