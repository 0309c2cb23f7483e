"""Helpers shared by the chaos scenarios: waiting on simulator state, per-device counts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench.stack import Stack


async def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for a condition on in-process state (the simulator's), polling every 5 ms."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.005)


def set_offline(stack: Stack, ids: Sequence[str], offline: bool) -> None:
    for eid in ids:
        stack.fleet.update_behaviour(eid, offline=offline)


def answered_per_device(stack: Stack, ids: Sequence[str]) -> Counter[int]:
    """How many devices answered how many commands: ``{1: n}`` when nothing was doubled."""
    return Counter(stack.fleet.device_state(e)["counters"]["answered"] for e in ids)


async def check_all_completed(stack: Stack, instance: str, ids: Sequence[str]) -> dict[str, int]:
    """Every device of the instance completed; returns the count per final status."""
    states = await stack.device_states(instance)
    assert sorted(states) == sorted(ids), f"{len(states)} devices in the runs, {len(ids)} started"
    statuses = Counter(str(states[e]["status"]) for e in ids)
    assert statuses == {"completed": len(ids)}, f"devices not all completed: {dict(statuses)}"
    return dict(statuses)


def sim_counts(stack: Stack) -> dict[str, Any]:
    s = stack.fleet.stats
    keys = (
        "commands_enqueued",
        "commands_answered",
        "webhooks_sent",
        "webhooks_failed",
        "webhooks_non_200",
        "webhooks_duplicated",
        "webhooks_reordered",
        "pushes",
    )
    return {k: s[k] for k in keys}
