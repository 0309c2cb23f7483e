"""Benchmark: the emergency stop against 1,000 running runs.

1,000 simulated Macs, offline, each in its own run (chunks of one device) of the profile
workflow, waiting in its first step ("list"). The stop is engaged through the API as an
admin; the figure is how long until every run shows "halted by emergency stop": from
the request to the workflow task in which each run took the stop in (``halted_since`` in
its summary; from then on every query answers "halted"). How soon a poller sees it is
reported too; its own 1,000 queries a round compete with the runs for the worker. Then
a start is tried (refused), the devices come online and answer the step in flight, and
the runs must wait at the step boundary:
no InstallProfile may go out while the stop holds. Release lets them all finish; each
device must have got exactly one ProfileList for "list", one InstallProfile and one
ProfileList for "verify": nothing lost, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import plistlib
import time
import uuid
from collections import Counter
from typing import Any

from bench.report import latency_ms
from bench.stack import Stack, StackOptions
from mdmflow.temporal_calls.starts import start_workflow
from protocol import routing
from simulator.model import DeviceBehaviour
from store.holds import HoldStore
from workflows.fleet import FleetRunWorkflow
from workflows.models import FleetSummary

PROFILE = "io.micromdm.wf.profile.v1"
QUERY_CONCURRENCY = 100


def _mobileconfig(identifier: str) -> bytes:
    return plistlib.dumps(
        {
            "PayloadContent": [],
            "PayloadDisplayName": identifier,
            "PayloadIdentifier": identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": str(uuid.uuid4()).upper(),
            "PayloadVersion": 1,
        }
    )


async def run(n: int = 1000) -> dict[str, Any]:
    async with Stack(StackOptions()) as stack:
        sent: Counter[tuple[str, str]] = Counter()
        original = stack.fleet.enqueue

        def counting(
            ids: list[str], command_uuid: str, request_type: str, command: dict[str, Any]
        ) -> str | None:
            for eid in ids:
                sent[(eid, request_type)] += 1
            return original(ids, command_uuid, request_type, command)

        stack.fleet.enqueue = counting  # type: ignore[method-assign]
        put = await stack.http.put("/v1/profile/bench-wifi", content=_mobileconfig("com.bench.w"))
        put.raise_for_status()
        ids = await stack.enroll(n)
        for eid in ids:
            stack.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
        assert stack._engine is not None
        started = time.monotonic()
        result = await start_workflow(
            stack.client,
            stack.queue,
            PROFILE,
            ids,
            "bench-wifi",
            holds=HoldStore(stack._engine),
            chunk_size=1,
        )
        start_seconds = time.monotonic() - started
        assert not result.refused, result.refused
        running = "WorkflowType='mdmflow.fleet.v1' AND ExecutionStatus='Running'"
        await stack.wait_count(running, n)
        runs = [routing.fleet_workflow_id(PROFILE, result.instance_id, i) for i in range(n)]
        await _until_all(stack, runs, lambda s: s.by_step.get("list") == 1, timeout=120)

        admin = await stack.as_role("admin")
        wall0, t0 = time.time(), time.monotonic()
        engaged = await admin.post("/v1/estop", json={"reason": "benchmark"})
        answered = time.monotonic() - t0
        engaged.raise_for_status()
        seen_after = await _until_all(stack, runs, lambda s: s.halted is not None, t0, 60)
        took_in = [
            s.halted_since.timestamp() - wall0
            for s in await _summaries(stack, runs)
            if s.halted_since is not None
        ]
        refused = await stack.http.post(f"/v1/workflow/{PROFILE}/start", json={"ids": ids[:1]})

        for eid in ids:  # answer the step in flight; the next waits at the boundary
            stack.fleet.set_behaviour(eid, DeviceBehaviour())
        await _until_all(stack, runs, lambda s: s.by_status.get("halted") == 1, timeout=300)
        await asyncio.sleep(2.0)
        installs_while_halted = sum(v for (_, rt), v in sent.items() if rt == "InstallProfile")

        t1 = time.monotonic()
        released = await admin.delete("/v1/estop")
        released.raise_for_status()
        results = await stack.wait_closed(result.instance_id, n, timeout=900)
        finish_seconds = time.monotonic() - t1

    completed = sum(1 for r in results if r["status"] == "completed")
    per_device = {
        eid: (sent[(eid, "ProfileList")], sent[(eid, "InstallProfile")]) for eid in ids
    }
    exact = sum(1 for pair in per_device.values() if pair == (2, 1))
    times = sorted(took_in)
    seen = sorted(seen_after.values())
    return {
        "runs": n,
        "start_seconds": round(start_seconds, 1),
        "estop_api_answer_s": round(answered, 2),
        "runs_signalled": engaged.json()["runs_signalled"],
        "halted_after_s": latency_ms(times) | {"all_s": round(times[-1], 2)},
        "all_halted_within_5_s": len(times) == n and times[-1] <= 5.0,
        "seen_halted_by_a_poller_s": latency_ms(seen) | {"all_s": round(seen[-1], 2)},
        "start_while_engaged_status": refused.status_code,
        "installs_sent_while_halted": installs_while_halted,
        "completed_after_release": completed,
        "release_to_all_completed_s": round(finish_seconds, 1),
        "devices_with_each_command_exactly_once": exact,
    }


async def _summaries(stack: Stack, runs: list[str]) -> list[FleetSummary]:
    gate = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def one(workflow_id: str) -> FleetSummary:
        async with gate:
            handle = stack.client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
            return await handle.query(FleetRunWorkflow.summary)

    return list(await asyncio.gather(*(one(w) for w in runs)))


async def _until_all(
    stack: Stack,
    runs: list[str],
    done: Any,
    since: float | None = None,
    timeout: float = 60,
) -> dict[str, float]:
    """Query every run's summary until ``done(summary)`` holds for all; returns, per run,
    seconds from ``since`` to the first answer that showed it."""
    start = since if since is not None else time.monotonic()
    seen: dict[str, float] = {}
    gate = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def one(workflow_id: str) -> None:
        async with gate:
            handle = stack.client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
            summary = await handle.query(FleetRunWorkflow.summary)
            if done(summary):
                seen.setdefault(workflow_id, time.monotonic() - start)

    while len(seen) < len(runs):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{len(seen)}/{len(runs)} runs after {timeout} s")
        await asyncio.gather(*(one(w) for w in runs if w not in seen))
    return seen
