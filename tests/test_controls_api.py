"""Operator controls through the HTTP API and the Temporal CLI, on the real stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from mdmflow.temporal_server import temporal_binary
from simulator.fleet import DeviceBehaviour
from tests.e2e_stack import E2E, INVENTORY
from tests.test_nanocmd_workflows import mobileconfig, put_profile

LOCK = "io.micromdm.wf.lock.v1"
PROFILE = "io.micromdm.wf.profile.v1"
REFUSE = (12021, "MCMDMErrorDomain", "The device refused")


def describe(e2e: E2E, workflow_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            temporal_binary(),
            "workflow",
            "describe",
            "--address",
            e2e.temporal.address,
            "--workflow-id",
            workflow_id,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


async def device_status(e2e: E2E, workflow: str, eid: str, want: str, timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await e2e.state(workflow, eid)
        if state.get("status") == want:
            return state
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.1)


async def control(e2e: E2E, action: str, reason: str = "", **params: Any) -> Any:
    return await e2e.api.post(f"/v1/runs/{action}", params=params, json={"reason": reason})


async def test_a_refused_lock_ends_failed_in_temporal_and_in_the_api(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(errors={"DeviceLock": REFUSE}))
    await e2e.start(LOCK, eid)
    result = await e2e.result(LOCK, eid)
    assert result["status"] == "failed" and "MCMDMErrorDomain 12021" in result["message"]
    run = await e2e.run_of(LOCK, eid)
    doc = describe(e2e, run)
    assert doc["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
    for _ in range(50):  # visibility is eventually consistent
        runs = (await e2e.api.get("/v1/runs", params={"id": eid, "workflow": LOCK})).json()
        if runs and runs[0]["status"] == "failed":
            break
        await asyncio.sleep(0.2)
    assert runs[0]["status"] == "failed"
    state = await e2e.state(LOCK, eid)
    assert state["status"] == "failed" and state["failure_type"] == "DeviceError"


async def test_a_suspended_lock_is_retried_once_the_device_error_is_cleared(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(errors={"DeviceLock": REFUSE}))
    started = (
        await e2e.api.post(
            f"/v1/workflow/{LOCK}/start", params={"id": eid, "on_failure": "suspend"}
        )
    ).json()
    e2e.note_started(LOCK, started, [eid])
    state = await device_status(e2e, LOCK, eid, "suspended")
    assert "MCMDMErrorDomain 12021" in state["message"]
    run = await e2e.run_of(LOCK, eid)
    assert describe(e2e, run)["workflowExecutionInfo"]["status"] == (
        "WORKFLOW_EXECUTION_STATUS_RUNNING"
    )
    refused = await control(e2e, "resume", workflow_id=run)
    assert refused.status_code == 409 and "not paused" in refused.json()["runs"][0]["error"]
    e2e.fleet.set_behaviour(eid, DeviceBehaviour())
    retried = await control(e2e, "retry", "error cleared", workflow_id=run)
    assert retried.status_code == 200, retried.text
    assert retried.json()["runs"][0]["accepted"] == [eid]
    assert (await e2e.result(LOCK, eid))["status"] == "completed"


async def test_cancel_frees_the_slot_at_once(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    await e2e.start(INVENTORY, eid)
    run = await e2e.run_of(INVENTORY, eid)
    busy = (await e2e.api.post(f"/v1/workflow/{INVENTORY}/start", params={"id": eid})).json()
    assert busy["started"] == [] and run in busy["refused"][eid]
    cancelled = await control(e2e, "cancel", "wrong device", id=eid, workflow=INVENTORY)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["runs"][0]["workflow_id"] == run
    for _ in range(100):
        if describe(e2e, run)["workflowExecutionInfo"]["status"] != (
            "WORKFLOW_EXECUTION_STATUS_RUNNING"
        ):
            break
        await asyncio.sleep(0.1)
    assert describe(e2e, run)["workflowExecutionInfo"]["status"] == (
        "WORKFLOW_EXECUTION_STATUS_CANCELED"
    )
    state = (
        await e2e.api.get("/v1/runs/state", params={"workflow_id": run, "id": eid})
    ).json()
    assert state["status"] == "cancelled" and "wrong device" in state["message"]
    again = (await e2e.api.post(f"/v1/workflow/{INVENTORY}/start", params={"id": eid})).json()
    assert again["started"] == [eid]
    e2e.note_started(INVENTORY, again, [eid])
    e2e.fleet.set_behaviour(eid, DeviceBehaviour())
    assert (await e2e.result(INVENTORY, eid))["status"] == "completed"


async def test_pause_a_hundred_waiting_devices_then_resume(e2e: E2E) -> None:
    await put_profile(
        e2e, "paused", mobileconfig("com.example.paused", "55555555-EEEE-4EEE-8EEE-555555555555")
    )
    ids = await e2e.enroll(100)
    for eid in ids:
        e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    started = (
        await e2e.api.post(f"/v1/workflow/{PROFILE}/start", json={"ids": ids, "context": "paused"})
    ).json()
    e2e.note_started(PROFILE, started, ids)
    paused = await control(e2e, "pause", "maintenance", instance_id=started["instance_id"])
    assert paused.status_code == 200, paused.text
    assert sum(len(r["accepted"]) for r in paused.json()["runs"]) == 100
    for eid in ids:  # they answer the step they are in (ProfileList), then wait
        e2e.fleet.set_behaviour(eid, DeviceBehaviour())
    state = await device_status(e2e, PROFILE, ids[42], "paused")
    assert state["message"] == "paused by nanocmd: maintenance"
    await asyncio.sleep(1)
    assert not any("com.example.paused" in e2e.fleet.device_state(i)["profiles"] for i in ids)
    assert all(e2e.fleet.device_state(i)["queue"] == [] for i in ids)  # nothing sent
    again = await control(e2e, "pause", instance_id=started["instance_id"])
    assert again.status_code == 409  # already paused, every one of them
    resumed = await control(e2e, "resume", instance_id=started["instance_id"])
    assert sum(len(r["accepted"]) for r in resumed.json()["runs"]) == 100
    for eid in ids:
        assert (await e2e.result(PROFILE, eid))["status"] == "completed"
    assert all("com.example.paused" in e2e.fleet.device_state(i)["profiles"] for i in ids)


async def test_controls_choose_runs_clearly(e2e: E2E) -> None:
    nothing = await control(e2e, "pause")
    assert nothing.status_code == 400 and "choose runs" in nothing.json()["error"]
    unknown = await control(e2e, "pause", instance_id="no-such-instance")
    assert unknown.status_code == 404
    bad = await e2e.api.post("/v1/runs/explode", params={"workflow_id": "x"})
    assert bad.status_code in (400, 404, 422)


async def test_the_web_ui_tells_the_story(e2e: E2E) -> None:
    """What `temporal workflow describe` and the Web UI show: summary, details, and the
    current details (devices per status and step, why one is suspended)."""
    ids = await e2e.enroll(2)
    e2e.fleet.set_behaviour(ids[0], DeviceBehaviour(errors={"DeviceLock": REFUSE}))
    e2e.fleet.set_behaviour(ids[1], DeviceBehaviour(offline=True))
    started = (
        await e2e.api.post(
            f"/v1/workflow/{LOCK}/start", json={"ids": ids, "on_failure": "suspend"}
        )
    ).json()
    e2e.note_started(LOCK, started, ids)
    await device_status(e2e, LOCK, ids[0], "suspended")
    run = await e2e.run_of(LOCK, ids[0])
    handle = e2e.client.get_workflow_handle(run)
    desc = await handle.describe()
    assert await desc.static_summary() == "lock.v1 for 2 devices"
    details = await desc.static_details() or ""
    assert started["instance_id"] in details and "on failure: suspend" in details
    metadata = await handle.query("__temporal_workflow_metadata")
    current = metadata.current_details
    assert "1 running" in current and "1 suspended" in current, current
    assert f"{ids[0]}: suspended at step 'lock'" in current
    # the JSON the Temporal CLI shows for the same run (payloads are encrypted there)
    assert describe(e2e, run)["workflowExecutionInfo"]["status"] == (
        "WORKFLOW_EXECUTION_STATUS_RUNNING"
    )
    cancelled = await control(e2e, "cancel", "demo over", workflow_id=run)
    assert cancelled.status_code == 200
    for eid in ids:
        e2e.fleet.set_behaviour(eid, DeviceBehaviour())


def refused_by_devices(identifier: str, uuid: str) -> bytes:
    """A profile the store takes but a device refuses (a payload without a PayloadType)."""
    import plistlib

    return plistlib.dumps(
        {
            "PayloadContent": [{"PayloadIdentifier": f"{identifier}.p", "PayloadUUID": uuid}],
            "PayloadDisplayName": identifier,
            "PayloadIdentifier": identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": uuid[::-1],
            "PayloadVersion": 1,
        }
    )


async def test_a_refused_second_profile_rolls_the_first_back(e2e: E2E) -> None:
    await put_profile(
        e2e, "rb-good", mobileconfig("com.example.rb.good", "66666666-AAAA-4AAA-8AAA-666666666666")
    )
    await put_profile(
        e2e,
        "rb-bad",
        refused_by_devices("com.example.rb.bad", "77777777-BBBB-4BBB-8BBB-777777777777"),
    )
    (eid,) = await e2e.enroll(1)
    started = (
        await e2e.api.post(
            f"/v1/workflow/{PROFILE}/start",
            params={"id": eid, "context": "rb-good,rb-bad", "rollback": "true"},
        )
    ).json()
    e2e.note_started(PROFILE, started, [eid])
    result = await e2e.result(PROFILE, eid)
    assert result["status"] == "failed", result
    profiles = e2e.fleet.device_state(eid)["profiles"]
    assert "com.example.rb.good" not in profiles and "com.example.rb.bad" not in profiles
    state = await e2e.state(PROFILE, eid)
    undo = [s for s in state["steps"] if s["name"].startswith("undo")]
    assert [s["name"] for s in undo] == ["undo install rb-good"]
    assert undo[0]["status"] == "completed"


async def test_an_automatic_retry_asked_at_start_mends_a_passing_error(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(errors={"DeviceLock": REFUSE}))
    started = (
        await e2e.api.post(
            f"/v1/workflow/{LOCK}/start",
            params={"id": eid, "retries": "1", "retry_backoff_seconds": "2"},
        )
    ).json()
    e2e.note_started(LOCK, started, [eid])
    deadline = asyncio.get_running_loop().time() + 30
    while "retry 1 of 1" not in ((await e2e.state(LOCK, eid)).get("control") or ""):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour())  # the device's trouble passes
    assert (await e2e.result(LOCK, eid))["status"] == "completed"
    bad = await e2e.api.post(f"/v1/workflow/{LOCK}/start", params={"id": eid, "retries": "99"})
    assert bad.status_code == 400 and "retries" in bad.json()["error"]
