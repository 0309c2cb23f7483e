"""Activities that send a step's commands to the MDM server and push the device.

Transient failures raise ordinary errors, so Temporal retries them with backoff; a
permanent one raises a non-retryable ``ApplicationError`` whose message reaches the
workflow and the Web UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.fills import CommandFiller, FillError
from activities.mdm_server import (
    EnrollmentLister,
    FleetEnqueuer,
    MdmError,
    MdmServerClient,
    PermanentMdmError,
    TransientMdmError,
    UncertainMdmError,
)
from activities.models import (
    FLEET_SEND_MAX_IDS,
    SEND_MAX_ATTEMPTS,
    DeviceSendProblem,
    FleetSendInput,
    FleetSendResult,
    PushInput,
    PushResult,
    QueuedCommand,
    SendStepInput,
    SendStepResult,
)
from mdmflow import metrics
from protocol.commands import manifest_url_problem

log = logging.getLogger("mdmflow.activities")

T = TypeVar("T")
# What a send attempt heartbeats per CommandUUID, for the next attempt to read back.
QUEUED, UNCERTAIN = "queued", "uncertain"
# Well inside the engine's 10 s heartbeat timeout.
HEARTBEAT_EVERY = 2.0
# Devices a fleet send posts to at once where the server takes one ID per request.
FLEET_DEVICE_CONCURRENCY = 16
# Distinct push errors a fleet send's summary quotes; the rest are counted.
PUSH_ERRORS_QUOTED = 3


# The worker's send figures (served beside the SDK's, see worker.py).
SEND_ACTIVITIES = ("send_step", "send_fleet")
FAILURE_KINDS = ("unreachable", "refused", "unknown_enrollment", "uncertain")
SEND_SECONDS = metrics.histogram(
    "send_seconds",
    "Seconds a send attempt (mdm.send_step / mdm.send_fleet) took, by activity.",
    "activity",
    SEND_ACTIVITIES,
)
ENQUEUE_FAILURES = metrics.labelled_counter(
    "enqueue_failures_total",
    "Send attempts that failed, and devices a send attempt returned with a problem, by kind.",
    "kind",
    FAILURE_KINDS,
)
R = TypeVar("R", SendStepResult, FleetSendResult)


def _failure_kind(exc: BaseException) -> str | None:
    """What an MDM failure was, from the error or the one it was raised from."""
    cause = exc.__cause__ if isinstance(exc, ApplicationError) else exc
    if isinstance(cause, UncertainMdmError):
        return "uncertain"
    if isinstance(cause, TransientMdmError):
        return "unreachable"
    if isinstance(cause, PermanentMdmError):
        text = str(cause)
        unknown = ("does not know", "not enrolled", "unknown enrollment")
        return "unknown_enrollment" if any(u in text for u in unknown) else "refused"
    return None  # not the MDM server's doing (a command that cannot be built, a fill)


def _count_problems(result: SendStepResult | FleetSendResult) -> None:
    if isinstance(result, SendStepResult):
        if result.unsent:
            ENQUEUE_FAILURES.inc("unreachable")
        if result.uncertain:
            ENQUEUE_FAILURES.inc("uncertain")
        return
    for problem in result.problems.values():
        if problem.failed:
            ENQUEUE_FAILURES.inc("unknown_enrollment")
        elif problem.unsent:
            ENQUEUE_FAILURES.inc("unreachable")
        elif problem.uncertain:
            ENQUEUE_FAILURES.inc("uncertain")


def _observed(
    name: str,
) -> Callable[[Callable[[Any, Any], Awaitable[R]]], Callable[[Any, Any], Awaitable[R]]]:
    """Time a send attempt and count its failures, without touching its logic."""

    def wrap(fn: Callable[[Any, Any], Awaitable[R]]) -> Callable[[Any, Any], Awaitable[R]]:
        @functools.wraps(fn)
        async def observed(self: Any, inp: Any) -> R:
            started = time.monotonic()
            try:
                result = await fn(self, inp)
            except Exception as exc:
                kind = _failure_kind(exc)
                if kind is not None:
                    ENQUEUE_FAILURES.inc(kind)
                raise
            finally:
                SEND_SECONDS.observe(time.monotonic() - started, name)
            _count_problems(result)
            return result

        return observed

    return wrap


class MdmActivities:
    def __init__(self, client: MdmServerClient, filler: CommandFiller | None = None) -> None:
        self._client = client
        self._filler = filler

    async def _render(self, enrollment_id: str, qc: QueuedCommand) -> bytes:
        if qc.command.request_type == "InstallApplication":
            problem = manifest_url_problem(str(qc.command.fields.get("ManifestURL", "")))
            if problem is not None:  # a URL parameter filled in something that is no URL
                raise ApplicationError(
                    f"InstallApplication cannot be built: {problem}",
                    type="CommandBuildError",
                    non_retryable=True,
                )
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
    @_observed("send_step")
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

    @activity.defn(name="mdm.send_fleet")
    @_observed("send_fleet")
    async def send_fleet(self, inp: FleetSendInput) -> FleetSendResult:
        """Enqueue every command for every listed enrollment under one CommandUUID each.

        NanoMDM: per command one request naming every enrollment (it stores a
        CommandUUID once), all but the last with ``nopush``, so the last one pushes the
        whole chunk. MicroMDM: one device-list request per ``ENQUEUE_CHUNK`` refuses the
        devices it cannot reach, then per device one post per command and one push. As
        in :meth:`send_step`, what the server accepted is heartbeated (compactly, by
        device index) and never posted again by a retry, an uncertain post is never
        repeated on a server that queues copies, and the last attempt returns what it
        could not send. A device the server does not know fails alone; what concerns
        every device (API key, a command that cannot be built) fails the activity.
        """
        ids = inp.enrollment_ids
        if len(ids) > FLEET_SEND_MAX_IDS or len(set(ids)) != len(ids):
            raise ApplicationError(
                f"a fleet send takes up to {FLEET_SEND_MAX_IDS} distinct enrollment IDs "
                f"(got {len(ids)}, {len(set(ids))} distinct)",
                type="FleetSendInvalid",
                non_retryable=True,
            )
        for qc in inp.commands:
            if qc.command.per_device and len(ids) > 1:
                raise ApplicationError(
                    f"{qc.command.request_type} {qc.command_uuid} is filled per device "
                    "and cannot be sent to more than one enrollment",
                    type="CommandBuildError",
                    non_retryable=True,
                )
        if not ids or not inp.commands:
            return FleetSendResult()
        info = activity.info()
        progress = FleetProgress.restore(len(ids), info.heartbeat_details)
        send = _FleetSend(self._client, inp, progress, info.attempt >= SEND_MAX_ATTEMPTS)
        try:
            # no per-device fill (or one enrollment): one rendering serves every enrollment
            bodies = [await self._render(ids[0], qc) for qc in inp.commands]
            async with self._beating(send):
                if isinstance(self._client, FleetEnqueuer):
                    await send.batched(self._client, bodies)
                else:
                    await send.per_device(bodies)
        except PermanentMdmError as exc:
            raise ApplicationError(str(exc), type="MdmPermanentError", non_retryable=True) from exc
        except FillError as exc:
            raise ApplicationError(str(exc), type="FillError", non_retryable=True) from exc
        except MdmError:
            send.beat()  # the retry must see everything accepted so far
            raise
        result = send.result()
        failed = sum(1 for p in result.problems.values() if p.failed)
        unsent = sum(1 for p in result.problems.values() if p.unsent)
        uncertain = sum(1 for p in result.problems.values() if p.uncertain)
        log.log(
            logging.WARNING if result.problems or result.push_error else logging.INFO,
            "fleet send of %d command(s) to %d enrollment(s): %d without problem, %d failed, "
            "%d with unsent and %d with uncertain command(s), %d pushed%s%s",
            len(inp.commands),
            len(ids),
            len(ids) - len(result.problems),
            failed,
            unsent,
            uncertain,
            result.pushed,
            f"; {result.push_error}" if result.push_error else "",
            f"; send error: {send.halt}" if send.halt is not None else "",
        )
        return result

    @staticmethod
    @contextlib.asynccontextmanager
    async def _beating(send: _FleetSend) -> AsyncIterator[None]:
        """Heartbeat the fleet send's progress every ``HEARTBEAT_EVERY`` while it runs."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_EVERY)
                send.beat()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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


