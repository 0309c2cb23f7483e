"""MDM commands as workflow-safe values, rendered to the plist a device receives.

A :class:`Command` is what a workflow decides to send; the CommandUUID is assigned by
the step engine and the plist is rendered inside the enqueue activity, so workflow
history holds the intent, not the wire bytes.
"""

from __future__ import annotations

from typing import Any

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


class Command(BaseModel):
    """One MDM command: its RequestType and the other keys of its ``Command`` dict."""

    request_type: str
    fields: dict[str, Any] = Field(default_factory=dict)

    @property
    def read_only(self) -> bool:
        return self.request_type in READ_ONLY_REQUEST_TYPES

    def to_plist(self, command_uuid: str) -> bytes:
        body: dict[str, Any] = {"RequestType": self.request_type}
        body.update(plist.from_json(self.fields))
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
