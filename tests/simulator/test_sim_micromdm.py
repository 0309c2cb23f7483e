"""MicroMDM 1.13's face: raw commands, pushes and their faults, device list, webhooks."""

from __future__ import annotations

import asyncio
import json
import plistlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sim_support import MM_AUTH, Sim, SimFactory

from protocol.webhooks import parse_webhook
from simulator import gojson
from simulator.cli import build_parser
from simulator.fleet import FleetConfig, micromdm_config

CAPTURE = Path(__file__).with_name("micromdm_webhooks.jsonl")
GO_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def go_encoded(resp: httpx.Response) -> bool:
    """Written like Go's json.Encoder with SetIndent("", "  "): indented, newline-ended."""
    return resp.text == json.dumps(resp.json(), indent=2) + "\n"


async def test_any_udid_is_accepted_and_orphaned(sim: Sim) -> None:
    (dev, gone) = await sim.fleet.enroll(2)
    await sim.fleet.enroll_user_channel(dev, "U-1")
    await sim.fleet.checkout(gone)
    for target in ("MADE-UP-UDID", gone, f"{dev}:U-1"):  # MicroMDM has no UDID:UserID queue
        r = await sim.mm_command(target, "ProfileList", f"ORPHAN-{target}")
        assert r.status_code == 201, target
        assert r.json()["payload"]["udid"] == target
    stats = sim.fleet.stats
    assert stats["commands_orphaned"] == 3 and stats["commands_enqueued"] == 3
    assert sim.fleet.command_copies("ORPHAN-MADE-UP-UDID") == 1
    assert (await sim.mm_push(dev)).status_code == 200
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None)]
    assert sim.fleet.stats["commands_answered"] == 0


