"""Test doubles for the activities, so the step engine is tested on the time-skipping server.

The end-to-end tests use the real activities against the simulator; here the MDM server
is replaced by a recorder so a test decides exactly when and what the device answers.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError

from activities.models import (
    CertDecision,
    CertEvaluation,
    CmdPlanRequest,
    CmdPlanResult,
    DeviceInfoLogEntry,
    EscrowCms,
    EscrowQuery,
    EscrowReceipt,
    FleetSendInput,
    FleetSendResult,
    InventoryUpdate,
    ProfileInfoRequest,
    ProfileInfoResult,
    ProfileSummary,
    PushInput,
    PushResult,
    ReleaseHolds,
    SendStepInput,
    SendStepResult,
)
from mdmflow.temporal_calls.runs import run_result
from protocol import plist
from protocol.results import CommandReport, parse_report
from workflows.models import EmergencyStopNotice, FleetResult, GateInput, GateResult


class RecordingMdm:
    """Records what the engine sends; can be told to fail permanently."""

    def __init__(self) -> None:
        self.sent: list[SendStepInput] = []
        self.fleet_sends: list[FleetSendInput] = []
        self.pushes: list[PushInput] = []
        self.sent_event = asyncio.Event()
        self.fail_with: str | None = None

    @activity.defn(name="mdm.send_step")
    async def send_step(self, inp: SendStepInput) -> SendStepResult:
        if self.fail_with:
            raise ApplicationError(self.fail_with, non_retryable=True)
        self.sent.append(inp)
        self.sent_event.set()
        return SendStepResult(queued=[c.command_uuid for c in inp.commands])

    @activity.defn(name="mdm.send_fleet")
    async def send_fleet(self, inp: FleetSendInput) -> FleetSendResult:
        """A fleet run's send, recorded as one send per device (and once as a whole)."""
        if self.fail_with:
            raise ApplicationError(self.fail_with, non_retryable=True)
        self.fleet_sends.append(inp)
        for eid in inp.enrollment_ids:
            self.sent.append(
                SendStepInput(
                    enrollment_id=eid, commands=inp.commands, unsure=inp.unsure.get(eid, [])
                )
            )
        self.sent_event.set()
        return FleetSendResult(pushed=len(inp.enrollment_ids))

    @activity.defn(name="mdm.push")
    async def push(self, inp: PushInput) -> PushResult:
        self.pushes.append(inp)
        return PushResult()

    def activities(self) -> list[Any]:
        return [self.send_step, self.send_fleet, self.push]

    async def wait_sent(self, count: int = 1, timeout: float = 10) -> list[SendStepInput]:
        async def _wait() -> None:
            while len(self.sent) < count:
                self.sent_event.clear()
                await self.sent_event.wait()

        await asyncio.wait_for(_wait(), timeout)
        return self.sent


class RecordingInventory:
    def __init__(self) -> None:
        self.updates: list[InventoryUpdate] = []
        self.logged: list[DeviceInfoLogEntry] = []

    @activity.defn(name="inventory.store")
    async def store(self, update: InventoryUpdate) -> None:
        self.updates.append(update)

    @activity.defn(name="inventory.log_device_information")
    async def log_device_information(self, entry: DeviceInfoLogEntry) -> None:
        self.logged.append(entry)

    @activity.defn(name="inventory.store_many")
    async def store_many(self, updates: list[InventoryUpdate]) -> None:
        self.updates.extend(updates)

    @activity.defn(name="inventory.log_device_information_many")
    async def log_device_information_many(self, entries: list[DeviceInfoLogEntry]) -> None:
        self.logged.extend(entries)

    def activities(self) -> list[Any]:
        return [
            self.store,
            self.log_device_information,
            self.store_many,
            self.log_device_information_many,
        ]


class RecordingHolds:
    """Records which devices a fleet run gave back."""

    def __init__(self) -> None:
        self.released: list[str] = []

    @activity.defn(name="holds.release")
    async def release(self, inp: ReleaseHolds) -> int:
        self.released.extend(inp.enrollment_ids or [])
        return len(inp.enrollment_ids or [])


