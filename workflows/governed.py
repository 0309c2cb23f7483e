"""Governance inside a fleet run (engine revision 5): the emergency stop, the policy
re-check before a destructive step, and the approval of a second person.

- **Emergency stop.** The run reads the stop when it starts, hears it engaged or
  released (the API's ``emergency_stop`` signal), re-reads it at a step boundary when
  its last reading is older than ``ESTOP_FRESH``, and, while halted, re-reads it with a
  backoff, so a missed release cannot leave it halted for good. While it is engaged
  every device waits at its next step boundary, shown ``halted``; a step already in
  flight still collects its answers. Release lets each device go on where it waited.
- **Destructive steps** (DeviceLock, EraseDevice, RemoveProfile, RotateFileVaultKey):
  right before one is sent the policy in force is asked again (a workflow disabled, a
  role removed or a lower ``max_targets`` since the start refuses it: the device fails
  ``PolicyRefused`` with nothing sent), and when the policy asks for approval the run
  waits, once per run, for an approver who is not the starter. A rejection or the
  approval timeout ends the waiting devices ``NotApproved``, with nothing sent.

Devices that reach these points together share one check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.governance import GovernanceActivities
    from protocol.commands import Command
    from workflows.models import (
        ApprovalDecision,
        EmergencyStopNotice,
        FleetInput,
        GateInput,
        GateResult,
    )

if TYPE_CHECKING:
    from workflows.engine import MdmWorkflow

DESTRUCTIVE_REQUEST_TYPES = frozenset(
    {"DeviceLock", "EraseDevice", "RemoveProfile", "RotateFileVaultKey"}
)
# A boundary re-reads the stop when the last reading is older than this.
ESTOP_FRESH = timedelta(seconds=10)
# While halted, the stop is re-read after these pauses (the last repeats).
HALT_RECHECK = (timedelta(seconds=15), timedelta(seconds=60), timedelta(minutes=5))
CHECK_TIMEOUT = timedelta(seconds=30)


def destructive(commands: Sequence[Command]) -> bool:
    return any(c.request_type in DESTRUCTIVE_REQUEST_TYPES for c in commands)


def _stop_sentence(notice: EmergencyStopNotice) -> str:
    what = "everything" if notice.scope == "*" else notice.scope
    why = f": {notice.reason}" if notice.reason else ""
    by = f" by {notice.by}" if notice.by else ""
    return f"halted by emergency stop on {what}{by}{why}"


class Governance:
    """One fleet run's view of the emergency stop, the policy and its approval."""

    def __init__(self, inp: FleetInput, on_change: Callable[[], None]) -> None:
        self.input = inp
        self._touch = on_change
        # engaged stops that apply to this run, by scope ("*" or the workflow name)
        self.stops: dict[str, str] = {}
        # when this run first showed the stop (its workflow task's time), for the record
        self.halted_since: datetime | None = None
        self._read_at = workflow.now()
        self._reading: asyncio.Task[None] | None = None
        self._gates: dict[str, asyncio.Task[GateResult]] = {}
        self.decision: ApprovalDecision | None = None
        self.approved_by: str | None = None
        self.awaiting_approval = False
        self._approval: asyncio.Task[ApprovalDecision | None] | None = None
        self.closing = False

    # ---- emergency stop ----------------------------------------------------------------

    @property
    def halted(self) -> str | None:
        """The sentence a halted device shows, or None when no stop applies."""
        if not self.stops:
            return None
        return self.stops.get("*") or next(iter(self.stops.values()))

    def applies(self, notice: EmergencyStopNotice) -> bool:
        return notice.scope in ("*", self.input.workflow_name)

    def hear(self, notice: EmergencyStopNotice) -> None:
        """The API's broadcast (a signal): engaged or released."""
        if not self.applies(notice):
            return
        before = dict(self.stops)
        if notice.engaged:
            self.stops[notice.scope] = _stop_sentence(notice)
        else:
            self.stops.pop(notice.scope, None)
        self._changed(before)

    def _changed(self, before: dict[str, str]) -> None:
        if before == self.stops:
            return
        if not self.stops:
            self.halted_since = None
        elif not before:
            self.halted_since = workflow.now()
        self._touch()

    async def read_stop(self) -> None:
        """Read the stop from the store now (shared by devices that ask together).

        Fail-safe: an activity that cannot read it counts as engaged.
        """
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
        task = self._reading
        await task
        if self._reading is task:
            self._reading = None

    async def _read(self) -> None:
        try:
            notice = await workflow.execute_local_activity_method(
                GovernanceActivities.emergency_stop,
                self.input.workflow_name,
                start_to_close_timeout=CHECK_TIMEOUT,
                summary="read the emergency stop",
            )
        except ActivityError as exc:
            notice = EmergencyStopNotice(
                engaged=True, reason=f"the emergency-stop state cannot be read ({exc})"
            )
        self._read_at = workflow.now()
        before = dict(self.stops)
        self.stops = {}
        if notice is not None:
            self.stops[notice.scope] = _stop_sentence(notice)
        self._changed(before)

    async def boundary(self, dev: MdmWorkflow, stopping: Any) -> None:
        """Wait here while a stop is engaged (the device shows ``halted``)."""
        if workflow.now() - self._read_at >= ESTOP_FRESH:
            await self.read_stop()
        if self.halted is None:
            return
        status, message = dev._state.status, dev._state.message
        while self.halted is not None and not stopping():
            dev._state.status = "halted"
            dev._state.message = self.halted
            self._touch()
            await workflow.wait_condition(lambda: self.halted is None or stopping())
        dev._state.status, dev._state.message = status, message
        self._touch()

    async def watch(self) -> None:
        """While halted, re-read the stop with a backoff: a missed release heals."""
        while True:
            await workflow.wait_condition(lambda: self.halted is not None or self.closing)
            if self.closing:
                return
            for attempt in range(1_000_000):
                pause = HALT_RECHECK[min(attempt, len(HALT_RECHECK) - 1)]
                try:
                    await workflow.wait_condition(
                        lambda: self.halted is None or self.closing,
                        timeout=pause,
                        timeout_summary="re-read the emergency stop",
                    )
                    break  # released (or closing)
                except TimeoutError:
                    await self.read_stop()
                    if self.halted is None:
                        break

    # ---- destructive steps -------------------------------------------------------------

    def _gate_input(self, step: str) -> GateInput:
        inp = self.input
        return GateInput(
            workflow_name=inp.workflow_name,
            instance_id=inp.instance_id,
            started_by=inp.started_by,
            started_role=inp.started_role,
            target_count=inp.target_count or len(inp.enrollment_ids),
            step=step,
        )

    async def _ask(self, step: str) -> GateResult:
        task = self._gates.get(step)
        if task is None:
            task = asyncio.create_task(
                workflow.execute_local_activity_method(
                    GovernanceActivities.gate,
                    self._gate_input(step),
                    start_to_close_timeout=CHECK_TIMEOUT,
                    summary=f"policy check before {step!r}",
                )
            )
            self._gates[step] = task
        try:
            return await task
        finally:
            if self._gates.get(step) is task:
                del self._gates[step]

    async def before_destructive(self, dev: MdmWorkflow, step: str, stopping: Any) -> None:
        """Policy, stop and approval right before a destructive step; raises
        ``ApplicationError`` (PolicyRefused, NotApproved) when it may not be sent."""
        while True:
            verdict = await self._ask(step)
            if verdict.stopped is None:
                break
            before = dict(self.stops)
            self.stops.setdefault("*", f"halted by {verdict.stopped}")
            self._read_at = workflow.now()
            self._changed(before)
            await self.boundary(dev, stopping)
            if stopping():
                return
        if not verdict.allowed:
            raise ApplicationError(
                f"step {step!r} not sent: {verdict.reason}",
                type="PolicyRefused",
                non_retryable=True,
            )
        if not verdict.approval_required or self.approved_by is not None:
            return
        if self._approval is None:
            self._approval = asyncio.create_task(self._await_approval(step, verdict))
        status, message = dev._state.status, dev._state.message
        dev._state.status = "awaiting_approval"
        dev._state.message = (
            f"step {step!r} waits for approval by an approver other than "
            f"{self.input.started_by or 'the starter'}"
        )
        self._touch()
        decision = await self._approval
        dev._state.status, dev._state.message = status, message
        self._touch()
        if decision is None:
            hours = verdict.approval_timeout_seconds / 3600
            raise ApplicationError(
                f"step {step!r} not sent: not approved within {hours:g} h",
                type="NotApproved",
                non_retryable=True,
            )
        if not decision.approve:
            why = f": {decision.reason}" if decision.reason else ""
            raise ApplicationError(
                f"step {step!r} not sent: rejected by {decision.user}{why}",
                type="NotApproved",
                non_retryable=True,
            )

    async def _await_approval(self, step: str, verdict: GateResult) -> ApprovalDecision | None:
        inp = self._gate_input(step)
        await workflow.execute_local_activity_method(
            GovernanceActivities.request_approval,
            inp,
            start_to_close_timeout=CHECK_TIMEOUT,
            summary="list this run for approval",
        )
        self.awaiting_approval = True
        try:
            await workflow.wait_condition(
                lambda: self.decision is not None,
                timeout=timedelta(seconds=verdict.approval_timeout_seconds),
                timeout_summary="approval timeout",
            )
        except TimeoutError:
            pass
        self.awaiting_approval = False
        decision = self.decision
        if decision is None:
            status, by, reason = "expired", "", "approval timeout"
        else:
            status = "approved" if decision.approve else "rejected"
            by, reason = decision.user, decision.reason
            if decision.approve:
                self.approved_by = decision.user
        await workflow.execute_local_activity_method(
            GovernanceActivities.approval_decided,
            args=[self.input.instance_id, status, by, reason],
            start_to_close_timeout=CHECK_TIMEOUT,
            summary=f"record approval {status}",
        )
        return decision

    def refuse_decision(self, decision: ApprovalDecision) -> str | None:
        """Why ``decision`` cannot be taken now (the update's validator), or None."""
        if not self.awaiting_approval or self.decision is not None:
            return "this run is not waiting for an approval"
        if decision.user == self.input.started_by:
            return f"{decision.user} started this run and cannot approve or reject it"
        return None
