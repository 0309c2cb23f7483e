"""``io.micromdm.wf.cmdplan.v1``: run a named command plan on a device, in order.

Context: the plan name. The plan's ``${param}`` / ``${param:fallback}`` references are
expanded from the enrollment's URL parameters.
Commands that reach the device:
  1. step "plan", in this order:
     - InstallProfile for each of the plan's profiles,
     - InstallApplication for each manifest URL,
     - DeviceConfigured — only if the plan asks for it and the device is waiting in
       Setup Assistant (its TokenUpdate said AwaitingConfiguration).
  2. step "verify": ProfileList (managed only) — only when the plan installed profiles
     (runs started before fleet runs end after "plan").
The post-condition is :func:`workflows.profile.verify_profiles`, as in the profile
workflow.

On error: an unknown plan or profile fails before anything is sent; a device Error
fails the run with each command's error (typed DeviceError); a timeout ends it
``timed_out``; a failed verification fails it. The enrollment is marked configured
only when the device acknowledged DeviceConfigured. An operator's skip (suspend on
failure) goes on with what the device acknowledged; the rest reads as skipped.

Rolls back (only when the run asks for rollback): every profile the plan installed is
removed by its identifier, newest first, when the run fails, is aborted or cancelled.
Applications and DeviceConfigured are not undone.

Verified: each installed profile is on the device with the stored PayloadUUID.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.models import (
        CmdPlanRequest,
        CmdPlanResult,
        ProfileInfoRequest,
        ProfileInfoResult,
    )
    from protocol.commands import (
        Command,
        device_configured,
        install_application,
        install_stored_profile,
        profile_list,
        remove_profile,
    )
    from workflows.contexts import ContextError
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput
    from workflows.profile import VERIFIED_REVISION, profiles_on, verify_profiles


class PlanName(BaseModel):
    """NanoCMD's context of this workflow: a command plan's name, looked up as given."""

    name: str

    @classmethod
    def from_context(cls, context: str | None) -> PlanName:
        if not context or not context.strip():
            raise ContextError("context", "required: the name of a command plan")
        return cls(name=context)


@workflow.defn(name="io.micromdm.wf.cmdplan.v1")
class CmdPlanWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.cmdplan.v1"
    CODE = "cmp"
    CONTEXT: ClassVar[type[BaseModel]] = PlanName

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
        stored: ProfileInfoResult | None = None
        if plan.profile_names and inp.revision >= VERIFIED_REVISION:
            stored = await self.activity(
                "profiles.info",
                ProfileInfoRequest(names=plan.profile_names),
                result_type=ProfileInfoResult,
                summary="look up the plan's profiles",
                shared=True,  # the same answer for every device of a fleet run
            )
            unknown = [n for n in plan.profile_names if n not in stored.profiles]
            if unknown:
                return self.finish(
                    "failed", f"plan {inp.context!r} names unknown profile(s): {', '.join(unknown)}"
                )
        commands: list[Command] = [install_stored_profile(n) for n in plan.profile_names]
        commands += [install_application(u) for u in plan.manifest_urls]
        if plan.device_configured and plan.awaiting_configuration:
            commands.append(device_configured())
        if not commands:
            return self.finish("completed", f"plan {inp.context!r} has nothing to send")

        step = await self.step("plan", commands)
        if (end := self.interrupted(step)) is not None:
            return end
        acked = [r is not None and r.status == "Acknowledged" for r in step.results]
        installed = [n for n, ok in zip(plan.profile_names, acked, strict=False) if ok]
        if inp.rollback and stored is not None:
            for name in installed:
                identifier = stored.profiles[name].identifier
                self.add_undo(f"install {name}", [remove_profile(identifier)])
        if step.errors:
            return self.finish("failed", step.describe())
        if commands[-1].request_type == "DeviceConfigured" and acked[-1]:
            await self.activity(
                "enrollments.configured",
                inp.enrollment_id,
                result_type=type(None),
                summary="mark the enrollment configured",
            )
        message = f"plan {inp.context!r}: {sum(acked)} command(s) done"
        if step.skipped:
            message += f", {len(commands) - sum(acked)} skipped"

        if installed and stored is not None:
            checked = await self.step("verify", [profile_list(managed_only=True)])
            if checked.timed_out:
                return self.finish("timed_out", f"{message}; {checked.describe()}")
            if checked.reset or checked.errors:
                return self.finish("failed", f"{message}; {checked.describe()}")
            if checked.skipped:
                return self.finish("completed", f"{message}; profiles not verified (skipped)")
            expected: dict[str, str | None] = {
                stored.profiles[n].identifier: stored.profiles[n].uuid for n in installed
            }
            problems = verify_profiles(expected, profiles_on(checked))
            notes = [
                f"{n}: verification failed: {problems[stored.profiles[n].identifier]}"
                if stored.profiles[n].identifier in problems
                else f"{n}: verified"
                for n in installed
            ]
            message += "; " + ", ".join(notes)
            if problems:
                return self.finish("failed", message)
        return self.finish("completed", message)
