"""Activities that send a step's commands to the MDM server and push the device.

Transient failures raise ordinary errors, so Temporal retries them with backoff; a
permanent one raises a non-retryable ``ApplicationError`` whose message reaches the
workflow and the Web UI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.fills import CommandFiller, FillError
from activities.mdm_server import (
    MdmServerClient,
    PermanentMdmError,
    TransientMdmError,
    UncertainMdmError,
)
from activities.models import (
    SEND_MAX_ATTEMPTS,
    PushInput,
    PushResult,
    QueuedCommand,
    SendStepInput,
    SendStepResult,
)

log = logging.getLogger("mdmflow.activities")

T = TypeVar("T")
# What a send attempt heartbeats per CommandUUID, for the next attempt to read back.
QUEUED, UNCERTAIN = "queued", "uncertain"
# Well inside the engine's 10 s heartbeat timeout.
HEARTBEAT_EVERY = 2.0


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
        try:
            return qc.command.to_plist(qc.command_uuid, filled)
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. a control character in a lock message: no retry can build it
            raise ApplicationError(
                f"{qc.command.request_type} cannot be built: {exc}",
                type="CommandBuildError",
                non_retryable=True,
            ) from exc

    @activity.defn(name="mdm.send_step")
    async def send_step(self, inp: SendStepInput) -> SendStepResult:
        """Enqueue every command, pushing once for the whole step; never post a UUID twice.

        All but the last command go with ``nopush``; the last one carries the push, so a
        step costs one request per command. What was accepted is heartbeated, and a
        retried attempt reads it back and posts only the rest: MicroMDM queues every
        copy of a CommandUUID it is sent, so a second post would run the command twice.
        A failed push is a push error in the result, never a reason to retry. The last
        attempt returns what it could not send instead of raising, and the step sends
        it again at its next re-push.
        """
        info = activity.info()
        done: dict[str, str] = {}
        if info.heartbeat_details:
            done = dict(info.heartbeat_details[0])
        final_attempt = info.attempt >= SEND_MAX_ATTEMPTS
        result = SendStepResult()
        unsure = set(inp.unsure)
        pending: list[QueuedCommand] = []
        for qc in inp.commands:
            uuid = qc.command_uuid
            if done.get(uuid) == QUEUED:
                result.already_queued.append(uuid)
            elif done.get(uuid) == UNCERTAIN or (
                uuid in unsure and not self._client.deduplicates and not qc.command.read_only
            ):
                result.uncertain.append(uuid)
            else:
                pending.append(qc)
        try:
            await self._client.check_enrolled([inp.enrollment_id])
            pushed = False
            for i, qc in enumerate(pending):
                body = await self._render(inp.enrollment_id, qc)
                with_push = inp.push and i == len(pending) - 1
                try:
                    outcome = await self._heartbeating(
                        self._client.enqueue(
                            [inp.enrollment_id], qc.command_uuid, body, push=with_push
                        ),
                        done,
                    )
                except UncertainMdmError as exc:
                    if self._client.deduplicates and not final_attempt:
                        raise
                    done[qc.command_uuid] = UNCERTAIN
                    result.uncertain.append(qc.command_uuid)
                    result.send_error = str(exc)
                    activity.heartbeat(done)
                    continue
                except TransientMdmError as exc:
                    if not final_attempt:
                        raise
                    result.unsent = [q.command_uuid for q in pending[i:]]
                    result.send_error = str(exc)
                    break
                done[qc.command_uuid] = QUEUED
                if outcome.already_queued:  # NanoMDM does not push for a refused UUID
                    result.already_queued.append(qc.command_uuid)
                else:
                    result.queued.append(qc.command_uuid)
                    if with_push:
                        pushed = True
                        result.push_error = outcome.push_error
                if i < len(pending) - 1:  # a one-command step needs no heartbeat RPC
                    activity.heartbeat(done)
            if inp.push and not pushed and len(result.unsent) < len(inp.commands):
                result.push_error = await self._client.push([inp.enrollment_id])
        except PermanentMdmError as exc:
            raise ApplicationError(str(exc), type="MdmPermanentError", non_retryable=True) from exc
        except FillError as exc:
            raise ApplicationError(str(exc), type="FillError", non_retryable=True) from exc
        if result.push_error:
            log.warning("push to %s failed: %s", inp.enrollment_id, result.push_error)
        if result.send_error:
            log.warning("send to %s incomplete: %s", inp.enrollment_id, result.send_error)
        log.info(
            "enqueued %d of %d command(s) for %s",
            len(result.queued),
            len(inp.commands),
            inp.enrollment_id,
        )
        return result

    @staticmethod
    async def _heartbeating(request: Awaitable[T], done: dict[str, str]) -> T:
        """Await ``request``, heartbeating while it takes long.

        Without this a slow MDM server outlives the heartbeat timeout and Temporal starts
        a second attempt while the first one's request is still on its way. A timer
        callback, not a task: a fast request (the usual case) costs one timer.
        """
        loop = asyncio.get_running_loop()

        def beat() -> None:
            activity.heartbeat(done)
            timer[0] = loop.call_later(HEARTBEAT_EVERY, beat)

        timer = [loop.call_later(HEARTBEAT_EVERY, beat)]
        try:
            return await request
        finally:
            timer[0].cancel()

    @activity.defn(name="mdm.push")
    async def push(self, inp: PushInput) -> PushResult:
        try:
            error = await self._client.push(inp.enrollment_ids)
        except PermanentMdmError as exc:
            raise ApplicationError(str(exc), type="MdmPermanentError", non_retryable=True) from exc
        return PushResult(push_error=error)
