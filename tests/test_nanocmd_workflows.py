"""NanoCMD's workflows end to end against the simulator: success, device Error, NotNow,
timeout; secrets escrowed, retrievable, audited, and absent from every history."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from mdmflow.temporal_calls.starts import StartResult, start_workflow
from mdmflow.temporal_server import free_port
from protocol import routing
from simulator.fleet import DeviceBehaviour
from tests.e2e_stack import E2E, ended

LOCK = "io.micromdm.wf.lock.v1"
PROFILE = "io.micromdm.wf.profile.v1"
CMDPLAN = "io.micromdm.wf.cmdplan.v1"
CERTPROF = "io.micromdm.wf.certprof.v1"
FVENABLE = "io.micromdm.wf.fvenable.v1"
FVROTATE = "io.micromdm.wf.fvrotate.v1"
FAST_POLL = json.dumps({"poll_seconds": 0.3, "max_polls": 40})

# Every secret any test here saw; the last test searches all histories and logs for them.
SEEN_SECRETS: set[str] = set()
LOG_LINES: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LOG_LINES.append(self.format(record))


@pytest.fixture(scope="module", autouse=True)
def _collect_logs() -> Iterator[None]:
    """Everything mdmflow, temporalio and the simulator log while these tests run."""
    handler = _Collect(level=logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(previous)


def mobileconfig(identifier: str, uuid: str, marker: str = "x") -> bytes:
    import plistlib

    return plistlib.dumps(
        {
            "PayloadContent": [
                {
                    "PayloadIdentifier": f"{identifier}.payload",
                    "PayloadType": "com.apple.ManagedClient.preferences",
                    "PayloadUUID": uuid[::-1],
                    "PayloadVersion": 1,
                    "Marker": marker,
                }
            ],
            "PayloadDisplayName": identifier,
            "PayloadIdentifier": identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": uuid,
            "PayloadVersion": 1,
        }
    )


def fleet_run(workflow: str, started: StartResult) -> str:
    """The workflow ID of a one-device start: its instance's first (only) chunk."""
    return routing.fleet_workflow_id(workflow, started.instance_id, 0)


async def run(
    e2e: E2E, workflow: str, eid: str, context: str | None = None, **kw: Any
) -> dict[str, Any]:
    started = await start_workflow(
        e2e.client, e2e.queue, workflow, [eid], context, **kw, holds=e2e.services.holds
    )
    handle = e2e.client.get_workflow_handle(fleet_run(workflow, started))
    return await ended(handle)


async def secret(e2e: E2E, eid: str, kind: str, **params: Any) -> dict[str, Any]:
    escrow = await e2e.as_role("escrow")
    resp = await escrow.get(f"/v1/escrow/{eid}/{kind}", params={"reason": "test", **params})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    SEEN_SECRETS.update(s["secret"] for s in body["secrets"])
    return body


# ---- lock ---------------------------------------------------------------------------


