"""MDM commands as workflow-safe values, rendered to the plist a device receives.

A :class:`Command` is what a workflow decides to send; the CommandUUID is assigned by
the step engine and the plist is rendered inside the enqueue activity, so workflow
history holds the intent, not the wire bytes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from protocol import plist

# Commands that only read state: safe to re-issue under a new UUID when an answer is lost.
READ_ONLY_REQUEST_TYPES = frozenset(
    {
        "DeviceInformation",
        "SecurityInfo",
        "ProfileList",
        "CertificateList",
        "InstalledApplicationList",
        "ProvisioningProfileList",
        "Restrictions",
        "UserList",
    }
)


FillKind = Literal["new_pin", "current_prk", "escrow_certificate", "profile", "escrow_profile"]


class Fill(BaseModel):
    """A value the enqueue activity puts into the command just before sending it.

    Secrets (a new lock PIN, the escrowed recovery key) and large blobs (stored
    profiles) never enter workflow history: the workflow names them, the activity
    fetches them.
    """

    kind: FillKind
    path: list[str]
    name: str | None = None
    # Text replacements applied to a stored profile (NanoCMD certprof's).
    replacements: dict[str, str] = Field(default_factory=dict)


class Command(BaseModel):
    """One MDM command: its RequestType and the other keys of its ``Command`` dict."""

    request_type: str
    fields: dict[str, Any] = Field(default_factory=dict)
    fills: list[Fill] = Field(default_factory=list)
    # What the operator sees instead of the filled values (e.g. the profile's name).
    label: str | None = None

    @property
    def read_only(self) -> bool:
        return self.request_type in READ_ONLY_REQUEST_TYPES

    @property
    def per_device(self) -> bool:
        """True when the rendered command differs per enrollment (a new PIN, its own PRK).

        Such a command cannot share one plist, and so one enqueue, across a fleet.
        """
        return any(fill.kind in ("new_pin", "current_prk") for fill in self.fills)

    def to_plist(self, command_uuid: str, filled: dict[str, Any] | None = None) -> bytes:
        """Render; ``filled`` holds the native values for :attr:`fills`, by position."""
        body: dict[str, Any] = {"RequestType": self.request_type}
        body.update(plist.from_json(self.fields))
        for i, fill in enumerate(self.fills):
            if filled is None or str(i) not in filled:
                raise ValueError(f"{self.request_type}: value for {fill.kind} not filled")
            target = body
            for key in fill.path[:-1]:
                target = target.setdefault(key, {})
            target[fill.path[-1]] = filled[str(i)]
        return plist.dumps({"Command": body, "CommandUUID": command_uuid})


def parse_command_plist(raw: bytes) -> tuple[str, Command]:
    """Parse an enqueued command plist (used by the simulator and by tests)."""
    doc = plist.loads(raw)
    uuid = doc.get("CommandUUID")
    cmd = doc.get("Command")
    if not isinstance(uuid, str) or not uuid:
        raise plist.PlistError("command plist has no CommandUUID")
    if not isinstance(cmd, dict) or not isinstance(cmd.get("RequestType"), str):
        raise plist.PlistError("command plist has no Command.RequestType")
    fields = {k: v for k, v in cmd.items() if k != "RequestType"}
    return uuid, Command(request_type=cmd["RequestType"], fields=plist.to_json(fields))


# NanoCMD's inventory queries: what the inventory store records.
INVENTORY_QUERIES = [
    "Model",
    "SerialNumber",
    "ModelName",
    "DeviceName",
    "BuildVersion",
    "OSVersion",
    "EthernetMAC",
    "IsAppleSilicon",
    "HasBattery",
    "IsMultiUser",
    "SupportsLOMDevice",
    "IsSupervised",
]


def device_information(queries: list[str] | None = None) -> Command:
    return Command(
        request_type="DeviceInformation",
        fields={"Queries": list(queries or INVENTORY_QUERIES)},
    )


def security_info() -> Command:
    return Command(request_type="SecurityInfo")


def profile_list(managed_only: bool = True) -> Command:
    return Command(request_type="ProfileList", fields={"ManagedOnly": managed_only})


def certificate_list(managed_only: bool = False) -> Command:
    return Command(request_type="CertificateList", fields={"ManagedOnly": managed_only})


def installed_application_list(managed_apps_only: bool = False) -> Command:
    return Command(
        request_type="InstalledApplicationList",
        fields={"ManagedAppsOnly": managed_apps_only},
    )


def install_profile(payload: bytes) -> Command:
    return Command(request_type="InstallProfile", fields={"Payload": plist.data(payload)})


def remove_profile(identifier: str) -> Command:
    return Command(request_type="RemoveProfile", fields={"Identifier": identifier})


def install_stored_profile(name: str, replacements: dict[str, str] | None = None) -> Command:
    """InstallProfile with the profile stored under ``name`` (fetched at send time)."""
    fill = Fill(kind="profile", name=name, path=["Payload"], replacements=replacements or {})
    return Command(request_type="InstallProfile", fills=[fill], label=name)


def install_escrow_profile() -> Command:
    """InstallProfile of the FileVault escrow profile made with our escrow certificate."""
    return Command(
        request_type="InstallProfile",
        fills=[Fill(kind="escrow_profile", path=["Payload"])],
        label="FileVault escrow profile",
    )


def device_lock(message: str | None = None, phone_number: str | None = None) -> Command:
    """DeviceLock with a new random 6-digit PIN, generated and escrowed at send time."""
    fields: dict[str, Any] = {}
    if message:
        fields["Message"] = message
    if phone_number:
        fields["PhoneNumber"] = phone_number
    return Command(
        request_type="DeviceLock", fields=fields, fills=[Fill(kind="new_pin", path=["PIN"])]
    )


# EraseDevice's ObliterationBehavior: what a T2 or Apple silicon Mac falls back to when
# Erase All Content and Settings cannot run (macOS 12+; no effect on older Macs).
ObliterationBehavior = Literal["Default", "DoNotObliterate", "ObliterateWithWarning", "Always"]
OBLITERATION_BEHAVIORS: tuple[str, ...] = get_args(ObliterationBehavior)


def erase_device(
    *,
    obliteration_behavior: ObliterationBehavior | None = None,
    preserve_data_plan: bool | None = None,
    disallow_proximity_setup: bool | None = None,
    return_to_service: bool = False,
    rts_mdm_profile: str | None = None,
    rts_wifi_profile: str | None = None,
) -> Command:
    """EraseDevice with a new random 6-digit Find My PIN, generated and escrowed at send time.

    The PIN (Apple's ``PIN`` key) is what an erased Intel Mac asks for before it starts
    again; it goes to every device, escrowed like DeviceLock's, because the workflow does
    not know the model. An option left None is not sent: the device's default applies.
    Return to Service (iOS 17+) takes its MDM and Wi-Fi profiles from the profile store,
    by name, at send time (large blobs stay out of workflow history).
    """
    if obliteration_behavior is not None and obliteration_behavior not in OBLITERATION_BEHAVIORS:
        raise ValueError(f"ObliterationBehavior must be one of {', '.join(OBLITERATION_BEHAVIORS)}")
    if not return_to_service and (rts_mdm_profile or rts_wifi_profile):
        raise ValueError("Return to Service profiles need return_to_service enabled")
    fields: dict[str, Any] = {}
    if obliteration_behavior is not None:
        fields["ObliterationBehavior"] = obliteration_behavior
    if preserve_data_plan is not None:
        fields["PreserveDataPlan"] = preserve_data_plan
    if disallow_proximity_setup is not None:
        fields["DisallowProximitySetup"] = disallow_proximity_setup
    fills = [Fill(kind="new_pin", path=["PIN"])]
    if return_to_service:
        fields["ReturnToService"] = {"Enabled": True}
        for key, name in (
            ("MDMProfileData", rts_mdm_profile),
            ("WiFiProfileData", rts_wifi_profile),
        ):
            if name:
                fills.append(Fill(kind="profile", name=name, path=["ReturnToService", key]))
    return Command(request_type="EraseDevice", fields=fields, fills=fills)


def rotate_filevault_key() -> Command:
    """RotateFileVaultKey unlocking with the escrowed key; the reply is encrypted to us."""
    return Command(
        request_type="RotateFileVaultKey",
        fields={"KeyType": "personal"},
        fills=[
            Fill(kind="current_prk", path=["FileVaultUnlock", "Password"]),
            Fill(kind="escrow_certificate", path=["ReplyEncryptionCertificate"]),
        ],
    )


def manifest_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an InstallApplication ManifestURL, or None.

    An absolute http(s) URL with a host and no whitespace or control characters;
    ``${param}`` references (command plans) are allowed before they are filled.
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "a manifest URL may not contain spaces or control characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("https", "http") or not rest.split("/", 1)[0]:
        return f"not an absolute http(s) URL: {url[:200]!r}"
    return None


def install_application(manifest_url: str) -> Command:
    return Command(
        request_type="InstallApplication",
        fields={"ManifestURL": manifest_url, "ManagementFlags": 1},
        label=manifest_url,
    )


def device_configured() -> Command:
    return Command(request_type="DeviceConfigured")
