"""``io.micromdm.wf.profile.v1``: make a device's profiles match a list.

Context: comma-separated stored profile names; ``-name`` means remove it.
Commands that reach the device:
  1. step "list": ProfileList (managed profiles only).
  2. step "apply": InstallProfile for each named profile that is missing or differs
     (by PayloadIdentifier and PayloadUUID), RemoveProfile for each ``-name`` that is
     installed — only if there is anything to do.
  3. step "verify": ProfileList (managed only) — only after an apply step that changed
     something (runs started before fleet runs end after "apply").
Pre- and post-conditions are :func:`needs_change` and :func:`verify_profiles`.

On error: the result reports every profile — installed, already installed, removed,
not installed, unknown profile, skipped, the device's error — each change followed by
``verified`` or ``verification failed``. A device Error (typed DeviceError), a missing
answer or a failed verification fails the run; a step that times out ends it
``timed_out``; a re-enrollment or CheckOut mid-step fails it.
An operator's skip (suspend on failure): a skipped "list" reads as a device with no
managed profiles; a skipped "apply" leaves the refused profiles ``skipped``; a skipped
"verify" leaves the changes ``not verified``. None of these fail the run.

Rolls back (only when the run asks for rollback): every InstallProfile the device
acknowledged is undone by a RemoveProfile of its identifier, every RemoveProfile by
re-installing the stored profile — newest first, when the run fails, is aborted or
cancelled after the change.

Verified: installed profiles are on the device with the stored PayloadUUID, removed
ones are absent.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.models import ProfileInfoRequest, ProfileInfoResult, ProfileSummary
    from protocol.commands import (
        Command,
        install_stored_profile,
        profile_list,
        remove_profile,
    )
    from protocol.results import ProfileListResponse, typed
    from workflows.contexts import ContextError
    from workflows.engine import MdmWorkflow
    from workflows.models import FLEET_REVISION, RunResult, StepOutcome, WorkflowInput

# Runs of this revision and later verify their changes with one more ProfileList; runs
# started earlier replay the commands they were started with.
VERIFIED_REVISION = FLEET_REVISION
# What a report value starting with one of these means: the run failed.
FAILED_PREFIXES = ("error", "unknown", "no answer")


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


class ProfileListContext(BaseModel):
    """NanoCMD's profile list, checked strictly before a start: ``"wifi,vpn,-old"``
    installs wifi and vpn and removes old. Names are trimmed as :func:`parse_context`
    trims them; an empty name, a lone ``-`` or a name given twice is refused."""

    install: list[str] = []
    remove: list[str] = []

    @classmethod
    def from_context(cls, context: str | None) -> ProfileListContext:
        if not context:
            raise ContextError("context", "required: profile names, '-name' to remove")
        install: list[str] = []
        remove: list[str] = []
        for position, item in enumerate(context.split(","), 1):
            name = item.strip()
            removing = name.startswith("-")
            if removing:
                name = name[1:].strip()
            if not name:
                raise ContextError(f"profile {position}", "an empty profile name")
            if name in install or name in remove:
                raise ContextError(name, "named twice")
            (remove if removing else install).append(name)
        return cls(install=install, remove=remove)


def profiles_on(listed: StepOutcome) -> dict[str, str]:
    """PayloadIdentifier -> PayloadUUID of a ProfileList step's answer.

    A skipped step has no answer: the device reads as having no managed profiles.
    """
    report = listed.results[0]
    if report is None:
        return {}
    return {p.identifier: p.uuid for p in typed(report, ProfileListResponse).profile_list}


def needs_change(want: ProfileSummary, install: bool, on_device: dict[str, str]) -> bool:
    """Pre-condition: an install is needed unless the same PayloadUUID is installed; a
    removal only when the identifier is installed."""
    if install:
        return on_device.get(want.identifier) != want.uuid
    return want.identifier in on_device


def verify_profiles(expected: dict[str, str | None], on_device: dict[str, str]) -> dict[str, str]:
    """Post-condition: identifier -> PayloadUUID it must have, or None: it must be absent.

    Returns why, per identifier, the device does not match (empty when it does).
    """
    problems: dict[str, str] = {}
    for identifier, uuid in expected.items():
        found = on_device.get(identifier)
        if uuid is None and found is not None:
            problems[identifier] = "still installed"
        elif uuid is not None and found is None:
            problems[identifier] = "not on the device"
        elif uuid is not None and found != uuid:
            problems[identifier] = f"PayloadUUID {found} on the device, {uuid} stored"
    return problems


def failed_report(report: dict[str, str]) -> bool:
    return any(v.startswith(FAILED_PREFIXES) or "verification failed" in v for v in report.values())


@workflow.defn(name="io.micromdm.wf.profile.v1")
class ProfileWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.profile.v1"
    CODE = "prf"
    CONTEXT: ClassVar[type[BaseModel]] = ProfileListContext

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
        if (end := self.ended(listed)) is not None:
            return end
        on_device = profiles_on(listed)

        commands: list[Command] = []
        names: list[str] = []
        for name in install:
            if name in report:
                continue
            if needs_change(stored.profiles[name], True, on_device):
                commands.append(install_stored_profile(name))
                names.append(name)
            else:
                report[name] = "already installed"
        for name in remove:
            if name in report:
                continue
            if needs_change(stored.profiles[name], False, on_device):
                commands.append(remove_profile(stored.profiles[name].identifier))
                names.append(name)
            else:
                report[name] = "not installed"

        def summary() -> str:
            return ", ".join(f"{n}: {report[n]}" for n in install + remove)

        if commands:
            applied = await self.step("apply", commands)
            if applied.timed_out:
                return self.finish("timed_out", applied.describe())
            # identifier -> the PayloadUUID it must have now, or None: removed
            expected: dict[str, str | None] = {}
            changed: dict[str, str] = {}  # identifier -> profile name
            for name, command, result in zip(names, commands, applied.results, strict=True):
                want = stored.profiles[name]
                if result is None:
                    report[name] = "skipped" if applied.skipped else "no answer"
                elif result.status != "Acknowledged":
                    report[name] = f"error: {result.error_summary}"
                elif command.request_type == "InstallProfile":
                    report[name] = "installed"
                    expected[want.identifier], changed[want.identifier] = want.uuid, name
                    if inp.rollback:
                        self.add_undo(f"install {name}", [remove_profile(want.identifier)])
                else:
                    report[name] = "removed"
                    expected[want.identifier], changed[want.identifier] = None, name
                    if inp.rollback:
                        self.add_undo(f"remove {name}", [install_stored_profile(name)])
            apply_failed = any(report[n].startswith(FAILED_PREFIXES) for n in names)
            if expected and not apply_failed and inp.revision >= VERIFIED_REVISION:
                checked = await self.step("verify", [profile_list(managed_only=True)])
                if checked.timed_out:
                    return self.finish("timed_out", f"{summary()}; {checked.describe()}")
                if checked.reset or checked.errors:
                    return self.finish("failed", f"{summary()}; {checked.describe()}")
                if checked.skipped:
                    for identifier in expected:
                        report[changed[identifier]] += ", not verified (step skipped)"
                else:
                    problems = verify_profiles(expected, profiles_on(checked))
                    for identifier in expected:
                        why = problems.get(identifier)
                        note = f"verification failed: {why}" if why else "verified"
                        report[changed[identifier]] += f", {note}"
        if listed.skipped:
            report_text = summary() + " (list skipped: read as no managed profiles)"
        else:
            report_text = summary()
        return self.finish("failed" if failed_report(report) else "completed", report_text)
