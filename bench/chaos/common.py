"""Helpers shared by the chaos scenarios: waiting on simulator state, per-device counts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench.stack import DEVINFOLOG, Stack


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


async def check_all_completed(
    stack: Stack, ids: Sequence[str], workflow: str = DEVINFOLOG
) -> dict[str, int]:
    """Every run completed; returns the count per final status (for the report)."""
    results = await stack.results(ids, workflow)
    statuses = Counter(str(r["status"]) for r in results.values())
    assert statuses == {"completed": len(ids)}, f"runs not all completed: {dict(statuses)}"
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