# ---- fleet sends ----------------------------------------------------------------------


def _pack(indices: Iterable[int]) -> str:
    """Device indices as ranges ("0-49,51"): 1,000 devices heartbeat in a few KB."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run[-1] = i
            continue
        if run:
            parts.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
        run = [i, i]
    if run:
        parts.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
    return ",".join(parts)


def _unpack(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


class FleetProgress:
    """What a fleet send settled per CommandUUID and device (by its index in the input).

    Heartbeated so that a retried attempt, which gets the same input, posts only what
    the server has not accepted yet.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.queued: dict[str, set[int]] = {}
        self.uncertain: dict[str, set[int]] = {}
        self.failed: dict[int, str] = {}

    @classmethod
    def restore(cls, size: int, details: Sequence[Any]) -> FleetProgress:
        progress = cls(size)
        doc = details[0] if details else None
        if not isinstance(doc, dict) or doc.get("devices") != size:
            return progress
        progress.queued = {u: _unpack(v) for u, v in (doc.get("queued") or {}).items()}
        progress.uncertain = {u: _unpack(v) for u, v in (doc.get("uncertain") or {}).items()}
        for reason, packed in (doc.get("failed") or {}).items():
            progress.failed.update(dict.fromkeys(_unpack(packed), reason))
        return progress

    def details(self) -> dict[str, Any]:
        by_reason: dict[str, list[int]] = {}
        for i, reason in self.failed.items():
            by_reason.setdefault(reason, []).append(i)
        return {
            "devices": self.size,
            "queued": {u: _pack(v) for u, v in self.queued.items() if v},
            "uncertain": {u: _pack(v) for u, v in self.uncertain.items() if v},
            "failed": {r: _pack(v) for r, v in by_reason.items()},
        }

    def settled(self, uuid: str, i: int) -> bool:
        return i in self.queued.get(uuid, ()) or i in self.uncertain.get(uuid, ())


