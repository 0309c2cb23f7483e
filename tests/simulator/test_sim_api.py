"""NanoMDM and MicroMDM HTTP API: response shapes, status codes, errors, auth."""

from __future__ import annotations

import base64
import plistlib
import re

import httpx
from sim_support import Sim, SimFactory

UUID_RE = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$")


async def test_enqueue_pushes_and_answers_nanomdm_shape(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    resp = await sim.enqueue(dev, "ProfileList", "CMD-1")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"status", "command_uuid", "request_type"}
    assert body["command_uuid"] == "CMD-1"
    assert body["request_type"] == "ProfileList"
    assert set(body["status"]) == {dev}
    assert UUID_RE.match(body["status"][dev]["push_result"])
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None), ("Acknowledged", "CMD-1")]
    assert sim.fleet.stats["commands_answered"] == 1


async def test_nopush_queues_without_connecting(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    resp = await sim.enqueue(dev, "ProfileList", "CMD-NP", nopush=True)
    assert resp.status_code == 200
    assert resp.json() == {"no_push": True, "command_uuid": "CMD-NP", "request_type": "ProfileList"}
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == []
    assert [q["command_uuid"] for q in sim.fleet.device_state(dev)["queue"]] == ["CMD-NP"]
    push = await sim.client.get(f"/v1/push/{dev}")
    assert push.status_code == 200
    assert UUID_RE.match(push.json()["status"][dev]["push_result"])
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None), ("Acknowledged", "CMD-NP")]


async def test_multi_id_partial_push_failure_is_207(sim: Sim) -> None:
    a, b = await sim.fleet.enroll(2)
    await sim.fleet.checkout(b)
    resp = await sim.enqueue([a, b], "ProfileList", "CMD-207")
    assert resp.status_code == 207
    status = resp.json()["status"]
    assert "push_result" in status[a] and "push_error" not in status[a]
    assert "push_error" in status[b] and "push_result" not in status[b]
    assert "command_error" not in resp.json()
    # queued for both (like NanoMDM: the enrollment row still exists), delivered to a only
    assert [q["command_uuid"] for q in sim.fleet.device_state(b)["queue"]] == ["CMD-207"]
    await sim.fleet.wait_idle(5)
    assert sim.connects(a)[-1] == ("Acknowledged", "CMD-207")
    assert sim.connects(b) == []


