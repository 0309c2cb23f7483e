"""``io.micromdm.wf.fvrotate.v1``: rotate the FileVault personal recovery key.

Commands that reach the device, in one step:
  1. RotateFileVaultKey, unlocking with the escrowed key and asking for the new key
     encrypted to our escrow certificate. Both are put into the command inside the
     send activity, so no key enters workflow history.
The new key is decrypted and escrowed; the previous one is kept (superseded).

Pre-condition (``precondition``): an escrowed key to unlock with. Checked before the
step (``escrow.has_secret``, which answers yes or no, never the key), so a device with no
escrowed key fails at once, ``BadInput``, with nothing sent; the send activity's
``current_prk`` fill checks again where the key is read.
On error: a device Error (e.g. the escrowed key is wrong) fails the run with the error
chain (typed DeviceError), the escrowed key unchanged; a timeout ends it ``timed_out``;
a re-enrollment or CheckOut fails it; an acknowledgement without a new key fails it.
An operator's skip (suspend on failure) completes the run with a message that the
rotation was skipped: no claim of a new key, the escrowed key unchanged.
Rolls back: nothing (the previous key stays escrowed, marked superseded).
Verified: the new key decrypts (inside ``escrow.store_cms``) before it is escrowed.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.models import EscrowQuery
    from protocol.commands import rotate_filevault_key
    from workflows.contexts import NoContext
    from workflows.engine import MdmWorkflow
    from workflows.escrowing import escrow_recovery_key
    from workflows.models import FLEET_REVISION, RunResult, WorkflowInput

# Runs started as fleet runs check the escrowed key before the step.
PRECHECK_REVISION = FLEET_REVISION


@workflow.defn(name="io.micromdm.wf.fvrotate.v1")
class FileVaultRotateWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.fvrotate.v1"
    CODE = "fvr"
    CONTEXT: ClassVar[type[BaseModel]] = NoContext  # NanoCMD: none

    async def precondition(self) -> str | None:
        """Why the rotation cannot start, or None: no escrowed key to unlock with."""
        if self.input.revision < PRECHECK_REVISION:
            return None  # runs from before fleet runs: the send's fill checks it
        escrowed = await self.activity(
            "escrow.has_secret",
            EscrowQuery(enrollment_id=self.input.enrollment_id, kind="prk"),
            result_type=bool,
            summary="is a recovery key escrowed?",
        )
        if escrowed:
            return None
        return (
            f"no FileVault recovery key escrowed for {self.input.enrollment_id}: "
            "run io.micromdm.wf.fvenable.v1 first"
        )

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        if (problem := await self.precondition()) is not None:
            return self.finish("failed", problem, "BadInput")
        step = await self.step("rotate", [rotate_filevault_key()])
        if step.timed_out:
            return self.finish("timed_out", step.describe())
        report = step.results[0]
        if step.skipped and report is None:
            return self.finish(
                "completed",
                "step 'rotate' skipped by an operator: the key was not rotated; the escrowed "
                "key is unchanged",
            )
        if step.reset or report is None or report.status != "Acknowledged":
            return self.finish("failed", step.describe())
        result = report.body.get("RotateResult")
        cms = result.get("EncryptedNewRecoveryKey") if isinstance(result, dict) else None
        if not isinstance(cms, dict):
            return self.finish("failed", "device acknowledged but sent no new recovery key")
        secret_id = await escrow_recovery_key(self, cms, report.command_uuid)
        return self.finish("completed", f"recovery key rotated; new key escrowed (#{secret_id})")
