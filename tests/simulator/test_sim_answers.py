"""What devices answer: inventory, profiles, FileVault escrow, certificates, apps, lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json

from cryptography import x509
from sim_support import (
    Sim,
    SimFactory,
    decrypt_cms,
    escrow_profile,
    mobileconfig,
    rsa_identity,
    signed,
)

from simulator.fleet import Fleet, FleetConfig


async def test_device_information_answers_only_queried_keys(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1, "mac")
    queries = ["SerialNumber", "Model", "IsAppleSilicon", "NoSuchKey"]
    ev = await sim.run(dev, "DeviceInformation", Queries=queries)
    answers = ev.raw["QueryResponses"]
    assert set(answers) == {"SerialNumber", "Model", "IsAppleSilicon"}
    state = sim.fleet.device_state(dev)
    assert answers["SerialNumber"] == state["serial_number"]
    assert answers["IsAppleSilicon"] is state["is_apple_silicon"]
    assert len(answers["SerialNumber"]) in (10, 12)


async def test_identities_are_reproducible_by_seed_and_mix_architectures() -> None:
    async def inventory(seed: int) -> list[tuple[str, str, bool]]:
        fleet = Fleet(FleetConfig(seed=seed))
        ids = await fleet.enroll(40, "mac")
        return [
            (i, fleet.device_state(i)["serial_number"], fleet.device_state(i)["is_apple_silicon"])
            for i in ids
        ]

    a, b, c = await inventory(7), await inventory(7), await inventory(8)
    assert a == b
    assert a != c
    assert {arch for _, _, arch in a} == {True, False}
    assert len({serial for _, serial, _ in a}) == 40


async def test_iphone_attributes(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1, "iphone")
    ev = await sim.run(dev, "DeviceInformation", Queries=["ProductName", "ModelName", "IMEI"])
    answers = ev.raw["QueryResponses"]
    assert answers["ProductName"].startswith("iPhone") and answers["ModelName"] == "iPhone"
    assert "IMEI" in answers


async def test_profile_list_reflects_install_and_remove(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)

    async def listed() -> list[str]:
        ev = await sim.run(dev, "ProfileList")
        return [p["PayloadIdentifier"] for p in ev.raw["ProfileList"]]

    assert await listed() == ["com.github.micromdm.nanomdm"]  # the enrollment profile
    assert (await sim.run(dev, "InstallProfile", Payload=mobileconfig("com.example.a"))).status == (
        "Acknowledged"
    )
    signed_ev = await sim.run(dev, "InstallProfile", Payload=signed(mobileconfig("com.example.b")))
    assert signed_ev.status == "Acknowledged"
    assert await listed() == ["com.github.micromdm.nanomdm", "com.example.a", "com.example.b"]
    ev = await sim.run(dev, "ProfileList")
    item = ev.raw["ProfileList"][1]
    assert item["IsManaged"] is True and item["PayloadDisplayName"] == "Test com.example.a"
    assert item["PayloadContent"][0]["PayloadType"] == "com.apple.dock"
    # re-installing replaces by PayloadIdentifier
    await sim.run(dev, "InstallProfile", Payload=mobileconfig("com.example.a"))
    assert await listed() == ["com.github.micromdm.nanomdm", "com.example.b", "com.example.a"]
    assert (
        await sim.run(dev, "RemoveProfile", Identifier="com.example.a")
    ).status == "Acknowledged"
    assert await listed() == ["com.github.micromdm.nanomdm", "com.example.b"]
    missing = await sim.run(dev, "RemoveProfile", Identifier="com.example.a")
    assert missing.status == "Error"
    assert missing.raw["ErrorChain"][0]["ErrorCode"] == 1001
    assert missing.raw["ErrorChain"][0]["ErrorDomain"] == "MCProfileErrorDomain"
    assert "not installed" in missing.raw["ErrorChain"][0]["LocalizedDescription"]


async def test_malformed_profile_is_refused(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    ev = await sim.run(dev, "InstallProfile", Payload=b"<?xml garbage")
    assert ev.status == "Error"
    assert ev.raw["ErrorChain"][0]["ErrorDomain"] == "MCProfileErrorDomain"
    assert ev.raw["ErrorChain"][0]["ErrorCode"] == 1000
    bad_der = await sim.run(dev, "InstallProfile", Payload=b"\x30\x03\x02\x01\x01")
    assert bad_der.status == "Error"
    no_payload = await sim.run(dev, "InstallProfile")
    assert no_payload.status == "CommandFormatError"
    assert sim.fleet.device_state(dev)["profiles"] == []


async def test_filevault_escrow_reports_cms_of_recovery_key(make_sim: SimFactory) -> None:
    sim = await make_sim(fv_enable_delay=0.3)
    (dev,) = await sim.fleet.enroll(1, "mac")
    before = await sim.run(dev, "SecurityInfo")
    assert before.raw["SecurityInfo"]["FDE_Enabled"] is False
    assert before.raw["SecurityInfo"]["SystemIntegrityProtectionEnabled"] is True
    assert "ManagementStatus" in before.raw["SecurityInfo"]
    assert (await sim.run(dev, "InstallProfile", Payload=escrow_profile())).status == "Acknowledged"
    pending = await sim.run(dev, "SecurityInfo")
    assert pending.raw["SecurityInfo"]["FDE_Enabled"] is False  # not before fv_enable_delay
    await asyncio.sleep(0.35)
    on = (await sim.run(dev, "SecurityInfo")).raw["SecurityInfo"]
    assert on["FDE_Enabled"] is True and on["FDE_HasPersonalRecoveryKey"] is True
    key = sim.fleet.recovery_key(dev)
    assert key is not None and len(key) == 29 and key.count("-") == 5
    assert decrypt_cms(on["FDE_PersonalRecoveryKeyCMS"]) == key
    state = sim.fleet.device_state(dev)
    assert state["filevault"]["enabled"] is True
    assert state["filevault"]["recovery_key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(state)  # plaintext only via the test accessor


async def test_rotate_filevault_key(make_sim: SimFactory) -> None:
    sim = await make_sim(fv_enable_delay=0.0)
    (dev,) = await sim.fleet.enroll(1, "mac")
    _, reply_cert = rsa_identity()
    early = await sim.run(
        dev,
        "RotateFileVaultKey",
        KeyType="personal",
        FileVaultUnlock={"Password": "x"},
        ReplyEncryptionCertificate=reply_cert,
    )
    assert early.status == "Error"  # FileVault is not on yet
    await sim.run(dev, "InstallProfile", Payload=escrow_profile())
    old = sim.fleet.recovery_key(dev)
    assert old is not None
    wrong = await sim.run(
        dev,
        "RotateFileVaultKey",
        KeyType="personal",
        FileVaultUnlock={"Password": "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF"},
        ReplyEncryptionCertificate=reply_cert,
    )
    assert wrong.status == "Error"
    assert sim.fleet.recovery_key(dev) == old
    ok = await sim.run(
        dev,
        "RotateFileVaultKey",
        KeyType="personal",
        FileVaultUnlock={"Password": old},
        ReplyEncryptionCertificate=reply_cert,
    )
    assert ok.status == "Acknowledged"
    new = decrypt_cms(ok.raw["RotateResult"]["EncryptedNewRecoveryKey"])
    assert new == sim.fleet.recovery_key(dev) and new != old
    escrowed = (await sim.run(dev, "SecurityInfo")).raw["SecurityInfo"]
    assert decrypt_cms(escrowed["FDE_PersonalRecoveryKeyCMS"]) == new


async def test_certificate_list_is_real_x509(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1)
    ev = await sim.run(dev, "CertificateList")
    certs = ev.raw["CertificateList"]
    assert len(certs) >= 2
    parsed = [(c, x509.load_der_x509_certificate(c["Data"])) for c in certs]
    identities = [(c, x) for c, x in parsed if c["IsIdentity"]]
    assert identities
    entry, cert = identities[0]
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == entry["CommonName"]
    assert cert.not_valid_after_utc > cert.not_valid_before_utc
    assert cert.not_valid_after_utc > dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


async def test_apps_lock_configured_and_erase(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1, "mac", awaiting_configuration=True)
    ev = await sim.run(dev, "InstallApplication", Identifier="com.example.tool")
    assert ev.status == "Acknowledged" and ev.raw["Identifier"] == "com.example.tool"
    apps = (await sim.run(dev, "InstalledApplicationList")).raw["InstalledApplicationList"]
    assert "com.example.tool" in [a["Identifier"] for a in apps]
    managed = await sim.run(dev, "InstalledApplicationList", ManagedAppsOnly=True)
    assert [a["Identifier"] for a in managed.raw["InstalledApplicationList"]] == [
        "com.example.tool"
    ]
    assert (await sim.run(dev, "DeviceLock", PIN="12")).status == "Error"  # Macs need 6 digits
    assert (await sim.run(dev, "DeviceLock", PIN="123456", Message="hi")).status == "Acknowledged"
    lock = sim.fleet.device_state(dev)["lock"]
    assert lock["pin_sha256"] == hashlib.sha256(b"123456").hexdigest()
    assert lock["message"] == "hi"
    q = await sim.run(dev, "DeviceInformation", Queries=["AwaitingConfiguration"])
    assert q.raw["QueryResponses"]["AwaitingConfiguration"] is True
    assert (await sim.run(dev, "DeviceConfigured")).status == "Acknowledged"
    assert sim.fleet.device_state(dev)["awaiting_configuration"] is False
    assert (await sim.run(dev, "EraseDevice", PIN="123456")).status == "Acknowledged"
    assert sim.fleet.device_state(dev)["erased"] is True
    await sim.enqueue(dev, "ProfileList", "AFTER-ERASE")
    await asyncio.sleep(0.05)
    await sim.fleet.wait_idle(5)
    assert sim.fleet.device_state(dev)["queue"][0]["command_uuid"] == "AFTER-ERASE"
    assert ("Acknowledged", "AFTER-ERASE") not in sim.connects(dev)


async def test_iphone_device_lock_message_result(sim: Sim) -> None:
    (dev,) = await sim.fleet.enroll(1, "iphone")
    ev = await sim.run(dev, "DeviceLock", Message="Call me", PhoneNumber="555")
    assert ev.status == "Acknowledged" and ev.raw["MessageResult"]
