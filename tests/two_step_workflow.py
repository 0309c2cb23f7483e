"""A two-step workflow used only by tests: a step boundary to pause at, an undo to run."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from protocol.commands import device_information, security_info
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


@workflow.defn(name="test.two_step.v1")
class TwoStepWorkflow(MdmWorkflow):
    """``first`` (DeviceInformation), then ``second`` (SecurityInfo).

    With rollback asked, ``first`` registers an undo (a SecurityInfo query standing in
    for "remove what was installed"), so tests see undo steps run newest-first.
    """

    NAME = "test.two_step.v1"
    CODE = "t2s"
    ON_ENROLLMENT_RESET = "restart"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        first = await self.step("first", [device_information(["SerialNumber"])])
        if first.incomplete or first.errors:
            return self.finish("timed_out" if first.timed_out else "failed", first.describe())
        if inp.rollback:
            self.add_undo("first", [security_info()])
        second = await self.step("second", [security_info()])
        if second.incomplete or second.errors:
            return self.finish("timed_out" if second.timed_out else "failed", second.describe())
        skipped = " (first skipped)" if first.skipped else ""
        return self.finish("completed", f"both steps done{skipped}")
