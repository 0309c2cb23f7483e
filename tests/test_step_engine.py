"""The step engine on the time-skipping server: answers, NotNow, duplicates, timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from protocol import routing
from tests.workflow_harness import (
    RecordingGovernance,
    RecordingHolds,
    RecordingInventory,
    RecordingMdm,
    enrollment,
    outcome,
    report,
)
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.models import ENGINE_REVISION, FleetInput, RunResult, RunState, WorkflowInput

DEVINFO = {"QueryResponses": {"SerialNumber": "C02XYZ", "Model": "Mac16,10", "OSVersion": "15.4"}}
SECINFO = {"SecurityInfo": {"FDE_Enabled": False, "SystemIntegrityProtectionEnabled": True}}


class Harness:
    """Starts runs on a worker whose activities are recorders.

    ``fleet``: each start is a fleet run of one device (what the API starts);
    otherwise a one-device run of the workflow's own type (runs started before fleet
    runs). Per-device behaviour must be the same either way.
    """

    def __init__(self, env: WorkflowEnvironment, queue: str, fleet: bool = False) -> None:
        self.env = env
        self.queue = queue
        self.fleet = fleet
        self.mdm = RecordingMdm()
        self.inventory = RecordingInventory()
        self.holds = RecordingHolds()
        self.governance = RecordingGovernance()

    async def start(
        self, workflow: str = InventoryWorkflow.NAME, **kw: object
    ) -> tuple[str, WorkflowHandle[object, RunResult]]:
        eid = enrollment()
        if self.fleet:
            instance = str(uuid.uuid4())
            fleet_handle: WorkflowHandle[object, RunResult] = await self.env.client.start_workflow(
                FleetRunWorkflow.run,
                FleetInput(
                    workflow_name=workflow,
                    instance_id=instance,
                    enrollment_ids=[eid],
                    revision=ENGINE_REVISION,
                    **kw,  # type: ignore[arg-type]
                ),
                id=routing.fleet_workflow_id(workflow, instance, 0),
                task_queue=self.queue,
                result_type=RunResult,
            )
            return eid, fleet_handle
        inp = WorkflowInput(
            enrollment_id=eid,
            instance_id=str(uuid.uuid4()),
            revision=ENGINE_REVISION,
            **kw,  # type: ignore[arg-type]
        )
        handle: WorkflowHandle[object, RunResult] = await self.env.client.start_workflow(
            workflow,
            inp,
            id=routing.workflow_id(workflow, eid),
            task_queue=self.queue,
            result_type=RunResult,
        )
        return eid, handle


@asynccontextmanager
async def harness_on(
    env: WorkflowEnvironment, mdm: RecordingMdm | None = None, *, fleet: bool = False
) -> AsyncIterator[Harness]:
    """A worker with every workflow on its own task queue, ``mdm`` standing in for the server."""
    h = Harness(env, f"tq-{uuid.uuid4()}", fleet)
    if mdm is not None:
        h.mdm = mdm
    async with Worker(
        env.client,
        task_queue=h.queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[
            *h.mdm.activities(),
            *h.inventory.activities(),
            h.holds.release,
            *h.governance.activities(),
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):
        yield h


@pytest.fixture(params=["device", "fleet"])
async def harness(
    time_env: WorkflowEnvironment, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    async with harness_on(time_env, fleet=request.param == "fleet") as h:
        yield h


async def state(handle: WorkflowHandle[object, RunResult]) -> RunState:
    return await handle.query("state", result_type=RunState)


async def test_acknowledged_step_completes_and_stores_inventory(harness: Harness) -> None:
    eid, handle = await harness.start()
    (sent,) = await harness.mdm.wait_sent()
    assert [c.command.request_type for c in sent.commands] == ["DeviceInformation", "SecurityInfo"]
    devinfo, secinfo = (c.command_uuid for c in sent.commands)
    assert all(routing.parse_command_uuid(u) is not None for u in (devinfo, secinfo))
    await handle.signal("command_report", report(eid, devinfo, "DeviceInformation", **DEVINFO))
    await handle.signal("command_report", report(eid, secinfo, "SecurityInfo", **SECINFO))
    result = await outcome(handle)
    assert result.status == "completed"
    (update,) = harness.inventory.updates
    assert update.values == {
        "serial_number": "C02XYZ",
        "model": "Mac16,10",
        "os_version": "15.4",
        "fde_enabled": False,
        "sip_enabled": True,
    }


async def test_notnow_then_ack_completes_once_and_duplicates_change_nothing(
    harness: Harness,
) -> None:
    eid, handle = await harness.start()
    (sent,) = await harness.mdm.wait_sent()
    devinfo, secinfo = (c.command_uuid for c in sent.commands)
    await handle.signal("command_report", report(eid, devinfo, "DeviceInformation", "NotNow"))
    mid = await state(handle)
    assert mid.steps[0].commands[0].not_now_count == 1
    assert not mid.steps[0].commands[0].answered
    ack = report(eid, devinfo, "DeviceInformation", **DEVINFO)
    await handle.signal("command_report", ack)
    await handle.signal("command_report", ack)  # duplicated webhook
    other = report(enrollment(), secinfo, "SecurityInfo", **SECINFO)
    await handle.signal("command_report", other)  # somebody else's device
    await handle.signal("command_report", report(eid, secinfo, "SecurityInfo", **SECINFO))
    await handle.signal("command_report", report(eid, devinfo, "DeviceInformation", "NotNow"))
    result = await outcome(handle)
    assert result.status == "completed"
    # The store write is a local activity: a report arriving during the run's last
    # workflow task makes that task run again, and the write with it. What it writes is
    # the same each time (the duplicate Ack and the late NotNow change nothing).
    updates = {u.model_dump_json() for u in harness.inventory.updates}
    assert len(updates) == 1, harness.inventory.updates
    final = await state(handle)
    assert final.ignored_reports == 2  # the duplicate Ack and the late NotNow
    assert final.rejected_reports == 1
    assert final.steps[0].commands[0].not_now_count == 1
    assert final.steps[0].status == "completed"


async def test_silent_device_is_repushed_reissued_and_times_out_after_72h(
    harness: Harness,
) -> None:
    _eid, handle = await harness.start()
    result = await outcome(handle)
    assert result.status == "timed_out"
    assert "timed out" in result.message
    final = await state(handle)
    step = final.steps[0]
    duration = step.finished_at - step.started_at  # type: ignore[operator]
    assert abs(duration - timedelta(hours=72)) < timedelta(seconds=1)
    # re-pushed on the backoff schedule, and the read-only commands re-issued
    assert len(harness.mdm.pushes) >= 5
    reissued = [c for s in harness.mdm.sent[1:] for c in s.commands]
    assert {c.command.request_type for c in reissued} == {"DeviceInformation", "SecurityInfo"}
    assert step.commands[0].reissued_as
    assert harness.inventory.updates == []


async def test_input_repush_schedule_replaces_the_default(harness: Harness) -> None:
    # 10 s intervals in a 45 s step: re-push at 10 s, re-issue at 20 s, re-push at 30 s
    # and 40 s. The default schedule (first re-push after 1 minute) would send nothing.
    _eid, handle = await harness.start(repush_after_seconds=[10.0], step_timeout_seconds=45)
    result = await outcome(handle)
    assert result.status == "timed_out"
    assert len(harness.mdm.pushes) == 3
    assert len(harness.mdm.sent) == 2  # the first send and the one re-issue
    reissued = {c.command.request_type for c in harness.mdm.sent[1].commands}
    assert reissued == {"DeviceInformation", "SecurityInfo"}
    step = (await state(handle)).steps[0]
    assert step.pushes == 5
    assert all(len(c.reissued_as) == 1 for c in step.commands)


async def test_default_repush_schedule_is_silent_for_the_first_minute(harness: Harness) -> None:
    _eid, handle = await harness.start(step_timeout_seconds=45)
    assert (await outcome(handle)).status == "timed_out"
    assert harness.mdm.pushes == [] and len(harness.mdm.sent) == 1


async def test_answer_to_reissued_uuid_completes_the_command(harness: Harness) -> None:
    eid, handle = await harness.start()
    await harness.mdm.wait_sent(1)
    # let two re-push intervals pass (1 + 5 minutes) so the commands are re-issued
    await harness.env.sleep(timedelta(minutes=7))
    sent = await harness.mdm.wait_sent(2)
    aliases = {c.command.request_type: c.command_uuid for c in sent[1].commands}
    original = {c.command.request_type: c.command_uuid for c in sent[0].commands}
    assert set(aliases.values()).isdisjoint(original.values())
    await handle.signal(
        "command_report",
        report(eid, aliases["DeviceInformation"], "DeviceInformation", **DEVINFO),
    )
    await handle.signal(
        "command_report", report(eid, original["SecurityInfo"], "SecurityInfo", **SECINFO)
    )
    result = await outcome(handle)
    assert result.status == "completed"


async def test_workflow_step_timeout_overrides_engine_default(harness: Harness) -> None:
    _eid, handle = await harness.start(step_timeout_seconds=90)
    result = await outcome(handle)
    assert result.status == "timed_out"
    step = (await state(handle)).steps[0]
    assert step.deadline is not None
    assert abs(step.deadline - step.started_at - timedelta(seconds=90)) < timedelta(seconds=1)


async def test_device_error_fails_the_run_with_the_error_chain(harness: Harness) -> None:
    eid, handle = await harness.start(DevInfoLogWorkflow.NAME)
    (sent,) = await harness.mdm.wait_sent()
    await handle.signal(
        "command_report",
        report(eid, sent.commands[0].command_uuid, "DeviceInformation", "Error"),
    )
    result = await outcome(handle)
    assert result.status == "failed"
    assert "MCMDMErrorDomain 12021" in result.message
    assert harness.inventory.logged == []


async def test_permanent_enqueue_error_fails_the_workflow_clearly(harness: Harness) -> None:
    harness.mdm.fail_with = "MDM server rejected the API key (401)"
    _eid, handle = await harness.start()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert "did not take the commands" in str(info.value.cause)
    assert "401" in str(info.value.cause)


async def test_a_run_from_a_newer_revision_waits_for_an_upgraded_worker(
    harness: Harness,
) -> None:
    """An old worker must not record history the new code could not replay."""
    eid = enrollment()
    handle = await harness.env.client.start_workflow(
        DevInfoLogWorkflow.NAME,
        WorkflowInput(enrollment_id=eid, instance_id="i", revision=ENGINE_REVISION + 1),
        id=routing.workflow_id(DevInfoLogWorkflow.NAME, eid),
        task_queue=harness.queue,
        result_type=RunResult,
    )
    failure = ""
    for _ in range(100):
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_task_failed_event_attributes"):
                failure = event.workflow_task_failed_event_attributes.failure.message
        if failure:
            break
        await asyncio.sleep(0.05)
    assert "upgrade the worker" in failure
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert harness.mdm.sent == []  # nothing reached the device
    await handle.terminate("test done")
