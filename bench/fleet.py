"""Benchmark 4: fleet inventory against the bare-Temporal floor, 1,000 and 10,000 devices.

One stack: worker and API + relay as their own processes (``mdmflow worker`` / ``mdmflow
serve``), so their peak RSS is theirs alone; the simulator (default connect latency,
50 ms) and the floor's worker run in this process. For each size, first the floor
(:mod:`bench.floor`: one bare workflow per device, one no-op activity and one direct
signal each), then one ``POST /v1/workflow/io.micromdm.wf.inventory.v1/start`` with every
ID in a JSON body: the starter cuts them into fleet runs (``MDMFLOW_FLEET_CHUNK``, 1,000 a
run) and each drives its devices' two commands (DeviceInformation, SecurityInfo). Done
when the closed fleet runs' results count every device; durations run from the first
start to the last close event. Both sides measured in the same run on the same dev
server, so the ratio compares like with like.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.chaos.common import answered_per_device
from bench.engine_overhead import run_floor
from bench.rss import PeakRss
from bench.stack import Stack, StackOptions, completed

INVENTORY = "io.micromdm.wf.inventory.v1"
COMMANDS_PER_DEVICE = 2  # DeviceInformation and SecurityInfo


async def run_inventory(stack: Stack, devices: int) -> dict[str, Any]:
    """One start of the inventory workflow for ``devices`` new devices, run to the end."""
    assert stack.worker_proc is not None and stack.api_proc is not None
    assert stack.temporal.process is not None
    ids = await stack.enroll(devices)
    await stack.fleet.wait_idle()
    enqueued_before = stack.fleet.stats["commands_enqueued"]
    pids = {
        "worker": stack.worker_proc.pid,
        "relay": stack.api_proc.pid,
        "temporal": stack.temporal.process.pid,
    }
    async with PeakRss(pids, every=0.5) as rss:
        t0_wall, t0 = time.time(), time.monotonic()
        instance = await stack.start_runs(ids, INVENTORY)
        start_seconds = time.monotonic() - t0
        results = await stack.wait_closed(instance, devices, timeout=3600)
    runs = await stack.runs(instance)
    seconds = max(r.close_time.timestamp() for r in runs if r.close_time) - t0_wall
    by_status: Counter[str] = Counter()
    for r in results:
        by_status.update(dict(r["by_status"]))
    done = completed(results)
    assert done == devices, f"{done}/{devices} devices completed: {dict(by_status)}"
    per_device = answered_per_device(stack, ids)
    assert per_device == {COMMANDS_PER_DEVICE: devices}, f"answers per device: {per_device}"
    stats = stack.fleet.stats
    return {
        "workflow": INVENTORY,
        "devices": devices,
        "seconds": round(seconds, 1),
        "devices_per_s": round(devices / seconds, 2),
        "start_request_seconds": round(start_seconds, 1),
        "fleet_runs": len(runs),
        "by_status": dict(by_status),
        "largest_history_events": max(r.history_length for r in runs),
        "peak_rss_mib": rss.peak_mib,
        "commands_enqueued": stats["commands_enqueued"] - enqueued_before,
        "answers_per_device": dict(per_device),
        "webhooks_non_200": stats["webhooks_non_200"],
        "webhooks_failed": stats["webhooks_failed"],
    }


async def measure(stack: Stack, devices: int) -> dict[str, Any]:
    floor = await run_floor(stack, devices)
    flow = await run_inventory(stack, devices)
    floor_rate = devices / floor["seconds"]
    return {
        "devices": devices,
        "floor": {
            "seconds": floor["seconds"],
            "devices_per_s": round(floor_rate, 2),
            "history_events_per_run": floor["history_events_per_run"],
        },
        "mdmflow": flow,
        "ratio": round(flow["devices_per_s"] / floor_rate, 2),
    }


async def run(devices: int = 10_000) -> dict[str, Any]:
    sizes = sorted({min(1000, devices), devices})
    async with Stack(StackOptions(processes=True, connect_latency=0.05)) as stack:
        by_size = {str(n): await measure(stack, n) for n in sizes}
    largest = by_size[str(devices)]
    return {
        "devices": devices,
        "sizes": by_size,
        # the largest size, flat, for the summary
        "seconds": largest["mdmflow"]["seconds"],
        "devices_per_s": largest["mdmflow"]["devices_per_s"],
        "floor_devices_per_s": largest["floor"]["devices_per_s"],
        "ratio": largest["ratio"],
        "largest_history_events": largest["mdmflow"]["largest_history_events"],
        "peak_rss_mib": largest["mdmflow"]["peak_rss_mib"],
    }
