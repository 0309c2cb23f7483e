"""Benchmark 4: a fleet of devices started in one multi-ID start, run to completion.

Worker and API + relay run as their own processes (``mdmflow worker`` / ``mdmflow
serve``) so their peak RSS is theirs alone; the simulator (default connect latency,
50 ms) runs in this process. One ``POST /v1/workflow/io.micromdm.wf.devinfolog.v1/start``
with every ID in a JSON body; done when visibility counts every run closed.
"""

from __future__ import annotations

import time
from typing import Any

from bench.rss import PeakRss
from bench.stack import Stack, StackOptions, completed


async def run(devices: int = 10_000) -> dict[str, Any]:
    async with Stack(StackOptions(processes=True, connect_latency=0.05)) as stack:
        assert stack.worker_proc is not None and stack.api_proc is not None
        assert stack.temporal.process is not None
        ids = await stack.enroll(devices)
        pids = {
            "worker": stack.worker_proc.pid,
            "relay": stack.api_proc.pid,
            "temporal": stack.temporal.process.pid,
        }
        async with PeakRss(pids, every=0.5) as rss:
            t0 = time.monotonic()
            instance = await stack.start_runs(ids)
            start_seconds = time.monotonic() - t0
            await stack.wait_closed(instance, devices, timeout=3600)
            seconds = time.monotonic() - t0
        runs = await stack.runs(instance)
        stats = stack.fleet.stats
    done = completed(runs)
    assert done == devices, f"{done}/{devices} runs completed"
    return {
        "devices": devices,
        "seconds": round(seconds, 1),
        "devices_per_s": round(devices / seconds, 2),
        "start_request_seconds": round(start_seconds, 1),
        "completed": done,
        "largest_history_events": max(r.history_length for r in runs),
        "peak_rss_mib": rss.peak_mib,
        "commands_enqueued": stats["commands_enqueued"],
        "webhooks_non_200": stats["webhooks_non_200"],
        "webhooks_failed": stats["webhooks_failed"],
    }
