"""Scenario 4: the relay is down while devices answer, so their webhooks are lost.

Runs are started with a short re-push schedule (``WorkflowInput.repush_after_seconds``).
Group "recover": the relay is back before the second silent re-push, where the step
re-issues its read-only DeviceInformation under a new UUID; the device answers that one
and the run completes with the re-issued answer. Group "expire": the step timeout comes
before the re-issue, so the run ends ``timed_out`` instead of waiting forever.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from bench.chaos.common import set_offline, sim_counts, until
from bench.stack import Stack


async def _outcome(stack: Stack, state: dict[str, Any]) -> str:
    """Why a device's story ended as it did, from its state and the logged answer."""
    command = state["steps"][0]["commands"][0]
    if state["status"] == "completed":
        logged = (await stack.http.get("/v1/devinfolog", params={"id": state["enrollment_id"]}))
        uuids = [e["command_uuid"] for e in logged.json()]
        via = "re-issued" if uuids == command["reissued_as"] else "?"
        return f"completed by the {via} command"
    if state["status"] == "timed_out" and not command["reissued_as"]:
        return "timed_out before its re-issue"
    return f"{state['status']}: {state['message']}"


async def run(
    stack: Stack, recover: int, expire: int, down_s: float, repush_s: float
) -> dict[str, Any]:
    ids = await stack.enroll(recover + expire)
    set_offline(stack, ids, True)
    long_timeout = 10 * repush_s + down_s + 60
    group_r = await stack.start_direct(
        ids[:recover], repush_after_seconds=[repush_s], step_timeout_seconds=long_timeout
    )
    group_e = await stack.start_direct(
        ids[recover:], repush_after_seconds=[repush_s], step_timeout_seconds=1.5 * repush_s
    )
    n = len(ids)
    await until("all queued", lambda: stack.fleet.stats["commands_enqueued"] >= n)
    await stack.stop_api(kill=True)
    set_offline(stack, ids, False)  # every answer now goes to a relay that is not there
    await until("all answered", lambda: stack.fleet.stats["commands_answered"] >= n)
    await stack.fleet.wait_idle()
    lost = stack.fleet.stats["webhooks_failed"]
    await asyncio.sleep(down_s)  # the rest of the outage
    await stack.start_api()
    await stack.wait_closed(group_r, recover, timeout=long_timeout + 30)
    await stack.wait_closed(group_e, expire, timeout=long_timeout + 30)
    states = {**await stack.device_states(group_r), **await stack.device_states(group_e)}
    assert sorted(states) == sorted(ids), f"{len(states)} devices in the runs, {n} started"
    outcomes = Counter([await _outcome(stack, states[e]) for e in ids])
    expected = {
        "completed by the re-issued command": recover,
        "timed_out before its re-issue": expire,
    }
    assert outcomes == {k: v for k, v in expected.items() if v}, dict(outcomes)
    counts = sim_counts(stack)
    assert counts["commands_enqueued"] == 2 * recover + expire, counts
    return {
        "killed": f"relay (API process or server) for {down_s}s after the answers were lost",
        "runs": n,
        "webhooks_lost": lost,
        "repush_after_seconds": repush_s,
        "outcomes": dict(outcomes),
        **counts,
    }
