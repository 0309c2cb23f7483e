"""MicroMDM for real, against the simulator's faithful MicroMDM mode.

MicroMDM queues a CommandUUID again every time it is posted, answers 201 for any UDID,
does not push on a raw command and cannot sign its webhooks. These tests show that a
send never queues a command twice (even when the push hangs up), that an unknown or
checked-out device fails a run at once, that MicroMDM's errors keep their text, and that
its webhooks (captured from MicroMDM 1.13) parse, route and authenticate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from activities.mdm_server import (
    MicroMdmClient,
    PermanentMdmError,
    TransientMdmError,
    UncertainMdmError,
)
from bench.servers import RestartableServer
from protocol import plist
from protocol.enrollment import SHARED_IPAD_USER_ID as SHARED
from protocol.webhooks import parse_webhook
from simulator.app import create_app as create_sim_app
from simulator.fleet import Fleet, micromdm_config
from tests.e2e_stack import E2E, INVENTORY, WEBHOOK_SECRET, WEBHOOK_USER

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "mm-key"
BODY = plist.dumps({"CommandUUID": "mf.inv.-.0001", "Command": {"RequestType": "ProfileList"}})


@pytest.fixture
async def mm() -> AsyncIterator[tuple[Fleet, MicroMdmClient, list[str]]]:
    """A faithful simulated MicroMDM and a client recording the paths it requests."""
    fleet = Fleet(micromdm_config(api_key=KEY, connect_latency=0.01))
    await fleet.start()
    paths: list[str] = []
    async with RestartableServer(create_sim_app(fleet)) as server:
        client = MicroMdmClient(server.url, KEY)

        async def record(request: httpx.Request) -> None:
            paths.append(request.url.path)

        client._http.event_hooks["request"].append(record)
        yield fleet, client, paths
        await client.aclose()
    await fleet.stop()


def command(uuid: str, request_type: str = "ProfileList") -> bytes:
    return plist.dumps({"CommandUUID": uuid, "Command": {"RequestType": request_type}})


async def test_micromdm_queues_every_copy_of_a_command_uuid(
    mm: tuple[Fleet, MicroMdmClient, list[str]],
) -> None:
    """Why a send must never post twice: the server itself does not refuse a duplicate."""
    fleet, client, _ = mm
    (dev,) = await fleet.enroll(1)
    for _ in range(2):
        outcome = await client.enqueue([dev], "DUP-1", command("DUP-1"), push=False)
        assert outcome.queued == [dev]
    assert fleet.command_copies("DUP-1") == 2
    await client.push([dev])
    await fleet.wait_idle(5)
    assert fleet.command_answers("DUP-1") == 2  # the device ran it twice


async def test_client_addresses_a_user_channel_by_user_id_and_pushes_separately(
    mm: tuple[Fleet, MicroMdmClient, list[str]],
) -> None:
    fleet, client, paths = mm
    (dev,) = await fleet.enroll(1)
    user = await fleet.enroll_user_channel(dev, "USER-GUID-7")
    await client.check_enrolled([dev, user])
    outcome = await client.enqueue([dev, user], "MM-2", command("MM-2"), push=True)
    assert outcome.queued == [dev, user] and outcome.push_error is None
    assert paths == [
        "/v1/devices",
        f"/v1/commands/{dev}",
        "/v1/commands/USER-GUID-7",
        f"/v1/push/{dev}",
        "/v1/push/USER-GUID-7",
    ]
    await fleet.wait_idle(5)
    assert fleet.command_answers("MM-2") == 2


async def test_unknown_and_checked_out_devices_are_refused(
    mm: tuple[Fleet, MicroMdmClient, list[str]],
) -> None:
    fleet, client, _ = mm
    gone, kept = await fleet.enroll(2)
    await fleet.checkout(gone)
    # MicroMDM itself takes a command for anything
    assert (await client.enqueue(["MADE-UP-UDID"], "X", command("X"), push=False)).queued
    with pytest.raises(PermanentMdmError, match="does not know device 'MADE-UP-UDID'"):
        await client.check_enrolled(["MADE-UP-UDID"])
    with pytest.raises(PermanentMdmError, match="checked out"):
        await client.check_enrolled([gone])
    await client.check_enrolled([kept, f"{kept}:SOME-USER"])


async def test_server_errors_keep_micromdm_text(
    mm: tuple[Fleet, MicroMdmClient, list[str]],
) -> None:
    fleet, client, _ = mm
    (dev,) = await fleet.enroll(1)
    with pytest.raises(PermanentMdmError, match="parse payload as plist"):
        await client.enqueue([dev], "BAD", b"not a plist", push=False)
    no_type = plist.dumps({"CommandUUID": "NT", "Command": {}})
    with pytest.raises(PermanentMdmError, match="request is malformed"):
        await client.enqueue([dev], "NT", no_type, push=False)
    fleet.set_faults(push_fault="invalid_token")
    assert await client.push([dev]) == f"{dev}: invalid push token"
    fleet.set_faults(push_fault="drop")
    error = await client.push([dev])  # the connection is dropped: text, not an exception
    assert error is not None and "dropped" in error
    wrong_key = MicroMdmClient(str(client._http.base_url), "wrong")
    with pytest.raises(PermanentMdmError, match="401"):
        await wrong_key.enqueue([dev], "K", command("K"), push=False)
    await wrong_key.aclose()


async def test_connection_failures_are_transient_or_uncertain() -> None:
    down = MicroMdmClient("http://127.0.0.1:1", KEY, timeout=2)
    with pytest.raises(TransientMdmError, match="unreachable") as refused:
        await down.enqueue(["D"], "U", BODY, push=False)
    assert not isinstance(refused.value, UncertainMdmError)  # nothing reached it
    await down.aclose()

    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    slow = MicroMdmClient("http://micromdm.test", KEY)
    slow._http._transport = httpx.MockTransport(lost)
    with pytest.raises(UncertainMdmError, match="may be queued"):
        await slow.enqueue(["D"], "U", BODY, push=False)
    await slow.aclose()


async def test_user_channels_are_addressed_as_micromdm_keys_them() -> None:
    """The address recorded from each kind of check-in is what MicroMDM queues under."""
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"UDID": "DEV-1"}, "DEV-1", "DEV-1"),
        ({"UDID": "DEV-1", "UserID": "U-1", "UserShortName": "ann"}, "DEV-1:U-1", "U-1"),
        ({"UDID": "IPAD-1", "UserID": SHARED, "UserShortName": "bo"}, "IPAD-1:bo", SHARED),
        ({"EnrollmentID": "BYOD-1"}, "BYOD-1", "BYOD-1"),
        ({"EnrollmentID": "BYOD-1", "EnrollmentUserID": "EU-1"}, "BYOD-1:EU-1", "BYOD-1"),
    ]
    addresses: dict[str, str] = {}
    for payload, eid, address in cases:
        raw = plist.dumps({"MessageType": "TokenUpdate", "Token": b"t", **payload})
        event = parse_webhook(micromdm_checkin(raw))
        assert event.enrollment.id == eid
        assert event.enrollment.mdm_address == address
        addresses[eid] = address

    async def book(enrollment_id: str) -> str | None:
        return addresses.get(enrollment_id)

    fleet = Fleet(micromdm_config(api_key=KEY))
    await fleet.start()
    paths: list[str] = []
    async with RestartableServer(create_sim_app(fleet)) as server:
        client = MicroMdmClient(server.url, KEY, addresses=book)

        async def record(request: httpx.Request) -> None:
            paths.append(request.url.path)

        client._http.event_hooks["request"].append(record)
        for eid in addresses:
            await client.enqueue([eid], "A", command("A"), push=False)
        await client.aclose()
    await fleet.stop()
    assert paths == [f"/v1/commands/{a}" for a in addresses.values()]


def micromdm_checkin(raw: bytes) -> bytes:
    return json.dumps(
        {
            "topic": "mdm.TokenUpdate",
            "event_id": "e",
            "created_at": "2026-11-29T06:30:59Z",
            "checkin_event": {
                "udid": "",
                "url_params": None,
                "raw_payload": base64.b64encode(raw).decode(),
            },
        },
        indent=2,
    ).encode()


# ---- the whole stack on a simulated MicroMDM -------------------------------------------


async def run_state(e2e: E2E, workflow: str, eid: str) -> dict[str, Any]:
    return await e2e.state(workflow, eid)


async def test_a_send_whose_push_drops_queues_each_command_once_and_completes(
    e2e_micromdm: E2E,
) -> None:
    await dropped_push_run(e2e_micromdm)


async def test_the_same_on_nanomdm(e2e: E2E) -> None:
    await dropped_push_run(e2e)


async def dropped_push_run(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_faults(push_fault="drop")
    try:
        await e2e.start(INVENTORY, eid)
        step: dict[str, Any] = {}
        for _ in range(300):
            state = await run_state(e2e, INVENTORY, eid)
            steps = state.get("steps") or []
            if steps and steps[0]["status"] == "pending":
                step = steps[0]
                break
            await asyncio.sleep(0.05)
        assert step, "the step never left 'sending'"
        assert "push failed" in (step["push_error"] or "")
        uuids = [c["command_uuid"] for c in step["commands"]]
        assert [e2e.fleet.command_copies(u) for u in uuids] == [1, 1]
    finally:
        e2e.fleet.set_faults(push_fault="none")
    await e2e.fleet.connect(eid)  # the device checks in by itself
    assert (await e2e.result(INVENTORY, eid))["status"] == "completed"
    assert [e2e.fleet.command_answers(u) for u in uuids] == [1, 1]


async def test_a_start_for_an_unknown_micromdm_device_fails_within_seconds(
    e2e_micromdm: E2E,
) -> None:
    began = time.monotonic()
    started = await e2e_micromdm.start(INVENTORY, "NOT-A-REAL-UDID")
    assert started["started"] == ["NOT-A-REAL-UDID"]
    handle = e2e_micromdm.client.get_workflow_handle(
        await e2e_micromdm.run_of(INVENTORY, "NOT-A-REAL-UDID")
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 30)
    assert time.monotonic() - began < 10
    assert "does not know device 'NOT-A-REAL-UDID'" in str(failure.value.cause)


async def test_captured_micromdm_webhooks_parse_route_and_authenticate(
    e2e_micromdm: E2E,
) -> None:
    lines = (FIXTURES / "micromdm_webhooks.jsonl").read_bytes().splitlines()
    events = [parse_webhook(line) for line in lines]
    assert [e.topic for e in events] == [
        "mdm.Authenticate",
        "mdm.TokenUpdate",
        "mdm.Connect",
        "mdm.Connect",
        "mdm.Connect",
        "mdm.Connect",
        "mdm.CheckOut",
    ]
    assert all(e.enrollment.id == e.udid and e.enrollment.type == "Device" for e in events)
    statuses = [e.report.status for e in events if e.report is not None]
    assert statuses == ["Idle", "Acknowledged", "NotNow", "Error"]
    assert all(not e.has_ids for e in events)
    creds = (WEBHOOK_USER, WEBHOOK_SECRET)
    for line in lines:
        ok = await e2e_micromdm.api.post("/webhook", content=line, auth=creds)
        assert ok.status_code == 200, ok.text
    refused = await e2e_micromdm.api.post("/webhook", content=lines[0], auth=None)
    # the API client's own Basic credentials are not the webhook's
    assert refused.status_code == 401
    wrong = await e2e_micromdm.api.post("/webhook", content=lines[0], auth=(WEBHOOK_USER, "x"))
    assert wrong.status_code == 401


async def test_a_lock_on_micromdm_with_the_push_hanging_up_locks_once(
    e2e_micromdm: E2E,
) -> None:
    """DeviceLock is destructive: exactly one copy queued, and the PIN the device got is
    the one escrowed, although every push drops the connection."""
    e2e = e2e_micromdm
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_faults(push_fault="drop")
    try:
        await e2e.start("io.micromdm.wf.lock.v1", eid)
        state: dict[str, Any] = {}
        for _ in range(300):
            state = await run_state(e2e, "io.micromdm.wf.lock.v1", eid)
            if (state.get("steps") or [{}])[0].get("status") == "pending":
                break
            await asyncio.sleep(0.05)
        (step,) = state["steps"]
        assert "push failed" in (step["push_error"] or "")
    finally:
        e2e.fleet.set_faults(push_fault="none")
    await e2e.fleet.connect(eid)
    assert (await e2e.result("io.micromdm.wf.lock.v1", eid))["status"] == "completed"
    (command,) = step["commands"]
    assert e2e.fleet.command_copies(command["command_uuid"]) == 1
    assert e2e.fleet.device_state(eid)["counters"]["answered"] == 1


async def test_a_user_channel_on_micromdm_is_reached_by_its_user_id(e2e_micromdm: E2E) -> None:
    e2e = e2e_micromdm
    (dev,) = await e2e.enroll(1)
    user = await e2e.fleet.enroll_user_channel(dev, "USER-GUID-42")
    await e2e.fleet.wait_idle()
    assert user == f"{dev}:USER-GUID-42"
    assert await e2e.services.register.mdm_address(user) == "USER-GUID-42"
    await e2e.start("io.micromdm.wf.devinfolog.v1", user)
    assert (await e2e.result("io.micromdm.wf.devinfolog.v1", user))["status"] == "completed"
    assert e2e.fleet.device_state(user)["counters"]["answered"] == 1
