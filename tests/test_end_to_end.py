"""End to end on the real dev server through real HTTP:

API start → worker → enqueue to the simulator → device answers → NanoMDM-style webhook →
relay (HMAC) → signal → workflow → inventory store → ``GET /v1/inventory``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mdmflow.temporal_server import temporal_binary
from simulator.fleet import DeviceBehaviour
from tests.e2e_stack import E2E, INVENTORY, SIM_KEY


async def test_inventory_run_fills_the_inventory_for_every_device(e2e: E2E) -> None:
    ids = await e2e.enroll(3)
    started = await e2e.start(INVENTORY, *ids)
    assert sorted(started["started"]) == sorted(ids)
    for eid in ids:
        assert (await e2e.result(INVENTORY, eid))["status"] == "completed"
    inventory = (await e2e.api.get("/v1/inventory", params=[("id", i) for i in ids])).json()
    for eid in ids:
        device = e2e.fleet.device_state(eid)
        assert inventory[eid]["serial_number"] == device["serial_number"]
        assert inventory[eid]["os_version"] == device["os_version"]
        assert inventory[eid]["apple_silicon"] == device["is_apple_silicon"]
        assert inventory[eid]["fde_enabled"] is False
        assert "sip_enabled" in inventory[eid]
    # exactly the two commands of the one step reached each device
    assert all(e2e.fleet.device_state(i)["counters"]["answered"] == 2 for i in ids)


async def test_temporal_cli_finds_the_run_by_enrollment_attribute(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    await e2e.start(INVENTORY, eid)
    await e2e.result(INVENTORY, eid)
    for _ in range(50):  # visibility is eventually consistent
        out = subprocess.run(
            [
                temporal_binary(),
                "workflow",
                "list",
                "--address",
                e2e.temporal.address,
                "--query",
                f"MdmEnrollmentId='{eid}'",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs = json.loads(out) if out.strip() else []
        if runs:
            break
        await asyncio.sleep(0.2)
    assert [r["execution"]["workflowId"] for r in runs] == [await e2e.run_of(INVENTORY, eid)]


async def test_notnow_then_acknowledged_completes_once(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(notnow_count=1))
    await e2e.start(INVENTORY, eid)
    assert (await e2e.result(INVENTORY, eid))["status"] == "completed"
    state = await e2e.state(INVENTORY, eid)
    (step,) = state["steps"]
    assert [c["not_now_count"] for c in step["commands"]] == [1, 1]
    assert all(c["answered"] for c in step["commands"])
    counters = e2e.fleet.device_state(eid)["counters"]
    assert counters["notnow"] == 2 and counters["answered"] == 2


async def test_device_error_fails_the_run_but_keeps_the_other_answer(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(
        eid, DeviceBehaviour(errors={"SecurityInfo": (12345, "MCMDMErrorDomain", "busy")})
    )
    await e2e.start(INVENTORY, eid)
    result = await e2e.result(INVENTORY, eid)
    assert result["status"] == "failed"
    assert "MCMDMErrorDomain 12345" in result["message"]
    inventory = (await e2e.api.get("/v1/inventory", params={"id": eid})).json()
    assert inventory[eid]["serial_number"] == e2e.fleet.device_state(eid)["serial_number"]
    assert "fde_enabled" not in inventory[eid]


async def test_duplicated_webhooks_change_nothing(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_faults(duplicate_rate=1.0, seed=3)
    try:
        await e2e.start(INVENTORY, eid)
        assert (await e2e.result(INVENTORY, eid))["status"] == "completed"
        await e2e.fleet.wait_idle()
    finally:
        e2e.fleet.set_faults(duplicate_rate=0.0, seed=3)
    state = await e2e.state(INVENTORY, eid)
    assert state["ignored_reports"] >= 1  # the second copy of at least one answer
    assert e2e.fleet.device_state(eid)["counters"]["answered"] == 2


async def test_unknown_enrollment_fails_with_a_clear_message(e2e: E2E) -> None:
    eid = "NOT-ENROLLED-" + uuid.uuid4().hex
    await e2e.start(INVENTORY, eid)
    handle = e2e.client.get_workflow_handle(await e2e.run_of(INVENTORY, eid))
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(handle.result(), 60)
    assert "does not know enrollment" in str(info.value.__cause__ or info.value)


async def test_worker_killed_mid_step_is_replaced_and_the_step_completes(
    e2e: E2E, tmp_path: Path
) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    queue = f"kill-{uuid.uuid4()}"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": e2e.temporal.address,
        "MDMFLOW_TASK_QUEUE": queue,
        "MDMFLOW_MDM_URL": e2e.sim_url,
        "MDMFLOW_MDM_API_KEY": SIM_KEY,
        "MDMFLOW_DB_URL": e2e.store_url,
        "MDMFLOW_VAR_DIR": str(tmp_path),
        "MDMFLOW_API_KEY": "unused",
    }

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "mdmflow", "worker"], env=env)

    from mdmflow.temporal_calls.starts import start_workflow

    first = spawn()
    try:
        await start_workflow(e2e.client, queue, INVENTORY, [eid], holds=e2e.services.holds)
        for _ in range(200):  # wait until the step's commands are queued on the device
            if len(e2e.fleet.device_state(eid)["queue"]) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(e2e.fleet.device_state(eid)["queue"]) == 2
        first.send_signal(signal.SIGKILL)
        first.wait()
        # the device answers while no worker is alive: the relay signals Temporal anyway
        e2e.fleet.update_behaviour(eid, offline=False)
        await e2e.fleet.connect(eid)
        await e2e.fleet.wait_idle()
        second = spawn()
        try:
            assert (await e2e.result(INVENTORY, eid, timeout=90))["status"] == "completed"
        finally:
            second.terminate()
            second.wait(timeout=20)
    finally:
        if first.poll() is None:
            first.kill()
    device = e2e.fleet.device_state(eid)
    assert device["counters"]["answered"] == 2  # nothing enqueued twice
    inventory = (await e2e.api.get("/v1/inventory", params={"id": eid})).json()
    assert inventory[eid]["serial_number"] == device["serial_number"]
