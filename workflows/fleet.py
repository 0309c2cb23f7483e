"""``mdmflow.fleet.v1``: one durable run drives a chunk of enrollments.

A start for many devices runs as one fleet run per chunk (see :mod:`mdmflow.temporal_calls.starts`).
The run makes one instance of the MDM workflow's class per enrollment and runs each
device's story — the workflow file's ``run``, read as one device's story — side by side
with the others; the steps go through the chunk engine (:mod:`workflows.chunk`), which
sends shared commands once per chunk and keeps one timer for everybody.

What reaches the run:
- ``command_reports``: device answers, batched by the relay; each goes to the device it
  names (a report for a device not in this chunk is rejected and counted);
- ``enrollment_reset``: the device re-enrolled or checked out;
- ``emergency_stop``: the emergency stop engaged or released (engine revision 5: devices
  halt at their next step boundary, see :mod:`workflows.governed`);
- the update ``approval``: an approver's decision on a run waiting before a destructive
  step (never the starter's own);
- queries ``state`` (one device), ``states`` (a page of devices) and ``summary``.

A device whose story fails (a device Error, an unknown enrollment, a missing escrowed
key) ends ``failed`` with its reason; the others go on. The run's result counts devices
per status; a chunk of one returns that device's result.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import get_args

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from protocol.results import CommandReport
    from workflows import search_attributes as sa
    from workflows.chunk import Chunk, RunStopped
    from workflows.engine import MdmWorkflow
    from workflows.models import (
        ApprovalDecision,
        ControlAction,
        ControlRequest,
        ControlResult,
        DeviceStatesPage,
        EmergencyStopNotice,
        EnrollmentReset,
        FailureType,
        FleetInput,
        FleetResult,
        FleetSummary,
        RunState,
        check_revision,
    )
    from workflows.registry import BY_NAME

FLEET_WORKFLOW = "mdmflow.fleet.v1"
STATES_PAGE_MAX = 500
CONTROL_MAX_IDS = 1000
# Paused or suspended devices named in the Web UI's current details (the rest: counts).
DETAILS_DEVICES = 20
ENDED = frozenset({"completed", "failed", "cancelled", "timed_out"})
FAILURE_TYPES = frozenset(get_args(FailureType))


def _failure_type(error_type: str | None) -> FailureType:
    """An ApplicationError's type as a run failure type (EnqueueFailed, ...)."""
    if error_type in FAILURE_TYPES:
        return error_type  # type: ignore[return-value]
    return "WorkflowFailed"


def _refusal(dev: MdmWorkflow, action: ControlAction) -> str | None:
    """Why ``action`` does not apply to this device now, or None when it does."""
    status = dev._state.status
    if status in ENDED:
        return f"already ended ({status})"
    if dev._stop is not None:
        return "already being stopped"
    if action == "pause" and dev._pause is not None:
        return "already paused"
    if action == "resume" and dev._pause is None:
        return "not paused"
    if action in ("retry", "skip", "abort") and (
        status != "suspended" or dev._decision is not None
    ):
        return f"not suspended ({status}): {action} applies to a suspended step"
    return None


