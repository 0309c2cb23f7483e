"""``mdmflow.fleet.v1``: one durable run drives a chunk of enrollments.

A start for many devices runs as one fleet run per chunk (see :mod:`starter.starting`).
The run makes one instance of the MDM workflow's class per enrollment and runs each
device's story — the workflow file's ``run``, read as one device's story — side by side
with the others; the steps go through the chunk engine (:mod:`workflows.chunk`), which
sends shared commands once per chunk and keeps one timer for everybody.

What reaches the run:
- ``command_reports``: device answers, batched by the relay; each goes to the device it
  names (a report for a device not in this chunk is rejected and counted);
- ``enrollment_reset``: the device re-enrolled or checked out;
- queries ``state`` (one device), ``states`` (a page of devices) and ``summary``.

A device whose story fails (a device Error, an unknown enrollment, a missing escrowed
key) ends ``failed`` with its reason; the others go on. The run's result counts devices
per status; a chunk of one returns that device's result.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from protocol.results import CommandReport
    from workflows import search_attributes as sa
    from workflows.chunk import Chunk
    from workflows.engine import MdmWorkflow
    from workflows.models import (
        DeviceStatesPage,
        EnrollmentReset,
        FleetInput,
        FleetResult,
        FleetSummary,
        RunState,
        check_revision,
    )
    from workflows.registry import BY_NAME

FLEET_WORKFLOW = "mdmflow.fleet.v1"
STATES_PAGE_MAX = 500


@workflow.defn(name=FLEET_WORKFLOW)
class FleetRunWorkflow:
    def __init__(self) -> None:
        self._chunk: Chunk | None = None
        self._early: list[CommandReport | EnrollmentReset] = []
        self._rejected = 0
        # A one-device run whose story raised fails in Temporal as a one-device run did.
        self._failure: ApplicationError | ActivityError | None = None

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

        pump = asyncio.create_task(chunk.pump())
        clock = asyncio.create_task(chunk.clock())
        details = asyncio.create_task(self._details(inp, chunk))
        await asyncio.gather(*(self._live(inp, eid, dev) for eid, dev in chunk.devices.items()))
        chunk.close()
        await pump
        await clock
        await details
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._failure is not None:
            raise self._failure
        return self._result(inp, chunk)

    async def _live(self, inp: FleetInput, eid: str, dev: MdmWorkflow) -> None:
        """One device's story; its failure is its own, never the chunk's."""
        try:
            await dev.run(inp.device_input(eid))  # type: ignore[attr-defined]
        except ApplicationError as exc:
            dev.finish("failed", exc.message)
            if len(inp.enrollment_ids) == 1:
                self._failure = exc
        except ActivityError as exc:
            cause = exc.cause
            why = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            dev.finish("failed", f"{exc.activity_type or 'activity'} failed: {why}")
            if len(inp.enrollment_ids) == 1:
                self._failure = exc

    async def _details(self, inp: FleetInput, chunk: Chunk) -> None:
        """Keep the Web UI's "current details" of the run: devices per status and step.

        Not recorded in history; refreshed at most once per workflow task.
        """
        while True:
            await workflow.wait_condition(lambda: chunk.progressed)
            chunk.progressed = False
            summary = self.summary()
            parts = [f"{n} {s}" for s, n in sorted(summary.by_status.items())]
            steps = ", ".join(f"{n} in {s!r}" for s, n in sorted(summary.by_step.items()))
            text = f"**{inp.workflow_name}**, {summary.devices} device(s): {', '.join(parts)}"
            workflow.set_current_details(text + (f" ({steps})" if steps else ""))
            if summary.by_status.get("running", 0) == 0:
                return

    def _result(self, inp: FleetInput, chunk: Chunk) -> FleetResult:
        states = [dev._state for dev in chunk.devices.values()]
        by_status = dict(Counter(s.status for s in states))
        if len(states) == 1:
            only = states[0]
            status, message = only.status, only.message or ""
        else:
            status = "completed" if by_status.get("completed") == len(states) else "failed"
            message = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            message = f"{len(states)} devices: {message}"
            workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(f"done:{status}")])
            workflow.logger.info("%s chunk %d: %s", inp.workflow_name, inp.chunk, message)
        return FleetResult(
            status=status,
            message=message,
            enrollment_id=inp.enrollment_ids[0],
            instance_id=inp.instance_id,
            chunk=inp.chunk,
            devices=len(states),
            by_status=by_status,
        )

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
        )
