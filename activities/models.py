"""Activity inputs and outputs (kept free of I/O imports so workflows can use them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from protocol.commands import Command


class QueuedCommand(BaseModel):
    command_uuid: str
    command: Command


# Attempts of one send activity before the step records what could not be sent and
# tries again at its next re-push; the last attempt returns instead of raising.
SEND_MAX_ATTEMPTS = 8


class SendStepInput(BaseModel):
    enrollment_id: str
    commands: list[QueuedCommand]
    push: bool = True
    # UUIDs an earlier send may or may not have queued (its last attempt was lost). On a
    # server that queues every copy (MicroMDM) only read-only ones are posted again.
    unsure: list[str] = Field(default_factory=list)


class SendStepResult(BaseModel):
    queued: list[str] = Field(default_factory=list)
    # UUIDs the MDM server already had: a retried enqueue, not a failure.
    already_queued: list[str] = Field(default_factory=list)
    push_error: str | None = None
    # Not queued: the MDM server stayed unreachable through the last attempt.
    unsent: list[str] = Field(default_factory=list)
    # Posted, but the answer was lost, on a server that would queue a second copy: not
    # posted again, so the device runs the command at most once.
    uncertain: list[str] = Field(default_factory=list)
    send_error: str | None = None


class PushInput(BaseModel):
    enrollment_ids: list[str]


class PushResult(BaseModel):
    push_error: str | None = None


# Enrollments one fleet send may address (a fleet run's chunk).
FLEET_SEND_MAX_IDS = 1000


class FleetSendInput(BaseModel):
    """Every command to every listed enrollment, each CommandUUID shared by all of them.

    NanoMDM stores a CommandUUID once, in one enqueue request: a command's enrollments
    all go in one request (its URL holds every ID), and a UUID sent again reads as
    "already queued". So a CommandUUID belongs to the enrollments of one fleet send;
    a later send of it may name those enrollments or fewer, never others.
    """

    enrollment_ids: list[str]
    commands: list[QueuedCommand]
    push: bool = True
    # Per enrollment, UUIDs an earlier send may or may not have queued (as
    # SendStepInput.unsure): on a server that queues every copy (MicroMDM) only
    # read-only ones are posted again.
    unsure: dict[str, list[str]] = Field(default_factory=dict)


class DeviceSendProblem(BaseModel):
    """What went wrong for one enrollment; devices without a problem got every command queued."""

    # Certainly not queued: the MDM server stayed unreachable through the last attempt.
    unsent: list[str] = Field(default_factory=list)
    # Fate unknown on a server that queues copies: not posted again.
    uncertain: list[str] = Field(default_factory=list)
    error: str | None = None
    # Permanent for this device only (unknown enrollment, checked out): its step cannot run.
    failed: str | None = None


class FleetSendResult(BaseModel):
    problems: dict[str, DeviceSendProblem] = Field(default_factory=dict)
    # One summary (counts and the first few errors), never one line per device.
    push_error: str | None = None
    # Enrollments a push went out for without an error reported.
    pushed: int = 0


class InventoryUpdate(BaseModel):
    enrollment_id: str
    values: dict[str, Any]
    source: str


class DeviceInfoLogEntry(BaseModel):
    enrollment_id: str
    command_uuid: str
    query_responses: dict[str, Any]


class StartRequest(BaseModel):
    """Start ``workflow`` for ``ids``, or for every enrolled device when ``ids`` is None."""

    workflow: str
    ids: list[str] | None = None
    context: str | None = None


class StartSummary(BaseModel):
    instance_id: str
    started: int
    refused: int


class EscrowCms(BaseModel):
    """A CMS blob a device encrypted to our escrow certificate (ciphertext only)."""

    enrollment_id: str
    cms: dict[str, str]  # plist <data> in JSON form: {"$data": base64}
    kind: str = "prk"
    source: str


class EscrowQuery(BaseModel):
    """Is a secret of this kind escrowed for this enrollment (never the secret itself)?"""

    enrollment_id: str
    kind: str = "prk"


class EscrowReceipt(BaseModel):
    secret_id: int


class ProfileSummary(BaseModel):
    identifier: str
    uuid: str


class ProfileInfoRequest(BaseModel):
    names: list[str]


class ProfileInfoResult(BaseModel):
    profiles: dict[str, ProfileSummary]


class CmdPlanRequest(BaseModel):
    name: str
    enrollment_id: str
    url_params: dict[str, str] = Field(default_factory=dict)


class CmdPlanResult(BaseModel):
    found: bool
    profile_names: list[str] = Field(default_factory=list)
    manifest_urls: list[str] = Field(default_factory=list)
    device_configured: bool = False
    awaiting_configuration: bool = False


class CertificateFacts(BaseModel):
    common_name: str
    data: dict[str, str]  # plist <data> in JSON form
    is_identity: bool


class CertEvaluation(BaseModel):
    certificates: list[CertificateFacts]
    cn_prefix: str = ""
    allow_non_identity: bool = False
    always_replace: bool = False
    until_expiry_sec: int = 0


class CertDecision(BaseModel):
    replace: bool
    reason: str


class DeviceOutcome(BaseModel):
    """How one device of a fleet run ended (kept in the store when its hold goes back)."""

    enrollment_id: str
    workflow_name: str
    instance_id: str
    status: str
    message: str = ""
    failure_type: str | None = None


class ReleaseHolds(BaseModel):
    """Drop a run's holds on these enrollments (``None``: all of the run's)."""

    workflow_id: str
    enrollment_ids: list[str] | None = None
    # How those devices ended: recorded in the same transaction as the release.
    outcomes: list[DeviceOutcome] = Field(default_factory=list)
