"""The step engine: every MDM workflow sends its commands through :meth:`MdmWorkflow.step`.

A step sends 1..n commands to one enrollment and waits until each has a final answer
(Acknowledged, Error, CommandFormatError) or the step times out:

- CommandUUIDs are made here, deterministically, and carry the route back to this
  workflow (see :mod:`protocol.routing`), so the relay needs no lookup;
- one activity enqueues them all (``nopush``) and pushes once;
- answers arrive as ``command_report`` signals; NotNow is recorded and never completes
  a command; duplicates, late reports and reports for another enrollment change nothing;
- while commands are outstanding the device is re-pushed on a backoff schedule, and a
  read-only command that stays silent is re-issued under a new UUID (webhooks are
  fire-and-forget, one can be lost);
- timeout precedence: the step's, then the workflow input's, then 72 hours;
- when the enrollment re-enrolls (NanoMDM clears its queue) the waiting step either
  re-sends its unanswered commands (``ON_ENROLLMENT_RESET = "restart"``) or ends at once
  with ``outcome.reset`` set (``"fail"``, the default); a CheckOut always ends it.

:meth:`MdmWorkflow.before_step` is the one place that decides whether the next step may
be sent; operator controls and safety policies hook in there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.models import (
        SEND_MAX_ATTEMPTS,
        DeviceInfoLogEntry,
        InventoryUpdate,
        PushInput,
        PushResult,
        QueuedCommand,
        SendStepInput,
        SendStepResult,
    )
    from protocol import routing
    from protocol.commands import Command
    from protocol.results import CommandReport
    from workflows import search_attributes as sa
    from workflows import storing
    from workflows.models import (
        CommandProgress,
        EnrollmentReset,
        FailureType,
        OnFailure,
        RunResult,
        RunState,
        RunStatus,
        StepOutcome,
        StepRecord,
        WorkflowInput,
        check_revision,
    )

if TYPE_CHECKING:
    from workflows.chunk import Chunk

T = TypeVar("T")

# Revision 3: a send never posts a CommandUUID twice and stops being waited for once the
# step is over (every command answered, check-out, re-enrollment); what a send could
# not deliver is sent again at the next re-push instead of failing the run.
IDEMPOTENT_SEND_REVISION = 3

ENGINE_DEFAULT_STEP_TIMEOUT = timedelta(hours=72)
# Re-push intervals while commands are outstanding; the last one repeats.
REPUSH_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=4),
    timedelta(hours=12),
)
# After this many silent re-pushes a read-only command is re-issued, once, under a new UUID.
REISSUE_AFTER_REPUSHES = 2
# Re-enrollments a "restart" step re-sends after; one more ends the step (revision 3).
MAX_RESENDS = 5

SEND_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
# Revision 3: bounded; the last attempt reports what it could not send (about 2 minutes).
BOUNDED_SEND_RETRY = dataclasses.replace(SEND_RETRY, maximum_attempts=SEND_MAX_ATTEMPTS)


def _enqueue_failed(record: StepRecord, why: str) -> ApplicationError:
    """The run's failure when the MDM server refuses a step's commands for good."""
    return ApplicationError(
        f"step {record.name!r}: the MDM server did not take the commands: {why}",
        type="EnqueueFailed",
        non_retryable=True,
    )


class MdmWorkflow:
    """Base class of every MDM workflow: the step engine and the run state."""

    NAME: ClassVar[str]
    # Short code carried in CommandUUIDs; unique per workflow, no '.'.
    CODE: ClassVar[str]
    # NanoCMD semantics: one running instance per (workflow, enrollment) unless False.
    EXCLUSIVE: ClassVar[bool] = True
    DEFAULT_STEP_TIMEOUT: ClassVar[timedelta | None] = None
    REPUSH_SCHEDULE: ClassVar[tuple[timedelta, ...]] = REPUSH_SCHEDULE
    # What a failed step does unless the start says otherwise (fleet runs): "fail" ends
    # the run, "suspend" waits for an operator's retry, skip or abort.
    ON_FAILURE: ClassVar[OnFailure] = "fail"
    # Devices per fleet run at most (below MDMFLOW_FLEET_CHUNK when a workflow's devices
    # drift apart and stop sharing sends, so its histories stay small).
    MAX_CHUNK: ClassVar[int] = 1000
    # What a waiting step does when the device re-enrolls and its queue is cleared.
    ON_ENROLLMENT_RESET: ClassVar[Literal["fail", "restart"]] = "fail"
    # RequestTypes whose answers this workflow wants even when other workflows sent them
    # (NanoCMD's AllCommandResponse); handled by :meth:`on_command_response`.
    ALL_COMMAND_RESPONSE_TYPES: ClassVar[frozenset[str]] = frozenset()
    ALL_COMMAND_RESPONSE_NOTNOW: ClassVar[bool] = False

    def __init__(self) -> None:
        self._input: WorkflowInput | None = None
        self._state = RunState()
        # UUID (incl. re-issued aliases) -> index in the current step's commands
        self._awaiting: dict[str, int] = {}
        self._answers: list[CommandReport | None] = []
        self._reset: EnrollmentReset | None = None
        self._checked_out = False
        # Current step's CommandUUIDs the MDM server has not confirmed ("unsent":
        # certainly not queued; "unsure": the send's outcome was lost). Sent again at
        # the next re-push, under the same UUIDs.
        self._unconfirmed: dict[str, Literal["unsent", "unsure"]] = {}
        # Set when this story runs inside a fleet run: its steps, timers and activities
        # then go through the chunk's engine (see workflows.chunk).
        self._chunk: Chunk | None = None
        # Operator controls (fleet runs): a pause waits at the next step boundary; a stop
        # (cancel or abort) ends the story at its next wait; a suspended step waits for
        # a decision. Undo steps registered by the story run newest-first on cancel,
        # abort or failure.
        self._pause: str | None = None
        self._stop: tuple[Literal["cancel", "abort"], str] | None = None
        self._decision: Literal["retry", "skip"] | None = None
        self._undo: list[tuple[str, list[Command]]] = []
        self._compensating = False

    # ---- lifecycle -------------------------------------------------------------------

    def begin(self, inp: WorkflowInput) -> None:
        """Record who this run is for; call first in ``run``."""
        check_revision(inp.revision)
        self._input = inp
        self._state.workflow_name = self.NAME
        self._state.enrollment_id = inp.enrollment_id
        self._state.instance_id = inp.instance_id

    @property
    def input(self) -> WorkflowInput:
        if self._input is None:
            raise RuntimeError("begin() was not called")
        return self._input

    def finish(
        self, status: RunStatus, message: str, failure_type: FailureType | None = None
    ) -> RunResult:
        """End the run with a status and a sentence for the operator."""
        self._state.status = status
        self._state.message = message
        self._state.current_step = None
        self._state.control = None
        if status in ("failed", "timed_out"):
            self._state.failure_type = failure_type or self._failure_type(status)
        if self._chunk is None:
            workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(f"done:{status}")])
        if self._chunk is not None and len(self._chunk) > 1:
            # a fleet run logs one summary line at its end, not one line per device
            workflow.logger.debug("%s: %s", self.input.enrollment_id, message)
        elif status == "completed":
            workflow.logger.info("%s: %s", self.input.enrollment_id, message)
        else:
            workflow.logger.warning("%s: %s", self.input.enrollment_id, message)
        return RunResult(
            status=status,
            message=message,
            enrollment_id=self.input.enrollment_id,
            instance_id=self.input.instance_id,
        )

    def ended(self, step: StepOutcome) -> RunResult | None:
        """End the run when a step went wrong, the same way in every workflow.

        Timed out → ``timed_out``; the enrollment re-enrolled or checked out, or the device
        answered Error or CommandFormatError → ``failed``, with the step's own sentence
        (the error chain). None when the step succeeded (or an operator skipped it).
        """
        if (end := self.interrupted(step)) is not None:
            return end
        if step.errors:
            return self.finish("failed", step.describe())
        return None

    def interrupted(self, step: StepOutcome) -> RunResult | None:
        """End the run when a step never got its answers: timed out (``timed_out``) or the
        enrollment re-enrolled or checked out (``failed``). Device errors are left to the
        workflow (inventory stores what was answered first; fvenable polls on)."""
        if step.timed_out:
            return self.finish("timed_out", step.describe())
        if step.reset is not None:
            return self.finish("failed", step.describe())
        return None

    def _failure_type(self, status: RunStatus) -> FailureType:
        """Why the run failed, read from its last step (for the Temporal failure type)."""
        if status == "timed_out":
            return "StepTimedOut"
        if not self._state.steps:
            return "BadInput"  # failed before sending anything: context, unknown profile
        last = self._state.steps[-1]
        if last.status == "reset":
            return "CheckedOut" if self._checked_out else "ReEnrolled"
        if last.status == "timed_out":
            return "StepTimedOut"
        if any(c.error for c in last.commands):
            return "DeviceError"
        return "WorkflowFailed"

    @property
    def on_failure(self) -> OnFailure:
        """The start's choice, else the workflow's default."""
        return self.input.on_failure or self.ON_FAILURE

    def add_undo(self, name: str, commands: Sequence[Command]) -> None:
        """Register how to undo what just happened (run newest-first on rollback)."""
        if commands:
            self._undo.append((name, list(commands)))

    # ---- handlers --------------------------------------------------------------------

    @workflow.signal(name="command_report")
    def on_command_report(self, report: CommandReport) -> None:
        """A device's report, routed here by the relay."""
        if self._input is not None and report.enrollment_id != self._input.enrollment_id:
            self._state.rejected_reports += 1
            workflow.logger.warning(
                "rejected report for %s (this run is for %s)",
                report.enrollment_id,
                self._input.enrollment_id,
            )
            return
        index = self._awaiting.get(report.command_uuid)
        if index is None or self._answers[index] is not None or report.status == "Idle":
            self._state.ignored_reports += 1  # duplicate, late, or not ours
            return
        progress = self._state.steps[-1].commands[index]
        progress.last_status = report.status
        self._state.last_report_status = report.status
        if report.status == "NotNow":
            progress.not_now_count += 1  # the device retries by itself
            return
        progress.answered = True
        if report.status != "Acknowledged":
            progress.error = report.error_summary
        self._answers[index] = report

    @workflow.signal(name="enrollment_reset")
    def on_enrollment_reset(self, reset: EnrollmentReset) -> None:
        """The relay saw an Authenticate or CheckOut for this run's enrollment."""
        workflow.logger.info("enrollment %s %s", reset.enrollment_id, reset.reason)
        self._reset = reset
        if reset.reason == "checked out":
            self._checked_out = True

    @staticmethod
    async def on_command_response(report: CommandReport, revision: int) -> None:
        """Handle an AllCommandResponse report; runs inside a short workflow of its own."""

    @workflow.query(name="state")
    def query_state(self) -> RunState:
        return self._state

    # ---- what a story calls besides steps ---------------------------------------------

    async def activity(
        self,
        name: str,
        arg: Any,
        *,
        result_type: type[T],
        summary: str,
        shared: bool = False,
        timeout: timedelta = timedelta(seconds=30),
    ) -> T:
        """Run activity ``name`` for this device.

        In a fleet run the calls of many devices are bounded, and with ``shared`` (a
        read whose answer does not depend on the device) identical calls made together
        run once.
        """
        if self._chunk is not None:
            return await self._chunk.call(
                name, arg, result_type=result_type, summary=summary, shared=shared, timeout=timeout
            )
        result: T = await workflow.execute_activity(
            name,
            arg,
            start_to_close_timeout=timeout,
            result_type=result_type,
            summary=summary,
        )
        return result

    async def store_inventory(
        self, update: InventoryUpdate, summary: str = "store inventory"
    ) -> None:
        """Merge reported values into the inventory; batched across a fleet run's devices."""
        if self._chunk is not None:
            await self._chunk.store("inventory", update)
        else:
            await storing.store_inventory(self.input.revision, update, summary)

    async def log_device_information(self, entry: DeviceInfoLogEntry) -> None:
        """Append a DeviceInformation answer to the log; batched across a fleet run."""
        if self._chunk is not None:
            await self._chunk.store("devinfo_log", entry)
        else:
            await storing.log_device_information(self.input.revision, entry)

    # ---- the step --------------------------------------------------------------------

    async def before_step(self, name: str) -> None:
        """The one place asked "may I send the next step?" (pause, policies, e-stop)."""

    def _step_timeout(self, timeout: timedelta | None) -> timedelta:
        if timeout is not None:
            return timeout
        if self.input.step_timeout_seconds:
            return timedelta(seconds=self.input.step_timeout_seconds)
        return self.DEFAULT_STEP_TIMEOUT or ENGINE_DEFAULT_STEP_TIMEOUT

    def _repush_schedule(self) -> tuple[timedelta, ...]:
        if self.input.repush_after_seconds:
            return tuple(timedelta(seconds=s) for s in self.input.repush_after_seconds)
        return self.REPUSH_SCHEDULE

    def _new_uuid(self) -> str:
        instance = None if self.EXCLUSIVE else self.input.instance_id
        return routing.command_uuid(self.CODE, instance, workflow.uuid4().hex[:20])

    async def step(
        self,
        name: str,
        commands: Sequence[Command],
        *,
        timeout: timedelta | None = None,
        not_until: datetime | None = None,
    ) -> StepOutcome:
        """Send ``commands`` to this run's enrollment and wait for their final answers."""
        if not commands:
            raise ValueError("a step needs at least one command")
        if self._chunk is not None:
            return await self._chunk.step(
                self, name, commands, timeout=timeout, not_until=not_until
            )
        await self.before_step(name)
        self._reset = None  # a reset between steps cleared nothing this step needs
        record = StepRecord(name=name, status="waiting", started_at=workflow.now())
        self._state.steps.append(record)
        self._state.current_step = name
        workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(name)])
        if not_until is not None and not_until > workflow.now():
            await workflow.sleep(not_until - workflow.now())

        deadline = workflow.now() + self._step_timeout(timeout)
        record.deadline = deadline
        record.status = "sending"
        queued = [QueuedCommand(command_uuid=self._new_uuid(), command=c) for c in commands]
        record.commands = [
            CommandProgress(command_uuid=q.command_uuid, request_type=q.command.request_type)
            for q in queued
        ]
        self._awaiting = {q.command_uuid: i for i, q in enumerate(queued)}
        self._answers = [None] * len(queued)
        self._unconfirmed = {}

        reset: str | None = None
        timed_out = False
        if self._checked_out:
            reset = "checked out"
        else:
            await self._send(record, queued, deadline)
            record.status = "pending"
            ended = await self._wait_for_answers(record, commands, deadline)
            if ended == "reset":
                reset = self._reset.reason if self._reset else "reset"
            timed_out = ended == "timed_out"

        record.status = "timed_out" if timed_out else "reset" if reset else "completed"
        record.finished_at = workflow.now()
        outcome = StepOutcome(
            name=name,
            results=list(self._answers),
            timed_out=timed_out,
            reset=reset,
            send_error=record.send_error if self._unconfirmed else None,
        )
        self._awaiting = {}
        self._answers = []
        self._unconfirmed = {}
        return outcome

    async def _send(
        self, record: StepRecord, queued: list[QueuedCommand], deadline: datetime
    ) -> None:
        if self.input.revision >= IDEMPOTENT_SEND_REVISION:
            await self._send_commands(record, queued, f"send {record.name}", deadline)
            return
        try:
            result = await workflow.execute_activity(
                "mdm.send_step",
                SendStepInput(enrollment_id=self.input.enrollment_id, commands=queued),
                start_to_close_timeout=timedelta(seconds=60),
                # a worker that dies mid-send is noticed in seconds, not after a minute
                heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=max(deadline - workflow.now(), timedelta(minutes=1)),
                retry_policy=SEND_RETRY,
                result_type=SendStepResult,
                summary=f"send {record.name}",
            )
        except ActivityError as exc:
            cause = exc.cause.message if isinstance(exc.cause, ApplicationError) else str(exc)
            raise _enqueue_failed(record, cause) from exc
        record.pushes += 1
        record.push_error = result.push_error

    async def _send_commands(
        self,
        record: StepRecord,
        queued: list[QueuedCommand],
        summary: str,
        deadline: datetime | None = None,
    ) -> None:
        """Send through ``mdm.send_step`` and note what the MDM server confirmed.

        The step does not wait for a send that is still retrying once it is over: every
        command answered, the device checked out, or re-enrolled where that ends the
        step. What could not be sent is sent again at the next re-push.
        """
        # "unsent" ones never reached the server; "unsure" ones may be queued already
        unsure = [
            q.command_uuid for q in queued if self._unconfirmed.get(q.command_uuid) == "unsure"
        ]
        handle = workflow.start_activity(
            "mdm.send_step",
            SendStepInput(enrollment_id=self.input.enrollment_id, commands=queued, unsure=unsure),
            start_to_close_timeout=timedelta(seconds=60),
            # a worker that dies mid-send is noticed in seconds, not after a minute
            heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
            retry_policy=BOUNDED_SEND_RETRY,
            result_type=SendStepResult,
            summary=summary,
        )
        timeout = None
        if deadline is not None:
            timeout = max(deadline - workflow.now(), timedelta(seconds=1))
        try:
            await workflow.wait_condition(
                lambda: handle.done() or self._step_over(), timeout=timeout
            )
        except TimeoutError:
            pass
        if not handle.done():
            handle.cancel()  # the step is over (or out of time); the send is moot
            return
        try:
            result = await handle
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                raise _enqueue_failed(record, cause.message) from exc
            # Lost with its last attempt: whatever it queued is unknown.
            record.send_error = f"send failed: {cause or exc}"
            for q in queued:
                self._unconfirmed[q.command_uuid] = "unsure"
            workflow.logger.warning("%s: %s", record.name, record.send_error)
            return
        for uuid in (*result.queued, *result.already_queued, *result.uncertain):
            self._unconfirmed.pop(uuid, None)
        for uuid in result.unsent:
            self._unconfirmed[uuid] = "unsent"
        record.send_error = result.send_error
        if result.uncertain:
            record.send_error = (
                f"{result.send_error}; not posted again, so the device runs it at most once: "
                + ", ".join(result.uncertain)
            )
        if len(result.unsent) < len(queued):
            record.pushes += 1
            record.push_error = result.push_error

    def _step_over(self) -> bool:
        """Nothing more to send for this step: answered, checked out, or reset to fail."""
        return (
            self._all_answered()
            or self._checked_out
            or (self._reset is not None and self.ON_ENROLLMENT_RESET == "fail")
        )

    def _all_answered(self) -> bool:
        return all(a is not None for a in self._answers)

    def _answered_or_reset(self) -> bool:
        return self._all_answered() or self._reset is not None

    async def _wait_for_answers(
        self, record: StepRecord, commands: Sequence[Command], deadline: datetime
    ) -> Literal["answered", "timed_out", "reset"]:
        silent_repushes = 0
        resends = 0
        schedule = self._repush_schedule()
        while not self._all_answered():
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                return "timed_out"
            interval = schedule[min(silent_repushes, len(schedule) - 1)]
            try:
                await workflow.wait_condition(
                    self._answered_or_reset, timeout=min(remaining, interval)
                )
            except TimeoutError:
                if workflow.now() >= deadline:
                    return "answered" if self._all_answered() else "timed_out"
                silent_repushes += 1
                await self._repush(record, commands, silent_repushes)
                continue
            if self._reset is not None and not self._all_answered():
                if self._checked_out or self.ON_ENROLLMENT_RESET == "fail":
                    return "reset"
                resends += 1
                if self.input.revision >= IDEMPOTENT_SEND_REVISION and resends > MAX_RESENDS:
                    return "reset"  # a device re-enrolling over and over: stop re-sending
                self._reset = None
                await self._resend_unanswered(record, commands)
                silent_repushes = 0
        return "answered"

    async def _resend_unanswered(self, record: StepRecord, commands: Sequence[Command]) -> None:
        """After a re-enrollment the queue is empty: queue what is missing again."""
        again: list[QueuedCommand] = []
        for i, command in enumerate(commands):
            if self._answers[i] is None:
                alias = self._new_uuid()
                record.commands[i].reissued_as.append(alias)
                self._awaiting[alias] = i
                again.append(QueuedCommand(command_uuid=alias, command=command))
        workflow.logger.info("re-sending %d command(s) after re-enrollment", len(again))
        if self.input.revision >= IDEMPOTENT_SEND_REVISION:
            await self._send_commands(record, again, f"re-send {record.name} after re-enrollment")
            return
        await workflow.execute_activity(
            "mdm.send_step",
            SendStepInput(enrollment_id=self.input.enrollment_id, commands=again),
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
            retry_policy=SEND_RETRY,
            result_type=SendStepResult,
            summary=f"re-send {record.name} after re-enrollment",
        )
        record.pushes += 1

    def _due_for_reissue(
        self, record: StepRecord, commands: Sequence[Command], silent_repushes: int
    ) -> list[int]:
        """Commands to re-issue under a new UUID: read-only ones still unanswered after
        ``REISSUE_AFTER_REPUSHES`` silent re-pushes, once, and never after a NotNow (the
        device retries those by itself). One rule for one-device and fleet runs."""
        if silent_repushes < REISSUE_AFTER_REPUSHES:
            return []
        return [
            i
            for i, command in enumerate(commands)
            if self._answers[i] is None
            and command.read_only
            and not record.commands[i].reissued_as
            and record.commands[i].not_now_count == 0
        ]

    async def _repush(
        self, record: StepRecord, commands: Sequence[Command], silent_repushes: int
    ) -> None:
        reissue: list[QueuedCommand] = []
        for i in self._due_for_reissue(record, commands, silent_repushes):
            alias = self._new_uuid()
            record.commands[i].reissued_as.append(alias)
            self._awaiting[alias] = i
            reissue.append(QueuedCommand(command_uuid=alias, command=commands[i]))
        if self.input.revision >= IDEMPOTENT_SEND_REVISION:
            await self._repush_v3(record, commands, reissue)
            return
        try:
            if reissue:
                await workflow.execute_activity(
                    "mdm.send_step",
                    SendStepInput(enrollment_id=self.input.enrollment_id, commands=reissue),
                    start_to_close_timeout=timedelta(seconds=60),
                    heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=5),
                    summary=f"re-issue {record.name}",
                )
            else:
                await workflow.execute_activity(
                    "mdm.push",
                    PushInput(enrollment_ids=[self.input.enrollment_id]),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                    summary=f"re-push {record.name}",
                )
            record.pushes += 1
        except ActivityError as exc:
            # A failed re-push is not fatal: the commands are queued, the device will ask.
            record.push_error = str(exc.cause or exc)
            workflow.logger.warning("re-push for %s failed: %s", record.name, exc)

    async def _repush_v3(
        self, record: StepRecord, commands: Sequence[Command], reissue: list[QueuedCommand]
    ) -> None:
        """Re-push; first send again, under the same UUIDs, what was never confirmed."""
        again = [
            QueuedCommand(command_uuid=uuid, command=commands[self._awaiting[uuid]])
            for uuid in self._unconfirmed
            if self._answers[self._awaiting[uuid]] is None
        ]
        if again or reissue:
            await self._send_commands(record, again + reissue, f"re-send {record.name}")
            return
        try:
            result = await workflow.execute_activity(
                "mdm.push",
                PushInput(enrollment_ids=[self.input.enrollment_id]),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5),
                result_type=PushResult,
                summary=f"re-push {record.name}",
            )
        except ActivityError as exc:
            # A failed re-push is not fatal: the commands are queued, the device will ask.
            record.push_error = str(exc.cause or exc)
            return
        record.pushes += 1
        record.push_error = result.push_error
