"""Benchmark 5: which settings move benchmark 1 (floor and mdmflow throughput).

Each configuration gets a fresh stack and one round of :func:`bench.engine_overhead.measure`:
the dev server's SQLite pragmas (the product default is WAL + ``synchronous=normal``,
see ``mdmflow.temporal_server.SQLITE_PRAGMAS``), eager activity execution (on in the
product's dev server) and the worker's activity slots,
workflow-task slots and sticky cache (applied to the floor's worker too).
"""

from __future__ import annotations

from typing import Any

from bench import engine_overhead
from bench.stack import StackOptions

WAL_NORMAL = ("journal_mode=wal", "synchronous=normal")

CONFIGS: dict[str, StackOptions] = {
    "default (wal, synchronous=normal)": StackOptions(),
    "wal, synchronous=full": StackOptions(pragmas=("journal_mode=wal", "synchronous=full")),
    "wal, synchronous=off (unsafe)": StackOptions(pragmas=("journal_mode=wal", "synchronous=off")),
    "sqlite defaults (delete journal, synchronous=full)": StackOptions(pragmas=()),
    "eager activities off": StackOptions(eager_activities=False),
    "max_concurrent_activities=5": StackOptions(worker_tuning={"max_concurrent_activities": 5}),
    "max_concurrent_workflow_tasks=2": StackOptions(
        worker_tuning={"max_concurrent_workflow_tasks": 2}
    ),
    "sticky cache off (max_cached_workflows=0)": StackOptions(
        worker_tuning={"max_cached_workflows": 0}
    ),
}


async def run(n: int = 150) -> dict[str, Any]:
    out: dict[str, Any] = {"workflows": n, "configs": {}}
    for name, options in CONFIGS.items():
        result = await engine_overhead.measure(n, rounds=1, options=options)
        out["configs"][name] = {
            "floor_wf_per_s": result["floor"]["workflows_per_s"],
            "mdmflow_wf_per_s": result["mdmflow"]["workflows_per_s"],
            "ratio": result["ratio"],
        }
    return out
