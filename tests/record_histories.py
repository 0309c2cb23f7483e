"""Record workflow histories for the replay test: ``python -m tests.record_histories``.

Run it when a workflow's logic changes on purpose (together with ``workflow.patched``);
the replay test then proves that histories recorded by every earlier version still
replay, i.e. that running workflows survive the upgrade.

Every one of the eight workflows is recorded as a fleet run of one device (what a start
starts), among them fvenable's polling loop, a suspended step retried by an operator and
a profile rollback; plus a chunk of four devices, and (revision 5) a chunk held by the
emergency stop then released and a lock approved by a second person.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.models import CmdPlanResult
from mdmflow import __version__
from protocol import routing
from tests.conftest import start_time_skipping
from tests.workflow_harness import (
    RecordingEscrow,
    RecordingGovernance,
    RecordingHolds,
    RecordingInventory,
    RecordingMdm,
    StoredProfiles,
    enrollment,
    report,
)
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.certprof import CertProfWorkflow
from workflows.cmdplan import CmdPlanWorkflow
from workflows.command_response import CommandResponseInput
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.fvenable import FileVaultEnableWorkflow
from workflows.fvrotate import FileVaultRotateWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.models import (
    ENGINE_REVISION,
    ApprovalDecision,
    ControlRequest,
    EmergencyStopNotice,
    EnrollmentReset,
    FleetInput,
    GateResult,
    RunResult,
    RunState,
)
from workflows.profile import ProfileWorkflow

OUT = Path(__file__).parent / "histories"
DEVINFO = {"QueryResponses": {"SerialNumber": "C02XYZ", "Model": "Mac16,10"}}
SECINFO = {"SecurityInfo": {"FDE_Enabled": True, "SystemIntegrityProtectionEnabled": True}}
FV_OFF = {"SecurityInfo": {"FDE_Enabled": False}}
CMS = b"0\x82\x01\x00 CMS envelope"
FV_ON = {"SecurityInfo": {"FDE_Enabled": True, "FDE_PersonalRecoveryKeyCMS": CMS}}
WIFI = {"PayloadIdentifier": "com.example.wifi", "PayloadUUID": "11111111-AAAA-4AAA-8AAA-1111"}
VPN = {"PayloadIdentifier": "com.example.vpn", "PayloadUUID": "22222222-BBBB-4BBB-8BBB-2222"}
ACK = "Acknowledged"
# One step's answers, in command order: a status, or (status, body); or an operator's
# action on the suspended step ("retry", "skip").
Answer = str | tuple[str, dict[str, Any]]
Script = list[list[Answer] | str]


def save(scenario: str, history: WorkflowHistory) -> None:
    path = OUT / f"v{__version__}-{scenario}.json"
    if path.exists():  # histories of earlier code are kept as they were
        print("kept", path)
        return
    path.write_text(history.to_json())
    print("recorded", path)


async def _state(handle: WorkflowHandle[Any, Any], eid: str) -> RunState:
    state: RunState = await handle.query("state", eid, result_type=RunState)
    return state


async def pending(handle: WorkflowHandle[Any, Any], eid: str) -> None:
    """Wait until the device's step has its send's result: answers that overtake the
    send make the run cancel the send activity, which the time-skipping server does not
    always survive."""
    for _ in range(400):
        steps = (await _state(handle, eid)).steps
        if steps and steps[-1].status == "pending":
            return
        await asyncio.sleep(0.025)
    raise RuntimeError(f"{eid}: the step never became pending")


async def suspended(handle: WorkflowHandle[Any, Any], eid: str) -> None:
    for _ in range(400):
        if (await _state(handle, eid)).status == "suspended":
            return
        await asyncio.sleep(0.025)
    raise RuntimeError(f"{eid}: never suspended")


async def ended(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait for the run's end; a fleet run whose device failed fails in Temporal."""
    try:
        await handle.result()
    except WorkflowFailureError:
        pass  # failed runs are recorded too


