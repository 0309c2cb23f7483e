"""Activities that send a step's commands to the MDM server and push the device.

Transient failures raise ordinary errors, so Temporal retries them with backoff; a
permanent one raises a non-retryable ``ApplicationError`` whose message reaches the
workflow and the Web UI.
"""

from __future__ import annotations

import logging

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.fills import CommandFiller, FillError
from activities.mdm_server import MdmServerClient, PermanentMdmError
from activities.models import (
    PushInput,
    PushResult,
    QueuedCommand,
    SendStepInput,
    SendStepResult,
)

log = logging.getLogger("mdmflow.activities")


class MdmActivities:
    def __init__(self, client: MdmServerClient, filler: CommandFiller | None = None) -> None:
        self._client = client
        self._filler = filler

    async def _render(self, enrollment_id: str, qc: QueuedCommand) -> bytes:
        filled = None
        if qc.command.fills:
            if self._filler is None:
                raise FillError("this worker cannot fill secrets or stored profiles")
            filled = await self._filler.fill(enrollment_id, qc.command_uuid, qc.command)
        return qc.command.to_plist(qc.command_uuid, filled)

    @activity.defn(name="mdm.send_step")
    async def send_step(self, inp: SendStepInput) -> SendStepResult:
        """Enqueue every command, pushing once for the whole step.

        All but the last command go with ``nopush``; the last one carries the push, so a
        step costs one request per command. Idempotent: on a retry, commands already
        queued come back as duplicates, and then the push is sent on its own.
        """
        result = SendStepResult()
        try:
            pushed = False
            for i, qc in enumerate(inp.commands):
                if i:  # a long step shows it is alive; a one-command step needs no RPC for it
                    activity.heartbeat(inp.commands[i - 1].command_uuid)
                body = await self._render(inp.enrollment_id, qc)
                with_push = inp.push and i == len(inp.commands) - 1
                outcome = await self._client.enqueue(
                    [inp.enrollment_id], qc.command_uuid, body, push=with_push
                )
                if outcome.already_queued:
                    result.already_queued.append(qc.command_uuid)
                    log.info("already queued %s for %s", qc.command_uuid, inp.enrollment_id)
                else:
                    result.queued.append(qc.command_uuid)
                    pushed = with_push
                    result.push_error = outcome.push_error if with_push else None
            if inp.push and not pushed:
                result.push_error = await self._client.push([inp.enrollment_id])
        except PermanentMdmError as exc:
            raise ApplicationError(str(exc), type="MdmPermanentError", non_retryable=True) from exc
        except FillError as exc:
            raise ApplicationError(str(exc), type="FillError", non_retryable=True) from exc
        if result.push_error:
            log.warning("push to %s failed: %s", inp.enrollment_id, result.push_error)
        log.info(
            "enqueued %d command(s) for %s",
            len(inp.commands),
            inp.enrollment_id,
        )
        return result

    @activity.defn(name="mdm.push")
    async def push(self, inp: PushInput) -> PushResult:
        try:
            error = await self._client.push(inp.enrollment_ids)
        except PermanentMdmError as exc:
            raise ApplicationError(str(exc), type="MdmPermanentError", non_retryable=True) from exc
        return PushResult(push_error=error)
