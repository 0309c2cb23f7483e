"""Benchmark 1: one-step mdmflow runs end to end against the bare-Temporal floor.

mdmflow: ``POST /v1/workflow/io.micromdm.wf.devinfolog.v1/start`` for N devices → worker
enqueues to the simulator and pushes → the device answers at once → webhook → relay →
signal → the run logs the answer and completes. Floor: N :mod:`bench.floor` runs (one
no-op activity, one direct signal) on their own worker. Both on one embedded dev server,
both workers in this process, measured from the first start to the last close event.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from bench.floor import FLOOR_WORKFLOW, FloorActivities, FloorWorkflow
from bench.rss import cpu_per_item, cpu_seconds
from bench.stack import Stack, StackOptions, completed

WARMUP = 20


def _pids(stack: Stack) -> dict[str, int]:
    """Processes whose CPU time per workflow shows where the time goes."""
    pids = {"bench_process": os.getpid()}
    if stack.temporal.process is not None:
        pids["temporal_server"] = stack.temporal.process.pid
    if stack.worker_proc is not None:
        pids["worker_process"] = stack.worker_proc.pid
    if stack.api_proc is not None:
        pids["api_process"] = stack.api_proc.pid
    return pids


def _rate(n: int, t0_wall: float, closes: list[datetime]) -> dict[str, float]:
    seconds = max(c.timestamp() for c in closes) - t0_wall
    return {"seconds": round(seconds, 2), "workflows_per_s": round(n / seconds, 2)}


async def run_floor(stack: Stack, n: int, tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    client = stack.client
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    acts = FloorActivities()

    async def signaller() -> None:
        while True:
            wid = await acts.sent.get()
            await client.get_workflow_handle(wid).signal("answer")

    async def batch(count: int) -> tuple[list[datetime], int]:
        gate = asyncio.Semaphore(32)
        prefix = uuid.uuid4().hex[:8]

        async def start(i: int) -> None:
            async with gate:
                await client.start_workflow(
                    FLOOR_WORKFLOW, id=f"floor/{prefix}/{i}", task_queue=queue
                )

        await asyncio.gather(*(start(i) for i in range(count)))
        query = f"WorkflowId STARTS_WITH 'floor/{prefix}/' AND ExecutionStatus!='Running'"
        await stack.wait_count(query, count)
        runs = [r async for r in client.list_workflows(f"WorkflowId STARTS_WITH 'floor/{prefix}/'")]
        done = sum(1 for r in runs if r.status == WorkflowExecutionStatus.COMPLETED)
        assert done == count, f"{count - done} floor runs failed"
        closes = [r.close_time for r in runs if r.close_time is not None]
        return closes, max(r.history_length for r in runs)

    async with Worker(
        client,
        task_queue=queue,
        workflows=[FloorWorkflow],
        activities=[acts.noop],
        **(tuning or {}),
    ):
        signallers = [asyncio.create_task(signaller()) for _ in range(16)]
        try:
            await batch(WARMUP)
            t0 = time.time()
            cpu = cpu_seconds(_pids(stack))
            closes, history = await batch(n)
            cpu_ms = cpu_per_item(cpu, cpu_seconds(_pids(stack)), n)
        finally:
            for s in signallers:
                s.cancel()
    return {**_rate(n, t0, closes), "history_events_per_run": history, "cpu_ms_per_run": cpu_ms}


async def run_mdmflow(stack: Stack, n: int) -> dict[str, Any]:
    warm = await stack.enroll(WARMUP)
    await stack.wait_closed(await stack.start_runs(warm), WARMUP)
    ids = await stack.enroll(n)
    await stack.fleet.wait_idle()
    t0 = time.time()
    cpu = cpu_seconds(_pids(stack))
    instance = await stack.start_runs(ids)
    results = await stack.wait_closed(instance, n)
    cpu_ms = cpu_per_item(cpu, cpu_seconds(_pids(stack)), n)
    runs = await stack.runs(instance)
    assert completed(results) == n, f"only {completed(results)}/{n} mdmflow devices completed"
    closes = [r.close_time for r in runs if r.close_time is not None]
    return {
        **_rate(n, t0, closes),
        "fleet_runs": len(runs),
        "history_events_largest_run": max(r.history_length for r in runs),
        "cpu_ms_per_run": cpu_ms,
    }


async def measure(n: int, rounds: int = 2, options: StackOptions | None = None) -> dict[str, Any]:
    """Alternate floor and mdmflow ``rounds`` times on one stack; keep each side's best."""
    floors: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    async with Stack(options or StackOptions()) as stack:
        tuning = stack.options.worker_tuning
        for _ in range(rounds):
            floors.append(await run_floor(stack, n, tuning))
            flows.append(await run_mdmflow(stack, n))
    floor = max(floors, key=lambda r: r["workflows_per_s"])
    flow = max(flows, key=lambda r: r["workflows_per_s"])
    return {
        "workflows": n,
        "rounds": rounds,
        "floor": floor,
        "mdmflow": flow,
        "ratio": round(flow["workflows_per_s"] / floor["workflows_per_s"], 3),
        "all_rounds": {"floor": floors, "mdmflow": flows},
    }


async def run(n: int) -> dict[str, Any]:
    inproc = await measure(n)
    # The deployed shape: worker and API + relay in processes of their own.
    split = await measure(n, rounds=1, options=StackOptions(processes=True))
    return {
        **inproc,
        "mode": "worker, API + relay, simulator and floor worker all in the bench process",
        "processes": {
            "mode": "mdmflow worker and API + relay as subprocesses; floor in the bench process",
            "floor": split["floor"],
            "mdmflow": split["mdmflow"],
            "ratio": split["ratio"],
        },
    }
