"""Operator controls on fleet runs: pause, resume, cancel, suspend on failure with retry,
skip and abort, undo steps, validators, truthful Temporal status.

On the dev server in real time: nothing here waits for a timer, and Updates are served
as a production server serves them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from activities.models import DeviceSendProblem, FleetSendInput, FleetSendResult
from protocol import routing
from tests.test_step_engine import Harness, harness_on
from tests.two_step_workflow import TwoStepWorkflow
from tests.workflow_harness import RecordingMdm, enrollment, outcome, report
from workflows import registry
from workflows.fleet import FleetRunWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.models import (
    ENGINE_REVISION,
    ControlRequest,
    EnrollmentReset,
    FleetInput,
    FleetResult,
    RunState,
)

FleetHandle = WorkflowHandle[FleetRunWorkflow, FleetResult]
SERIAL = {"QueryResponses": {"SerialNumber": "C02"}}
SECINFO = {"SecurityInfo": {"FDE_Enabled": False}}


@pytest.fixture
async def h(dev_client: Client, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setitem(registry.BY_NAME, TwoStepWorkflow.NAME, TwoStepWorkflow)
    monkeypatch.setitem(registry.BY_CODE, TwoStepWorkflow.CODE, TwoStepWorkflow)
    async with harness_on(WorkflowEnvironment.from_client(dev_client), fleet=True) as h:
        yield h


async def start(h: Harness, ids: list[str], **kw: object) -> FleetHandle:
    instance = str(uuid.uuid4())
    return await h.env.client.start_workflow(
        FleetRunWorkflow.run,
        FleetInput(
            workflow_name=TwoStepWorkflow.NAME,
            instance_id=instance,
            enrollment_ids=ids,
            revision=ENGINE_REVISION,
            **kw,  # type: ignore[arg-type]
        ),
        id=routing.fleet_workflow_id(TwoStepWorkflow.NAME, instance, 0),
        task_queue=h.queue,
    )


async def control(handle: FleetHandle, action: str, *ids: str, reason: str = "test") -> list[str]:
    result = await handle.execute_update(
        FleetRunWorkflow.control,
        ControlRequest(
            action=action,  # type: ignore[arg-type]
            enrollment_ids=list(ids) or None,
            reason=reason,
            actor="alice",
        ),
    )
    return result.accepted


async def eventually(check: Callable[[], object], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def state(handle: FleetHandle, eid: str) -> RunState:
    return await handle.query(FleetRunWorkflow.state, eid)


def sent_to(h: Harness, eid: str) -> list[str]:
    """CommandUUIDs sent to ``eid`` so far, in order."""
    return [c.command_uuid for s in h.mdm.sent if s.enrollment_id == eid for c in s.commands]


async def answer(h: Harness, handle: FleetHandle, eid: str, status: str = "Acknowledged") -> None:
    """The device answers the last command it was sent."""
    uuid_ = sent_to(h, eid)[-1]
    request = next(
        c.command.request_type
        for s in h.mdm.sent
        if s.enrollment_id == eid
        for c in s.commands
        if c.command_uuid == uuid_
    )
    body = SERIAL if request == "DeviceInformation" else SECINFO
    await handle.signal(
        FleetRunWorkflow.command_reports,
        [report(eid, uuid_, request, status, **(body if status == "Acknowledged" else {}))],
    )


async def test_pause_waits_at_the_next_step_boundary_and_resume_goes_on(h: Harness) -> None:
    ids = [enrollment() for _ in range(3)]
    handle = await start(h, ids)
    await h.mdm.wait_sent(3)
    assert await control(handle, "pause", reason="maintenance") == ids
    mid = await state(handle, ids[0])
    assert mid.status == "running" and "pause requested by alice" in (mid.control or "")
    for eid in ids:
        await answer(h, handle, eid)
    await eventually(lambda: _all_status(handle, ids, "paused"))
    paused = await state(handle, ids[1])
    assert paused.message == "paused by alice: maintenance"
    assert [s.name for s in paused.steps] == ["first"]
    await asyncio.sleep(0.3)
    assert len(h.mdm.sent) == 3  # nothing sent while paused
    assert await control(handle, "resume", ids[1]) == [ids[1]]
    await h.mdm.wait_sent(4)
    assert h.mdm.sent[-1].enrollment_id == ids[1]
    await answer(h, handle, ids[1])
    await eventually(lambda: _status_is(handle, ids[1], "completed"))
    assert (await state(handle, ids[0])).status == "paused"  # the others stay paused
    await control(handle, "resume")
    await h.mdm.wait_sent(6)
    for eid in (ids[0], ids[2]):
        await answer(h, handle, eid)
    result = await outcome(handle)
    assert result.by_status == {"completed": 3}
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_cancel_one_device_runs_its_undo_and_leaves_the_others(h: Harness) -> None:
    ids = [enrollment() for _ in range(3)]
    handle = await start(h, ids, rollback=True)
    await h.mdm.wait_sent(3)
    for eid in ids:
        await answer(h, handle, eid)
    await h.mdm.wait_sent(6)  # all in step "second"
    assert await control(handle, "cancel", ids[0], reason="wrong Mac") == [ids[0]]
    await h.mdm.wait_sent(7)  # the undo of "first", to the cancelled device only
    assert h.mdm.sent[-1].enrollment_id == ids[0]
    await answer(h, handle, ids[0])
    for eid in ids[1:]:
        await answer(h, handle, eid)
    result = await outcome(handle)
    assert result.by_status == {"cancelled": 1, "completed": 2}
    cancelled = await state(handle, ids[0])
    assert cancelled.message == "cancelled by alice: wrong Mac"
    assert [(s.name, s.status) for s in cancelled.steps] == [
        ("first", "completed"),
        ("second", "cancelled"),
        ("undo first", "completed"),
    ]
    assert sorted(h.holds.released) == sorted(ids)


async def test_a_cancel_from_temporal_ends_the_run_cancelled(h: Harness) -> None:
    (eid,) = ids = [enrollment()]
    handle = await start(h, ids)
    await h.mdm.wait_sent(1)
    await handle.cancel(reason="not today")
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    done = await state(handle, eid)
    assert done.status == "cancelled" and done.message == "cancelled: not today"


async def test_suspended_step_is_retried_under_new_uuids_and_completes(h: Harness) -> None:
    (eid,) = ids = [enrollment()]
    handle = await start(h, ids, on_failure="suspend")
    await h.mdm.wait_sent(1)
    first_uuid = sent_to(h, eid)[-1]
    await answer(h, handle, eid, "Error")
    await eventually(lambda: _status_is(handle, eid, "suspended"))
    suspended = await state(handle, eid)
    assert "suspended at step 'first'" in (suspended.message or "")
    assert "MCMDMErrorDomain 12021" in (suspended.message or "")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    # the same Error again changes nothing while suspended
    await answer(h, handle, eid, "Error")
    assert await control(handle, "retry") == [eid]
    await h.mdm.wait_sent(2)
    retried = sent_to(h, eid)[-1]
    assert retried != first_uuid
    await answer(h, handle, eid)
    await h.mdm.wait_sent(3)
    await answer(h, handle, eid)
    result = await outcome(handle)
    assert result.status == "completed"
    step = (await state(handle, eid)).steps[0]
    assert step.status == "completed" and step.commands[0].reissued_as == [retried]


async def test_skip_goes_on_and_abort_undoes_and_fails(h: Harness) -> None:
    skipper, aborter = ids = [enrollment(), enrollment()]
    handle = await start(h, ids, on_failure="suspend", rollback=True)
    await h.mdm.wait_sent(2)
    await answer(h, handle, skipper, "Error")
    await answer(h, handle, aborter)
    await h.mdm.wait_sent(3)  # the aborter's second step
    await answer(h, handle, aborter, "Error")
    await eventually(lambda: _all_status(handle, ids, "suspended"))
    assert await control(handle, "skip", skipper) == [skipper]
    await h.mdm.wait_sent(4)
    await answer(h, handle, skipper)
    assert await control(handle, "abort", aborter, reason="give up") == [aborter]
    await h.mdm.wait_sent(5)  # the undo of the aborter's first step
    await answer(h, handle, aborter)
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DevicesFailed"
    assert cause.details[0]["by_status"] == {"completed": 1, "failed": 1}
    skipped = await state(handle, skipper)
    assert skipped.message == "both steps done (first skipped)"
    assert skipped.steps[0].status == "skipped"
    aborted = await state(handle, aborter)
    assert aborted.status == "failed" and aborted.failure_type == "Aborted"
    assert aborted.message == "aborted by alice: give up"
    assert [s.name for s in aborted.steps] == ["first", "second", "undo first"]


async def test_controls_that_do_not_apply_are_refused_before_history(h: Harness) -> None:
    eid = enrollment()
    handle = await start(h, [eid])
    await h.mdm.wait_sent(1)
    for action, ids, why in [
        ("resume", [eid], "not paused"),
        ("retry", [eid], "not suspended"),
        ("skip", [], "not suspended"),
        ("pause", ["SOMEONE-ELSE"], "not a device of this run"),
    ]:
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await control(handle, action, *ids)
        assert why in str(info.value.cause), (action, info.value.cause)
    await answer(h, handle, eid)
    await h.mdm.wait_sent(2)
    await answer(h, handle, eid)
    await outcome(handle)
    events = [e.event_type async for e in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in events
    with pytest.raises(Exception, match=r"already|completed|not found"):
        await control(handle, "cancel", eid)


async def test_a_failed_device_fails_the_run_with_its_type(h: Harness) -> None:
    eid = enrollment()
    handle = await start(h, [eid])
    await h.mdm.wait_sent(1)
    await answer(h, handle, eid, "Error")
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DeviceError"
    assert "MCMDMErrorDomain 12021" in cause.message
    assert (await state(handle, eid)).failure_type == "DeviceError"


async def _status_is(handle: FleetHandle, eid: str, status: str) -> bool:
    return (await state(handle, eid)).status == status


async def _all_status(handle: FleetHandle, ids: list[str], status: str) -> bool:
    return all([(await state(handle, eid)).status == status for eid in ids])


class BlockedSends(RecordingMdm):
    """A fleet send that records what it was given, then hangs until it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = asyncio.Event()

    @activity.defn(name="mdm.send_fleet")
    async def send_fleet(self, inp: FleetSendInput) -> FleetSendResult:
        await super().send_fleet(inp)
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_answers_before_the_send_returns_complete_the_step(dev_client: Client) -> None:
    """Every device answered while the shared send still runs: the step completes and the
    moot send is cancelled (on a real server: the time-skipping one stops skipping then)."""
    mdm = BlockedSends()
    async with harness_on(WorkflowEnvironment.from_client(dev_client), mdm, fleet=True) as h:
        ids = [enrollment() for _ in range(3)]
        handle = await start_inventory(h, ids)
        await h.mdm.wait_sent(3)
        uuids = [c.command_uuid for c in h.mdm.fleet_sends[0].commands]
        await handle.signal(
            FleetRunWorkflow.command_reports,
            [
                report(eid, uuid_, kind, **body)
                for eid in ids
                for uuid_, kind, body in zip(
                    uuids,
                    ("DeviceInformation", "SecurityInfo"),
                    (SERIAL, SECINFO),
                    strict=True,
                )
            ],
        )
        result = await asyncio.wait_for(outcome(handle), 30)
        assert result.by_status == {"completed": 3}
        await asyncio.wait_for(mdm.cancelled.wait(), 30)


