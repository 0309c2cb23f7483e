"""``io.micromdm.wf.profile.v1``: make a device's profiles match a list.

Context: comma-separated stored profile names; ``-name`` means remove it.
Commands that reach the device:
  1. step "list": ProfileList (managed profiles only).
  2. step "apply": InstallProfile for each named profile that is missing or differs
     (by PayloadIdentifier and PayloadUUID), RemoveProfile for each ``-name`` that is
     installed — only if there is anything to do.
The result reports every profile: installed, already installed, removed, not
installed, unknown profile, or the device's error. Any error fails the run.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.models import ProfileInfoRequest, ProfileInfoResult
    from protocol.commands import (
        Command,
        install_stored_profile,
        profile_list,
        remove_profile,
    )
    from protocol.results import ProfileListResponse, typed
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


def parse_context(context: str | None) -> tuple[list[str], list[str]]:
    """``"a,b,-c"`` -> (install ["a", "b"], remove ["c"])."""
    install: list[str] = []
    remove: list[str] = []
    for item in (context or "").split(","):
        name = item.strip()
        if name.startswith("-") and name[1:].strip():
            remove.append(name[1:].strip())
        elif name and name != "-":
            install.append(name)
    return install, remove


@workflow.defn(name="io.micromdm.wf.profile.v1")
class ProfileWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.profile.v1"
    CODE = "prf"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        install, remove = parse_context(inp.context)
        if not install and not remove:
            return self.finish("failed", "context names no profiles (e.g. 'wifi,-old')")
        stored = await self.activity(
            "profiles.info",
            ProfileInfoRequest(names=install + remove),
            result_type=ProfileInfoResult,
            summary="look up stored profiles",
            shared=True,  # the same answer for every device of a fleet run
        )
        report: dict[str, str] = {
            n: "unknown profile" for n in install + remove if n not in stored.profiles
        }

        listed = await self.step("list", [profile_list(managed_only=True)])
        if listed.incomplete or listed.errors:
            return self.finish("timed_out" if listed.timed_out else "failed", listed.describe())
        assert listed.results[0] is not None
        on_device = {
            p.identifier: p.uuid for p in typed(listed.results[0], ProfileListResponse).profile_list
        }

        commands: list[Command] = []
        names: list[str] = []
        for name in install:
            if name in report:
                continue
            want = stored.profiles[name]
            if on_device.get(want.identifier) == want.uuid:
                report[name] = "already installed"
            else:
                commands.append(install_stored_profile(name))
                names.append(name)
        for name in remove:
            if name in report:
                continue
            identifier = stored.profiles[name].identifier
            if identifier in on_device:
                commands.append(remove_profile(identifier))
                names.append(name)
            else:
                report[name] = "not installed"

        if commands:
            applied = await self.step("apply", commands)
            if applied.timed_out:
                return self.finish("timed_out", applied.describe())
            for name, command, result in zip(names, commands, applied.results, strict=True):
                if result is None:
                    report[name] = "no answer"
                elif result.status == "Acknowledged":
                    verb = "installed" if command.request_type == "InstallProfile" else "removed"
                    report[name] = verb
                else:
                    report[name] = f"error: {result.error_summary}"
        summary = ", ".join(f"{n}: {report[n]}" for n in install + remove)
        failed = any(v.startswith(("error", "unknown", "no answer")) for v in report.values())
        return self.finish("failed" if failed else "completed", summary)
