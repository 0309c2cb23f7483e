"""``io.mdmflow.erase.v1``: erase a device (lost, stolen, or going back into service).

Commands that reach the device, in one step "erase":
  1. EraseDevice with a new random 6-digit PIN (Apple's ``PIN``: an erased Intel Mac
     asks for it before it starts again) and the options of the context.
The PIN is generated and escrowed inside the send activity: it never enters workflow
history. Retrieve it with ``GET /v1/escrow/{id}/pin`` (every retrieval is recorded).
Return to Service profiles are named in the context and read from the profile store at
send time; every name is looked up before anything is sent.
Context: optional JSON, see :class:`EraseContext`; anything else fails the run before
a command is sent (an erase is never sent on a guess).

After the acknowledgement the device erases itself and stops answering: it does not
check out, it goes silent. The run completes on the acknowledgement.

On error: a device Error fails the run with the error (typed DeviceError); no answer
within the step timeout ends it ``timed_out``; a re-enrollment or CheckOut mid-step
ends the run (an erase is not silently re-sent). A retried step (suspend on failure)
sends a new EraseDevice with a new PIN. An operator's skip completes the run with a
message that the erase was skipped: no claim that the device is erased or that the
escrowed PIN is its PIN.
Rolls back: nothing (an erase cannot be undone).
Verified: the device's acknowledgement of EraseDevice.
"""

from __future__ import annotations

import json
from typing import Self

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

    from activities.models import ProfileInfoRequest, ProfileInfoResult
    from protocol.commands import Command, ObliterationBehavior, erase_device
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


class ReturnToServiceContext(BaseModel):
    """EraseDevice's ``ReturnToService``; the profiles are stored profiles' names."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
    mdm_profile_name: str | None = None
    wifi_profile_name: str | None = None

    @model_validator(mode="after")
    def _names_need_enabled(self) -> Self:
        for name in (self.mdm_profile_name, self.wifi_profile_name):
            if name is not None and not name.strip():
                raise ValueError("a profile name must not be empty")
        if not self.enabled and (self.mdm_profile_name or self.wifi_profile_name):
            raise ValueError("profiles are only sent when enabled is true")
        return self


class EraseContext(BaseModel):
    """The erase options; None leaves a key out of the command (the device's default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    obliteration_behavior: ObliterationBehavior | None = None
    preserve_data_plan: bool | None = None
    disallow_proximity_setup: bool | None = None
    return_to_service: ReturnToServiceContext | None = None

    @classmethod
    def parse(cls, raw: str | None) -> EraseContext:
        """None or "" gives the defaults; otherwise a JSON object of these fields.

        Raises ValueError naming the field and what is wrong with it.
        """
        if not raw:
            return cls()
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"context is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"context must be a JSON object, not {type(doc).__name__}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(part) for part in err["loc"]) or "context"
                problems.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
            raise ValueError("; ".join(problems)) from None

    def profile_names(self) -> list[str]:
        rts = self.return_to_service
        if rts is None:
            return []
        return [n for n in (rts.mdm_profile_name, rts.wifi_profile_name) if n]

    def command(self) -> Command:
        rts = self.return_to_service
        return erase_device(
            obliteration_behavior=self.obliteration_behavior,
            preserve_data_plan=self.preserve_data_plan,
            disallow_proximity_setup=self.disallow_proximity_setup,
            return_to_service=rts is not None and rts.enabled,
            rts_mdm_profile=rts.mdm_profile_name if rts else None,
            rts_wifi_profile=rts.wifi_profile_name if rts else None,
        )


@workflow.defn(name="io.mdmflow.erase.v1")
class EraseWorkflow(MdmWorkflow):
    NAME = "io.mdmflow.erase.v1"
    CODE = "ers"
    ON_ENROLLMENT_RESET = "fail"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        try:
            ctx = EraseContext.parse(inp.context)
        except ValueError as exc:
            return self.finish("failed", f"bad context: {exc}")
        names = ctx.profile_names()
        if names:
            stored = await self.activity(
                "profiles.info",
                ProfileInfoRequest(names=names),
                result_type=ProfileInfoResult,
                summary="look up Return to Service profiles",
                shared=True,  # the same answer for every device of a fleet run
            )
            missing = [n for n in names if n not in stored.profiles]
            if missing:
                return self.finish(
                    "failed",
                    "bad context: return_to_service: no stored profile named "
                    + ", ".join(repr(n) for n in missing),
                )
        step = await self.step("erase", [ctx.command()])
        if (end := self.ended(step)) is not None:
            return end
        if step.skipped:
            return self.finish(
                "completed",
                "step 'erase' skipped by an operator: the device is not known to be erased",
            )
        return self.finish("completed", "device acknowledged EraseDevice; PIN escrowed")
