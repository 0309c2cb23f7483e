"""A device's answer to a command, and typed views of the common responses.

:class:`CommandReport` is what the relay signals to a workflow: the status, the error
chain and the whole response body in JSON-safe form. Typed responses are parsed from
the body on demand so an unexpected key never blocks delivery of the report.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from protocol import plist
from protocol.enrollment import derive

Status = Literal["Acknowledged", "Error", "CommandFormatError", "NotNow", "Idle"]
FINAL_STATUSES: frozenset[str] = frozenset({"Acknowledged", "Error", "CommandFormatError"})


class ErrorChainItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    error_code: int = Field(alias="ErrorCode", default=0)
    error_domain: str = Field(alias="ErrorDomain", default="")
    localized_description: str = Field(alias="LocalizedDescription", default="")
    us_english_description: str | None = Field(alias="USEnglishDescription", default=None)

    def __str__(self) -> str:
        text = self.us_english_description or self.localized_description
        return f"{self.error_domain} {self.error_code}: {text.strip()}"


class CommandReport(BaseModel):
    """One report from a device about one command (or an Idle check-in)."""

    enrollment_id: str
    status: Status
    command_uuid: str = ""
    request_type: str = ""
    error_chain: list[ErrorChainItem] = Field(default_factory=list)
    body: dict[str, Any] = Field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def error_summary(self) -> str:
        if not self.error_chain:
            return self.status
        return "; ".join(str(e) for e in self.error_chain)


class ReportError(ValueError):
    """The payload is not a command report a device could have sent."""


def parse_report(raw: bytes, enrollment_id: str | None = None) -> CommandReport:
    """Parse a device's report plist; ``enrollment_id`` overrides derivation when known."""
    doc = plist.loads(raw)
    status = doc.get("Status")
    if status not in ("Acknowledged", "Error", "CommandFormatError", "NotNow", "Idle"):
        raise ReportError(f"unknown report Status {status!r}")
    if enrollment_id is None:
        ref = derive(doc)
        if ref is None:
            raise ReportError("report carries no UDID or EnrollmentID")
        enrollment_id = ref.id
    uuid = doc.get("CommandUUID", "")
    if status != "Idle" and not (isinstance(uuid, str) and uuid):
        raise ReportError(f"{status} report without CommandUUID")
    chain = doc.get("ErrorChain") or []
    if not isinstance(chain, list):
        raise ReportError("ErrorChain is not an array")
    return CommandReport(
        enrollment_id=enrollment_id,
        status=status,
        command_uuid=uuid if isinstance(uuid, str) else "",
        request_type=str(doc.get("RequestType", "")),
        error_chain=[ErrorChainItem.model_validate(e) for e in chain if isinstance(e, dict)],
        body=plist.to_json(doc),
    )


# ---- typed responses -------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class QueryResponses(_Response):
    udid: str | None = Field(alias="UDID", default=None)
    serial_number: str | None = Field(alias="SerialNumber", default=None)
    model: str | None = Field(alias="Model", default=None)
    model_name: str | None = Field(alias="ModelName", default=None)
    product_name: str | None = Field(alias="ProductName", default=None)
    device_name: str | None = Field(alias="DeviceName", default=None)
    build_version: str | None = Field(alias="BuildVersion", default=None)
    os_version: str | None = Field(alias="OSVersion", default=None)
    ethernet_mac: str | None = Field(alias="EthernetMAC", default=None)
    is_apple_silicon: bool | None = Field(alias="IsAppleSilicon", default=None)
    has_battery: bool | None = Field(alias="HasBattery", default=None)
    is_multi_user: bool | None = Field(alias="IsMultiUser", default=None)
    supports_lom_device: bool | None = Field(alias="SupportsLOMDevice", default=None)
    is_supervised: bool | None = Field(alias="IsSupervised", default=None)
    awaiting_configuration: bool | None = Field(alias="AwaitingConfiguration", default=None)


class DeviceInformationResponse(_Response):
    query_responses: QueryResponses = Field(alias="QueryResponses")


class ManagementStatus(_Response):
    enrolled_via_dep: bool | None = Field(alias="EnrolledViaDEP", default=None)
    user_approved_enrollment: bool | None = Field(alias="UserApprovedEnrollment", default=None)
    is_user_enrollment: bool | None = Field(alias="IsUserEnrollment", default=None)


class SecurityInfo(_Response):
    fde_enabled: bool | None = Field(alias="FDE_Enabled", default=None)
    fde_has_personal_recovery_key: bool | None = Field(
        alias="FDE_HasPersonalRecoveryKey", default=None
    )
    fde_personal_recovery_key_cms: Any = Field(alias="FDE_PersonalRecoveryKeyCMS", default=None)
    sip_enabled: bool | None = Field(alias="SystemIntegrityProtectionEnabled", default=None)
    management_status: ManagementStatus | None = Field(alias="ManagementStatus", default=None)


class SecurityInfoResponse(_Response):
    security_info: SecurityInfo = Field(alias="SecurityInfo")


class PayloadItem(_Response):
    identifier: str = Field(alias="PayloadIdentifier", default="")
    type: str = Field(alias="PayloadType", default="")
    uuid: str = Field(alias="PayloadUUID", default="")


class ProfileListItem(_Response):
    identifier: str = Field(alias="PayloadIdentifier")
    uuid: str = Field(alias="PayloadUUID", default="")
    display_name: str | None = Field(alias="PayloadDisplayName", default=None)
    is_managed: bool | None = Field(alias="IsManaged", default=None)
    content: list[PayloadItem] = Field(alias="PayloadContent", default_factory=list)


class ProfileListResponse(_Response):
    profile_list: list[ProfileListItem] = Field(alias="ProfileList", default_factory=list)


class CertificateListItem(_Response):
    common_name: str = Field(alias="CommonName", default="")
    data: Any = Field(alias="Data")
    is_identity: bool = Field(alias="IsIdentity", default=False)

    @property
    def der(self) -> bytes:
        value = plist.from_json(self.data)
        return value if isinstance(value, bytes) else b""


class CertificateListResponse(_Response):
    certificate_list: list[CertificateListItem] = Field(
        alias="CertificateList", default_factory=list
    )


class InstalledApplication(_Response):
    identifier: str | None = Field(alias="Identifier", default=None)
    name: str | None = Field(alias="Name", default=None)
    short_version: str | None = Field(alias="ShortVersion", default=None)
    version: str | None = Field(alias="Version", default=None)


class InstalledApplicationListResponse(_Response):
    installed_application_list: list[InstalledApplication] = Field(
        alias="InstalledApplicationList", default_factory=list
    )


class GenericResponse(_Response):
    """Commands whose answer carries nothing beyond the status (InstallProfile, ...)."""


R = TypeVar("R", bound=BaseModel)


def typed(report: CommandReport, model: type[R]) -> R:
    """View a report's body as one of the typed responses above."""
    return model.model_validate(report.body)