@pytest.mark.parametrize("reason", ["checked out", "re-enrolled"])
async def test_a_reset_ends_a_step_whose_send_still_runs(dev_client: Client, reason: str) -> None:
    """A lock (a step that fails on a reset) whose device checks out or re-enrolls while
    the send still runs ends at once, typed, and the moot send is cancelled."""
    mdm = BlockedSends()
    async with harness_on(WorkflowEnvironment.from_client(dev_client), mdm, fleet=True) as h:
        eid = enrollment()
        handle = await start_fleet(h, LockWorkflow.NAME, [eid])
        await h.mdm.wait_sent(1)
        await handle.signal(
            FleetRunWorkflow.enrollment_reset,
            EnrollmentReset(enrollment_id=eid, reason=reason),  # type: ignore[arg-type]
        )
        result = await asyncio.wait_for(outcome(handle), 30)
        assert result.status == "failed" and reason in result.message, result
        expected = "CheckedOut" if reason == "checked out" else "ReEnrolled"
        assert (await state(handle, eid)).failure_type == expected
        await asyncio.wait_for(mdm.cancelled.wait(), 30)
        assert len(h.mdm.sent) == 1  # never sent again


async def test_a_re_enrollment_re_sends_at_once_while_the_first_send_still_runs(
    dev_client: Client,
) -> None:
    """Inventory restarts its step on a re-enrollment: it re-sends at once instead of
    waiting out the first send's retries, and that moot send is cancelled."""
    mdm = BlockedSends()
    async with harness_on(WorkflowEnvironment.from_client(dev_client), mdm, fleet=True) as h:
        eid = enrollment()
        handle = await start_inventory(h, [eid])
        await h.mdm.wait_sent(1)
        await handle.signal(
            FleetRunWorkflow.enrollment_reset,
            EnrollmentReset(enrollment_id=eid, reason="re-enrolled"),
        )
        await asyncio.wait_for(mdm.cancelled.wait(), 30)
        await h.mdm.wait_sent(2, timeout=30)  # the commands again, for the new queue
        assert (await state(handle, eid)).status == "running"
        await handle.terminate("test over")


