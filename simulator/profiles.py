"""Configuration profiles as a device installs and lists them.

Only a summary of each profile is kept (what ProfileList reports), plus the escrow
certificate when the profile turns on FileVault with key escrow.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass
from typing import Any

from simulator.crypto import CryptoError, load_certificate, signed_content

ESCROW_TYPE = "com.apple.security.FDERecoveryKeyEscrow"
FILEVAULT_TYPE = "com.apple.MCX.FileVault2"
CERT_TYPES = ("com.apple.security.pkcs1", "com.apple.security.root")

# The enrollment profile as the live NanoMDM capture lists it.
ENROLLMENT_PROFILE: dict[str, Any] = {
    "PayloadContent": [
        {
            "PayloadIdentifier": "com.github.micromdm.scep",
            "PayloadType": "com.apple.security.scep",
            "PayloadUUID": "CB90E976-AD44-4B69-8108-8095E6260978",
            "PayloadVersion": 1,
        },
        {
            "PayloadIdentifier": "com.github.micromdm.nanomdm.mdm",
            "PayloadType": "com.apple.mdm",
            "PayloadUUID": "96B11019-B54C-49DC-9480-43525834DE7B",
            "PayloadVersion": 1,
        },
    ],
    "PayloadDisplayName": "Enrollment Profile",
    "PayloadIdentifier": "com.github.micromdm.nanomdm",
    "PayloadType": "Configuration",
    "PayloadUUID": "F9760DD4-F2D1-4F29-8D2C-48D52DD0A9B3",
    "PayloadVersion": 1,
}


class ProfileError(ValueError):
    """A profile the device refuses; carries the MCProfileErrorDomain code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class InstalledProfile:
    identifier: str
    summary: dict[str, Any]
    escrow_cert: bytes | None  # DER certificate recovery keys are encrypted to
    enables_filevault: bool


def _str(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    return v if isinstance(v, str) else ""


def parse(payload: bytes) -> InstalledProfile:
    """Parse a mobileconfig (XML/binary plist, optionally CMS-signed) as a device would."""
    raw = payload
    if raw[:1] == b"\x30":
        try:
            raw = signed_content(raw)
        except CryptoError as exc:
            raise ProfileError(1000, f"The profile could not be read: {exc}") from exc
    try:
        doc = plistlib.loads(raw)
    except Exception as exc:  # plistlib raises several unrelated types
        raise ProfileError(1000, "The profile is not a valid property list.") from exc
    if not isinstance(doc, dict):
        raise ProfileError(1000, "The profile is not a dictionary.")
    identifier = _str(doc, "PayloadIdentifier")
    if not identifier or not _str(doc, "PayloadUUID"):
        raise ProfileError(1000, "The profile is missing a PayloadIdentifier or PayloadUUID.")
    if doc.get("PayloadType", "Configuration") != "Configuration":
        raise ProfileError(1000, "The profile's PayloadType is not Configuration.")
    content = doc.get("PayloadContent", [])
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise ProfileError(1000, "The profile's PayloadContent is not an array of payloads.")
    items = []
    by_uuid: dict[str, dict[str, Any]] = {}
    types = set()
    for p in content:
        ptype, puuid = _str(p, "PayloadType"), _str(p, "PayloadUUID")
        if not ptype or not puuid:
            raise ProfileError(2001, "A payload is missing its PayloadType or PayloadUUID.")
        by_uuid[puuid] = p
        types.add(ptype)
        items.append(
            {
                "PayloadIdentifier": _str(p, "PayloadIdentifier") or f"{identifier}.{puuid}",
                "PayloadType": ptype,
                "PayloadUUID": puuid,
                "PayloadVersion": int(p.get("PayloadVersion", 1)),
            }
        )
    escrow_cert = None
    for p in content:
        if p.get("PayloadType") != ESCROW_TYPE:
            continue
        ref = by_uuid.get(_str(p, "EncryptCertPayloadUUID"))
        if ref is None or ref.get("PayloadType") not in CERT_TYPES:
            raise ProfileError(2001, "EncryptCertPayloadUUID does not name a certificate payload.")
        cert = ref.get("PayloadContent")
        if not isinstance(cert, bytes):
            raise ProfileError(2001, "The escrow certificate payload has no data.")
        try:
            load_certificate(cert)
        except CryptoError as exc:
            raise ProfileError(2001, f"The escrow certificate is invalid: {exc}") from exc
        escrow_cert = cert
    summary = {
        "HasRemovalPasscode": False,
        "IsEncrypted": False,
        "IsManaged": True,
        "PayloadContent": items,
        "PayloadDescription": _str(doc, "PayloadDescription"),
        "PayloadDisplayName": _str(doc, "PayloadDisplayName") or identifier,
        "PayloadIdentifier": identifier,
        "PayloadOrganization": _str(doc, "PayloadOrganization"),
        "PayloadRemovalDisallowed": bool(doc.get("PayloadRemovalDisallowed", False)),
        "PayloadType": "Configuration",
        "PayloadUUID": _str(doc, "PayloadUUID"),
        "PayloadVersion": int(doc.get("PayloadVersion", 1)),
    }
    return InstalledProfile(
        identifier=identifier,
        summary=summary,
        escrow_cert=escrow_cert,
        enables_filevault=FILEVAULT_TYPE in types,
    )
