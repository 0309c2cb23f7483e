"""Scenario 1: ``kill -9`` the worker mid-run, start a new one.

Devices stay offline until the kill, so every device is mid-step (commands queued or
being queued) when the worker dies; a fleet run queues a command for its whole chunk in
one multi-ID enqueue, so the kill usually finds them all queued, and the devices answer
while no worker runs. Afterwards every run must complete and each device must
have received its one command exactly once: the retried enqueue activity finds the
CommandUUID already queued (the simulator refuses duplicates, as NanoMDM does).
"""

from __future__ import annotations

from typing import Any

from bench.chaos.common import (
    answered_per_device,
    check_all_completed,
    set_offline,
    sim_counts,
    until,
)
from bench.stack import Stack


async def run(stack: Stack, n: int) -> dict[str, Any]:
    assert stack.worker_proc is not None, "needs the worker as a subprocess"
    ids = await stack.enroll(n)
    set_offline(stack, ids, True)
    instance = await stack.start_runs(ids)
    half = n // 2
    await until("half the commands queued", lambda: stack.fleet.stats["commands_enqueued"] >= half)
    pid = stack.worker_proc.pid
    await stack.stop_worker(kill=True)
    queued_at_kill = stack.fleet.stats["commands_enqueued"]
    set_offline(stack, ids, False)  # devices answer while no worker runs
    await stack.start_worker()
    await stack.wait_closed(instance, n, timeout=300)
    statuses = await check_all_completed(stack, instance, ids)
    counts = sim_counts(stack)
    per_device = answered_per_device(stack, ids)
    assert counts["commands_enqueued"] == n, f"{counts['commands_enqueued']} commands for {n} runs"
    assert per_device == {1: n}, f"answers per device: {dict(per_device)}"
    return {
        "killed": f"worker pid {pid} (SIGKILL) with {queued_at_kill}/{n} commands queued",
        "runs": n,
        "statuses": statuses,
        "answers_per_device": dict(per_device),
        **counts,
    }