async def test_lock_escrows_a_random_pin_the_device_got(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    context = json.dumps({"message": "Call IT", "phone_number": "+1 555 0100"})
    result = await run(e2e, LOCK, eid, context)
    assert result["status"] == "completed"
    pin = (await secret(e2e, eid, "pin"))["secrets"][0]["secret"]
    assert len(pin) == 6 and pin.isdigit()
    lock = e2e.fleet.device_state(eid)["lock"]
    assert lock["pin_sha256"] == hashlib.sha256(pin.encode()).hexdigest()
    assert lock["message"] == "Call IT"
    access = (await e2e.api.get(f"/v1/escrow/{eid}/access")).json()
    assert access[-1]["who"].startswith("escrow-e2e@") and access[-1]["reason"] == "test"
    inventory = (await e2e.api.get("/v1/inventory", params={"id": eid})).json()
    assert pin not in json.dumps(inventory)


async def test_lock_device_error_notnow_and_timeout(e2e: E2E) -> None:
    failing, busy, offline = await e2e.enroll(3)
    e2e.fleet.set_behaviour(
        failing, DeviceBehaviour(errors={"DeviceLock": (12064, "MCMDMErrorDomain", "no")})
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    failed, later, never = await asyncio.gather(
        run(e2e, LOCK, failing),
        run(e2e, LOCK, busy),
        run(e2e, LOCK, offline, step_timeout=2),
    )
    assert failed["status"] == "failed" and "12064" in failed["message"]
    assert later["status"] == "completed"
    state = await e2e.state(LOCK, busy)
    assert state["steps"][0]["commands"][0]["not_now_count"] == 1
    assert never["status"] == "timed_out"


# ---- FileVault ---------------------------------------------------------------------


async def test_fvenable_then_fvrotate_escrow_the_real_keys(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    enabled = await run(e2e, FVENABLE, eid, FAST_POLL)
    assert enabled["status"] == "completed", enabled
    first = (await secret(e2e, eid, "prk"))["secrets"][0]["secret"]
    assert first == e2e.fleet.recovery_key(eid)

    rotated = await run(e2e, FVROTATE, eid)
    assert rotated["status"] == "completed", rotated
    new = (await secret(e2e, eid, "prk"))["secrets"]
    assert [s["secret"] for s in new] == [e2e.fleet.recovery_key(eid)]
    assert new[0]["secret"] != first
    history = (await secret(e2e, eid, "prk", previous="true"))["secrets"]
    assert [s["secret"] for s in history] == [new[0]["secret"], first]
    assert history[1]["superseded"] is not None


async def test_fvrotate_without_an_escrowed_key_fails_before_sending(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    started = await start_workflow(e2e.client, e2e.queue, FVROTATE, [eid], holds=e2e.services.holds)
    with pytest.raises(WorkflowFailureError) as info:
        await e2e.client.get_workflow_handle(fleet_run(FVROTATE, started)).result()
    assert "no FileVault recovery key escrowed" in str(info.value.cause)
    assert e2e.fleet.device_state(eid)["counters"]["answered"] == 0


async def test_fvenable_device_error_notnow_and_timeout(e2e: E2E) -> None:
    refused, busy, offline = await e2e.enroll(3)
    e2e.fleet.set_behaviour(
        refused, DeviceBehaviour(errors={"InstallProfile": (1000, "MCProfileErrorDomain", "bad")})
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    failed, later, never = await asyncio.gather(
        run(e2e, FVENABLE, refused, FAST_POLL),
        run(e2e, FVENABLE, busy, FAST_POLL),
        run(e2e, FVENABLE, offline, FAST_POLL, step_timeout=2),
    )
    assert failed["status"] == "failed" and "MCProfileErrorDomain 1000" in failed["message"]
    assert later["status"] == "completed"
    assert never["status"] == "timed_out"
    SEEN_SECRETS.add(e2e.fleet.recovery_key(busy) or "")


async def test_fvrotate_device_error_notnow_and_timeout(e2e: E2E) -> None:
    failing, busy, offline = await e2e.enroll(3)
    for eid in (failing, busy, offline):
        assert (await run(e2e, FVENABLE, eid, FAST_POLL))["status"] == "completed"
        SEEN_SECRETS.add(e2e.fleet.recovery_key(eid) or "")
    e2e.fleet.set_behaviour(
        failing, DeviceBehaviour(errors={"RotateFileVaultKey": (12082, "MCMDMErrorDomain", "no")})
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    failed, later, never = await asyncio.gather(
        run(e2e, FVROTATE, failing),
        run(e2e, FVROTATE, busy),
        run(e2e, FVROTATE, offline, step_timeout=2),
    )
    assert failed["status"] == "failed" and "MCMDMErrorDomain 12082" in failed["message"]
    assert later["status"] == "completed"
    assert (await secret(e2e, busy, "prk"))["secrets"][0]["secret"] == e2e.fleet.recovery_key(busy)
    assert never["status"] == "timed_out"
    # the failed rotation left the escrowed key as it was
    assert (await secret(e2e, failing, "prk"))["secrets"][0]["secret"] == e2e.fleet.recovery_key(
        failing
    )


async def test_escrowed_key_survives_a_restart_of_the_api(e2e: E2E) -> None:
    """A new API process on the same database and var directory serves the key."""
    (eid,) = await e2e.enroll(1)
    assert (await run(e2e, FVENABLE, eid, FAST_POLL))["status"] == "completed"
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": e2e.temporal.address,
        "MDMFLOW_DB_URL": e2e.store_url,
        "MDMFLOW_VAR_DIR": str(e2e.var_dir),
        "MDMFLOW_API_KEY": "restart-key",
        # NanoCMD's user with the escrow role: the role is configurable
        "MDMFLOW_NANOCMD_ROLE": "escrow",
        "MDMFLOW_LISTEN": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen([sys.executable, "-m", "mdmflow", "serve"], env=env)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", auth=("nanocmd", "restart-key")
        ) as api:
            for _ in range(100):
                try:
                    resp = await api.get(f"/v1/escrow/{eid}/prk", params={"reason": "restart"})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert resp.status_code == 200, resp.text
            assert resp.json()["secrets"][0]["secret"] == e2e.fleet.recovery_key(eid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    SEEN_SECRETS.add(e2e.fleet.recovery_key(eid) or "")


# ---- profiles, command plans, certificates ------------------------------------------


async def put_profile(e2e: E2E, name: str, raw: bytes) -> None:
    resp = await e2e.api.put(f"/v1/profile/{name}", content=raw)
    assert resp.status_code in (200, 204), resp.text


async def test_profile_installs_skips_and_removes(e2e: E2E) -> None:
    await put_profile(
        e2e, "wifi", mobileconfig("com.example.wifi", "11111111-AAAA-4AAA-8AAA-111111111111")
    )
    await put_profile(
        e2e, "vpn", mobileconfig("com.example.vpn", "22222222-BBBB-4BBB-8BBB-222222222222")
    )
    (eid,) = await e2e.enroll(1)
    first = await run(e2e, PROFILE, eid, "wifi,vpn")
    assert first["status"] == "completed"
    assert "wifi: installed" in first["message"] and "vpn: installed" in first["message"]
    profiles = e2e.fleet.device_state(eid)["profiles"]
    assert {"com.example.wifi", "com.example.vpn"} <= set(profiles)

    again = await run(e2e, PROFILE, eid, "wifi,-vpn,ghost")
    assert again["status"] == "failed"  # "ghost" is not a stored profile
    assert "wifi: already installed" in again["message"]
    assert "vpn: removed" in again["message"] and "ghost: unknown profile" in again["message"]
    assert "com.example.vpn" not in e2e.fleet.device_state(eid)["profiles"]

    changed = mobileconfig("com.example.wifi", "33333333-CCCC-4CCC-8CCC-333333333333", "v2")
    await put_profile(e2e, "wifi", changed)
    third = await run(e2e, PROFILE, eid, "wifi")
    assert "wifi: installed" in third["message"]  # new PayloadUUID: re-installed


async def test_profile_device_error_notnow_and_timeout(e2e: E2E) -> None:
    await put_profile(
        e2e, "dock", mobileconfig("com.example.dock", "44444444-DDDD-4DDD-8DDD-444444444444")
    )
    failing, busy, offline = await e2e.enroll(3)
    e2e.fleet.set_behaviour(
        failing,
        DeviceBehaviour(errors={"InstallProfile": (4001, "MCInstallationErrorDomain", "no")}),
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    failed, later, never = await asyncio.gather(
        run(e2e, PROFILE, failing, "dock"),
        run(e2e, PROFILE, busy, "dock"),
        run(e2e, PROFILE, offline, "dock", step_timeout=2),
    )
    assert (
        failed["status"] == "failed"
        and "dock: error: MCInstallationErrorDomain 4001" in failed["message"]
    )
    assert later["status"] == "completed" and "dock: installed" in later["message"]
    assert never["status"] == "timed_out"


async def test_cmdplan_runs_in_order_with_url_params_and_device_configured(e2e: E2E) -> None:
    await put_profile(
        e2e, "base", mobileconfig("com.example.base", "55555555-EEEE-4EEE-8EEE-555555555555")
    )
    plan = {
        "profile_names": ["base"],
        "manifest_urls": ["https://apps.example.com/${app:munki}.plist"],
        "device_configured": True,
    }
    assert (await e2e.api.put("/v1/cmdplan/setup", json=plan)).status_code in (200, 204)
    ids = await e2e.fleet.enroll(1, awaiting_configuration=True)
    await e2e.fleet.wait_idle()
    (eid,) = ids
    assert e2e.fleet.device_state(eid)["awaiting_configuration"] is True
    result = await run(e2e, CMDPLAN, eid, "setup")
    assert result["status"] == "completed", result
    device = e2e.fleet.device_state(eid)
    assert "com.example.base" in device["profiles"]
    assert device["awaiting_configuration"] is False
    step = (await e2e.state(CMDPLAN, eid))["steps"][0]
    assert [c["request_type"] for c in step["commands"]] == [
        "InstallProfile",
        "InstallApplication",
        "DeviceConfigured",
    ]
    missing = await run(e2e, CMDPLAN, eid, "nope")
    assert missing["status"] == "failed" and "no command plan" in missing["message"]


async def test_cmdplan_device_error_notnow_and_timeout(e2e: E2E) -> None:
    plan = {"manifest_urls": ["https://apps.example.com/tool.plist"]}
    assert (await e2e.api.put("/v1/cmdplan/apps", json=plan)).status_code in (200, 204)
    failing, busy, offline = await e2e.enroll(3)
    e2e.fleet.set_behaviour(
        failing, DeviceBehaviour(errors={"InstallApplication": (12026, "MCMDMErrorDomain", "no")})
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    failed, later, never = await asyncio.gather(
        run(e2e, CMDPLAN, failing, "apps"),
        run(e2e, CMDPLAN, busy, "apps"),
        run(e2e, CMDPLAN, offline, "apps", step_timeout=2),
    )
    assert failed["status"] == "failed" and "12026" in failed["message"]
    assert later["status"] == "completed"
    assert never["status"] == "timed_out"


def certprof_context(**criteria: Any) -> str:
    return json.dumps(
        {
            "profile": "scep",
            "filter": {"cn_prefix": "mdmflow simulator identity"},
            "criteria": criteria or None,
            "text_replacements": {"%CHALLENGE%": "s3cret-challenge"},
        }
    )


async def test_certprof_keeps_or_replaces_by_expiry(e2e: E2E) -> None:
    await put_profile(
        e2e,
        "scep",
        mobileconfig("com.example.scep", "66666666-FFFF-4FFF-8FFF-666666666666", "%CHALLENGE%"),
    )
    (eid,) = await e2e.enroll(1)
    keep = await run(e2e, CERTPROF, eid, certprof_context(until_expiry_sec=60))
    assert keep["status"] == "completed" and "not installing" in keep["message"]
    assert "com.example.scep" not in e2e.fleet.device_state(eid)["profiles"]
    twenty_years = 20 * 365 * 86400
    renew = await run(e2e, CERTPROF, eid, certprof_context(until_expiry_sec=twenty_years))
    assert renew["status"] == "completed" and "installed" in renew["message"], renew
    assert "com.example.scep" in e2e.fleet.device_state(eid)["profiles"]
    bad = await run(e2e, CERTPROF, eid, json.dumps({"profile": "scep"}))
    assert bad["status"] == "failed" and "bad context" in bad["message"]


async def test_certprof_device_error_notnow_and_timeout(e2e: E2E) -> None:
    failing, busy, offline = await e2e.enroll(3)
    e2e.fleet.set_behaviour(
        failing, DeviceBehaviour(errors={"CertificateList": (-909, "NSOSStatusErrorDomain", "")})
    )
    e2e.fleet.set_behaviour(busy, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(offline, DeviceBehaviour(offline=True))
    ctx = certprof_context(always_replace=True)
    failed, later, never = await asyncio.gather(
        run(e2e, CERTPROF, failing, ctx),
        run(e2e, CERTPROF, busy, ctx),
        run(e2e, CERTPROF, offline, ctx, step_timeout=2),
    )
    assert failed["status"] == "failed" and "NSOSStatusErrorDomain -909" in failed["message"]
    assert later["status"] == "completed"
    assert never["status"] == "timed_out"


# ---- no secret in any history -------------------------------------------------------


def _payload_texts(node: Any) -> list[str]:
    """Every payload's data, decoded, anywhere in a history's JSON."""
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                try:
                    out.append(base64.b64decode(value).decode("utf-8", "replace"))
                except ValueError:
                    pass
            out.extend(_payload_texts(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_payload_texts(value))
    return out


async def test_no_history_contains_a_secret(e2e: E2E) -> None:
    secrets = {s for s in SEEN_SECRETS if s}
    assert len(secrets) >= 4, "the tests above must have escrowed PINs and keys"
    histories = 0
    async for execution in e2e.client.list_workflows(f"TaskQueue = '{e2e.queue}'"):
        history = await e2e.client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        raw = history.to_json()
        text = raw + "\n".join(_payload_texts(json.loads(raw)))
        assert '"PIN":' not in text and "<key>PIN</key>" not in text  # no PIN field
        for s in secrets:
            # a 6-digit PIN is searched as a value, not inside timestamps or IDs
            forms = [s] if len(s) > 6 else [f'"{s}"', f">{s}<", f"'{s}'"]
            for form in forms:
                assert form not in text, f"secret found in the history of {execution.id}"
        histories += 1
    assert histories >= 20
    logs = "\n".join(LOG_LINES)
    assert len(LOG_LINES) > 100 and "escrowed prk" in logs
    for s in secrets:
        forms = [s] if len(s) > 6 else [f'"{s}"', f"'{s}'", f" {s} ", f"={s}"]
        assert not any(form in logs for form in forms), "secret found in the logs"


async def test_reenrolling_a_device_ends_a_pending_lock_at_once(e2e: E2E) -> None:
    """A lock is never silently re-sent to a device that re-enrolled."""
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    started = await start_workflow(e2e.client, e2e.queue, LOCK, [eid], holds=e2e.services.holds)
    for _ in range(100):
        if e2e.fleet.device_state(eid)["queue"]:
            break
        await asyncio.sleep(0.05)
    await e2e.fleet.reenroll(eid)
    handle = e2e.client.get_workflow_handle(fleet_run(LOCK, started))
    result = await ended(handle, 10)
    assert result["status"] == "failed" and "re-enrolled" in result["message"]
    assert e2e.fleet.device_state(eid)["queue"] == []


async def test_fvenable_profile_template_is_served(e2e: E2E) -> None:
    resp = await e2e.api.get("/v1/fvenable/profiletemplate")
    assert resp.status_code == 200
    assert "__CERTIFICATE__" in resp.text
    assert "com.apple.security.FDERecoveryKeyEscrow" in resp.text


async def test_fvenable_uses_a_stored_template(e2e: E2E) -> None:
    """An admin's own FileVault profile replaces the built-in one, certificate injected."""
    builtin = (await e2e.api.get("/v1/fvenable/profiletemplate")).text
    custom = builtin.replace(
        "<string>io.micromdm.wf.fvenable.v1.profile</string>", "<string>com.example.fv</string>"
    )
    operator = await e2e.api.put(f"/v1/profile/{FVENABLE}", content=custom.encode())
    assert operator.status_code == 403 and "admin" in operator.json()["error"]
    admin = await e2e.as_role("admin")
    resp = await admin.put(f"/v1/profile/{FVENABLE}", content=custom.encode())
    assert resp.status_code == 204, resp.text
    no_placeholder = await admin.put(f"/v1/profile/{FVENABLE}", content=mobileconfig("a", "b"))
    assert no_placeholder.status_code == 400 and "__CERTIFICATE__" in no_placeholder.json()["error"]
    try:
        (eid,) = await e2e.enroll(1)
        assert (await run(e2e, FVENABLE, eid, FAST_POLL))["status"] == "completed"
        assert (await secret(e2e, eid, "prk"))["secrets"][0]["secret"] == e2e.fleet.recovery_key(
            eid
        )
    finally:
        await admin.delete(f"/v1/profile/{FVENABLE}")
