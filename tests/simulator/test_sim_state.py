"""The fleet kept between runs (``sim serve --state-file``): same devices, same state,
and no second enrollment."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sim_support import Receiver, SimFactory, escrow_profile, mobileconfig, rsa_identity

from mdmflow.temporal_server import free_port
from simulator import state
from simulator.fleet import Fleet, FleetConfig
from simulator.serve import FleetFile

ROOT = Path(__file__).resolve().parents[2]


def roundtrip(fleet: Fleet) -> dict[str, Any]:
    """The snapshot as it comes back from the file."""
    doc = json.loads(state.dumps(fleet.snapshot()))
    assert isinstance(doc, dict)
    return doc


async def test_a_restored_fleet_is_the_same_and_enrolls_nothing(make_sim: SimFactory) -> None:
    sim = await make_sim(fv_enable_delay=0.0)
    mac, offline = await sim.fleet.enroll(2, "mac")
    (phone,) = await sim.fleet.enroll(1, "iphone")
    user = await sim.fleet.enroll_user_channel(mac, "U-1")
    assert (await sim.run(mac, "InstallProfile", Payload=escrow_profile())).status == "Acknowledged"
    await sim.run(user, "InstallProfile", Payload=mobileconfig("com.example.user"))
    await sim.run(phone, "DeviceLock", Message="lost")
    await sim.run(mac, "InstallApplication", Identifier="com.example.app")
    sim.fleet.update_behaviour(offline, offline=True, errors={"ProfileList": (1, "D", "no")})
    await sim.enqueue(offline, "DeviceInformation", "PENDING-1")  # offline: stays queued
    await sim.fleet.wait_idle(5)
    ids = [mac, offline, phone, user]
    before = {i: sim.fleet.device_state(i) for i in ids}
    key = sim.fleet.recovery_key(mac)
    assert key is not None and before[mac]["filevault"]["enabled"] is True

    again = await make_sim(fv_enable_delay=0.0)  # another process, another webhook log
    assert again.fleet.restore(roundtrip(sim.fleet)) == 3
    await again.fleet.wait_idle(5)
    assert again.events() == []  # no Authenticate, no TokenUpdate: nothing at all
    assert {i: again.fleet.device_state(i) for i in ids} == before
    assert again.fleet.list_devices() == sim.fleet.list_devices()
    # tokens, push magic, last check-in: what MicroMDM's device records show
    assert again.fleet.micromdm_devices() == sim.fleet.micromdm_devices()
    assert again.fleet.recovery_key(mac) == key
    assert again.fleet.stats["devices_enrolled"] == 3
    certs = (await again.run(mac, "CertificateList")).raw["CertificateList"]
    assert certs == (await sim.run(mac, "CertificateList")).raw["CertificateList"]
    # the random sequences carry on: a new device is the one the first fleet would make
    assert await again.fleet.enroll(1) == await sim.fleet.enroll(1)

    # the restored devices behave as themselves
    _, reply_cert = rsa_identity()
    rotate = await again.run(
        mac,
        "RotateFileVaultKey",
        KeyType="personal",
        FileVaultUnlock={"Password": key},  # the key mdmflow escrowed before the restart
        ReplyEncryptionCertificate=reply_cert,
    )
    assert rotate.status == "Acknowledged"
    again.fleet.update_behaviour(offline, offline=False)
    await again.fleet.wait_idle(5)
    assert ("Acknowledged", "PENDING-1") in again.connects(offline)  # the queue survived
    assert (await again.run(offline, "ProfileList")).status == "Error"  # injected, kept
    duplicate = await again.enqueue(phone, "DeviceInformation", "PENDING-1")
    assert "Duplicate entry" in duplicate.json()["command_error"]  # NanoMDM's command table
    listed = (await again.run(user, "ProfileList")).raw["ProfileList"]
    assert [p["PayloadIdentifier"] for p in listed] == ["com.example.user"]


async def test_pending_filevault_stays_pending_for_the_time_left() -> None:
    fleet = Fleet(FleetConfig(fv_enable_delay=60))
    await fleet.start()
    (mac,) = await fleet.enroll(1)
    fleet.enqueue([mac], "I-1", "InstallProfile", {"Payload": escrow_profile()})
    await fleet.connect(mac)
    await fleet.wait_idle(5)
    assert fleet.device_state(mac)["filevault"]["pending"] is True
    doc = roundtrip(fleet)
    await fleet.stop()
    restored = Fleet(FleetConfig(fv_enable_delay=0))
    restored.restore(doc)
    fv = restored.device_state(mac)["filevault"]
    assert fv["pending"] is True and fv["enabled"] is False
    assert fv["recovery_key_sha256"] == fleet.device_state(mac)["filevault"]["recovery_key_sha256"]
    left = roundtrip(restored)["devices"][0]["filevault_on_in"]
    assert 50 < left <= 60


def test_unreadable_state_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "sim.json"
    assert FleetFile(tmp_path / "none.json").load_into(Fleet()) == 0  # no file: new fleet
    for text in ("{", '{"format": "other"}', json.dumps({"format": state.FORMAT, "version": 99})):
        bad.write_text(text)
        with pytest.raises(state.StateError):
            FleetFile(bad).load_into(Fleet())
    bad.write_text(state.dumps({"devices": [{"udid": "X"}]}).decode())
    with pytest.raises(state.StateError, match="cannot restore"):
        FleetFile(bad).load_into(Fleet())


class Served:
    """``python -m simulator serve`` as ``mdmflow up`` runs it, webhooks to ``receiver``."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, auth=("nanomdm", "k"), timeout=5)

    @classmethod
    async def start(cls, state_file: Path, hook_url: str, devices: int) -> Served:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulator", "serve", "--port", str(port),
            "--devices", str(devices), "--api-key", "k", "--webhook-url", hook_url,
            "--state-file", str(state_file), "--save-interval", "0.2",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        served = cls(proc, f"http://127.0.0.1:{port}")
        for _ in range(300):
            if proc.returncode is not None:
                break
            try:
                if (await served.http.get("/sim/stats")).status_code == 200:
                    return served
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(await served.stop(signal.SIGKILL))

    async def stop(self, sig: int) -> str:
        await self.http.aclose()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        assert self.proc.stdout is not None
        out = (await asyncio.wait_for(self.proc.stdout.read(), 30)).decode()
        await asyncio.wait_for(self.proc.wait(), 30)
        return out


