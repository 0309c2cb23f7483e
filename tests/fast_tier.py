"""``make check``'s tests: the fast tier, its test files spread over parallel pytest runs.

The fast tier is every ``unit`` and ``workflow`` test without PostgreSQL (those variants
run in ``make test``). Most of its time is spent waiting (subprocesses, SQLite, the
time-skipping server), so a few pytest processes side by side finish it in about half
the time of one. Files are dealt out by size, largest first, to the least loaded run;
each run's output is printed whole when it ends, and the exit code is the worst one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MARKERS = "(unit or workflow) and not postgres"
NO_TESTS_COLLECTED = 5


def groups(count: int) -> list[list[Path]]:
    files = sorted(TESTS.rglob("test_*.py"), key=lambda p: p.stat().st_size, reverse=True)
    out: list[list[Path]] = [[] for _ in range(count)]
    load = [0] * count
    for file in files:
        i = load.index(min(load))
        out[i].append(file)
        load[i] += file.stat().st_size
    return [g for g in out if g]


def main() -> int:
    count = int(os.environ.get("MDMFLOW_CHECK_JOBS", "3"))
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-m", MARKERS, *map(str, group)],
            cwd=TESTS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for group in groups(count)
    ]
    worst = 0
    for n, proc in enumerate(procs, 1):
        out, _ = proc.communicate()
        print(f"---- fast tier, run {n} of {len(procs)} ----")
        print(out.decode(errors="replace").rstrip())
        code = 0 if proc.returncode == NO_TESTS_COLLECTED else proc.returncode
        worst = max(worst, code)
    print(f"---- fast tier: {'passed' if worst == 0 else 'FAILED'} in "
          f"{time.monotonic() - started:.0f} s ({len(procs)} runs side by side)")
    return worst


if __name__ == "__main__":
    sys.exit(main())
