"""``io.micromdm.wf.lock.v1``: lock a lost Mac (or iPhone/iPad) and keep the PIN.

Commands that reach the device, in one step "lock":
  1. DeviceLock with a new random 6-digit PIN and the optional message / phone number.
The PIN is generated and escrowed inside the send activity: it never enters workflow
history. Retrieve it with ``GET /v1/escrow/{id}/pin`` (every retrieval is recorded).
Context: optional JSON ``{"message": "...", "phone_number": "..."}`` or a plain message.

On error: a device Error fails the run with the error (typed DeviceError); no answer
within the step timeout ends it ``timed_out``; a re-enrollment or CheckOut mid-step
ends the run (a lock is not silently re-sent). A retried step (suspend on failure)
sends a new DeviceLock with a new PIN. An operator's skip completes the run with a
message that the lock was skipped: no claim that the device is locked or that the
escrowed PIN is its PIN.
Rolls back: nothing (a lock is not undone by MDM; the PIN unlocks it).
Verified: the device's acknowledgement of DeviceLock.
"""

from __future__ import annotations

import json
from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from protocol.commands import device_lock
    from workflows.contexts import ContextError, from_json
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


class LockContext(BaseModel):
    message: str | None = None
    phone_number: str | None = None

    @classmethod
    def parse(cls, context: str | None) -> LockContext:
        if not context:
            return cls()
        try:
            doc = json.loads(context)
        except json.JSONDecodeError:
            return cls(message=context)
        if not isinstance(doc, dict):
            return cls(message=context)
        return cls.model_validate(doc)

    @classmethod
    def from_context(cls, context: str | None) -> LockContext:
        """Strictly, before a start: a JSON object of these fields, or a plain message
        that is not JSON at all. Broken JSON (``{"message":"oops``) and other JSON values
        are refused rather than shown on the device's lock screen."""
        if not context:
            return cls()
        if context.lstrip()[:1] in ("{", "["):
            return from_json(cls, context)
        try:
            json.loads(context)
        except ValueError:
            if not context.strip():
                raise ContextError("context", "a blank message") from None
            return cls(message=context)
        raise ContextError(
            "context", 'a JSON value that is not an object: give {"message": ...} or plain text'
        )


@workflow.defn(name="io.micromdm.wf.lock.v1")
class LockWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.lock.v1"
    CODE = "lck"
    CONTEXT: ClassVar[type[BaseModel]] = LockContext
    ON_ENROLLMENT_RESET = "fail"

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        try:
            ctx = LockContext.parse(inp.context)
        except ValidationError as exc:
            return self.finish("failed", f"bad context: {exc.errors()[0]['msg']}")
        step = await self.step("lock", [device_lock(ctx.message, ctx.phone_number)])
        if (end := self.ended(step)) is not None:
            return end
        if step.skipped:
            return self.finish(
                "completed",
                "step 'lock' skipped by an operator: the device is not known to be locked",
            )
        return self.finish("completed", "device locked; PIN escrowed")
