"""Fleet runs on the time-skipping server: many devices in one run, each its own story."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from protocol import routing
from protocol.results import CommandReport
from tests.test_step_engine import DEVINFO, SECINFO, Harness, harness_on
from tests.workflow_harness import enrollment, outcome, report
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.models import (
    ENGINE_REVISION,
    DeviceStatesPage,
    EnrollmentReset,
    FleetInput,
    FleetResult,
    FleetSummary,
    RunState,
)

FleetHandle = WorkflowHandle[FleetRunWorkflow, FleetResult]


@pytest.fixture
async def harness(time_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    async with harness_on(time_env, fleet=True) as h:
        yield h


async def start_fleet(
    h: Harness, ids: list[str], workflow: str = InventoryWorkflow.NAME, **kw: object
) -> FleetHandle:
    instance = str(uuid.uuid4())
    return await h.env.client.start_workflow(
        FleetRunWorkflow.run,
        FleetInput(
            workflow_name=workflow,
            instance_id=instance,
            chunk=3,
            enrollment_ids=ids,
            revision=ENGINE_REVISION,
            **kw,  # type: ignore[arg-type]
        ),
        id=routing.fleet_workflow_id(workflow, instance, 3),
        task_queue=h.queue,
    )


def answers(eid: str, uuids: list[str], status: str = "Acknowledged") -> list[CommandReport]:
    devinfo, secinfo = uuids
    if status == "Error":
        return [
            report(eid, devinfo, "DeviceInformation", status),
            report(eid, secinfo, "SecurityInfo", **SECINFO),
        ]
    if status != "Acknowledged":
        return [report(eid, devinfo, "DeviceInformation", status)]
    return [
        report(eid, devinfo, "DeviceInformation", **DEVINFO),
        report(eid, secinfo, "SecurityInfo", **SECINFO),
    ]


async def device_state(handle: FleetHandle, eid: str) -> RunState:
    return await handle.query(FleetRunWorkflow.state, eid)


async def test_a_chunk_shares_one_send_and_each_device_ends_on_its_own(harness: Harness) -> None:
    """One Error, one NotNow-then-silent, one silent device; the rest complete at once."""
    ids = [enrollment() for _ in range(20)]
    erring, notnow, silent = ids[:3]
    handle = await start_fleet(harness, ids, step_timeout_seconds=600)
    await harness.mdm.wait_sent(len(ids))
    (send,) = harness.mdm.fleet_sends  # one send, one CommandUUID per command, for all
    assert send.enrollment_ids == ids
    uuids = [c.command_uuid for c in send.commands]
    route = routing.parse_command_uuid(uuids[0])
    assert route is not None and route.chunk == 3
    assert route.target(InventoryWorkflow.NAME, ids[5]) == handle.id

    batch = [r for eid in ids[3:] for r in answers(eid, uuids)]
    batch += answers(erring, uuids, "Error")
    batch += answers(notnow, uuids, "NotNow")
    batch.append(report(enrollment(), uuids[0], "DeviceInformation"))  # not in this chunk
    await handle.signal(FleetRunWorkflow.command_reports, batch)

    # the answered devices finished while the others still wait
    for _ in range(100):
        summary = await handle.query(FleetRunWorkflow.summary)
        if summary.by_status.get("completed") == len(ids) - 3:
            break
        await asyncio.sleep(0.05)
    done = await device_state(handle, ids[10])
    assert done.status == "completed" and done.current_step is None
    # the erring device's SecurityInfo answer is stored too
    assert len({u.enrollment_id for u in harness.inventory.updates}) == len(ids) - 2
    waiting = await device_state(handle, notnow)
    assert waiting.status == "running"
    assert waiting.steps[0].commands[0].not_now_count == 1
    assert summary.rejected_reports == 1

    result = await outcome(handle)
    assert result.devices == len(ids)
    assert result.status == "failed"
    assert result.by_status == {"completed": 17, "failed": 1, "timed_out": 2}
    erred = await device_state(handle, erring)
    assert erred.status == "failed" and "MCMDMErrorDomain 12021" in (erred.message or "")
    gone = await device_state(handle, silent)
    assert gone.status == "timed_out"
    step = gone.steps[0]
    assert abs(step.finished_at - step.started_at - timedelta(seconds=600)) < timedelta(seconds=3)  # type: ignore[operator]
    # silent devices were re-pushed together and their reads re-issued under one new UUID
    assert harness.mdm.pushes and set(harness.mdm.pushes[0].enrollment_ids) == {notnow, silent}
    reissued = {
        tuple(send.enrollment_ids): [c.command.request_type for c in send.commands]
        for send in harness.mdm.fleet_sends[1:]
    }
    # a command that had a NotNow is not re-issued (the device retries it by itself)
    assert reissued == {
        (silent,): ["DeviceInformation", "SecurityInfo"],
        (notnow,): ["SecurityInfo"],
    }
    assert sorted(harness.holds.released) == sorted(ids)


async def test_a_re_enrolled_device_gets_its_commands_again_alone(harness: Harness) -> None:
    ids = [enrollment() for _ in range(3)]
    handle = await start_fleet(harness, ids)
    await harness.mdm.wait_sent(3)
    uuids = [c.command_uuid for c in harness.mdm.fleet_sends[0].commands]
    await handle.signal(
        FleetRunWorkflow.enrollment_reset,
        EnrollmentReset(enrollment_id=ids[0], reason="re-enrolled"),
    )
    await harness.mdm.wait_sent(4)
    again = harness.mdm.fleet_sends[1]
    assert again.enrollment_ids == [ids[0]]
    aliases = [c.command_uuid for c in again.commands]
    assert set(aliases).isdisjoint(uuids)
    await handle.signal(
        FleetRunWorkflow.command_reports,
        answers(ids[0], aliases) + answers(ids[1], uuids) + answers(ids[2], uuids),
    )
    result = await outcome(handle)
    assert result.by_status == {"completed": 3}
    assert (await device_state(handle, ids[0])).steps[0].commands[0].reissued_as == [aliases[0]]


async def test_a_checked_out_device_ends_and_the_others_go_on(harness: Harness) -> None:
    ids = [enrollment() for _ in range(2)]
    handle = await start_fleet(harness, ids, workflow=DevInfoLogWorkflow.NAME)
    await harness.mdm.wait_sent(2)
    (uuid_,) = [c.command_uuid for c in harness.mdm.fleet_sends[0].commands]
    await handle.signal(
        FleetRunWorkflow.enrollment_reset,
        EnrollmentReset(enrollment_id=ids[0], reason="checked out"),
    )
    await handle.signal(
        FleetRunWorkflow.command_reports,
        [report(ids[1], uuid_, "DeviceInformation", **DEVINFO)],
    )
    result = await outcome(handle)
    assert result.by_status == {"failed": 1, "completed": 1}
    assert "checked out" in ((await device_state(handle, ids[0])).message or "")
    assert [e.enrollment_id for e in harness.inventory.logged] == [ids[1]]


async def test_states_are_paged_in_enrollment_order(harness: Harness) -> None:
    ids = [f"DEV-{i:03d}" for i in range(7)]
    handle = await start_fleet(harness, ids, step_timeout_seconds=30)
    await harness.mdm.wait_sent(7)
    first: DeviceStatesPage = await handle.query(FleetRunWorkflow.states, args=[None, 3])
    assert [s.enrollment_id for s in first.states] == ids[:3] and first.next_after == ids[2]
    rest: DeviceStatesPage = await handle.query(FleetRunWorkflow.states, args=[ids[5], 3])
    assert [s.enrollment_id for s in rest.states] == ids[6:] and rest.next_after is None
    summary: FleetSummary = await handle.query(FleetRunWorkflow.summary)
    assert summary.devices == 7 and summary.by_step == {"inventory": 7}
    assert (await outcome(handle)).by_status == {"timed_out": 7}


async def test_a_permanent_send_error_fails_every_device_of_the_group(harness: Harness) -> None:
    harness.mdm.fail_with = "MDM server rejected the API key (401)"
    ids = [enrollment() for _ in range(4)]
    handle = await start_fleet(harness, ids)
    result = await outcome(handle)
    assert result.by_status == {"failed": 4}
    message = (await device_state(handle, ids[2])).message or ""
    assert "did not take the commands" in message and "401" in message