@workflow.defn(name=FLEET_WORKFLOW)
class FleetRunWorkflow:
    def __init__(self) -> None:
        self._chunk: Chunk | None = None
        self._early: list[CommandReport | EnrollmentReset] = []
        self._early_stops: list[EmergencyStopNotice] = []
        self._rejected = 0

    @workflow.run
    async def run(self, inp: FleetInput) -> FleetResult:
        check_revision(inp.revision)
        story = BY_NAME.get(inp.workflow_name)
        if story is None:
            raise ApplicationError(
                f"unknown workflow {inp.workflow_name!r}",
                type="UnknownWorkflow",
                non_retryable=True,
            )
        if not inp.enrollment_ids:
            raise ApplicationError("a fleet run needs enrollments", non_retryable=True)
        chunk = Chunk(inp, story.CODE)
        for eid in inp.enrollment_ids:
            chunk.add(eid, story())
        self._chunk = chunk
        for early in self._early:  # signals that came with the run's first task
            self._deliver(early)
        self._early = []
        gov = chunk.gov
        if gov is not None:
            # a stop engaged before this run was visible to the API's broadcast
            await gov.read_stop()
            for notice in self._early_stops:
                gov.hear(notice)
        self._early_stops = []

        pump = asyncio.create_task(chunk.pump())
        clock = asyncio.create_task(chunk.clock())
        watch = asyncio.create_task(gov.watch()) if gov is not None else None
        details = asyncio.create_task(self._details(inp, chunk))
        lives = [
            asyncio.create_task(self._live(inp, eid, dev)) for eid, dev in chunk.devices.items()
        ]
        try:
            await workflow.wait_condition(lambda: all(t.done() for t in lives))
        except asyncio.CancelledError:
            # cancelled in Temporal (the API's cancel, the Web UI's button): every device
            # still running stops at its step, its undo steps run, and the run ends
            # Cancelled once they are done
            reason = workflow.cancellation_reason() or "cancelled in Temporal"
            for dev in chunk.devices.values():
                if dev._state.status not in ENDED and dev._stop is None:
                    dev._stop = ("cancel", f"cancelled: {reason}")
            await workflow.wait_condition(lambda: all(t.done() for t in lives))
        for task in lives:
            task.result()  # a bug in a story fails the workflow task, not silently
        chunk.close()
        if gov is not None and watch is not None:
            gov.closing = True
            await watch
        await pump
        await clock
        await details
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._result(inp, chunk)

    async def _live(self, inp: FleetInput, eid: str, dev: MdmWorkflow) -> None:
        """One device's story; its failure is its own, never the chunk's.

        A stopped device (cancel, abort) and a failed one with undo steps registered
        are rolled back newest-first before they end; an undo that fails is reported in
        the device's message.
        """
        assert self._chunk is not None
        try:
            await self._story(inp, eid, dev)
        finally:
            self._chunk.finished(dev)

    async def _story(self, inp: FleetInput, eid: str, dev: MdmWorkflow) -> None:
        assert self._chunk is not None
        stop_reason: str | None = None
        try:
            await dev.run(inp.device_input(eid))  # type: ignore[attr-defined]
        except RunStopped:
            assert dev._stop is not None
            stop_reason = dev._stop[1]
        except ApplicationError as exc:
            dev.finish("failed", exc.message, _failure_type(exc.type))
        except ActivityError as exc:
            cause = exc.cause
            why = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            dev.finish("failed", f"{exc.activity_type or 'activity'} failed: {why}")
        if stop_reason is None and dev._state.status not in ("failed", "timed_out"):
            return
        undo_failed = await self._chunk.compensate(dev) if dev._undo else []
        note = f"; undo failed: {'; '.join(undo_failed)}" if undo_failed else ""
        if stop_reason is None:
            dev._state.message = (dev._state.message or "") + note
        elif dev._stop is not None and dev._stop[0] == "cancel":
            dev.finish("cancelled", stop_reason + note)
        else:
            dev.finish("failed", stop_reason + note, "Aborted")

    async def _details(self, inp: FleetInput, chunk: Chunk) -> None:
        """Keep the Web UI's "current details" of the run: devices per status and step,
        and why a device is paused or suspended.

        Not recorded in history; refreshed at most once per workflow task.
        """
        while True:
            await workflow.wait_condition(lambda: chunk.progressed)
            chunk.progressed = False
            summary = self.summary()
            parts = [f"{n} {s}" for s, n in sorted(summary.by_status.items())]
            steps = ", ".join(f"{n} in {s!r}" for s, n in sorted(summary.by_step.items()))
            text = f"**{inp.workflow_name}**, {summary.devices} device(s): {', '.join(parts)}"
            if steps:
                text += f" ({steps})"
            if summary.halted:
                text = f"**HALTED**: {summary.halted}\n\n{text}"
            if summary.awaiting_approval:
                text = f"**Waits for approval** (GET /v1/approvals)\n\n{text}"
            waiting = [
                f"- {dev._state.enrollment_id}: {dev._state.message}"
                for dev in list(chunk.devices.values())[:DETAILS_DEVICES]
                if dev._state.status in ("paused", "suspended", "halted", "awaiting_approval")
            ]
            workflow.set_current_details("\n".join([text, *waiting]))
            if all(dev._state.status in ENDED for dev in chunk.devices.values()):
                return

    def _result(self, inp: FleetInput, chunk: Chunk) -> FleetResult:
        """The run's result, or its failure: the Temporal status tells the truth.

        A chunk of one ends as its device did: Completed, Failed (typed DeviceError,
        StepTimedOut, ReEnrolled, EnqueueFailed, Aborted, ...) or Cancelled. A larger
        chunk fails (DevicesFailed) when any device failed or timed out, with the counts
        in the failure's details.
        """
        states = [dev._state for dev in chunk.devices.values()]
        by_status = dict(Counter(s.status for s in states))
        result = FleetResult(
            status="completed",
            message="",
            enrollment_id=inp.enrollment_ids[0],
            instance_id=inp.instance_id,
            chunk=inp.chunk,
            devices=len(states),
            by_status=by_status,
        )
        failed = by_status.get("failed", 0) + by_status.get("timed_out", 0)
        if len(states) == 1:
            only = states[0]
            result.status, result.message = only.status, only.message or ""
            workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(f"done:{only.status}")])
            if failed:
                raise ApplicationError(
                    result.message,
                    result.model_dump(mode="json"),
                    type=only.failure_type or "WorkflowFailed",
                    non_retryable=True,
                )
        else:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            result.message = f"{len(states)} devices: {counts}"
            result.status = "failed" if failed else "completed"
            workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(f"done:{result.status}")])
            workflow.logger.info("%s chunk %d: %s", inp.workflow_name, inp.chunk, result.message)
            if failed:
                raise ApplicationError(
                    result.message,
                    result.model_dump(mode="json"),
                    type="DevicesFailed",
                    non_retryable=True,
                )
        if by_status.get("cancelled") and workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError(result.message)
        return result

    # ---- controls --------------------------------------------------------------------

    def _plan(self, req: ControlRequest) -> ControlResult:
        """Which devices ``req`` applies to, and why not to the others (no changes)."""
        result = ControlResult()
        if self._chunk is None:
            result.refused["*"] = "the run is starting; try again in a moment"
            return result
        targets = req.enrollment_ids or list(self._chunk.devices)
        for eid in targets[:CONTROL_MAX_IDS]:
            dev = self._chunk.devices.get(eid)
            why = "not a device of this run" if dev is None else _refusal(dev, req.action)
            if why is None:
                result.accepted.append(eid)
            else:
                result.refused[eid] = why
        return result

    @workflow.update
    def control(self, req: ControlRequest) -> ControlResult:
        """Cancel, pause, resume, retry, skip or abort devices of this run."""
        result = self._plan(req)
        assert self._chunk is not None
        who = f"{req.actor}" + (f": {req.reason}" if req.reason else "")
        for eid in result.accepted:
            dev = self._chunk.devices[eid]
            if req.action == "cancel":
                dev._stop = ("cancel", f"cancelled by {who}")
            elif req.action == "abort":
                dev._stop = ("abort", f"aborted by {who}")
            elif req.action == "pause":
                dev._pause = f"paused by {who}"
                if dev._state.status == "running":
                    dev._state.control = f"pause requested by {who}: waits after this step"
            elif req.action == "resume":
                dev._pause = None
                dev._state.control = None
            else:
                dev._decision = req.action
        self._chunk.progressed = True
        workflow.logger.info(
            "%s by %s: %d device(s), %d refused",
            req.action,
            req.actor,
            len(result.accepted),
            len(result.refused),
        )
        return result

    @control.validator
    def validate_control(self, req: ControlRequest) -> None:
        """Refuse (nothing enters history) when the action applies to no device named."""
        if req.enrollment_ids is not None and len(req.enrollment_ids) > CONTROL_MAX_IDS:
            raise ValueError(f"at most {CONTROL_MAX_IDS} enrollment IDs per control")
        result = self._plan(req)
        if not result.accepted:
            reasons = sorted(set(result.refused.values()))
            raise ValueError(f"{req.action}: nothing to do ({'; '.join(reasons)})")

    # ---- governance ------------------------------------------------------------------

    @workflow.signal
    def emergency_stop(self, notice: EmergencyStopNotice) -> None:
        """The emergency stop engaged or released (broadcast by the API)."""
        if self._chunk is None:
            self._early_stops.append(notice)
        elif self._chunk.gov is not None:
            self._chunk.gov.hear(notice)

    @workflow.update
    def approval(self, decision: ApprovalDecision) -> str:
        """An approver's decision on this run's destructive step."""
        assert self._chunk is not None and self._chunk.gov is not None
        self._chunk.gov.decision = decision
        verb = "approved" if decision.approve else "rejected"
        workflow.logger.info("%s by %s", verb, decision.user)
        return verb

    @approval.validator
    def validate_approval(self, decision: ApprovalDecision) -> None:
        """Refused (nothing enters history) when not waiting, or from the starter."""
        if self._chunk is None or self._chunk.gov is None:
            raise ValueError("this run does not take approvals")
        why = self._chunk.gov.refuse_decision(decision)
        if why is not None:
            raise ValueError(why)

    # ---- signals ---------------------------------------------------------------------

    def _deliver(self, item: CommandReport | EnrollmentReset) -> None:
        if self._chunk is None:
            self._early.append(item)
            return
        dev = self._chunk.devices.get(item.enrollment_id)
        if dev is None:  # not a device of this chunk
            if len(self._chunk) == 1:
                next(iter(self._chunk.devices.values()))._state.rejected_reports += 1
            else:
                self._rejected += 1
            return
        if isinstance(item, EnrollmentReset):
            dev.on_enrollment_reset(item)
        else:
            dev.on_command_report(item)

    @workflow.signal
    def command_reports(self, reports: list[CommandReport]) -> None:
        """Device answers for this chunk, batched by the relay."""
        for report in reports:
            self._deliver(report)

    @workflow.signal
    def command_report(self, report: CommandReport) -> None:
        """One device answer (a relay that does not batch)."""
        self._deliver(report)

    @workflow.signal
    def enrollment_reset(self, reset: EnrollmentReset) -> None:
        """The relay saw an Authenticate or CheckOut for a device of this chunk."""
        self._deliver(reset)

    # ---- queries ---------------------------------------------------------------------

    @workflow.query
    def state(self, enrollment_id: str | None = None) -> RunState:
        """One device's state (the first device's when none is named)."""
        if self._chunk is None:
            return RunState(status="running", current_step="starting")
        if enrollment_id is None:
            if len(self._chunk) > 1:
                raise ValueError(
                    f"this fleet run drives {len(self._chunk)} devices: name one "
                    "(GET /v1/runs/state?id=..., or /v1/runs/summary for all)"
                )
            return next(iter(self._chunk.devices.values()))._state
        dev = self._chunk.devices.get(enrollment_id)
        if dev is None:
            raise ValueError(f"{enrollment_id!r} is not a device of this run")
        return dev._state

    @workflow.query
    def states(self, after: str | None = None, limit: int = 100) -> DeviceStatesPage:
        """A page of per-device states, in enrollment order after ``after``."""
        if self._chunk is None:
            return DeviceStatesPage(states=[])
        limit = min(max(limit, 1), STATES_PAGE_MAX)
        ids = sorted(i for i in self._chunk.devices if after is None or i > after)
        page = ids[:limit]
        return DeviceStatesPage(
            states=[self._chunk.devices[i]._state for i in page],
            next_after=page[-1] if len(ids) > limit else None,
        )

    @workflow.query
    def summary(self) -> FleetSummary:
        if self._chunk is None:
            return FleetSummary(
                workflow_name="", instance_id="", chunk=0, devices=0, by_status={}, by_step={}
            )
        states = [dev._state for dev in self._chunk.devices.values()]
        inp = self._chunk.input
        return FleetSummary(
            workflow_name=inp.workflow_name,
            instance_id=inp.instance_id,
            chunk=inp.chunk,
            devices=len(states),
            by_status=dict(Counter(s.status for s in states)),
            by_step=dict(Counter(s.current_step for s in states if s.current_step)),
            ignored_reports=sum(s.ignored_reports for s in states),
            rejected_reports=self._rejected + sum(s.rejected_reports for s in states),
            halted=self._chunk.gov.halted if self._chunk.gov else None,
            halted_since=self._chunk.gov.halted_since if self._chunk.gov else None,
            awaiting_approval=bool(self._chunk.gov and self._chunk.gov.awaiting_approval),
        )
