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
    assert "System check identified no issues" in result.stdout
