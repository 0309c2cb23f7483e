"""Webhooks: layout of the live NanoMDM capture, enrollment flows, HMAC, faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from sim_support import Sim, SimFactory

from protocol.webhooks import parse_webhook

LIVE = Path(__file__).resolve().parents[2] / "tests/fixtures/nanomdm-live/webhooks.jsonl"
if not LIVE.exists():
    LIVE = Path("/work/shared/reference/nanomdm-live/webhooks.jsonl")


def shape(doc: Any) -> Any:
    """Key structure of a webhook: dict keys recursively, leaves replaced by their type."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    return type(doc).__name__


def live_shapes() -> dict[tuple[str, str | None], Any]:
    out = {}
    for line in LIVE.read_text().splitlines():
        doc = json.loads(line)
        ev = doc.get("acknowledge_event") or doc["checkin_event"]
        out[(doc["topic"], ev.get("status"))] = shape(doc)
    return out


async def test_webhooks_match_live_capture_layout(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    await sim.enqueue(dev, "ProfileList", "L-ACK", nopush=True)
    await sim.enqueue(dev, "RestartDevice", "L-ERR")
    await sim.fleet.wait_idle(5)
    await sim.fleet.checkout(dev)
    await sim.fleet.wait_idle(5)
    live = live_shapes()
    seen = set()
    for ev in sim.events(dev):
        key = (ev.topic, ev.status)
        assert shape(ev.doc) == live[key], key
        seen.add(key)
        assert re.fullmatch(r"[0-9a-f]{16}", ev.doc["event_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", ev.doc["created_at"])
        # compact JSON with sorted keys, byte-for-byte like the capture
        assert ev.body == json.dumps(ev.doc, sort_keys=True, separators=(",", ":")).encode()
        assert ev.event["ids"] == {"id": dev, "type": "Device"} and ev.event["udid"] == dev
    # and mdmflow's own webhook parser accepts every one of them
    parsed = [parse_webhook(ev.body) for ev in sim.events(dev)]
    assert [p.enrollment.id for p in parsed] == [dev] * len(parsed)
    reports = [p.report for p in parsed if p.report is not None]
    assert [(r.status, r.command_uuid or None) for r in reports] == sim.connects(dev)
    assert seen == {
        ("mdm.Authenticate", None),
        ("mdm.TokenUpdate", None),
        ("mdm.Connect", "Idle"),
        ("mdm.Connect", "Acknowledged"),
        ("mdm.Connect", "Error"),
        ("mdm.CheckOut", None),
    }


async def test_enrollment_checkins(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    await sim.fleet.wait_idle(5)
    auth, token = sim.events(dev)
    assert auth.topic == "mdm.Authenticate" and token.topic == "mdm.TokenUpdate"
    assert set(auth.raw) == {
        "BuildVersion",
        "DeviceName",
        "MessageType",
        "OSVersion",
        "ProductName",
        "SerialNumber",
        "Topic",
        "UDID",
    }
    assert auth.raw["MessageType"] == "Authenticate" and auth.raw["UDID"] == dev
    assert token.event["token_update_tally"] == 1
    assert token.raw["MessageType"] == "TokenUpdate"
    assert isinstance(token.raw["Token"], bytes) and token.raw["PushMagic"]
    assert "command_uuid" not in token.event and "status" not in token.event


async def test_user_channel(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    uid = await sim.fleet.enroll_user_channel(dev, "A1B2C3D4-0000-4000-8000-000000000001")
    assert uid == f"{dev}:A1B2C3D4-0000-4000-8000-000000000001"
    await sim.fleet.wait_idle(5)
    (token,) = sim.events(uid)
    assert token.topic == "mdm.TokenUpdate" and token.event["token_update_tally"] == 1
    assert token.event["ids"] == {"id": uid, "type": "User"}
    assert token.event["udid"] == dev
    assert token.raw["UserID"] == "A1B2C3D4-0000-4000-8000-000000000001"
    assert token.raw["UserShortName"] and token.raw["UserLongName"]
    ev = await sim.run(uid, "ProfileList")
    assert ev.event["ids"] == {"id": uid, "type": "User"}
    assert ev.raw["UserID"] == "A1B2C3D4-0000-4000-8000-000000000001" and ev.raw["UDID"] == dev
    assert ev.raw["ProfileList"] == []  # no enrollment profile on the user channel
    assert sim.fleet.device_state(dev)["user_channels"] == [uid]
    generated = await sim.fleet.enroll_user_channel(dev)
    assert generated.startswith(dev + ":") and generated != uid


async def test_reenroll_clears_device_and_user_queues(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    uid = await sim.fleet.enroll_user_channel(dev)
    await sim.enqueue(dev, "ProfileList", "Q-D", nopush=True)
    await sim.enqueue(uid, "ProfileList", "Q-U", nopush=True)
    assert len(sim.fleet.device_state(uid)["queue"]) == 1
    await sim.fleet.reenroll(dev)
    assert sim.fleet.device_state(dev)["queue"] == []
    assert sim.fleet.device_state(uid)["queue"] == []
    await sim.fleet.wait_idle(5)
    topics = [(e.topic, e.event.get("token_update_tally")) for e in sim.events(dev)]
    assert topics == [
        ("mdm.Authenticate", None),
        ("mdm.TokenUpdate", 1),
        ("mdm.Authenticate", None),
        ("mdm.TokenUpdate", 1),
    ]
    await sim.client.get(f"/v1/push/{dev},{uid}")
    await sim.fleet.wait_idle(5)
    assert sim.connects(dev) == [("Idle", None)] and sim.connects(uid) == [("Idle", None)]


async def test_checkout(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    await sim.fleet.checkout(dev)
    await sim.fleet.wait_idle(5)
    last = sim.events(dev)[-1]
    assert last.topic == "mdm.CheckOut" and last.raw["MessageType"] == "CheckOut"
    assert sim.fleet.device_state(dev)["enrolled"] is False
    push = await sim.client.get(f"/v1/push/{dev}")
    assert push.status_code == 500
    await sim.fleet.reenroll(dev)
    assert sim.fleet.device_state(dev)["enrolled"] is True
    assert (await sim.client.get(f"/v1/push/{dev}")).status_code == 200


async def test_hmac_signature_verifies(make_sim: SimFactory) -> None:
    sim = await make_sim(webhook_hmac_key="hook-secret")
    await sim.fleet.enroll(1)
    await sim.fleet.wait_idle(5)
    events = sim.events()
    assert len(events) == 2
    for ev in events:
        expected = base64.b64encode(
            hmac.new(b"hook-secret", ev.body, hashlib.sha256).digest()
        ).decode()
        assert ev.headers["x-hmac-signature"] == expected
        assert ev.headers["content-type"] == "application/json"


async def test_older_formats_have_no_ids(make_sim: SimFactory) -> None:
    for fmt in ("nanomdm08", "micromdm"):
        sim = await make_sim(webhook_format=fmt)
        (dev,) = await sim.fleet.enroll(1)
        await sim.run(dev, "ProfileList")
        events = sim.events()
        assert len(events) == 4
        assert all("ids" not in e.event for e in events)
        assert all(e.event["udid"] == dev for e in events)


async def test_webhook_failures_are_counted_not_fatal(make_sim: SimFactory) -> None:
    sim = await make_sim(hook_status=500)
    (dev,) = await sim.fleet.enroll(1)
    ev = await sim.run(dev, "ProfileList")  # still delivered, just answered 500
    assert ev.status == "Acknowledged"
    assert sim.fleet.stats["webhooks_non_200"] == 4
    dead = await make_sim(webhook_url="http://127.0.0.1:9/nothing")
    (d2,) = await dead.fleet.enroll(1)
    await dead.enqueue(d2, "ProfileList")
    await dead.fleet.wait_idle(5)
    assert dead.fleet.stats["webhooks_failed"] == 4
    assert dead.fleet.stats["commands_answered"] == 1


async def _fault_run(
    make_sim: SimFactory, seed: int
) -> tuple[list[Any], list[Any], dict[str, int]]:
    sim = await make_sim(
        seed=3, drop_rate=0.2, duplicate_rate=0.2, reorder_rate=0.2, webhook_concurrency=1
    )
    sim.fleet.set_faults(seed=seed)
    devs = await sim.fleet.enroll(3)
    for d in devs:
        for i in range(5):
            await sim.enqueue(d, "ProfileList", f"{d}-{i}", nopush=True)
    for d in devs:
        await sim.fleet.connect(d)
        await sim.fleet.wait_idle(5)
    received = [(e.event["udid"], *e.key) for e in sim.events()]
    return received, sim.fleet.fault_log, sim.fleet.stats


async def test_faults_reproducible_by_seed(make_sim: SimFactory) -> None:
    a_recv, a_log, a_stats = await _fault_run(make_sim, seed=11)
    b_recv, b_log, b_stats = await _fault_run(make_sim, seed=11)
    c_recv, c_log, _ = await _fault_run(make_sim, seed=12)
    assert a_log == b_log and a_recv == b_recv and a_stats == b_stats
    assert a_log != c_log and a_recv != c_recv
    kinds = {k for _, k in a_log}
    assert kinds == {"drop", "duplicate", "reorder"}
    submitted = a_stats["webhooks_submitted"]
    dropped, dups = a_stats["webhooks_dropped"], a_stats["webhooks_duplicated"]
    assert dropped > 0 and dups > 0 and a_stats["webhooks_reordered"] > 0
    assert len(a_recv) == submitted - dropped + dups
    # duplicates arrive as identical events back to back
    assert any(a_recv[i] == a_recv[i + 1] for i in range(len(a_recv) - 1))


async def test_reorder_holds_an_event_until_a_later_one_is_sent(make_sim: SimFactory) -> None:
    sim = await make_sim(webhook_concurrency=1, connect_latency=0.0)
    (dev,) = await sim.fleet.enroll(1)
    await sim.fleet.wait_idle(5)
    assert sim.fleet._sender is not None
    sim.fleet._sender.hold_timeout = 5.0  # only a later event releases the held one
    sim.fleet.set_faults(reorder_rate=1.0)
    uid = await sim.fleet.enroll_user_channel(dev)  # its TokenUpdate is held back
    sim.fleet.set_faults(reorder_rate=0.0)
    await sim.fleet.connect(dev)  # the device's Idle report overtakes it
    await sim.fleet.wait_idle(5)
    order = [(e.topic, e.event["ids"]["id"]) for e in sim.events()][2:]
    assert order == [("mdm.Connect", dev), ("mdm.TokenUpdate", uid)]
    assert sim.fleet.stats["webhooks_reordered"] == 1
