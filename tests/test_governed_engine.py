"""The engine's governance (revision 5) with recorders for the MDM server and the store:
the emergency stop halts at step boundaries and release resumes, the policy is asked
again before a destructive step, approvals, and runs of earlier revisions untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.test_fleet_controls import (
    FleetHandle,
    answer,
    eventually,
    sent_to,
    start_fleet,
    state,
)
from tests.test_step_engine import Harness, harness_on
from tests.two_step_workflow import TwoStepWorkflow
from tests.workflow_harness import enrollment, outcome
from workflows import registry
from workflows.fleet import FleetRunWorkflow
from workflows.governed import HALT_RECHECK
from workflows.lock import LockWorkflow
from workflows.models import (
    FLEET_REVISION,
    GOVERNANCE_REVISION,
    ApprovalDecision,
    EmergencyStopNotice,
    GateResult,
)


@pytest.fixture
async def h(dev_client: Client, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setitem(registry.BY_NAME, TwoStepWorkflow.NAME, TwoStepWorkflow)
    monkeypatch.setitem(registry.BY_CODE, TwoStepWorkflow.CODE, TwoStepWorkflow)
    async with harness_on(WorkflowEnvironment.from_client(dev_client), fleet=True) as h:
        yield h


async def start(
    h: Harness,
    ids: list[str],
    workflow: str = TwoStepWorkflow.NAME,
    revision: int = GOVERNANCE_REVISION,
    **kw: object,
) -> FleetHandle:
    """A fleet run started by alice, an operator."""
    return await start_fleet(
        h, workflow, ids, revision=revision, started_by="alice", started_role="operator", **kw
    )


STOP = EmergencyStopNotice(engaged=True, reason="bad rollout", by="root")
RELEASE = EmergencyStopNotice(engaged=False, by="root")


async def test_stop_halts_at_the_next_boundary_and_release_resumes(h: Harness) -> None:
    ids = [enrollment() for _ in range(3)]
    handle = await start(h, ids)
    await h.mdm.wait_sent(3)
    await handle.signal(FleetRunWorkflow.emergency_stop, STOP)
    summary = await handle.query(FleetRunWorkflow.summary)
    assert summary.halted is not None and "bad rollout" in summary.halted
    for eid in ids:  # the step in flight still collects its answers
        await answer(h, handle, eid)
    for eid in ids:
        await eventually(lambda eid=eid: _status(handle, eid, "halted"))
    assert len(h.mdm.sent) == 3  # nothing of the second step went out
    await asyncio.sleep(0.5)
    assert len(h.mdm.sent) == 3
    await handle.signal(FleetRunWorkflow.emergency_stop, RELEASE)
    await h.mdm.wait_sent(6)
    for eid in ids:
        assert (await state(handle, eid)).status == "running"
        await answer(h, handle, eid)
    result = await outcome(handle)
    assert result.by_status == {"completed": 3}


async def _status(handle: FleetHandle, eid: str, status: str) -> bool:
    return (await state(handle, eid)).status == status


async def test_a_stop_engaged_before_the_run_started_holds_it_at_its_first_step(
    h: Harness,
) -> None:
    h.governance.stop = STOP
    (eid,) = ids = [enrollment()]
    handle = await start(h, ids)
    await eventually(lambda: _status(handle, eid, "halted"))
    assert h.mdm.sent == []
    h.governance.stop = None  # released, and the broadcast was missed: the run re-reads
    await h.mdm.wait_sent(1, timeout=HALT_RECHECK[0].total_seconds() + 10)
    await answer(h, handle, eid)
    await h.mdm.wait_sent(2)
    await answer(h, handle, eid)
    assert (await outcome(handle)).by_status == {"completed": 1}


async def test_a_tightened_policy_refuses_a_destructive_step_with_nothing_sent(
    h: Harness,
) -> None:
    h.governance.verdict = GateResult(allowed=False, reason="policy: lock is disabled")
    eid = enrollment()
    handle = await start(h, [eid], LockWorkflow.NAME)
    result = await outcome(handle)
    assert result.status == "failed" and "policy: lock is disabled" in result.message
    assert (await state(handle, eid)).failure_type == "PolicyRefused"
    assert h.mdm.sent == []
    assert [g.started_role for g in h.governance.gates] == ["operator"]


async def test_approval_by_someone_else_lets_the_step_go(h: Harness) -> None:
    h.governance.verdict = GateResult(allowed=True, approval_required=True)
    eid = enrollment()
    handle = await start(h, [eid], LockWorkflow.NAME)
    await eventually(lambda: _status(handle, eid, "awaiting_approval"))
    assert h.mdm.sent == [] and len(h.governance.requested) == 1
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            FleetRunWorkflow.approval, ApprovalDecision(approve=True, user="alice")
        )
    assert "alice started this run" in str(refused.value.cause)
    await handle.execute_update(
        FleetRunWorkflow.approval, ApprovalDecision(approve=True, user="bob", reason="ok")
    )
    await h.mdm.wait_sent(1)
    assert sent_to(h, eid)
    assert h.governance.decided[-1][1:] == ("approved", "bob")


async def test_no_decision_in_time_ends_the_run_not_approved(h: Harness) -> None:
    h.governance.verdict = GateResult(
        allowed=True, approval_required=True, approval_timeout_seconds=1.0
    )
    eid = enrollment()
    handle = await start(h, [eid], LockWorkflow.NAME)
    result = await outcome(handle)
    assert result.status == "failed" and "not approved within" in result.message
    assert h.mdm.sent == []
    assert h.governance.decided[-1][1] == "expired"


async def test_rejection_ends_the_run_not_approved(h: Harness) -> None:
    h.governance.verdict = GateResult(allowed=True, approval_required=True)
    eid = enrollment()
    handle = await start(h, [eid], LockWorkflow.NAME)
    await eventually(lambda: _status(handle, eid, "awaiting_approval"))
    await handle.execute_update(
        FleetRunWorkflow.approval, ApprovalDecision(approve=False, user="bob", reason="no")
    )
    result = await outcome(handle)
    assert result.status == "failed" and "rejected by bob: no" in result.message
    assert (await state(handle, eid)).failure_type == "NotApproved"
    assert h.mdm.sent == []


async def test_runs_of_revision_4_ask_nothing(h: Harness) -> None:
    h.governance.stop = STOP
    h.governance.verdict = GateResult(allowed=False, reason="would refuse")
    eid = enrollment()
    handle = await start(h, [eid], LockWorkflow.NAME, revision=FLEET_REVISION)
    await h.mdm.wait_sent(1)
    assert h.governance.gates == []
    await handle.signal(FleetRunWorkflow.emergency_stop, STOP)  # heard, and ignored
    assert (await handle.query(FleetRunWorkflow.summary)).halted is None
