"""Run a command against a throwaway PostgreSQL cluster, or against DATABASE_URL.

    python tests/harness/cluster.py run -- make test-sql test-python

Without DATABASE_URL this creates a cluster in a temporary directory (as the
``postgres`` OS user when run as root, because PostgreSQL refuses to run as
root), preloads django_rls, listens on a free loopback port, runs the command
with PGHOST/PGPORT/PGUSER/PGDATABASE and DATABASE_URL pointing at it as the
superuser, and stops and removes the cluster afterwards, whatever happened.

With DJANGO_RLS_TEST_MODE=sql the cluster does not preload django_rls, as on
hosted PostgreSQL, and the test suite installs the SQL-only mode instead of the
extension (tests/conftest.py).

With DATABASE_URL set, the command runs against that server instead; it must
be a superuser URL to a server that has django_rls installed and preloaded
and that the tests may reconfigure (they set a signing key).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

PG_MAJOR = os.environ.get("PG_MAJOR", "15")
BINDIR = Path(os.environ.get("PG_BINDIR", f"/usr/lib/postgresql/{PG_MAJOR}/bin"))

SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 120
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres(argv: list[str]) -> list[str]:
    """Wrap a server command so that it runs as the postgres OS user if we are root.

    It starts in / because the postgres user may not be allowed into the caller's
    directory (a checkout under a private temporary directory, say).
    """
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", "env", "--chdir=/", *argv]
    return argv


class Cluster:
    """A PostgreSQL cluster that lives in a temporary directory."""

    def __init__(
        self, base_dir: Path | None = None, port: int | None = None, preload: bool = True, library: bool = True
    ) -> None:
        self.preload = preload
        self.library = library
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="django_rls-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self.port = port or free_port()

    @property
    def env(self) -> dict[str, str]:
        return {
            "PGHOST": str(self.base_dir),
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
        }

    def init(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        self.base_dir.chmod(0o755)
        subprocess.run(
            as_postgres(
                [
                    str(BINDIR / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        settings = SERVER_SETTINGS.format(port=self.port, socket_dir=self.base_dir)
        if self.preload:
            # pg_stat_statements lets tests count what the application role ran, on any connection.
            # Without the library, the server is as hosted PostgreSQL is for django_rls (the SQL-only mode).
            libraries = "django_rls, pg_stat_statements" if self.library else "pg_stat_statements"
            settings += f"shared_preload_libraries = '{libraries}'\n"
        subprocess.run(
            as_postgres(["sh", "-c", f"cat >> '{self.data_dir}/postgresql.conf'"]),
            input=settings.encode(),
            check=True,
        )

    def start(self) -> None:
        # DJANGO_RLS_SERVER_WRAPPER runs the server under a tool, such as valgrind (tests/harness/memcheck.sh);
        # pg_ctl cannot wrap the server, so it is started directly and waited for.
        wrapper = os.environ.get("DJANGO_RLS_SERVER_WRAPPER", "").split()
        if not wrapper:
            subprocess.run(
                as_postgres(
                    [
                        str(BINDIR / "pg_ctl"),
                        "start",
                        "--wait",
                        "--silent",
                        "--pgdata",
                        str(self.data_dir),
                        "--log",
                        str(self.log_file),
                    ]
                ),
                check=True,
            )
            return
        with open(self.log_file, "ab") as log:
            subprocess.Popen(
                as_postgres([*wrapper, str(BINDIR / "postgres"), "-D", str(self.data_dir)]),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while (
            subprocess.run(
                [str(BINDIR / "pg_isready"), "-q", "-h", str(self.base_dir), "-p", str(self.port)], check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                as_postgres(
                    [
                        str(BINDIR / "pg_ctl"),
                        "stop",
                        "--wait",
                        "--silent",
                        "--mode",
                        "fast",
                        "--pgdata",
                        str(self.data_dir),
                    ]
                ),
                check=False,
            )

    def remove(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.base_dir} port={self.port} dbname={dbname} user={user}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def env_from_url(url: str) -> dict[str, str]:
    parts = urlparse(url)
    env = {"DATABASE_URL": url}
    if parts.hostname:
        env["PGHOST"] = parts.hostname
    if parts.port:
        env["PGPORT"] = str(parts.port)
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    if parts.path.strip("/"):
        env["PGDATABASE"] = parts.path.strip("/")
    return env


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopper:
    """Ctrl-C, SIGTERM (timeout, CI, a process manager) or SIGHUP: stop the command, then the cluster.

    While the command runs, the signal is passed on to it as SIGINT and its exit
    is awaited as usual, so a command that handles the signal (the demo's
    server) ends cleanly; before it runs, the signal aborts the setup.
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self.child is None:
            raise KeyboardInterrupt
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)


def _ignore_stop_signals() -> None:
    """A second signal must not cut short stopping and removing the cluster."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def supervise(
    command: list[str],
    name: str,
    start: Callable[[], str],
    env: Callable[[], dict[str, str]],
    logs: Callable[[], str],
    teardown: Callable[[], None],
) -> int:
    """Start a throwaway cluster, run command against it, tear the cluster down whatever happened.

    start() brings the cluster up and says where it is; env() is what the command
    gets; logs() is shown when the command fails. Shared by this harness and
    tests/harness/citus_cluster.py.
    """
    stopper = _Stopper()
    for signum in STOP_SIGNALS:
        signal.signal(signum, stopper)
    try:
        print(f"{name}: {start()}", file=sys.stderr)
        stopper.child = subprocess.Popen(command, env={**os.environ, **env()})
        status = stopper.child.wait()
        if stopper.signum is not None:
            # Stopped on purpose: the server's log explains nothing, and the command's own status says
            # whether it ended cleanly (the demo does; an interrupted test run does not).
            print(f"{name}: stopped by {signal.Signals(stopper.signum).name}", file=sys.stderr)
        elif status != 0:
            print(f"{name}: command failed ({status}); last server log lines:\n{logs()}", file=sys.stderr)
        return status if status >= 0 else 128 - status
    except KeyboardInterrupt:
        print(f"{name}: interrupted while setting up the cluster", file=sys.stderr)
        return 128 + (stopper.signum or signal.SIGINT)
    finally:
        _ignore_stop_signals()
        teardown()


def run(command: list[str]) -> int:
    if os.environ.get("DATABASE_URL"):
        print(f"cluster.py: using DATABASE_URL ({urlparse(os.environ['DATABASE_URL']).hostname})", file=sys.stderr)
        return subprocess.call(command, env={**os.environ, **env_from_url(os.environ["DATABASE_URL"])})

    # DJANGO_RLS_TEST_MODE=sql: a server without the django_rls library, as hosted PostgreSQL is.
    cluster = Cluster(library=os.environ.get("DJANGO_RLS_TEST_MODE") != "sql")

    def start() -> str:
        cluster.init()
        cluster.start()
        return f"throwaway cluster on 127.0.0.1:{cluster.port} in {cluster.base_dir}"

    def teardown() -> None:
        cluster.stop()
        cluster.remove()

    return supervise(command, "cluster.py", start, lambda: cluster.env, cluster.log_tail, teardown)


def main(doc: str = __doc__ or "", run_command: Callable[[list[str]], int] = run) -> int:
    """The command line both harnesses share: ``run -- COMMAND ...``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run a command against a throwaway cluster")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --")
    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
