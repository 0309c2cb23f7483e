"""``io.micromdm.wf.cmdplan.v1``: run a named command plan on a device, in order.

Context: the plan name. The plan's ``${param}`` / ``${param:fallback}`` references are
expanded from the enrollment's URL parameters.
Commands that reach the device, in one step and in this order:
  1. InstallProfile for each of the plan's profiles,
  2. InstallApplication for each manifest URL,
  3. DeviceConfigured — only if the plan asks for it and the device is waiting in
     Setup Assistant (its TokenUpdate said AwaitingConfiguration).
An unknown plan or profile fails before anything is sent; device errors fail the run
with each command's error.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.models import CmdPlanRequest, CmdPlanResult
    from protocol.commands import (
        Command,
        device_configured,
        install_application,
        install_stored_profile,
    )
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


@workflow.defn(name="io.micromdm.wf.cmdplan.v1")
class CmdPlanWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.cmdplan.v1"
    CODE = "cmp"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        if not inp.context:
            return self.finish("failed", "context must name a command plan")
        plan = await self.activity(
            "cmdplans.load",
            CmdPlanRequest(
                name=inp.context, enrollment_id=inp.enrollment_id, url_params=inp.url_params
            ),
            result_type=CmdPlanResult,
            summary=f"load plan {inp.context}",
        )
        if not plan.found:
            return self.finish("failed", f"no command plan named {inp.context!r}")
        commands: list[Command] = [install_stored_profile(n) for n in plan.profile_names]
        commands += [install_application(u) for u in plan.manifest_urls]
        if plan.device_configured and plan.awaiting_configuration:
            commands.append(device_configured())
        if not commands:
            return self.finish("completed", f"plan {inp.context!r} has nothing to send")

        step = await self.step("plan", commands)
        if step.timed_out:
            return self.finish("timed_out", step.describe())
        if step.reset or step.errors:
            return self.finish("failed", step.describe())
        if commands[-1].request_type == "DeviceConfigured":
            await self.activity(
                "enrollments.configured",
                inp.enrollment_id,
                result_type=type(None),
                summary="mark the enrollment configured",
            )
        return self.finish("completed", f"plan {inp.context!r}: {len(commands)} command(s) done")
