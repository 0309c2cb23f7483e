"""The FileVault escrow profile ``io.micromdm.wf.fvenable.v1`` installs.

It turns FileVault on (deferred to the next login) and tells macOS to escrow the
personal recovery key encrypted to our escrow certificate. An admin can store their
own template under the profile name ``io.micromdm.wf.fvenable.v1``; ``__CERTIFICATE__``
in it is replaced by the base64 DER certificate, as in NanoCMD.
"""

from __future__ import annotations

import base64
import plistlib

PLACEHOLDER = "__CERTIFICATE__"
TEMPLATE_PROFILE_NAME = "io.micromdm.wf.fvenable.v1"
_CERT_UUID = "6E0A3D8B-35C5-4E0B-9A4C-1F6C2B7D9E10"


def default_template() -> str:
    profile = {
        "PayloadDisplayName": "FileVault",
        "PayloadIdentifier": "io.micromdm.wf.fvenable.v1.profile",
        "PayloadType": "Configuration",
        "PayloadUUID": "B3F7C6A2-4D1E-4F8A-9C3B-2E5D7A1F0C44",
        "PayloadVersion": 1,
        "PayloadContent": [
            {
                "PayloadType": "com.apple.security.FDERecoveryKeyEscrow",
                "PayloadIdentifier": "io.micromdm.wf.fvenable.v1.payload.escrow",
                "PayloadUUID": "1C2B9E4F-7A3D-4C6E-8B1F-5D9A2E7C3B60",
                "PayloadVersion": 1,
                "EncryptCertPayloadUUID": _CERT_UUID,
                "Location": "MDM server",
            },
            {
                "PayloadType": "com.apple.MCX.FileVault2",
                "PayloadIdentifier": "io.micromdm.wf.fvenable.v1.payload.filevault",
                "PayloadUUID": "8D4E1A7C-2B9F-4E3D-A6C5-0F1B8E2D7A93",
                "PayloadVersion": 1,
                "Enable": "On",
                "Defer": True,
                "DeferForceAtUserLoginMaxBypassAttempts": 0,
                "ShowRecoveryKey": False,
            },
            {
                "PayloadType": "com.apple.security.pkcs1",
                "PayloadIdentifier": "io.micromdm.wf.fvenable.v1.payload.pkcs1",
                "PayloadUUID": _CERT_UUID,
                "PayloadVersion": 1,
                "PayloadContent": PLACEHOLDER.encode(),
            },
        ],
    }
    text = plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True).decode()
    # plistlib base64-encodes the placeholder; put the literal back for text replacement.
    encoded = base64.b64encode(PLACEHOLDER.encode()).decode()
    return text.replace(encoded, PLACEHOLDER)


def render(template: str | bytes, certificate_der: bytes) -> bytes:
    raw = template.encode() if isinstance(template, str) else template
    if PLACEHOLDER.encode() not in raw:
        raise ValueError(f"FileVault profile template has no {PLACEHOLDER}")
    return raw.replace(PLACEHOLDER.encode(), base64.b64encode(certificate_der), 1)
