"""``io.micromdm.wf.devinfolog.v1``: ask a device for its DeviceInformation and log it.

Commands that reach the device, in one step "devinfo":
  1. DeviceInformation with the inventory queries
The answer is written to the worker log and kept in the device-information log
(``GET /v1/devinfolog?id=...``).

On error: a device Error fails the run with the error chain (typed DeviceError); no
answer within the step timeout ends it ``timed_out``; a re-enrollment mid-step re-sends
the command, a CheckOut ends the run. An operator's skip (suspend on failure) completes
the run with nothing logged, saying the step was skipped.
Rolls back: nothing (the command only reads).
Verified: nothing beyond the answer itself.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.models import DeviceInfoLogEntry
    from protocol.commands import device_information
    from protocol.results import DeviceInformationResponse, typed
    from workflows.contexts import NoContext
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


@workflow.defn(name="io.micromdm.wf.devinfolog.v1")
class DevInfoLogWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.devinfolog.v1"
    CODE = "dil"
    CONTEXT: ClassVar[type[BaseModel]] = NoContext  # NanoCMD: none
    ON_ENROLLMENT_RESET = "restart"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        step = await self.step("devinfo", [device_information()])
        if (end := self.interrupted(step)) is not None:
            return end
        report = step.results[0]
        if step.skipped and report is None:
            return self.finish("completed", "step 'devinfo' skipped by an operator: nothing logged")
        if report is None or report.status != "Acknowledged":
            return self.finish("failed", step.describe())
        responses = typed(report, DeviceInformationResponse).query_responses
        await self.log_device_information(
            DeviceInfoLogEntry(
                enrollment_id=inp.enrollment_id,
                command_uuid=report.command_uuid,
                query_responses=responses.model_dump(by_alias=True, exclude_none=True),
            ),
        )
        return self.finish("completed", "device information logged")