@pytest.mark.e2e  # simulator processes of its own
async def test_sim_serve_keeps_its_fleet_across_restarts(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    rec, rec_url = receiver
    path = f"/status/200/{os.urandom(8).hex()}"
    state_file = tmp_path / "var" / "simulator.json"

    first = await Served.start(state_file, rec_url + path, devices=2)
    listed = (await first.http.get("/sim/devices")).json()["devices"]
    old = [d["id"] for d in listed]
    patched = await first.http.patch(f"/sim/devices/{old[0]}", json={"notnow_count": 2})
    assert patched.status_code == 200
    for _ in range(100):  # saved while running, not only at the end
        saved = json.loads(state_file.read_text())["devices"][0]["behaviour"]
        if saved and saved["notnow_count"] == 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the change was not saved while the simulator ran")
    out = await first.stop(signal.SIGTERM)
    assert first.proc.returncode == 0, out
    assert "Traceback" not in out and "fleet saved" in out
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds recovery keys
    hooks = [json.loads(body) for _, body in rec.hooks[path]]
    assert [h["topic"] for h in hooks].count("mdm.Authenticate") == 2

    second = await Served.start(state_file, rec_url + path, devices=3)  # one more device
    devices = (await second.http.get("/sim/devices")).json()["devices"]
    shown = (await second.http.get(f"/sim/devices/{old[0]}")).json()
    out = await second.stop(signal.SIGINT)
    assert second.proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert devices[:2] == listed and len(devices) == 3
    assert shown["behaviour"]["notnow_count"] == 2
    new_hooks = [json.loads(body) for _, body in rec.hooks[path]][len(hooks) :]
    enrolled = {h["checkin_event"]["udid"] for h in new_hooks if "checkin_event" in h}
    assert enrolled == {devices[2]["id"]}  # only the device the file lacked
    assert [h["topic"] for h in new_hooks] == ["mdm.Authenticate", "mdm.TokenUpdate"]
