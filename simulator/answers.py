"""What a simulated device answers to each MDM command, and the state it changes.

Answers follow real device reports (see the reference captures): the handler returns
the report's Status and its extra keys; the caller adds CommandUUID, RequestType,
Status, UDID and UserID.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from simulator import profiles as profiles_mod
from simulator.crypto import CryptoError, FleetCertificates, envelope, recovery_key
from simulator.model import Enrollment

Answer = tuple[str, dict[str, Any]]

MDM_DOMAIN = "MCMDMErrorDomain"
PROFILE_DOMAIN = "MCProfileErrorDomain"
# Apple's values, kept apart from mdmflow's command builder so that tests check the two.
OBLITERATION_BEHAVIORS = frozenset(
    {"Default", "DoNotObliterate", "ObliterateWithWarning", "Always"}
)


def error_chain(code: int, domain: str, text: str, *, us_english: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"ErrorCode": code, "ErrorDomain": domain, "LocalizedDescription": text}
    if us_english:
        item["USEnglishDescription"] = text
    return {"ErrorChain": [item]}


def error(code: int, domain: str, text: str) -> Answer:
    return "Error", error_chain(code, domain, text)


def unknown_command(request_type: str) -> Answer:
    """Exactly what the captured Mac answered to a command it does not implement."""
    text = f"Unknown command: {request_type} <MDMClientError:91>"
    return "Error", error_chain(12021, MDM_DOMAIN, text, us_english=False)


class AnswerContext:
    """Fleet-wide things handlers need: clock, certificates, key material."""

    def __init__(
        self,
        *,
        certs: FleetCertificates,
        key_rng: random.Random,
        fv_enable_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.certs = certs
        self.key_rng = key_rng
        self.fv_enable_delay = fv_enable_delay
        self.clock = clock
        # Plaintext FileVault keys, only reachable through Fleet.recovery_key().
        self.recovery_keys: dict[str, str] = {}

    def set_recovery_key(self, device: Enrollment, key: str) -> None:
        self.recovery_keys[device.id] = key
        device.prk_hash = hashlib.sha256(key.encode()).hexdigest()


# ---- FileVault -------------------------------------------------------------------------


def filevault_enabled(ctx: AnswerContext, device: Enrollment) -> bool:
    return device.fv_on_at is not None and ctx.clock() >= device.fv_on_at


def escrow_certificate(device: Enrollment) -> bytes | None:
    for prof in reversed(list((device.profiles or {}).values())):
        if prof.escrow_cert is not None:
            return prof.escrow_cert
    return None


def _maybe_enable_filevault(ctx: AnswerContext, device: Enrollment) -> None:
    if device.fv_on_at is not None or device.kind != "mac":
        return
    installed = (device.profiles or {}).values()
    if any(p.enables_filevault for p in installed) and escrow_certificate(device) is not None:
        device.fv_on_at = ctx.clock() + ctx.fv_enable_delay
        ctx.set_recovery_key(device, recovery_key(ctx.key_rng))


# ---- handlers --------------------------------------------------------------------------


def device_information(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    attrs = enr.attributes()
    queries = cmd.get("Queries")
    if isinstance(queries, list):
        attrs = {q: attrs[q] for q in queries if isinstance(q, str) and q in attrs}
    return "Acknowledged", {"QueryResponses": attrs}


def security_info(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    device = enr.device
    management = {
        "EnrolledViaDEP": device.supervised,
        "IsActivationLockManageable": False,
        "IsUserEnrollment": False,
        "UserApprovedEnrollment": True,
    }
    if device.kind != "mac":
        info: dict[str, Any] = {
            "HardwareEncryptionCaps": 3,
            "ManagementStatus": management,
            "PasscodeCompliant": True,
            "PasscodeCompliantWithProfiles": True,
            "PasscodePresent": device.lock is not None,
        }
        return "Acknowledged", {"SecurityInfo": info}
    fde = filevault_enabled(ctx, device)
    info = {
        "AuthenticatedRootVolumeEnabled": True,
        "BootstrapTokenAllowedForAuthentication": "not supported",
        "BootstrapTokenRequiredForKernelExtensionApproval": False,
        "BootstrapTokenRequiredForSoftwareUpdate": False,
        "FDE_Enabled": fde,
        "FirewallSettings": {
            "AllowSigned": True,
            "AllowSignedApp": True,
            "Applications": [],
            "BlockAllIncoming": False,
            "FirewallEnabled": False,
            "LoggingEnabled": True,
            "LoggingOption": "throttled",
            "StealthMode": False,
        },
        "FirmwarePasswordStatus": {},
        "ManagementStatus": management,
        "RemoteDesktopEnabled": False,
        "SecureBoot": {
            "ExternalBootLevel": "not supported",
            "SecureBootLevel": "full" if device.model.apple_silicon else "off",
            "WindowsBootLevel": "not supported",
        },
        "SystemIntegrityProtectionEnabled": True,
    }
    key = ctx.recovery_keys.get(device.id)
    if fde:
        info["FDE_HasInstitutionalRecoveryKey"] = False
        info["FDE_HasPersonalRecoveryKey"] = key is not None
        cert = escrow_certificate(device)
        if key is not None and cert is not None:
            try:
                info["FDE_PersonalRecoveryKeyCMS"] = envelope(key.encode(), cert)
                info["FDE_PersonalRecoveryKeyDeviceKey"] = device.serial
            except CryptoError:
                pass  # a recipient macOS cannot encrypt to: no escrow, as on a real Mac
    return "Acknowledged", {"SecurityInfo": info}


def profile_list(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    items = [] if enr.parent is not None else [profiles_mod.ENROLLMENT_PROFILE]
    items += [p.summary for p in (enr.profiles or {}).values()]
    return "Acknowledged", {"ProfileList": items}


def install_profile(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    payload = cmd.get("Payload")
    if not isinstance(payload, bytes) or not payload:
        return "CommandFormatError", {}
    try:
        prof = profiles_mod.parse(payload)
    except profiles_mod.ProfileError as exc:
        return error(exc.code, PROFILE_DOMAIN, str(exc))
    if enr.profiles is None:
        enr.profiles = {}
    enr.profiles.pop(prof.identifier, None)  # replace; newest last
    enr.profiles[prof.identifier] = prof
    if enr.parent is None:
        _maybe_enable_filevault(ctx, enr)
    return "Acknowledged", {}


def remove_profile(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    identifier = cmd.get("Identifier")
    if not isinstance(identifier, str) or not identifier:
        return "CommandFormatError", {}
    if enr.profiles is None or identifier not in enr.profiles:
        return error(1001, PROFILE_DOMAIN, f"The profile “{identifier}” is not installed.")
    del enr.profiles[identifier]
    return "Acknowledged", {}


def certificate_list(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    certs = [
        {"CommonName": c.common_name, "Data": c.der, "IsIdentity": c.is_identity}
        for c in ctx.certs.entries()
    ]
    return "Acknowledged", {"CertificateList": certs}


def device_lock(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    device = enr.device
    pin = cmd.get("PIN")
    if device.kind == "mac" and not (isinstance(pin, str) and len(pin) == 6 and pin.isdigit()):
        return error(12064, MDM_DOMAIN, "A 6-digit PIN is required to lock a Mac.")
    device.lock = {
        "locked": True,
        "pin_sha256": hashlib.sha256(pin.encode()).hexdigest() if isinstance(pin, str) else None,
        "message": cmd.get("Message") if isinstance(cmd.get("Message"), str) else None,
        "phone_number": cmd.get("PhoneNumber") if isinstance(cmd.get("PhoneNumber"), str) else None,
    }
    extra: dict[str, Any] = {}
    if device.kind != "mac":
        extra["MessageResult"] = "Displayed" if device.lock["message"] else "None"
    return "Acknowledged", extra


def rotate_filevault_key(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    device = enr.device
    if cmd.get("KeyType") != "personal":
        return error(12080, MDM_DOMAIN, "Only personal recovery keys can be rotated.")
    reply_cert = cmd.get("ReplyEncryptionCertificate")
    unlock = cmd.get("FileVaultUnlock")
    if not isinstance(reply_cert, bytes) or not isinstance(unlock, dict):
        return "CommandFormatError", {}
    current = ctx.recovery_keys.get(device.id)
    if not filevault_enabled(ctx, device) or current is None:
        return error(12081, MDM_DOMAIN, "FileVault is not enabled.")
    if unlock.get("Password") != current:
        return error(12082, MDM_DOMAIN, "The FileVault unlock credential is incorrect.")
    new_key = recovery_key(ctx.key_rng)
    try:
        encrypted = envelope(new_key.encode(), reply_cert)
    except CryptoError as exc:
        return error(12083, MDM_DOMAIN, f"Invalid ReplyEncryptionCertificate: {exc}")
    ctx.set_recovery_key(device, new_key)
    return "Acknowledged", {"RotateResult": {"EncryptedNewRecoveryKey": encrypted}}


def _sha256(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


def _erase_record(cmd: dict[str, Any]) -> dict[str, Any] | None:
    """What the device keeps of an EraseDevice; None when the command is malformed."""
    pin = cmd.get("PIN")
    behaviour = cmd.get("ObliterationBehavior")
    flags = {k: cmd.get(k) for k in ("PreserveDataPlan", "DisallowProximitySetup")}
    rts = cmd.get("ReturnToService")
    if pin is not None and not isinstance(pin, str):
        return None
    if behaviour is not None and (
        not isinstance(behaviour, str) or behaviour not in OBLITERATION_BEHAVIORS
    ):
        return None
    if any(v is not None and not isinstance(v, bool) for v in flags.values()):
        return None
    record: dict[str, Any] = {
        "pin_sha256": _sha256(pin),
        "obliteration_behavior": behaviour,
        "preserve_data_plan": flags["PreserveDataPlan"],
        "disallow_proximity_setup": flags["DisallowProximitySetup"],
        "return_to_service": None,
    }
    if rts is not None:
        if not isinstance(rts, dict) or not isinstance(rts.get("Enabled"), bool):
            return None
        profiles = {k: rts.get(k) for k in ("MDMProfileData", "WiFiProfileData")}
        if any(v is not None and not isinstance(v, bytes) for v in profiles.values()):
            return None
        record["return_to_service"] = {
            "enabled": rts["Enabled"],
            "mdm_profile_sha256": _sha256(profiles["MDMProfileData"]),
            "wifi_profile_sha256": _sha256(profiles["WiFiProfileData"]),
        }
    return record


def wipe(ctx: AnswerContext, device: Enrollment) -> None:
    """Erase everything the device held: profiles, apps, FileVault and its key, a lock.

    What NanoMDM holds (enrollment, queues) is the server's and stays; the device no
    longer has the MDM profile, so it never connects again until it is re-enrolled.
    """
    for channel in (device, *(device.users or {}).values()):
        channel.profiles = None
    device.apps = None
    device.fv_on_at = None
    device.prk_hash = None
    ctx.recovery_keys.pop(device.id, None)
    device.lock = None


def erase_device(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    """Acknowledge, remember the PIN and options, wipe (the session ends after the report).

    Erase All Content and Settings is taken to pass its preflight, so every
    ObliterationBehavior acknowledges and erases. Device channel only.
    """
    if enr.parent is not None:
        return unknown_command("EraseDevice")
    record = _erase_record(cmd)
    if record is None:
        return "CommandFormatError", {}
    device = enr.device
    wipe(ctx, device)
    device.erase = record
    return "Acknowledged", {}


_BASE_APPS: dict[str, list[dict[str, Any]]] = {
    "mac": [
        {
            "Identifier": "com.apple.Safari",
            "Name": "Safari",
            "ShortVersion": "18.4",
            "Version": "20621.1.15.11.10",
            "BundleSize": 14201856,
        }
    ],
    "iphone": [],
    "ipad": [],
}


def install_application(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    ident = cmd.get("Identifier")
    if not isinstance(ident, str):
        store_id = cmd.get("iTunesStoreID")
        manifest = cmd.get("ManifestURL")
        if isinstance(store_id, int):
            ident = f"com.example.app{store_id}"
        elif isinstance(manifest, str):
            ident = "com.example." + hashlib.sha1(manifest.encode()).hexdigest()[:8]
        else:
            return "CommandFormatError", {}
    device = enr.device
    if device.apps is None:
        device.apps = []
    device.apps = [a for a in device.apps if a["Identifier"] != ident]
    device.apps.append(
        {
            "Identifier": ident,
            "Name": ident.rsplit(".", 1)[-1],
            "ShortVersion": "1.0",
            "Version": "1",
            "BundleSize": 1048576,
            "IsValidated": True,
        }
    )
    return "Acknowledged", {"Identifier": ident, "State": "Queued"}


def installed_application_list(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    device = enr.device
    managed = list(device.apps or [])
    apps = managed if cmd.get("ManagedAppsOnly") else _BASE_APPS[device.kind] + managed
    wanted = cmd.get("Identifiers")
    if isinstance(wanted, list):
        apps = [a for a in apps if a["Identifier"] in wanted]
    return "Acknowledged", {"InstalledApplicationList": apps}


def device_configured(ctx: AnswerContext, enr: Enrollment, cmd: dict[str, Any]) -> Answer:
    enr.device.awaiting = False
    return "Acknowledged", {}


Handler = Callable[[AnswerContext, Enrollment, dict[str, Any]], Answer]

HANDLERS: dict[str, Handler] = {
    "DeviceInformation": device_information,
    "SecurityInfo": security_info,
    "ProfileList": profile_list,
    "InstallProfile": install_profile,
    "RemoveProfile": remove_profile,
    "CertificateList": certificate_list,
    "DeviceLock": device_lock,
    "RotateFileVaultKey": rotate_filevault_key,
    "EraseDevice": erase_device,
    "InstallApplication": install_application,
    "InstalledApplicationList": installed_application_list,
    "DeviceConfigured": device_configured,
}


def answer(ctx: AnswerContext, enr: Enrollment, request_type: str, cmd: dict[str, Any]) -> Answer:
    """The device's answer to one command, honouring injected errors."""
    injected = enr.effective_behaviour.errors.get(request_type)
    if injected is not None:
        return error(*injected)
    handler = HANDLERS.get(request_type)
    if handler is None:
        return unknown_command(request_type)
    return handler(ctx, enr, cmd)
