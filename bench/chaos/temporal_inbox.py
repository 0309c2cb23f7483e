"""Scenario 7: Temporal killed while devices answer; the relay's inbox loses nothing.

Inventory runs and FileVault key rotations (on Macs whose key was escrowed first) wait
mid-step (commands queued, devices offline) when the Temporal dev server is killed. The
devices then come online and answer while Temporal is down: NanoMDM-style webhooks are
sent once and never retried, so every answer must be held in the relay's durable inbox
(answered 200, never 503) and delivered once Temporal is back. Every run must then
complete with no command re-issued and no webhook lost, and every rotated key in the
escrow must be the key the Mac now holds. Devices that enroll while Temporal is down
fire their Enrollment subscription once it is back: an event is claimed only when its
start succeeded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.chaos.common import (
    answered_per_device,
    check_all_completed,
    set_offline,
    sim_counts,
    until,
)
from bench.stack import DEVINFOLOG, Stack

INVENTORY = "io.micromdm.wf.inventory.v1"
FVENABLE = "io.micromdm.wf.fvenable.v1"
FVROTATE = "io.micromdm.wf.fvrotate.v1"
FAST_POLL = json.dumps({"poll_seconds": 0.5, "max_polls": 60})


async def metric(stack: Stack, name: str) -> float:
    """A value from the API's ``/metrics`` (0 when not yet counted)."""
    text = (await stack.http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"mdmflow_{name} "):
            return float(line.split()[1])
    return 0.0


async def start(stack: Stack, workflow: str, ids: list[str], context: str | None = None) -> str:
    body: dict[str, Any] = {"ids": ids, "context": context}
    resp = await stack.http.post(f"/v1/workflow/{workflow}/start", json=body)
    resp.raise_for_status()
    assert not resp.json()["refused"], resp.json()
    return str(resp.json()["instance_id"])


async def escrowed_key(stack: Stack, eid: str) -> str:
    escrow = await stack.as_role("escrow")  # secrets are the escrow role's
    resp = await escrow.get(f"/v1/escrow/{eid}/prk", params={"reason": "chaos check"})
    resp.raise_for_status()
    return str(resp.json()["secrets"][0]["secret"])


async def run(stack: Stack, n: int, down_s: float, rotate: int = 0) -> dict[str, Any]:
    subscribe = {"event": "Enrollment", "workflow": DEVINFOLOG}
    (await stack.http.put("/v1/event/chaos-enrollment", json=subscribe)).raise_for_status()
    macs = await stack.enroll(rotate) if rotate else []
    if macs:  # escrow each Mac's key first, so it can be rotated
        enabling = await start(stack, FVENABLE, macs, FAST_POLL)
        await stack.wait_closed(enabling, len(macs), timeout=300)
        await check_all_completed(stack, enabling, macs)
    ids = await stack.enroll(n)
    base = stack.fleet.stats["commands_enqueued"]
    set_offline(stack, ids + macs, True)
    instance = await stack.start_runs(ids, INVENTORY)
    rotating = await start(stack, FVROTATE, macs) if macs else None
    await until(
        "every inventory and rotation step queued",
        lambda: stack.fleet.stats["commands_enqueued"] - base >= 2 * n + len(macs),
        timeout=120,
    )
    await stack.kill_temporal()
    sent_before = stack.fleet.stats["webhooks_sent"]
    set_offline(stack, ids + macs, False)  # the devices answer while Temporal is down
    await until(
        "every answer posted to the relay",
        lambda: stack.fleet.stats["webhooks_sent"] - sent_before >= 2 * n + len(macs),
        timeout=120,
    )
    newcomers = await stack.fleet.enroll(max(1, n // 10))  # Enrollment while Temporal is away
    await stack.fleet.wait_idle()
    held = await metric(stack, "inbox_queued")
    depth_while_down = await metric(stack, "inbox_depth")
    await asyncio.sleep(down_s)
    await stack.restart_temporal()
    await stack.wait_closed(instance, n, timeout=300)
    statuses = await check_all_completed(stack, instance, ids)
    if rotating is not None:
        await stack.wait_closed(rotating, len(macs), timeout=300)
        await check_all_completed(stack, rotating, macs)
    mismatched = [m for m in macs if await escrowed_key(stack, m) != stack.fleet.recovery_key(m)]
    assert not mismatched, f"escrow does not hold the key {len(mismatched)} Mac(s) use"
    counts = sim_counts(stack)
    per_device = answered_per_device(stack, ids)
    assert counts["webhooks_non_200"] == 0, f"{counts['webhooks_non_200']} webhooks refused"
    assert counts["webhooks_failed"] == 0, f"{counts['webhooks_failed']} webhooks not posted"
    answers = 2 * n + len(macs)
    assert held >= answers, f"only {held} webhooks held in the inbox for {answers} answers"
    assert per_device == {2: n}, f"answers per device: {dict(per_device)}"
    enrolled_runs = await stack.results(newcomers, DEVINFOLOG)  # waits for each run
    assert {r["status"] for r in enrolled_runs.values()} == {"completed"}
    # inventory's two, each rotation, and each newcomer's DeviceInformation
    expected = 2 * n + len(macs) + len(newcomers)
    counts = sim_counts(stack)
    queued = counts["commands_enqueued"] - base
    assert queued == expected, f"{queued} commands for {expected}: re-issued or fired twice"
    await until_async_zero(stack)
    return {
        "killed": f"temporal dev server (SIGKILL) while {n} devices answered, down {down_s}s",
        "runs": n,
        "keys_rotated_and_escrowed": len(macs),
        "statuses": statuses,
        "webhooks_held_in_inbox": int(held),
        "inbox_depth_while_down": int(depth_while_down),
        "inbox_delivered": int(await metric(stack, "inbox_delivered")),
        "inbox_retried": int(await metric(stack, "inbox_retried")),
        "answers_per_device": dict(per_device),
        "enrolled_while_down_and_started": len(enrolled_runs),
        **counts,
    }


async def until_async_zero(stack: Stack, timeout: float = 30) -> None:
    """The inbox drains completely once everything is delivered."""
    for _ in range(int(timeout * 10)):
        if await metric(stack, "inbox_depth") == 0:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the inbox did not drain")