async def test_all_pushes_failing_is_500_but_queued(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    await sim.fleet.checkout(dev)
    resp = await sim.enqueue(dev, "ProfileList", "CMD-500")
    assert resp.status_code == 500
    body = resp.json()
    assert "command_error" not in body
    assert body["push_error"]
    assert "push_error" in body["status"][dev]
    assert sim.fleet.device_state(dev)["queue"][0]["command_uuid"] == "CMD-500"


async def test_duplicate_command_uuid_rejected_mysql_style(sim: Sim) -> None:
    a, b = await sim.fleet.enroll(2)
    assert (await sim.enqueue(a, "ProfileList", "DUP-1", nopush=True)).status_code == 200
    again = await sim.enqueue(a, "ProfileList", "DUP-1", nopush=True)
    assert again.status_code == 500
    body = again.json()
    assert body["command_error"] == (
        "storing command: Error 1062 (23000): Duplicate entry 'DUP-1' for key 'commands.PRIMARY'"
    )
    assert body["command_uuid"] == "DUP-1"
    assert "status" not in body
    assert len(sim.fleet.device_state(a)["queue"]) == 1
    # The commands table is global: the same UUID for another device fails too.
    other = await sim.enqueue(b, "ProfileList", "DUP-1")
    assert other.status_code == 500 and "Duplicate entry" in other.json()["command_error"]
    assert sim.fleet.device_state(b)["queue"] == []
    # ...and so does re-sending an already answered command.
    await sim.client.get(f"/v1/push/{a}")
    await sim.fleet.wait_idle(5)
    assert sim.connects(a)[-1] == ("Acknowledged", "DUP-1")
    late = await sim.enqueue(a, "ProfileList", "DUP-1")
    assert late.status_code == 500 and "Error 1062" in late.json()["command_error"]


async def test_unknown_enrollment_is_foreign_key_error_and_nothing_queued(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    resp = await sim.enqueue([dev, "NO-SUCH-DEVICE"], "ProfileList", "FK-1")
    assert resp.status_code == 500
    assert "a foreign key constraint fails" in resp.json()["command_error"]
    assert "Error 1452 (23000)" in resp.json()["command_error"]
    assert sim.fleet.device_state(dev)["queue"] == []
    # the UUID was not stored, so it can be used afterwards
    assert (await sim.enqueue(dev, "ProfileList", "FK-1", nopush=True)).status_code == 200


async def test_bad_command_plist_is_400(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    for body in (
        b"not a plist",
        plistlib.dumps({"Command": {"RequestType": "ProfileList"}}),  # no CommandUUID
        plistlib.dumps({"Command": {}, "CommandUUID": "X"}),  # no RequestType
        plistlib.dumps(["a list"]),
    ):
        resp = await sim.client.put(f"/v1/enqueue/{dev}", content=body)
        assert resp.status_code == 400, body
    assert sim.fleet.stats["commands_enqueued"] == 0


async def test_auth_required(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    body = plistlib.dumps({"Command": {"RequestType": "ProfileList"}, "CommandUUID": "A-1"})
    async with httpx.AsyncClient(base_url=sim.url) as anon:
        for auth in (None, ("nanomdm", "wrong"), ("micromdm", "nanomdm")):
            r = await anon.put(f"/v1/enqueue/{dev}", content=body, auth=auth)
            assert r.status_code == 401, auth
            assert r.headers["www-authenticate"].startswith("Basic")
        assert (await anon.get(f"/v1/push/{dev}")).status_code == 401
        assert (await anon.get("/sim/devices")).status_code == 401
    assert sim.fleet.stats["commands_enqueued"] == 0


async def test_custom_api_key(make_sim: SimFactory) -> None:
    sim = await make_sim(api_key="s3cret")
    (dev,) = await sim.fleet.enroll(1)
    assert (await sim.enqueue(dev, "ProfileList")).status_code == 200
    r = await sim.client.get(f"/v1/push/{dev}", auth=("nanomdm", "nanomdm"))
    assert r.status_code == 401


async def test_push_endpoint_get_post_and_unknown(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    ok = await sim.client.post(f"/v1/push/{dev}")
    assert ok.status_code == 200 and set(ok.json()["status"][dev]) == {"push_result"}
    mixed = await sim.client.get(f"/v1/push/{dev},UNKNOWN")
    assert mixed.status_code == 207
    assert "push_error" in mixed.json()["status"]["UNKNOWN"]
    bad = await sim.client.get("/v1/push/UNKNOWN")
    assert bad.status_code == 500
    await sim.fleet.wait_idle(5)
    # two pushes before the device connected coalesce (as APNs does): one Idle report
    assert sim.connects(dev) == [("Idle", None)]
    await sim.client.get(f"/v1/push/{dev}")
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None), ("Idle", None)]


async def test_micromdm_endpoints(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    user = await sim.fleet.enroll_user_channel(dev, "USER-GUID-1")
    mm = ("micromdm", "nanomdm")
    body = plistlib.dumps({"Command": {"RequestType": "ProfileList"}, "CommandUUID": "MM-1"})
    r = await sim.client.post(f"/v1/commands/{dev}", content=body, auth=mm)
    assert r.status_code == 201
    assert r.json() == {
        "payload": {
            "udid": dev,
            "command_uuid": "MM-1",
            "command": {"request_type": "ProfileList"},
            "payload": base64.b64encode(body).decode(),
        }
    }
    # the user channel is addressed by bare UserID; PUT works like POST
    body2 = plistlib.dumps({"Command": {"RequestType": "ProfileList"}, "CommandUUID": "MM-2"})
    r2 = await sim.client.put("/v1/commands/USER-GUID-1", content=body2, auth=mm)
    assert r2.status_code == 201 and r2.json()["payload"]["udid"] == "USER-GUID-1"
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [] and sim.connects(user) == []  # queued, not pushed
    p = await sim.client.post(f"/v1/push/{dev}", auth=mm)
    assert p.status_code == 200 and p.json()["status"] == "success"
    assert UUID_RE.match(p.json()["push_notification_id"])
    p2 = await sim.client.get("/push/USER-GUID-1", auth=mm)
    assert p2.status_code == 200 and p2.json()["status"] == "success"
    assert (await sim.client.get(f"/push/{dev}", auth=mm)).status_code == 200
    await sim.fleet.wait_idle(5)
    assert ("Acknowledged", "MM-1") in sim.connects(dev)
    assert ("Acknowledged", "MM-2") in sim.connects(user)
    assert (await sim.client.post(f"/v1/commands/{dev}", content=body)).status_code == 401
    assert (await sim.client.get(f"/push/{dev}")).status_code == 401
    assert (await sim.client.post("/v1/devices")).status_code == 401
    bad = await sim.client.post(f"/v1/commands/{dev}", content=b"junk", auth=mm)
    assert bad.status_code == 500
    assert bad.json()["error"].startswith("parse payload as plist: ")
    missing = await sim.client.post("/v1/commands/NOPE", content=body, auth=mm)
    assert missing.status_code == 201  # MicroMDM queues for any UDID