async def main() -> None:
    # plain payloads: the replay test reads them with any install's keys
    env = await start_time_skipping(pydantic_data_converter)
    mdm, inv, holds = RecordingMdm(), RecordingInventory(), RecordingHolds()
    governance = RecordingGovernance()
    stored, escrow = StoredProfiles(), RecordingEscrow()
    stored.add("wifi", WIFI["PayloadIdentifier"], WIFI["PayloadUUID"])
    stored.add("vpn", VPN["PayloadIdentifier"], VPN["PayloadUUID"])
    stored.add("scep", "com.example.scep", "66666666-FFFF-4FFF-8FFF-6666")
    stored.plans["setup"] = CmdPlanResult(
        found=True,
        profile_names=["wifi"],
        manifest_urls=["https://apps.example.com/munki.plist"],
        device_configured=True,
        awaiting_configuration=True,
    )
    queue = "record"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[
            *mdm.activities(),
            *inv.activities(),
            holds.release,
            *stored.activities(),
            escrow.store_cms,
            escrow.has_secret,
            *governance.activities(),
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):

        async def start_one(name: str, **kw: Any) -> tuple[str, WorkflowHandle[Any, RunResult]]:
            """What a start starts: a fleet run, here of one device."""
            eid = enrollment()
            instance = str(uuid.uuid4())
            handle = await env.client.start_workflow(
                FleetRunWorkflow.run,
                FleetInput(
                    workflow_name=name,
                    instance_id=instance,
                    enrollment_ids=[eid],
                    revision=ENGINE_REVISION,
                    **kw,
                ),
                id=routing.fleet_workflow_id(name, instance, 0),
                task_queue=queue,
                result_type=RunResult,
            )
            return eid, handle

        async def run(
            name: str, scenario: str, answers: list[tuple[int, str, str, dict[str, object]]]
        ) -> None:
            eid, handle = await start_one(name)
            sent = await mdm.wait_sent(len(mdm.sent) + 1)
            step = sent[-1]
            if answers:
                await pending(handle, eid)
            for index, request_type, status, body in answers:
                await handle.signal(
                    "command_report",
                    report(eid, step.commands[index].command_uuid, request_type, status, **body),
                )
            await ended(handle)
            save(scenario, await handle.fetch_history())

        await run(
            InventoryWorkflow.NAME,
            "inventory-notnow-then-ack",
            [
                (0, "DeviceInformation", "NotNow", {}),
                (0, "DeviceInformation", "Acknowledged", DEVINFO),
                (0, "DeviceInformation", "Acknowledged", DEVINFO),
                (1, "SecurityInfo", "Acknowledged", SECINFO),
            ],
        )
        await run(InventoryWorkflow.NAME, "inventory-timeout", [])
        await run(
            DevInfoLogWorkflow.NAME, "devinfolog-error", [(0, "DeviceInformation", "Error", {})]
        )
        await run(
            DevInfoLogWorkflow.NAME,
            "devinfolog-ack",
            [(0, "DeviceInformation", "Acknowledged", DEVINFO)],
        )
        await run(
            LockWorkflow.NAME,
            "lock-notnow-then-ack",
            [(0, "DeviceLock", "NotNow", {}), (0, "DeviceLock", "Acknowledged", {})],
        )
        await run(LockWorkflow.NAME, "lock-error", [(0, "DeviceLock", "Error", {})])

        async def chunk(scenario: str) -> None:
            """Four devices: NotNow then Ack, Error, silent (re-pushed, re-issued, timed
            out) and re-enrolled (its commands sent again, then answered)."""
            ids = [enrollment() for _ in range(4)]
            acked, erring, _silent, reenrolled = ids
            instance = str(uuid.uuid4())
            handle = await env.client.start_workflow(
                FleetRunWorkflow.run,
                FleetInput(
                    workflow_name=InventoryWorkflow.NAME,
                    instance_id=instance,
                    enrollment_ids=ids,
                    step_timeout_seconds=900,
                    revision=ENGINE_REVISION,
                ),
                id=routing.fleet_workflow_id(InventoryWorkflow.NAME, instance, 0),
                task_queue=queue,
            )
            sent = await mdm.wait_sent(len(mdm.sent) + 4)
            devinfo, secinfo = (c.command_uuid for c in sent[-1].commands)
            await handle.signal(
                FleetRunWorkflow.command_reports,
                [
                    report(acked, devinfo, "DeviceInformation", "NotNow"),
                    report(erring, devinfo, "DeviceInformation", "Error"),
                    report(erring, secinfo, "SecurityInfo", **SECINFO),
                ],
            )
            await handle.signal(
                FleetRunWorkflow.enrollment_reset,
                EnrollmentReset(enrollment_id=reenrolled, reason="re-enrolled"),
            )
            again = (await mdm.wait_sent(len(mdm.sent) + 1))[-1]
            await pending(handle, reenrolled)
            aliases = [c.command_uuid for c in again.commands]
            await handle.signal(
                FleetRunWorkflow.command_reports,
                [
                    report(acked, devinfo, "DeviceInformation", **DEVINFO),
                    report(acked, secinfo, "SecurityInfo", **SECINFO),
                    report(reenrolled, aliases[0], "DeviceInformation", **DEVINFO),
                    report(reenrolled, aliases[1], "SecurityInfo", **SECINFO),
                ],
            )
            await ended(handle)
            save(scenario, await handle.fetch_history())

        await chunk("fleet-chunk-notnow-error-timeout-reenrolled")

        async def story(name: str, scenario: str, script: Script, **kw: Any) -> None:
            """One device's story, step by step: each step answered once its send is
            confirmed (the step is pending), operator actions on suspended steps."""
            eid, handle = await start_one(name, **kw)

            steps = 0
            for entry in script:
                if isinstance(entry, str):
                    await suspended(handle, eid)
                    await handle.execute_update(
                        FleetRunWorkflow.control,
                        ControlRequest(action=entry, enrollment_ids=[eid], actor="recorder"),  # type: ignore[arg-type]
                    )
                    continue
                while len([s for s in mdm.sent if s.enrollment_id == eid]) <= steps:
                    await mdm.wait_sent(len(mdm.sent) + 1)
                sent = [s for s in mdm.sent if s.enrollment_id == eid][steps]
                steps += 1
                await pending(handle, eid)
                reports = []
                for command, answer in zip(sent.commands, entry, strict=True):
                    status, body = (answer, {}) if isinstance(answer, str) else answer
                    reports.append(
                        report(
                            eid, command.command_uuid, command.command.request_type, status, **body
                        )
                    )
                await handle.signal(FleetRunWorkflow.command_reports, reports)
            await ended(handle)
            save(scenario, await handle.fetch_history())

        def listing(*profiles: dict[str, str]) -> Answer:
            return ACK, {"ProfileList": list(profiles)}

        await story(
            ProfileWorkflow.NAME,
            "profile-install-remove-verified",
            [[listing(VPN)], [ACK, ACK], [listing(WIFI)]],
            context="wifi,-vpn",
        )
        await story(
            ProfileWorkflow.NAME,
            "profile-rollback",
            [[listing()], [ACK, "Error"], [ACK]],
            context="wifi,vpn",
            rollback=True,
        )
        await story(
            ProfileWorkflow.NAME,
            "profile-suspended-then-retried",
            [[listing()], [ACK, "Error"], "retry", [ACK], [listing(WIFI, VPN)]],
            context="wifi,vpn",
            on_failure="suspend",
        )
        await story(
            ProfileWorkflow.NAME,
            "profile-list-skipped",
            [["Error"], "skip", [ACK], [listing(WIFI)]],
            context="wifi",
            on_failure="suspend",
        )
        await story(
            LockWorkflow.NAME,
            "lock-suspended-then-retried",
            [["Error"], "retry", [ACK]],
            on_failure="suspend",
        )
        await story(
            CmdPlanWorkflow.NAME,
            "cmdplan-configured-verified",
            [[ACK, ACK, ACK], [listing(WIFI)]],
            context="setup",
        )
        await story(
            CmdPlanWorkflow.NAME,
            "cmdplan-error-rollback",
            [[ACK, "Error", ACK], [ACK]],
            context="setup",
            rollback=True,
        )
        await story(
            CertProfWorkflow.NAME,
            "certprof-install",
            [[(ACK, {"CertificateList": []})], [ACK]],
            context=json.dumps({"profile": "scep", "filter": {"cn_prefix": "mdmflow"}}),
        )
        await story(
            FileVaultEnableWorkflow.NAME,
            "fvenable-poll-off-then-on",
            [[ACK], [(ACK, FV_OFF)], [(ACK, FV_ON)]],
            context=json.dumps({"poll_seconds": 0.2, "max_polls": 5}),
        )
        await story(
            FileVaultEnableWorkflow.NAME,
            "fvenable-poll-skipped",
            [[ACK], ["Error"], "skip", [(ACK, FV_ON)]],
            context=json.dumps({"poll_seconds": 0.2, "max_polls": 5}),
            on_failure="suspend",
        )
        await story(
            FileVaultRotateWorkflow.NAME,
            "fvrotate-ack",
            [[(ACK, {"RotateResult": {"EncryptedNewRecoveryKey": CMS}})]],
        )
        await story(FileVaultRotateWorkflow.NAME, "fvrotate-error", [["Error"]])

        async def command_response(scenario: str, revision: int) -> None:
            """A foreign SecurityInfo answer handed to the inventory (AllCommandResponse)."""
            eid = enrollment()
            handle = await env.client.start_workflow(
                "mdmflow.command_response.v1",
                CommandResponseInput(
                    subscriber=InventoryWorkflow.NAME,
                    report=report(eid, "foreign-uuid", "SecurityInfo", **SECINFO),
                    revision=revision,
                ),
                id=f"acr/inv/{eid}/foreign-uuid/Acknowledged",
                task_queue=queue,
            )
            await handle.result()
            save(scenario, await handle.fetch_history())

        async def halted_then_released(scenario: str) -> None:
            """Revision 5: a stop engaged before the run starts holds both devices at
            their first step; its release (the API's broadcast) lets them go on."""
            governance.stop = EmergencyStopNotice(engaged=True, reason="recording", by="root")
            ids = [enrollment() for _ in range(2)]
            instance = str(uuid.uuid4())
            handle = await env.client.start_workflow(
                FleetRunWorkflow.run,
                FleetInput(
                    workflow_name=InventoryWorkflow.NAME,
                    instance_id=instance,
                    enrollment_ids=ids,
                    revision=ENGINE_REVISION,
                ),
                id=routing.fleet_workflow_id(InventoryWorkflow.NAME, instance, 0),
                task_queue=queue,
            )
            for eid in ids:
                for _ in range(400):
                    if (await _state(handle, eid)).status == "halted":
                        break
                    await asyncio.sleep(0.025)
            governance.stop = None
            await handle.signal(
                FleetRunWorkflow.emergency_stop, EmergencyStopNotice(engaged=False, by="root")
            )
            sent = await mdm.wait_sent(len(mdm.sent) + 2)
            devinfo, secinfo = (c.command_uuid for c in sent[-1].commands)
            await pending(handle, ids[0])
            await handle.signal(
                FleetRunWorkflow.command_reports,
                [
                    r
                    for eid in ids
                    for r in (
                        report(eid, devinfo, "DeviceInformation", **DEVINFO),
                        report(eid, secinfo, "SecurityInfo", **SECINFO),
                    )
                ],
            )
            await ended(handle)
            save(scenario, await handle.fetch_history())

        await halted_then_released("inventory-halted-then-released")

        async def approved_lock(scenario: str) -> None:
            """Revision 5: the policy asks for approval before DeviceLock; bob approves."""
            governance.verdict = GateResult(allowed=True, approval_required=True)
            eid, handle = await start_one(LockWorkflow.NAME, started_by="alice")
            for _ in range(400):
                if (await _state(handle, eid)).status == "awaiting_approval":
                    break
                await asyncio.sleep(0.025)
            await handle.execute_update(
                FleetRunWorkflow.approval, ApprovalDecision(approve=True, user="bob")
            )
            step = (await mdm.wait_sent(len(mdm.sent) + 1))[-1]
            await pending(handle, eid)
            await handle.signal(
                FleetRunWorkflow.command_reports,
                [report(eid, step.commands[0].command_uuid, "DeviceLock")],
            )
            await ended(handle)
            governance.verdict = GateResult(allowed=True)
            save(scenario, await handle.fetch_history())

        await approved_lock("lock-approved-by-a-second-person")

        # revision 1: the path of runs started by v0.1 (a regular activity)
        await command_response("command-response-revision1", 1)
        await command_response("command-response", ENGINE_REVISION)
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
