"""Record workflow histories for the replay test: ``python -m tests.record_histories``.

Run it when a workflow's logic changes on purpose (together with ``workflow.patched``);
the replay test then proves that histories recorded by every earlier version still
replay, i.e. that running workflows survive the upgrade.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from mdmflow import __version__
from protocol import routing
from tests.conftest import start_time_skipping
from tests.workflow_harness import (
    RecordingHolds,
    RecordingInventory,
    RecordingMdm,
    enrollment,
    report,
)
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.command_response import CommandResponseInput
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.models import (
    ENGINE_REVISION,
    EnrollmentReset,
    FleetInput,
    RunResult,
)

OUT = Path(__file__).parent / "histories"
DEVINFO = {"QueryResponses": {"SerialNumber": "C02XYZ", "Model": "Mac16,10"}}
SECINFO = {"SecurityInfo": {"FDE_Enabled": True, "SystemIntegrityProtectionEnabled": True}}


def save(scenario: str, history: WorkflowHistory) -> None:
    path = OUT / f"v{__version__}-{scenario}.json"
    if path.exists():  # histories of earlier code are kept as they were
        print("kept", path)
        return
    path.write_text(history.to_json())
    print("recorded", path)


async def main() -> None:
    # plain payloads: the replay test reads them with any install's keys
    env = await start_time_skipping(pydantic_data_converter)
    mdm, inv, holds = RecordingMdm(), RecordingInventory(), RecordingHolds()
    queue = "record"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[*mdm.activities(), *inv.activities(), holds.release],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):

        async def run(
            name: str, scenario: str, answers: list[tuple[int, str, str, dict[str, object]]]
        ) -> None:
            # what a start starts: a fleet run, here of one device
            eid = enrollment()
            instance = str(uuid.uuid4())
            handle = await env.client.start_workflow(
                FleetRunWorkflow.run,
                FleetInput(
                    workflow_name=name,
                    instance_id=instance,
                    enrollment_ids=[eid],
                    revision=ENGINE_REVISION,
                ),
                id=routing.fleet_workflow_id(name, instance, 0),
                task_queue=queue,
                result_type=RunResult,
            )
            sent = await mdm.wait_sent(len(mdm.sent) + 1)
            step = sent[-1]
            for index, request_type, status, body in answers:
                await handle.signal(
                    "command_report",
                    report(eid, step.commands[index].command_uuid, request_type, status, **body),
                )
            await handle.result()
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
            await handle.result()
            save(scenario, await handle.fetch_history())

        await chunk("fleet-chunk-notnow-error-timeout-reenrolled")

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

        # revision 1: the path of runs started by v0.1 (a regular activity)
        await command_response("command-response-revision1", 1)
        await command_response("command-response", ENGINE_REVISION)
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
