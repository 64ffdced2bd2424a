"""Print the CPU instructions each view costs per request in this process, for the variant in BENCH_VARIANT.

Run by bench/request_path.py under valgrind's callgrind, once per variant, when
BENCH_INSTRUCTIONS=1: a count, not a time, so the machine's load does not change it (the
database server's work is not counted; it runs in other processes). The same direct WSGI loop
as time_requests.py: after a warm-up, REQUESTS requests of each view run inside one call of
glibc's qsort() (through ctypes, as the comparison of two elements), and callgrind counts only
inside the qsort_r() that it calls (--toggle-collect=qsort_r), which neither Python nor Django
calls. One run per view; entering and leaving qsort costs a few thousand instructions, nothing
next to REQUESTS requests. Prints JSON: view -> instructions per request.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REQUESTS = int(os.environ.get("BENCH_INSTRUCTIONS_REQUESTS", "100"))
VIEWS = ("/one-query/", "/ten-queries/", "/no-query/")
HERE = Path(__file__).resolve()


def counted_run(view: str, requests: int) -> None:
    """The child's part: warm up, then run the requests inside qsort()."""
    sys.path.insert(0, str(HERE.parent))
    from time_requests import request

    for _ in range(20):  # connect, load types, fill caches: not counted
        request(view)

    def compare(a: int, b: int) -> int:
        for _ in range(requests):
            request(view)
        return 0

    libc = ctypes.CDLL(None)
    comparison = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(compare)
    pair = (ctypes.c_int * 2)(1, 2)
    libc.qsort(pair, 2, ctypes.sizeof(ctypes.c_int), comparison)


def instructions(view: str, requests: int) -> int:
    """Instructions callgrind counted inside qsort() for this many requests of this view."""
    with tempfile.TemporaryDirectory(prefix="django_rls-callgrind-") as directory:
        out = Path(directory) / "callgrind.out"
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=qsort_r",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE),
                view,
                str(requests),
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise SystemExit(f"{view} failed under callgrind:\n{run.stderr[-3000:]}")
        for line in out.read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit(f"callgrind wrote no total for {view}")


def main() -> None:
    if len(sys.argv) == 3:
        counted_run(sys.argv[1], int(sys.argv[2]))
        return
    counts = {view: instructions(view, REQUESTS) / REQUESTS for view in VIEWS}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