class FirstSendLeavesOneUnsent(RecordingMdm):
    """The first fleet send reports the second command of one device certainly not
    queued (the MDM server stayed away through the last attempt); later sends work."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device

    @activity.defn(name="mdm.send_fleet")
    async def send_fleet(self, inp: FleetSendInput) -> FleetSendResult:
        result = await super().send_fleet(inp)
        if len(self.fleet_sends) == 1:
            unsent = [inp.commands[1].command_uuid]
            result.problems[self.device] = DeviceSendProblem(unsent=unsent, error="503")
        return result


async def test_a_command_never_sent_goes_again_at_the_re_push_under_its_uuid(
    dev_client: Client,
) -> None:
    eid = enrollment()
    mdm = FirstSendLeavesOneUnsent(eid)
    async with harness_on(WorkflowEnvironment.from_client(dev_client), mdm, fleet=True) as h:
        handle = await start_fleet(
            h, InventoryWorkflow.NAME, [eid], repush_after_seconds=[1.0]
        )
        first = (await mdm.wait_sent(1))[0]
        devinfo, secinfo = (c.command_uuid for c in first.commands)
        again = (await mdm.wait_sent(2, timeout=30))[1]
        assert [c.command_uuid for c in again.commands] == [secinfo]  # the same UUID
        await handle.signal(
            FleetRunWorkflow.command_reports,
            [
                report(eid, devinfo, "DeviceInformation", **SERIAL),
                report(eid, secinfo, "SecurityInfo", **SECINFO),
            ],
        )
        assert (await asyncio.wait_for(outcome(handle), 30)).status == "completed"
        assert len(mdm.sent) == 2


async def start_fleet(h: Harness, workflow: str, ids: list[str], **kw: Any) -> FleetHandle:
    instance = str(uuid.uuid4())
    return await h.env.client.start_workflow(
        FleetRunWorkflow.run,
        FleetInput(
            workflow_name=workflow,
            instance_id=instance,
            enrollment_ids=ids,
            **{"revision": ENGINE_REVISION, **kw},
        ),
        id=routing.fleet_workflow_id(workflow, instance, 0),
        task_queue=h.queue,
    )


async def start_inventory(h: Harness, ids: list[str]) -> FleetHandle:
    return await start_fleet(h, InventoryWorkflow.NAME, ids)


async def test_a_failed_step_is_retried_automatically_then_suspends(h: Harness) -> None:
    (eid,) = ids = [enrollment()]
    handle = await start(h, ids, on_failure="suspend", retries=2, retry_backoff_seconds=0.3)
    for attempt in range(3):  # the first send and two automatic retries
        await h.mdm.wait_sent(attempt + 1)
        await answer(h, handle, eid, "Error")
    await eventually(lambda: _status_is(handle, eid, "suspended"))
    sent = sent_to(h, eid)
    assert len(sent) == 3 and len(set(sent)) == 3  # each retry under a new UUID
    assert (await state(handle, eid)).steps[0].commands[0].reissued_as == sent[1:]
    await control(handle, "abort")
    result = await outcome(handle)
    assert result.status == "failed"


async def test_an_automatic_retry_mends_a_passing_error_without_an_operator(h: Harness) -> None:
    (eid,) = ids = [enrollment()]
    handle = await start(h, ids, retries=1, retry_backoff_seconds=0.2)
    await h.mdm.wait_sent(1)
    await answer(h, handle, eid, "Error")
    mid = await state(handle, eid)
    await h.mdm.wait_sent(2)
    assert mid.status == "running"
    await answer(h, handle, eid)
    await h.mdm.wait_sent(3)
    await answer(h, handle, eid)
    assert (await outcome(handle)).status == "completed"