async def test_bad_plist_is_500_with_the_parse_error(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    good = {"Command": {"RequestType": "ProfileList"}, "CommandUUID": "P-1"}
    for body in (
        b"not a plist",
        plistlib.dumps(good, fmt=plistlib.FMT_BINARY),  # MicroMDM decodes XML only
        plistlib.dumps(["a list"]),
        plistlib.dumps({**good, "CommandUUID": 7}),
    ):
        r = await sim.client.post(f"/v1/commands/{dev}", content=body, auth=MM_AUTH)
        assert r.status_code == 500, body
        assert set(r.json()) == {"error"}
        assert r.json()["error"].startswith("parse payload as plist: "), r.json()
        assert go_encoded(r)
    assert sim.fleet.stats["commands_enqueued"] == 0


async def test_malformed_command_is_500_request_is_malformed(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    for doc in (
        {"Command": {"RequestType": "ProfileList"}},  # no CommandUUID
        {"Command": {}, "CommandUUID": "M-1"},  # no RequestType
        {"CommandUUID": "M-2"},  # no Command
        {"Command": {"RequestType": ""}, "CommandUUID": "M-3"},
    ):
        r = await sim.client.post(f"/v1/commands/{dev}", content=plistlib.dumps(doc), auth=MM_AUTH)
        assert r.status_code == 500, doc
        assert r.json() == {"error": "request is malformed"}
        assert r.text == '{\n  "error": "request is malformed"\n}\n'
    assert sim.fleet.stats["commands_enqueued"] == 0


async def test_duplicate_command_uuid_is_queued_and_answered_twice(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    for _ in range(2):
        assert (await sim.mm_command(dev, "ProfileList", "DUP-MM")).status_code == 201
    assert sim.fleet.stats["commands_enqueued"] == 2
    assert sim.fleet.command_copies("DUP-MM") == 2
    queue = sim.fleet.device_state(dev)["queue"]
    assert [q["command_uuid"] for q in queue] == ["DUP-MM", "DUP-MM"]
    assert (await sim.mm_push(dev)).status_code == 200
    await sim.fleet.wait_idle(5)
    ack = ("Acknowledged", "DUP-MM")
    assert sim.connects(dev) == [("Idle", None), ack, ack]  # each copy answered on its own
    assert len([e for e in sim.events(dev) if e.key == ("mdm.Connect", *ack)]) == 2
    counts = (await sim.client.get("/sim/commands/DUP-MM")).json()
    assert counts == {"command_uuid": "DUP-MM", "queued": 2, "answered": 2}
    # NanoMDM's own endpoint still refuses a repeated CommandUUID
    assert (await sim.enqueue(dev, "ProfileList", "DUP-NANO", nopush=True)).status_code == 200
    assert (await sim.enqueue(dev, "ProfileList", "DUP-NANO", nopush=True)).status_code == 500


async def test_command_post_does_not_push(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    assert (await sim.mm_command(dev, "ProfileList", "NP-1")).status_code == 201
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == []
    assert sim.fleet.stats["pushes"] == 0 and sim.fleet.stats["scheduled_connects"] == 0
    assert len(sim.fleet.device_state(dev)["queue"]) == 1
    assert (await sim.mm_push(dev)).status_code == 200
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None), ("Acknowledged", "NP-1")]


async def test_push_success_and_failure_bodies(sim: Sim) -> None:
    (dev, gone) = await sim.fleet.enroll(2)
    await sim.fleet.checkout(gone)
    ok = await sim.mm_push(dev)
    assert ok.status_code == 200 and go_encoded(ok)
    assert list(ok.json()) == ["status", "push_notification_id"]
    assert ok.json()["status"] == "success"
    legacy = await sim.client.get(f"/push/{dev}", auth=MM_AUTH)
    assert legacy.status_code == 200 and legacy.json()["status"] == "success"
    unknown = await sim.mm_push("NO-SUCH-UDID")
    assert unknown.status_code == 500 and go_encoded(unknown)
    assert unknown.json() == {
        "error": "retrieving PushInfo by UDID: not found: PushInfo udid NO-SUCH-UDID",
    }
    unregistered = await sim.mm_push(gone)
    assert unregistered.status_code == 500
    assert unregistered.json() == {
        "error": "device token is inactive for the specified topic",
    }
    assert (await sim.client.get(f"/v1/push/{dev}", auth=MM_AUTH)).status_code == 405
    assert (await sim.client.post(f"/push/{dev}", auth=MM_AUTH)).status_code == 405


async def test_invalid_token_fault(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    patched = await sim.client.patch("/sim/faults", json={"push_fault": "invalid_token"})
    assert patched.status_code == 200 and patched.json()["push_fault"] == "invalid_token"
    r = await sim.mm_push(dev)
    assert r.status_code == 500
    assert r.json() == {"error": "invalid push token"}
    assert r.text == '{\n  "error": "invalid push token"\n}\n'
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == []
    assert (await sim.client.get(f"/v1/push/{dev}")).status_code == 200  # NanoMDM unaffected


async def test_drop_fault_hangs_up_without_an_answer(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    await sim.mm_command(dev, "ProfileList", "DROP-1")
    patched = await sim.client.patch("/sim/faults", json={"push_fault": "drop"})
    assert patched.json()["push_fault"] == "drop"
    assert (await sim.client.get("/sim/stats")).json()["faults"]["push_fault"] == "drop"
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.mm_push(dev)
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.client.get(f"/push/{dev}", auth=MM_AUTH)
    # the push info lookup comes first: an unknown device still gets its error
    unknown = await sim.mm_push("NO-SUCH-UDID")
    assert unknown.status_code == 500 and "PushInfo" in unknown.json()["error"]
    assert (await sim.mm_command(dev, "ProfileList", "DROP-2")).status_code == 201
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == []
    assert sim.fleet.stats["pushes_dropped"] == 2
    # NanoMDM's push hangs up too, after queueing what an enqueue carried
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.client.get(f"/v1/push/{dev}")
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.enqueue(dev, "ProfileList", "DROP-3")
    assert sim.fleet.command_copies("DROP-3") == 1
    assert sim.fleet.stats["pushes_dropped"] == 4
    cleared = await sim.client.patch("/sim/faults", json={"push_fault": None})
    assert cleared.json()["push_fault"] is None and sim.fleet.push_fault is None
    assert (await sim.client.get(f"/v1/push/{dev}")).status_code == 200
    await sim.fleet.wait_idle(5)
    assert [c for _, c in sim.connects(dev)] == [None, "DROP-1", "DROP-2", "DROP-3"]
    assert (await sim.mm_push(dev)).status_code == 200


async def test_push_fault_validation_and_config(make_sim: SimFactory) -> None:
    sim = await make_sim(push_fault="drop")
    assert sim.fleet.push_fault == "drop"
    assert (await sim.client.patch("/sim/faults", json={"push_fault": "bogus"})).status_code == 400
    with pytest.raises(ValueError, match="push_fault"):
        sim.fleet.set_faults(push_fault="bogus")
    sim.fleet.set_faults(seed=2)  # other faults leave the push fault alone
    assert sim.fleet.push_fault == "drop"
    sim.fleet.set_faults(push_fault="none")
    assert sim.fleet.push_fault is None


async def test_device_list(sim: Sim) -> None:
    mac, gone = await sim.fleet.enroll(2, "mac")
    (phone,) = await sim.fleet.enroll(1, "iphone")
    await sim.fleet.enroll_user_channel(mac, "U-1")
    await sim.fleet.checkout(gone)
    r = await sim.client.post("/v1/devices", json={}, auth=MM_AUTH)
    assert r.status_code == 200 and go_encoded(r)
    devices = {d["udid"]: d for d in r.json()["devices"]}
    assert set(devices) == {mac, gone, phone}  # devices only, no user channels
    m = devices[mac]
    assert list(m) == [
        "uuid",
        "udid",
        "serial_number",
        "os_version",
        "build_version",
        "product_name",
        "push_magic",
        "token",
        "enrolled",
        "device_name",
        "dep_profile_assign_time",
        "dep_profile_push_time",
        "dep_profile_assigned_date",
        "last_seen",
    ]
    state = sim.fleet.device_state(mac)
    assert m["enrolled"] is True and m["serial_number"] == state["serial_number"]
    assert m["os_version"] == state["os_version"] and m["product_name"] == state["product_name"]
    assert GO_UUID_RE.match(m["uuid"]) and RFC3339_RE.match(m["last_seen"])
    assert m["dep_profile_assign_time"] == "0001-01-01T00:00:00Z"
    assert "enrolled" not in devices[gone]  # Go's omitempty drops false
    assert devices[phone]["model"] and devices[phone]["model_name"]
    one = await sim.client.post("/v1/devices", json={"filter_udid": [phone]}, auth=MM_AUTH)
    assert [d["udid"] for d in one.json()["devices"]] == [phone]
    by_serial = await sim.client.post(
        "/v1/devices", json={"filter_serial": [state["serial_number"]]}, auth=MM_AUTH
    )
    assert [d["udid"] for d in by_serial.json()["devices"]] == [mac]
    none = await sim.client.post("/v1/devices", json={"filter_udid": ["NOPE"]}, auth=MM_AUTH)
    assert none.json() == {"devices": None}  # a nil Go slice
    no_body = await sim.client.post("/v1/devices", auth=MM_AUTH)
    assert len(no_body.json()["devices"]) == 3
    paged = await sim.client.post("/v1/devices", json={"page": 1, "per_page": 1}, auth=MM_AUTH)
    assert len(paged.json()["devices"]) == 3  # MicroMDM's stores ignore paging
    bad = await sim.client.post("/v1/devices", content=b"{junk", auth=MM_AUTH)
    assert bad.status_code == 500 and go_encoded(bad) and bad.json()["error"]


async def test_responses_are_go_encoded(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    r = await sim.mm_command(dev, "ProfileList", "A&B<C>")
    assert r.status_code == 201 and r.text == gojson.encode(r.json()).decode()
    assert '"command_uuid": "A\\u0026B\\u003cC\\u003e"' in r.text  # Go escapes for HTML
    assert r.text.startswith('{\n  "payload": {\n    "udid": ')
    assert r.text.endswith("\n  }\n}\n")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    expected = '{\n  "a": [\n    "é",\n    "\\u003c"\n  ]\n}'
    assert gojson.marshal_indent({"a": ["é", "<"]}) == expected.encode()
    assert gojson.encode({}) == b"{}\n"


def capture_layouts() -> dict[tuple[str, str | None], tuple[Any, ...]]:
    out = {}
    for line in CAPTURE.read_text().splitlines():
        doc = json.loads(line)
        out[kind_of(doc)] = layout(doc)
    return out


def kind_of(doc: dict[str, Any]) -> tuple[str, str | None]:
    ev = doc.get("acknowledge_event") or doc["checkin_event"]
    return doc["topic"], ev.get("status")


def layout(doc: dict[str, Any]) -> tuple[Any, ...]:
    """Key order of the document and its event, and the type of each event value."""
    ev_key = next(k for k in doc if k.endswith("_event"))
    ev = doc[ev_key]
    return list(doc), list(ev), {k: type(v).__name__ for k, v in ev.items()}


async def test_webhooks_match_micromdm_capture(make_sim: SimFactory) -> None:
    sim = await make_sim(webhook_format="micromdm")
    (dev,) = await sim.fleet.enroll(1)
    sim.fleet.update_behaviour(
        dev, notnow_count=1, errors={"DeviceLock": (12021, "MCMDMErrorDomain", "nope")}
    )
    await sim.mm_command(dev, "ProfileList", "W-ACK")
    await sim.mm_command(dev, "DeviceLock", "W-ERR")
    await sim.mm_push(dev)
    await sim.fleet.wait_idle(5)
    await sim.fleet.checkout(dev)
    await sim.fleet.wait_idle(5)
    captured = capture_layouts()
    seen = set()
    for ev in sim.events():
        key = kind_of(ev.doc)
        assert layout(ev.doc) == captured[key], key
        seen.add(key)
        assert ev.body == json.dumps(ev.doc, indent=2).encode()  # MarshalIndent, no newline
        assert ev.headers["content-type"] == "application/json; charset=utf-8"
        assert GO_UUID_RE.match(ev.doc["event_id"])
        assert RFC3339_RE.match(ev.doc["created_at"])
        assert ev.event["udid"] == dev
        parse_webhook(ev.body)
    assert seen == set(captured)
    idle = next(e for e in sim.events() if e.status == "Idle")
    assert "command_uuid" not in idle.event and "url_params" not in idle.event
    checkin = sim.events(topic="mdm.TokenUpdate")[0]
    assert checkin.event["url_params"] is None and "token_update_tally" not in checkin.event


def test_micromdm_mode_config() -> None:
    cfg = micromdm_config(seed=4)
    assert cfg.webhook_format == "micromdm" and cfg.micromdm and cfg.seed == 4
    assert not FleetConfig().micromdm
    args = build_parser().parse_args(["sim", "serve", "--micromdm"])
    assert args.webhook_format == "micromdm"


async def test_cli_sets_push_fault(sim: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for value, expected in (("drop", "drop"), ("none", None)):
        args = parser.parse_args(["sim", "faults", "--push-fault", value, "--url", sim.url])
        assert await asyncio.to_thread(args.func, args) == 0
        assert json.loads(capsys.readouterr().out)["push_fault"] == expected
        assert sim.fleet.push_fault == expected
