"""Enrollment events, subscriptions, re-enrollment and check-out, AllCommandResponse and
schedules, end to end through the simulator's real webhooks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from protocol.commands import security_info
from relay.events import EventDispatcher
from simulator.fleet import DeviceBehaviour
from store.events import Subscription
from tests.e2e_stack import E2E, INVENTORY, ended

DEVINFOLOG = "io.micromdm.wf.devinfolog.v1"
CMDPLAN = "io.micromdm.wf.cmdplan.v1"  # its context names a command plan


async def runs_of(
    e2e: E2E, workflow: str, eid: str, expected: int, timeout: float = 20
) -> list[dict[str, Any]]:
    """Runs of ``workflow`` for ``eid`` once visibility shows ``expected`` of them."""
    runs: list[dict[str, Any]] = []
    for _ in range(int(timeout / 0.2)):
        runs = (await e2e.api.get("/v1/runs", params={"id": eid, "workflow": workflow})).json()
        if len(runs) >= expected:
            break
        await asyncio.sleep(0.2)
    return runs


async def wait_closed(e2e: E2E, runs: list[dict[str, Any]]) -> None:
    for run in runs:
        await ended(e2e.client.get_workflow_handle(run["workflow_id"]), 60)


async def put_event(e2e: E2E, name: str, **body: str) -> None:
    resp = await e2e.api.put(f"/v1/event/{name}", json=body)
    assert resp.status_code == 204, resp.text


async def test_event_api_validates_and_round_trips(e2e: E2E) -> None:
    bad = [
        ({"event": "Reboot", "workflow": INVENTORY}, "unknown event"),
        ({"event": "Enrollment", "workflow": "io.example.nope"}, "unknown workflow"),
        ({"event": "IdleNotStartedSince", "workflow": INVENTORY}, "seconds"),
        ({"workflow": INVENTORY}, "event"),
    ]
    for body, reason in bad:
        resp = await e2e.api.put("/v1/event/x", json=body)
        assert resp.status_code == 400 and reason in resp.json()["error"], resp.text
    assert (await e2e.api.get("/v1/event/missing")).status_code == 404
    await put_event(e2e, "nightly-check", event="Authenticate", workflow=CMDPLAN, context="c")
    got = (await e2e.api.get("/v1/event/nightly-check")).json()
    assert got["event"] == "Authenticate" and got["context"] == "c" and got["starts"] == 0
    assert "nightly-check" in (await e2e.api.get("/v1/events")).json()
    assert (await e2e.api.delete("/v1/event/nightly-check")).status_code == 204
    assert (await e2e.api.delete("/v1/event/nightly-check")).status_code == 404


async def test_enrollment_starts_the_subscribed_workflow_once_per_device(e2e: E2E) -> None:
    await put_event(e2e, "setup", event="Enrollment", workflow=INVENTORY)
    e2e.fleet.set_faults(duplicate_rate=1.0, seed=5)  # every check-in arrives twice
    try:
        ids = await e2e.enroll(3)
        for eid in ids:
            runs = await runs_of(e2e, INVENTORY, eid, 1)
            await wait_closed(e2e, runs)
        await e2e.fleet.wait_idle()
        await asyncio.sleep(1.0)  # give any wrongly started second run time to show
        for eid in ids:
            runs = await runs_of(e2e, INVENTORY, eid, 1)
            assert [r["status"] for r in runs] == ["completed"], runs
            inventory = (await e2e.api.get("/v1/inventory", params={"id": eid})).json()
            assert inventory[eid]["serial_number"] == e2e.fleet.device_state(eid)["serial_number"]
        assert (await e2e.api.get("/v1/event/setup")).json()["starts"] == 3
    finally:
        e2e.fleet.set_faults(duplicate_rate=0.0, seed=5)
        await e2e.api.delete("/v1/event/setup")


async def test_reenrollment_mid_step_resends_and_completes_within_seconds(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    await e2e.start(INVENTORY, eid)
    for _ in range(100):
        if len(e2e.fleet.device_state(eid)["queue"]) == 2:
            break
        await asyncio.sleep(0.05)
    await e2e.fleet.reenroll(eid)  # NanoMDM clears the queue on Authenticate
    assert e2e.fleet.device_state(eid)["queue"] == []
    for _ in range(100):  # the run re-sends what was lost
        if len(e2e.fleet.device_state(eid)["queue"]) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(e2e.fleet.device_state(eid)["queue"]) == 2
    e2e.fleet.update_behaviour(eid, offline=False)
    result = await e2e.result(INVENTORY, eid, timeout=20)
    assert result["status"] == "completed"
    step = (await e2e.state(INVENTORY, eid))["steps"][0]
    assert all(len(c["reissued_as"]) == 1 for c in step["commands"])


async def test_checkout_ends_the_pending_step_with_a_clear_outcome(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    await e2e.start(DEVINFOLOG, eid)
    for _ in range(100):
        if e2e.fleet.device_state(eid)["queue"]:
            break
        await asyncio.sleep(0.05)
    started = datetime.now()
    await e2e.fleet.checkout(eid)
    result = await e2e.result(DEVINFOLOG, eid, timeout=20)
    assert result["status"] == "failed"
    assert "checked out" in result["message"]
    assert (datetime.now() - started).total_seconds() < 10


async def test_idle_not_started_since_starts_once(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    await put_event(
        e2e, "stale", event="IdleNotStartedSince", workflow=DEVINFOLOG, event_context="3600"
    )
    try:
        await e2e.fleet.connect(eid)  # Idle check-in: never run yet -> start
        await e2e.fleet.wait_idle()
        runs = await runs_of(e2e, DEVINFOLOG, eid, 1)
        await wait_closed(e2e, runs)
        await e2e.fleet.connect(eid)  # Idle again: ran within the hour -> nothing
        await e2e.fleet.wait_idle()
        await asyncio.sleep(1.0)
        runs = await runs_of(e2e, DEVINFOLOG, eid, 1)
        assert len(runs) == 1
    finally:
        await e2e.api.delete("/v1/event/stale")


async def test_a_failing_subscription_is_visible_and_does_not_block_others(e2e: E2E) -> None:
    """A subscription to a workflow this version no longer has fails; the other starts."""
    services = e2e.services
    await services.subscriptions.put(Subscription("gone", "Authenticate", "io.example.removed.v1"))
    await put_event(e2e, "kept", event="Authenticate", workflow=DEVINFOLOG)
    try:
        (eid,) = await e2e.enroll(1)
        runs = await runs_of(e2e, DEVINFOLOG, eid, 1)
        assert len(runs) == 1
        gone = (await e2e.api.get("/v1/event/gone")).json()
        assert "unknown workflow" in gone["last_error"] and eid in gone["last_error"]
        await wait_closed(e2e, runs)
    finally:
        await e2e.api.delete("/v1/event/gone")
        await e2e.api.delete("/v1/event/kept")
    assert isinstance(EventDispatcher, type)


async def test_all_command_response_updates_inventory_from_foreign_security_info(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    foreign_uuid = str(uuid.uuid4())  # a command somebody else sent
    resp = await e2e.sim.put(f"/v1/enqueue/{eid}", content=security_info().to_plist(foreign_uuid))
    assert resp.status_code == 200, resp.text
    for _ in range(100):
        inventory = (await e2e.api.get("/v1/inventory", params={"id": eid})).json()
        if eid in inventory:
            break
        await asyncio.sleep(0.1)
    assert inventory[eid]["fde_enabled"] is False
    assert inventory[eid]["last_source"] == "SecurityInfo"
    assert "serial_number" not in inventory[eid]  # nothing but what SecurityInfo says


async def test_schedule_fires_on_time_and_can_be_paused_and_deleted(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    body = {"workflow": DEVINFOLOG, "ids": [eid], "every_seconds": 2}
    assert (await e2e.api.put("/v1/schedule/every2s", json=body)).status_code == 204
    try:
        runs = await runs_of(e2e, DEVINFOLOG, eid, 1, timeout=15)
        assert runs, "the schedule did not start the workflow"
        desc = (await e2e.api.get("/v1/schedule/every2s")).json()
        assert desc["every_seconds"] == [2] and desc["request"]["ids"] == [eid]
        assert desc["recent_runs"]
        for run in desc["recent_runs"]:
            late = datetime.fromisoformat(run["started"]) - datetime.fromisoformat(run["scheduled"])
            assert late.total_seconds() < 2, run
        assert "every2s" in (await e2e.api.get("/v1/schedules")).json()
        assert (await e2e.api.post("/v1/schedule/every2s/pause")).status_code == 204
        assert (await e2e.api.get("/v1/schedule/every2s")).json()["paused"] is True
        bad = await e2e.api.put("/v1/schedule/x", json={"workflow": DEVINFOLOG})
        assert bad.status_code == 400 and "every_seconds" in bad.json()["error"]
        for body, says in [
            ({"cron": "not a cron"}, "Temporal refused the request"),
            ({"cron": " "}, "cron is empty"),
            ({"every_seconds": 60, "ids": [""]}, "invalid enrollment ID"),
        ]:
            bad = await e2e.api.put("/v1/schedule/x", json={"workflow": DEVINFOLOG, **body})
            assert bad.status_code == 400 and says in bad.json()["error"], bad.text
        assert (await e2e.api.get("/v1/schedule/x")).status_code == 404  # nothing was made
    finally:
        assert (await e2e.api.delete("/v1/schedule/every2s")).status_code == 204
    assert (await e2e.api.get("/v1/schedule/every2s")).status_code == 404
