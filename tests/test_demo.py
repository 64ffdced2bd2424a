"""`make demo` minus the serving: set the demo up on its own throwaway cluster and run its self-check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.cluster import BINDIR, Cluster

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not (BINDIR / "initdb").exists(), reason=f"no PostgreSQL server binaries in {BINDIR}")


def test_demo_sets_up_and_each_company_sees_only_its_rows():
    cluster = Cluster()
    cluster.init()
    cluster.start()
    try:
        env = {**os.environ, **cluster.env}
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo" / "setup.py")], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        cluster.stop()
        cluster.remove()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "megacorp1: every page shows only megacorp1's rows" in result.stdout
    assert "megacorp2: every page shows only megacorp2's rows" in result.stdout
    # /admin/ (one Django superuser per company) and the audit trail, as the app role (demo_check).
    assert "admin admin1" in result.stdout and "admin admin2" in result.stdout
    for company in ("megacorp1", "megacorp2"):
        assert f"{company}: the admin and the audit trail show only {company}'s rows and entries" in result.stdout
    assert "System check identified no issues" in result.stdout


def test_make_demo_stops_quietly_on_sigterm():
    """SIGTERM to `make demo`'s process group (a process manager, `timeout`): the server, the setup script and the
    throwaway cluster stop, with no traceback, no server log, a zero status and no directory left behind."""
    import re
    import signal
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recipe = (ROOT / "Makefile").read_text().split("\ndemo: deps\n", 1)[1].split("\n\n", 1)[0]
    assert "$(HARNESS)/cluster.py run -- $(VENV)/bin/python demo/setup.py --serve" in recipe
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    env["PG_BINDIR"] = str(BINDIR)
    command = [sys.executable, "tests/harness/cluster.py", "run", "--"]
    command += [sys.executable, "demo/setup.py", "--serve", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output: list[str] = []
    try:
        for line in process.stdout:
            output.append(line)
            if "Serving the demo" in line:
                break
        serving = "".join(output)
        assert "Serving the demo" in serving, serving
        while True:  # until the development server answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert process.poll() is None, "".join(output)
        os.killpg(process.pid, signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = "".join(output) + rest
    assert process.returncode == 0, text
    assert "Traceback" not in text and "last server log lines" not in text, text
    assert "Demo stopped." in text and "cluster.py: stopped by SIGTERM" in text
    base_dir = re.search(r"in (/tmp/\S+)", text)[1]
    assert not Path(base_dir).exists()