class RecordingGovernance:
    """The emergency stop and the policy's verdict as a test sets them; records asks."""

    def __init__(self) -> None:
        self.stop: EmergencyStopNotice | None = None
        self.verdict = GateResult(allowed=True)
        self.gates: list[GateInput] = []
        self.requested: list[GateInput] = []
        self.decided: list[tuple[str, str, str]] = []

    @activity.defn(name="governance.emergency_stop")
    async def emergency_stop(self, workflow_name: str) -> EmergencyStopNotice | None:
        return self.stop

    @activity.defn(name="governance.gate")
    async def gate(self, inp: GateInput) -> GateResult:
        self.gates.append(inp)
        return self.verdict

    @activity.defn(name="governance.request_approval")
    async def request_approval(self, inp: GateInput) -> None:
        self.requested.append(inp)

    @activity.defn(name="governance.approval_decided")
    async def approval_decided(self, instance_id: str, status: str, by: str, reason: str) -> None:
        self.decided.append((instance_id, status, by))

    def activities(self) -> list[Any]:
        return [self.emergency_stop, self.gate, self.request_approval, self.approval_decided]


class StoredProfiles:
    """The profile and command-plan stores and the certificate rule, as a test sets them.

    Doubles ``profiles.info``, ``cmdplans.load``, ``enrollments.configured`` and
    ``certprof.evaluate``.
    """

    def __init__(self) -> None:
        self.profiles: dict[str, ProfileSummary] = {}
        self.plans: dict[str, CmdPlanResult] = {}
        self.configured: list[str] = []
        self.evaluations: list[CertEvaluation] = []

    def add(self, name: str, identifier: str, uuid: str) -> ProfileSummary:
        self.profiles[name] = ProfileSummary(identifier=identifier, uuid=uuid)
        return self.profiles[name]

    @activity.defn(name="profiles.info")
    async def info(self, req: ProfileInfoRequest) -> ProfileInfoResult:
        return ProfileInfoResult(
            profiles={n: self.profiles[n] for n in req.names if n in self.profiles}
        )

    @activity.defn(name="cmdplans.load")
    async def load_cmdplan(self, req: CmdPlanRequest) -> CmdPlanResult:
        return self.plans.get(req.name, CmdPlanResult(found=False))

    @activity.defn(name="enrollments.configured")
    async def configured_(self, enrollment_id: str) -> None:
        self.configured.append(enrollment_id)

    @activity.defn(name="certprof.evaluate")
    async def evaluate(self, req: CertEvaluation) -> CertDecision:
        """NanoCMD's rule without the expiry check: replace a missing match, or always."""
        self.evaluations.append(req)
        matching = [
            c
            for c in req.certificates
            if (req.allow_non_identity or c.is_identity) and c.common_name.startswith(req.cn_prefix)
        ]
        if len(matching) > 1:
            raise ApplicationError("more than one certificate matches", non_retryable=True)
        if not matching:
            return CertDecision(replace=True, reason="no matching certificate")
        if req.always_replace:
            return CertDecision(replace=True, reason="always replace")
        return CertDecision(replace=False, reason="certificate is fine")

    def activities(self) -> list[Any]:
        return [self.info, self.load_cmdplan, self.configured_, self.evaluate]


class RecordingEscrow:
    """Takes the CMS a device sent and hands back receipt numbers from ``first``."""

    def __init__(self, first: int = 7) -> None:
        self.stored: list[EscrowCms] = []
        self.next_id = first
        self.has_keys = True
        self.asked: list[str] = []

    @activity.defn(name="escrow.store_cms")
    async def store_cms(self, inp: EscrowCms) -> EscrowReceipt:
        self.stored.append(inp)
        self.next_id += 1
        return EscrowReceipt(secret_id=self.next_id - 1)

    @activity.defn(name="escrow.has_secret")
    async def has_secret(self, inp: EscrowQuery) -> bool:
        """Every device has a key escrowed unless ``has_keys`` is turned off."""
        self.asked.append(inp.enrollment_id)
        return self.has_keys


def report(
    enrollment_id: str,
    command_uuid: str,
    request_type: str,
    status: str = "Acknowledged",
    **body: Any,
) -> CommandReport:
    """A report built the way a device sends it (plist), parsed as the relay parses it."""
    doc: dict[str, Any] = {
        "CommandUUID": command_uuid,
        "RequestType": request_type,
        "Status": status,
        "UDID": enrollment_id,
        **body,
    }
    if status == "Error":
        doc["ErrorChain"] = [
            {"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "no"}
        ]
    return parse_report(plist.dumps(doc), enrollment_id)


async def outcome(handle: WorkflowHandle[Any, Any]) -> FleetResult:
    """How a run ended, whether it completed or failed.

    A fleet run that fails in Temporal (a device failed) carries its result in the
    failure's details; a one-device run of the workflow's own type returns it.
    """
    return FleetResult.model_validate(await run_result(handle))


def enrollment() -> str:
    return str(uuid.uuid4()).upper()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
