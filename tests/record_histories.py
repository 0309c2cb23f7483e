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
from tests.workflow_harness import RecordingInventory, RecordingMdm, enrollment, report
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.command_response import CommandResponseInput
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.models import ENGINE_REVISION, RunResult, WorkflowInput

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
    mdm, inv = RecordingMdm(), RecordingInventory()
    queue = "record"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[mdm.send_step, mdm.push, inv.store, inv.log_device_information],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):

        async def run(
            name: str, scenario: str, answers: list[tuple[int, str, str, dict[str, object]]]
        ) -> None:
            eid = enrollment()
            handle = await env.client.start_workflow(
                name,
                WorkflowInput(
                    enrollment_id=eid, instance_id=str(uuid.uuid4()), revision=ENGINE_REVISION
                ),
                id=routing.workflow_id(name, eid),
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
