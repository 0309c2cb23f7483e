"""A simultaneous (non-exclusive) workflow used only by tests: several runs per device."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from protocol.commands import device_information
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


@workflow.defn(name="test.simultaneous.v1")
class SimultaneousWorkflow(MdmWorkflow):
    NAME = "test.simultaneous.v1"
    CODE = "tsim"
    EXCLUSIVE = False

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        step = await self.step("ask", [device_information(["SerialNumber"])])
        return self.finish("completed" if step.acknowledged else "failed", step.describe())
