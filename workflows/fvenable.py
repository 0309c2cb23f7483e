"""``io.micromdm.wf.fvenable.v1``: turn FileVault on and escrow the recovery key.

Commands that reach the device:
  1. step "install": InstallProfile of the FileVault escrow profile (our escrow
     certificate inside; the stored template ``io.micromdm.wf.fvenable.v1`` if any).
  2. step "poll", repeated on a durable timer: SecurityInfo, until FileVault is on and
     the device reports ``FDE_PersonalRecoveryKeyCMS``.
The CMS is decrypted and sealed inside an activity (``escrow.store_cms``); the
recovery key never enters workflow history. Context (optional JSON):
``{"poll_seconds": 120, "max_polls": 180}`` (NanoCMD's 2 minutes x 180, about 6 hours).

On error: a refused profile fails the run (typed DeviceError); a poll that errors is
polled again (as NanoCMD does); a step that times out ends the run ``timed_out``, a
re-enrollment or CheckOut fails it; a FileVault that is not on after the last poll ends
the run ``timed_out``. An operator's skip (suspend on failure): a skipped "install"
goes on polling (the profile may be there already), a skipped poll is one poll more.
Rolls back: nothing (the escrow profile stays; FileVault is not turned off).
Verified: FileVault on, per the device's SecurityInfo, and the key escrowed (the
activity checks that the CMS decrypts to a recovery key).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, Field, ValidationError

    from protocol.commands import install_escrow_profile, security_info
    from protocol.results import SecurityInfoResponse, typed
    from workflows.engine import MdmWorkflow
    from workflows.escrowing import escrow_recovery_key
    from workflows.models import RunResult, WorkflowInput


class PollContext(BaseModel):
    poll_seconds: float = Field(default=120, gt=0)
    max_polls: int = Field(default=180, gt=0)

    @classmethod
    def parse(cls, context: str | None) -> PollContext:
        return cls.model_validate(json.loads(context)) if context else cls()


@workflow.defn(name="io.micromdm.wf.fvenable.v1")
class FileVaultEnableWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.fvenable.v1"
    CODE = "fve"
    CONTEXT: ClassVar[type[BaseModel]] = PollContext  # strict JSON (workflows.contexts)
    # up to 180 polls a device; devices drift apart over time, each poll round then
    # costs more sends: smaller chunks keep a run's history well inside Temporal's limits
    MAX_CHUNK = 250

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        try:
            ctx = PollContext.parse(inp.context)
        except (ValueError, ValidationError) as exc:
            return self.finish("failed", f"bad context: {exc}")
        install = await self.step("install", [install_escrow_profile()])
        if (end := self.ended(install)) is not None:
            return end
        skipped = " (escrow profile install skipped)" if install.skipped else ""

        for _ in range(ctx.max_polls):
            poll = await self.step(
                "poll",
                [security_info()],
                not_until=workflow.now() + timedelta(seconds=ctx.poll_seconds),
            )
            if (end := self.interrupted(poll)) is not None:
                return end
            report = poll.results[0]
            if report is None or report.status != "Acknowledged":
                continue  # NanoCMD keeps polling through errors too (and skipped polls)
            info = typed(report, SecurityInfoResponse).security_info
            cms = info.fde_personal_recovery_key_cms
            if info.fde_enabled and isinstance(cms, dict):
                secret_id = await escrow_recovery_key(self, cms, report.command_uuid)
                return self.finish(
                    "completed", f"FileVault on; recovery key escrowed (#{secret_id}){skipped}"
                )
        return self.finish(
            "timed_out",
            f"FileVault not on with an escrowed key after {ctx.max_polls} polls{skipped}",
        )