# Why a command is uncertain when this attempt did not post it (an earlier one did).
_UNKNOWN_FATE = "an earlier post's answer was lost: it may be queued, so it is not posted again"


def _push_summary(errors: dict[str, str], attempted: int) -> str | None:
    """One text for many push failures: counts and the first few distinct errors."""
    if not errors:
        return None
    by_text: dict[str, list[str]] = {}
    for enrollment, text in errors.items():
        prefix = f"{enrollment}: "
        by_text.setdefault(text.removeprefix(prefix), []).append(enrollment)
    quoted = [
        f"{text} ({len(ids)}, e.g. {ids[0]})"
        for text, ids in list(by_text.items())[:PUSH_ERRORS_QUOTED]
    ]
    more = len(by_text) - len(quoted)
    tail = f"; {more} other error(s)" if more > 0 else ""
    return f"{len(errors)} of {attempted} push(es) failed: " + "; ".join(quoted) + tail


class _FleetSend:
    """One attempt of a fleet send: its state, the two ways of sending, the result."""

    def __init__(
        self, client: MdmServerClient, inp: FleetSendInput, progress: FleetProgress, final: bool
    ) -> None:
        self.client = client
        self.inp = inp
        self.ids = inp.enrollment_ids
        self.progress = progress
        self.final = final
        self.unsent: dict[int, list[str]] = {}
        self.skipped: dict[int, set[str]] = {}  # unsure, and not safe to post again
        self.errors: dict[int, str] = {}
        self.push_errors: dict[str, str] = {}
        self.push_attempts = 0
        # The error that stopped this attempt's sending; on the last attempt a transient
        # one only stops posting (what is left is unsent) and pushing (the step re-pushes).
        self.halt: MdmError | None = None
        self.index = {e: i for i, e in enumerate(self.ids)}

    def beat(self) -> None:
        activity.heartbeat(self.progress.details())

    def fail(self, failed: dict[str, str]) -> None:
        for enrollment, reason in failed.items():
            if enrollment in self.index:
                self.progress.failed[self.index[enrollment]] = reason[:300]

    def give_up(self, i: int, uuids: Iterable[str], exc: Exception) -> None:
        """Record ``uuids`` as certainly not queued for device ``i`` (last attempt only)."""
        pending = [u for u in uuids if u not in self.unsent.get(i, ())]
        if pending:
            self.unsent.setdefault(i, []).extend(pending)
            self.errors[i] = str(exc)[:300]

    def doubt(self, i: int, uuid: str, exc: Exception) -> None:
        self.progress.uncertain.setdefault(uuid, set()).add(i)
        self.errors[i] = str(exc)[:300]

    def wants_push(self, i: int) -> bool:
        return (
            self.inp.push
            and self.halt is None
            and i not in self.progress.failed
            and len(self.unsent.get(i, ())) < len(self.inp.commands)
        )

    # -- a server that takes many IDs per request (NanoMDM) -------------------------------

    async def batched(self, client: FleetEnqueuer, bodies: list[bytes]) -> None:
        """Per command one request for every device; the last carries the push.

        A UUID recorded as uncertain is left alone; ``unsure`` needs no care, as posting
        a UUID again is harmless on a server that refuses duplicates.
        """
        commands = self.inp.commands

        def targets(k: int) -> list[int]:
            uuid = commands[k].command_uuid
            return [
                i
                for i in range(len(self.ids))
                if i not in self.progress.failed and not self.progress.settled(uuid, i)
            ]

        last = max((k for k in range(len(commands)) if targets(k)), default=-1)
        push_tried: set[str] = set()
        for k, qc in enumerate(commands):
            uuid = qc.command_uuid
            todo = targets(k)
            if not todo:
                continue
            with_push = self.inp.push and k == last
            try:
                outcome = await client.enqueue_fleet(
                    [self.ids[i] for i in todo], uuid, bodies[k], push=with_push
                )
            except UncertainMdmError as exc:
                if self.client.deduplicates and not self.final:
                    raise
                for i in todo:
                    self.doubt(i, uuid, exc)
                self.beat()
                continue
            except TransientMdmError as exc:
                if not self.final:
                    raise
                for later in range(k, len(commands)):
                    for i in targets(later):
                        self.give_up(i, [commands[later].command_uuid], exc)
                self.halt = exc
                break
            self.fail(outcome.failed)
            accepted = self.progress.queued.setdefault(uuid, set())
            accepted.update(self.index[e] for e in (*outcome.queued, *outcome.already_queued))
            self.push_errors.update(outcome.push_errors)
            push_tried.update(outcome.pushed, outcome.push_errors)
            self.push_attempts += len(outcome.pushed) + len(outcome.push_errors)
            self.beat()
        rest = [e for i, e in enumerate(self.ids) if self.wants_push(i) and e not in push_tried]
        if rest:
            pushed = await client.push_fleet(rest)
            self.push_errors.update(pushed.errors)
            self.push_attempts += len(rest)

    # -- a server that takes one ID per request (MicroMDM) --------------------------------

    async def per_device(self, bodies: list[bytes]) -> None:
        """Each device's commands in order, then its push; several devices at once."""
        todo = [i for i in range(len(self.ids)) if i not in self.progress.failed]
        if todo and isinstance(self.client, EnrollmentLister):
            self.fail(await self.client.unknown_enrollments([self.ids[i] for i in todo]))
            todo = [i for i in todo if i not in self.progress.failed]
            self.beat()
        waiting = deque(todo)
        crash: list[BaseException] = []  # anything else raised stops every worker

        async def worker() -> None:
            while waiting and not crash and (self.halt is None or self.settles_unsent()):
                try:
                    await self.device(waiting.popleft(), bodies)
                except Exception as exc:
                    crash.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(FLEET_DEVICE_CONCURRENCY, len(todo)))))
        if crash:
            raise crash[0]
        if self.halt is not None and not self.settles_unsent():
            raise self.halt

    def settles_unsent(self) -> bool:
        """The last attempt goes on past an unreachable server, recording what is unsent."""
        return self.final and isinstance(self.halt, TransientMdmError)

    async def device(self, i: int, bodies: list[bytes]) -> None:
        enrollment = self.ids[i]
        unsure = set(self.inp.unsure.get(enrollment, ()))
        pending: list[int] = []
        for k, qc in enumerate(self.inp.commands):
            uuid = qc.command_uuid
            if self.progress.settled(uuid, i):
                continue
            if uuid in unsure and not self.client.deduplicates and not qc.command.read_only:
                self.skipped.setdefault(i, set()).add(uuid)
                continue
            pending.append(k)
        for pos, k in enumerate(pending):
            uuid = self.inp.commands[k].command_uuid
            if self.halt is not None:
                if self.settles_unsent():
                    rest = pending[pos:]
                    self.give_up(i, [self.inp.commands[r].command_uuid for r in rest], self.halt)
                break
            try:
                await self.client.enqueue([enrollment], uuid, bodies[k], push=False)
            except UncertainMdmError as exc:
                if self.client.deduplicates and not self.final:
                    self.halt = self.halt or exc
                    return
                self.doubt(i, uuid, exc)
                self.beat()
                continue
            except TransientMdmError as exc:
                if self.final:
                    rest = pending[pos:]
                    self.give_up(i, [self.inp.commands[r].command_uuid for r in rest], exc)
                self.halt = self.halt or exc
                break
            except PermanentMdmError as exc:
                self.halt = exc
                return
            self.progress.queued.setdefault(uuid, set()).add(i)
        if self.wants_push(i):
            self.push_attempts += 1
            error = await self.client.push([enrollment])
            if error:
                self.push_errors[enrollment] = error

    def result(self) -> FleetSendResult:
        problems: dict[str, DeviceSendProblem] = {}
        for i, enrollment in enumerate(self.ids):
            if i in self.progress.failed:
                problems[enrollment] = DeviceSendProblem(failed=self.progress.failed[i])
                continue
            uncertain = [
                qc.command_uuid
                for qc in self.inp.commands
                if i in self.progress.uncertain.get(qc.command_uuid, ())
                or qc.command_uuid in self.skipped.get(i, ())
            ]
            unsent = self.unsent.get(i, [])
            if unsent or uncertain:
                problems[enrollment] = DeviceSendProblem(
                    unsent=unsent, uncertain=uncertain, error=self.errors.get(i) or _UNKNOWN_FATE
                )
        return FleetSendResult(
            problems=problems,
            push_error=_push_summary(self.push_errors, self.push_attempts),
            pushed=self.push_attempts - len(self.push_errors),
        )
