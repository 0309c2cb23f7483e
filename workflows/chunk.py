"""The chunk engine: the step engine for many devices inside one fleet run.

A fleet run (:mod:`workflows.fleet`) runs one device story per enrollment of its chunk.
Their steps come here instead of to per-device activities and timers, so a chunk of a
thousand devices costs about as much history as a handful of one-device runs:

- devices that reach a step with the same commands in the same workflow task share one
  CommandUUID per command and one ``mdm.send_fleet`` activity (NanoMDM: one multi-ID
  enqueue per command and one push per hundred devices). A command carrying a
  device's own secret (lock PIN, current recovery key) is never shared;
- one timer, the chunk's clock, serves every device's re-push and timeout: it wakes at
  the earliest device wake-up (late by at most ``CLOCK_SLACK``, so wake-ups close
  together share a timer), never early;
- re-pushes of silent devices that fall due together are one ``mdm.push``; re-issues of
  the same silent read-only command are one shared send;
- store writes and releases of finished devices' holds are batched into one local
  activity per workflow task; other activities are bounded to
  ``MAX_PENDING_ACTIVITIES`` at a time, and identical shared reads run once.

Per device everything is as in a one-device run (:class:`workflows.engine.MdmWorkflow`):
NotNow never completes a command, duplicates and late reports are ignored, the re-push
schedule and the re-issue of a silent read-only command, step timeouts, re-enrollment
and check-out. A device that fails or is slow never holds back the others' next steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import MetricHistogramTimedelta, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.models import (
        FLEET_SEND_MAX_IDS,
        DeviceInfoLogEntry,
        DeviceOutcome,
        FleetSendInput,
        FleetSendResult,
        InventoryUpdate,
        PushInput,
        PushResult,
        QueuedCommand,
        ReleaseHolds,
    )
    from protocol import routing
    from protocol.commands import Command
    from workflows import search_attributes as sa
    from workflows.engine import (
        BOUNDED_SEND_RETRY,
        MAX_RESENDS,
        SEND_HEARTBEAT_TIMEOUT,
        _enqueue_failed,
    )
    from workflows.governed import Governance, destructive
    from workflows.models import (
        GOVERNANCE_REVISION,
        CommandProgress,
        FleetInput,
        StepOutcome,
        StepRecord,
        error_chain,
    )

if TYPE_CHECKING:
    from workflows.engine import MdmWorkflow

T = TypeVar("T")

# Wake-ups this close after the earliest share its timer (a device wakes at most this late).
CLOCK_SLACK = timedelta(seconds=2)
# Activities of a chunk pending at once (Temporal allows 2,000 per run).
MAX_PENDING_ACTIVITIES = 100
# Items of one batched store write.
STORE_BATCH = 500
STORE_TIMEOUT = timedelta(seconds=60)
# A send to a thousand devices through MicroMDM is a thousand requests per command.
FLEET_SEND_TIMEOUT = timedelta(minutes=10)
FAR_FUTURE = datetime.max
# An undo step waits at most this long for the device (a cancel must not take 72 hours).
UNDO_TIMEOUT = timedelta(hours=1)
# Fills that hold one device's own secret: such a command is sent to its device alone.
PER_DEVICE_FILLS = frozenset({"new_pin", "current_prk"})

STORE_ACTIVITIES = {
    "inventory": "inventory.store_many",
    "devinfo_log": "inventory.log_device_information_many",
}


@dataclass
class _Item:
    """One command of a send: a known UUID (sent again) or a new one made for the group."""

    index: int
    command: Command
    uuid: str | None = None
    # For a new UUID replacing an unanswered one (re-issue, re-send): the one it replaces.
    replaces: str | None = None


@dataclass
class _Send:
    dev: MdmWorkflow
    record: StepRecord
    items: list[_Item]
    key: tuple[Any, ...]
    done: bool = False
    failed: str | None = None


@dataclass
class _Push:
    dev: MdmWorkflow
    record: StepRecord
    done: bool = False


@dataclass
class _Batch:
    items: list[BaseModel] = field(default_factory=list)
    done: bool = False
    error: ActivityError | None = None


def _per_device(command: Command) -> bool:
    return any(f.kind in PER_DEVICE_FILLS for f in command.fills)


def _send_moot(dev: MdmWorkflow) -> bool:
    """Nothing more to wait for in the device's send: its step is over, or (revision 5)
    the device re-enrolled, so a step that restarts on it re-sends at once instead of
    waiting out the moot send's retries."""
    if dev._step_over():
        return True
    return dev._reset is not None and dev.input.revision >= GOVERNANCE_REVISION


def _stopping(dev: MdmWorkflow) -> bool:
    return dev._stop is not None and not dev._compensating


class RunStopped(Exception):
    """An operator cancelled or aborted the device: its story ends at the step it is in."""


class Chunk:
    """The devices of one fleet run and the machinery their steps share."""

    def __init__(self, inp: FleetInput, code: str) -> None:
        self.input = inp
        self.code = code
        self.devices: dict[str, MdmWorkflow] = {}
        self._sends: list[_Send] = []
        self._pushes: list[_Push] = []
        self._batches: dict[str, _Batch] = {}
        self._released: list[str] = []
        self._pending = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._shared: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._closing = False
        # the clock
        self._wakeups: dict[str, datetime] = {}
        self._clock_now = datetime.min.replace(tzinfo=workflow.now().tzinfo)
        self._clock_target = FAR_FUTURE.replace(tzinfo=workflow.now().tzinfo)
        self._retarget = False
        self._step_shown: str | None = None
        # set when a device starts a step or ends: the run's details need a refresh
        self.progressed = True
        self._step_duration: MetricHistogramTimedelta | None = None
        # the emergency stop, policy re-checks and approvals (engine revision 5)
        self.gov: Governance | None = None
        if inp.revision >= GOVERNANCE_REVISION:
            self.gov = Governance(inp, self._touch)

    def _touch(self) -> None:
        self.progressed = True

    def __len__(self) -> int:
        return len(self.devices)

    def add(self, enrollment_id: str, dev: MdmWorkflow) -> None:
        dev._chunk = self
        self.devices[enrollment_id] = dev

    # ---- background tasks --------------------------------------------------------------

    async def pump(self) -> None:
        """Flush what the devices queued in this workflow task as few activities."""
        while True:
            await workflow.wait_condition(
                lambda: (
                    bool(self._sends or self._pushes or self._batches or self._released)
                    or self._closing
                )
            )
            if not (self._sends or self._pushes or self._batches or self._released):
                await asyncio.gather(*self._tasks)  # the last releases and writes land
                return
            self._tasks = [t for t in self._tasks if not t.done()]
            sends, self._sends = self._sends, []
            pushes, self._pushes = self._pushes, []
            batches, self._batches = self._batches, {}
            released, self._released = self._released, []
            groups: dict[tuple[Any, ...], list[_Send]] = {}
            for s in sends:
                groups.setdefault(s.key, []).append(s)
            for group in groups.values():
                for start in range(0, len(group), FLEET_SEND_MAX_IDS):
                    part = group[start : start + FLEET_SEND_MAX_IDS]
                    self._tasks.append(asyncio.create_task(self._send_group(part)))
            if pushes:
                self._tasks.append(asyncio.create_task(self._push_all(pushes)))
            for kind, batch in batches.items():
                self._tasks.append(asyncio.create_task(self._store_batch(kind, batch)))
            if released:
                self._tasks.append(asyncio.create_task(self._release(released)))

    async def clock(self) -> None:
        """The chunk's one timer: wakes devices whose re-push or deadline is due."""
        while True:
            await workflow.wait_condition(lambda: bool(self._wakeups) or self._closing)
            if not self._wakeups:
                return
            earliest = min(self._wakeups.values())
            target = max(w for w in self._wakeups.values() if w <= earliest + CLOCK_SLACK)
            self._clock_target = target
            self._retarget = False
            delay = target - workflow.now()
            if delay > timedelta(0):
                try:
                    await workflow.wait_condition(
                        lambda: self._retarget or self._closing,
                        timeout=delay,
                        timeout_summary=f"next re-push or deadline of {len(self._wakeups)} "
                        "device(s)",
                    )
                    continue  # an earlier wake-up came in: aim again
                except TimeoutError:
                    pass
            self._clock_now = workflow.now()
            self._clock_target = FAR_FUTURE.replace(tzinfo=target.tzinfo)
            # let the woken devices run (and register their next wake-up) before aiming again
            await workflow.wait_condition(
                lambda: all(w > self._clock_now for w in self._wakeups.values())
            )

    def close(self) -> None:
        self._closing = True

    async def _wait(self, dev: MdmWorkflow, ready: Callable[[], bool], wake: datetime) -> bool:
        """Wait until ``ready()`` or the clock passes ``wake``; True when ready.

        Raises :class:`RunStopped` when an operator stops the device meanwhile.
        """
        if ready():
            return True
        eid = dev.input.enrollment_id
        self._wakeups[eid] = wake
        if wake < self._clock_target:
            self._retarget = True
        try:
            await workflow.wait_condition(
                lambda: ready() or self._clock_now >= wake or _stopping(dev)
            )
        finally:
            self._wakeups.pop(eid, None)
        if _stopping(dev):
            raise RunStopped()
        return ready()

    # ---- the step ------------------------------------------------------------------

    def _show_step(self, name: str) -> None:
        """Keep the run's MdmStep search attribute: a one-device chunk shows its step."""
        if len(self.devices) > 1 and self._step_shown is not None:
            return
        if name != self._step_shown:
            self._step_shown = name
            workflow.upsert_search_attributes([sa.CURRENT_STEP.value_set(name)])

    def finished(self, dev: MdmWorkflow) -> None:
        """A device's story (and its undo steps) ended: its hold goes back and its
        outcome is recorded (batched)."""
        self.progressed = True
        self._released.append(dev.input.enrollment_id)

    def _new_uuid(self) -> str:
        return routing.fleet_command_uuid(
            self.code, self.input.instance_id, self.input.chunk, workflow.uuid4().hex[:20]
        )

    async def step(
        self,
        dev: MdmWorkflow,
        name: str,
        commands: Sequence[Command],
        *,
        timeout: timedelta | None,
        not_until: datetime | None,
    ) -> StepOutcome:
        await self._boundary(dev)
        if self.gov is not None and not dev._compensating:
            await self.gov.boundary(dev, lambda: _stopping(dev))
            if _stopping(dev):
                raise RunStopped()
            if destructive(commands):
                await self.gov.before_destructive(dev, name, lambda: _stopping(dev))
                if _stopping(dev):
                    raise RunStopped()
        await dev.before_step(name)
        dev._reset = None
        record = StepRecord(name=name, status="waiting", started_at=workflow.now())
        dev._state.steps.append(record)
        dev._state.current_step = name
        self.progressed = True
        self._show_step(name)
        try:
            outcome = await self._run_step(dev, record, commands, timeout, not_until)
        except RunStopped:
            record.status = "cancelled"
            record.finished_at = workflow.now()
            raise
        finally:
            dev._awaiting = {}
            dev._answers = []
            dev._unconfirmed = {}
        return outcome

    async def _run_step(
        self,
        dev: MdmWorkflow,
        record: StepRecord,
        commands: Sequence[Command],
        timeout: timedelta | None,
        not_until: datetime | None,
    ) -> StepOutcome:
        if not_until is not None and not_until > workflow.now():
            await self._wait(dev, lambda: False, not_until)
        deadline = workflow.now() + dev._step_timeout(timeout)
        record.deadline = deadline
        record.status = "sending"
        record.commands = [
            CommandProgress(command_uuid="", request_type=c.request_type) for c in commands
        ]
        dev._awaiting = {}
        dev._answers = [None] * len(commands)
        dev._unconfirmed = {}

        if dev._checked_out:
            return self._outcome(dev, record, timed_out=False, reset="checked out")
        items = [_Item(i, c) for i, c in enumerate(commands)]
        retried = 0
        while True:
            failed = await self._send(dev, record, items, deadline)
            timed_out, reset = False, None
            if failed is None:
                record.status = "pending"
                ended = await self._wait_for_answers(dev, record, commands, deadline)
                if ended == "reset":
                    reset = dev._reset.reason if dev._reset else "reset"
                timed_out = ended == "timed_out"
            problem = self._problem(dev, failed, timed_out, reset)
            if problem is not None and retried < dev.input.retries:
                # a bounded automatic retry first, after a doubling pause (the clock)
                retried += 1
                delay = dev.input.retry_backoff_seconds * 2 ** (retried - 1)
                dev._state.control = (
                    f"retry {retried} of {dev.input.retries} of step {record.name!r} in "
                    f"{delay:g} s: {problem}"
                )
                self.progressed = True
                await self._wait(dev, lambda: False, workflow.now() + timedelta(seconds=delay))
                dev._state.control = None
                items = self._retry_items(dev, record, commands)
                deadline = workflow.now() + dev._step_timeout(timeout)
                record.deadline = deadline
                continue
            if problem is None or dev.on_failure != "suspend":
                if failed is not None:
                    raise _enqueue_failed(record, failed)
                return self._outcome(dev, record, timed_out=timed_out, reset=reset)
            # suspended: an operator decides (no timer: waiting costs no history)
            if await self._suspend(dev, record, problem) == "skip":
                record.status = "skipped"
                record.finished_at = workflow.now()
                self._measure(record)
                return StepOutcome(
                    name=record.name,
                    results=[
                        a if a is not None and a.status == "Acknowledged" else None
                        for a in dev._answers
                    ],
                    skipped=True,
                )
            # retry: what failed or never came, again under new CommandUUIDs
            items = self._retry_items(dev, record, commands)
            deadline = workflow.now() + dev._step_timeout(timeout)
            record.deadline = deadline

    def _problem(
        self, dev: MdmWorkflow, failed: str | None, timed_out: bool, reset: str | None
    ) -> str | None:
        """Why the step failed in a way a retry or an operator can mend, or None."""
        if dev._compensating or reset is not None:
            return None
        if failed is not None:
            return f"the MDM server did not take the commands: {failed}"
        if timed_out:
            missing = sum(1 for a in dev._answers if a is None)
            return f"timed out with {missing} command(s) unanswered"
        errors = [a for a in dev._answers if a is not None and a.status != "Acknowledged"]
        return error_chain(errors) if errors else None

    async def _suspend(
        self, dev: MdmWorkflow, record: StepRecord, problem: str
    ) -> Literal["retry", "skip"]:
        record.status = "suspended"
        dev._state.status = "suspended"
        dev._state.message = f"suspended at step {record.name!r}: {problem}"
        dev._decision = None
        self.progressed = True
        if len(self.devices) == 1:
            self._show_step(f"suspended:{record.name}")
        await workflow.wait_condition(lambda: dev._decision is not None or dev._stop is not None)
        if dev._stop is not None:
            raise RunStopped()
        decision = dev._decision
        assert decision is not None
        dev._decision = None
        dev._state.status = "running"
        dev._state.message = None
        record.status = "pending"
        self.progressed = True
        if len(self.devices) == 1:
            self._show_step(record.name)
        return decision

    @staticmethod
    def _retry_items(
        dev: MdmWorkflow, record: StepRecord, commands: Sequence[Command]
    ) -> list[_Item]:
        """The commands to send again: those that failed (their old UUIDs are dropped, so
        a repeated Error cannot fail them again) and those never answered."""
        items = []
        for i, command in enumerate(commands):
            answer = dev._answers[i]
            if answer is not None and answer.status == "Acknowledged":
                continue
            if answer is not None:
                for uuid in [u for u, index in dev._awaiting.items() if index == i]:
                    del dev._awaiting[uuid]
            dev._answers[i] = None
            progress = record.commands[i]
            progress.answered = False
            progress.error = None
            items.append(_Item(i, command, replaces=progress.command_uuid))
        dev._unconfirmed = {}
        return items

    def _measure(self, record: StepRecord) -> None:
        """``mdmflow_step_duration``: how long a device's step took, from its start to
        its last answer, its timeout or its reset (the SDK's metric meter, which records
        nothing while a history is replayed). Labels: workflow and step outcome, both from
        fixed sets."""
        if record.finished_at is None:
            return
        if self._step_duration is None:
            self._step_duration = workflow.metric_meter().create_histogram_timedelta(
                "mdmflow_step_duration",
                "How long a device's step took: start to last answer, timeout or reset",
                "ms",
            )
        self._step_duration.record(
            record.finished_at - record.started_at,
            {"workflow": self.input.workflow_name, "outcome": record.status},
        )

    def _outcome(
        self, dev: MdmWorkflow, record: StepRecord, *, timed_out: bool, reset: str | None
    ) -> StepOutcome:
        record.status = "timed_out" if timed_out else "reset" if reset else "completed"
        record.finished_at = workflow.now()
        self._measure(record)
        return StepOutcome(
            name=record.name,
            results=list(dev._answers),
            timed_out=timed_out,
            reset=reset,
            send_error=record.send_error if dev._unconfirmed else None,
        )

    async def _boundary(self, dev: MdmWorkflow) -> None:
        """Between steps: stop here when stopped, wait here while paused (visibly)."""
        if dev._compensating:
            return
        if dev._stop is not None:
            raise RunStopped()
        if dev._pause is None:
            return
        dev._state.status = "paused"
        dev._state.message = dev._pause
        dev._state.control = None
        self.progressed = True
        await workflow.wait_condition(lambda: dev._pause is None or dev._stop is not None)
        if dev._stop is not None:
            raise RunStopped()
        dev._state.status = "running"
        dev._state.message = None
        self.progressed = True

    async def compensate(self, dev: MdmWorkflow) -> list[str]:
        """Run the story's undo steps newest-first; returns the ones that failed."""
        failed: list[str] = []
        dev._compensating = True
        try:
            while dev._undo:
                name, commands = dev._undo.pop()
                timeout = min(dev._step_timeout(None), UNDO_TIMEOUT)
                outcome = await self.step(
                    dev, f"undo {name}", commands, timeout=timeout, not_until=None
                )
                if not outcome.acknowledged:
                    failed.append(outcome.describe())
        finally:
            dev._compensating = False
            dev._state.current_step = None
        return failed

    async def _wait_for_answers(
        self,
        dev: MdmWorkflow,
        record: StepRecord,
        commands: Sequence[Command],
        deadline: datetime,
    ) -> Literal["answered", "timed_out", "reset"]:
        silent_repushes = 0
        resends = 0
        schedule = dev._repush_schedule()
        while not dev._all_answered():
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                return "timed_out"
            interval = schedule[min(silent_repushes, len(schedule) - 1)]
            wake = workflow.now() + min(remaining, interval)
            if not await self._wait(dev, dev._answered_or_reset, wake):
                if workflow.now() >= deadline:
                    return "answered" if dev._all_answered() else "timed_out"
                silent_repushes += 1
                await self._repush(dev, record, commands, silent_repushes)
                continue
            if dev._reset is not None and not dev._all_answered():
                if dev._checked_out or dev.ON_ENROLLMENT_RESET == "fail":
                    return "reset"
                resends += 1
                if resends > MAX_RESENDS:
                    return "reset"  # a device re-enrolling over and over: stop re-sending
                dev._reset = None
                # the queue is empty after a re-enrollment: queue what is missing again
                again = [
                    _Item(i, c, replaces=record.commands[i].command_uuid)
                    for i, c in enumerate(commands)
                    if dev._answers[i] is None
                ]
                failed = await self._send(dev, record, again, None, alone=True)
                if failed is not None:
                    raise _enqueue_failed(record, failed)
                silent_repushes = 0
        return "answered"

    async def _repush(
        self,
        dev: MdmWorkflow,
        record: StepRecord,
        commands: Sequence[Command],
        silent_repushes: int,
    ) -> None:
        """Re-push; first send again what was never confirmed, and re-issue silent reads."""
        items = [
            _Item(dev._awaiting[uuid], commands[dev._awaiting[uuid]], uuid=uuid)
            for uuid in dev._unconfirmed
            if dev._answers[dev._awaiting[uuid]] is None
        ]
        for i in dev._due_for_reissue(record, commands, silent_repushes):
            items.append(_Item(i, commands[i], replaces=record.commands[i].command_uuid))
        if items:
            failed = await self._send(dev, record, items, None)
            if failed is not None:
                raise _enqueue_failed(record, failed)
            return
        push = _Push(dev, record)
        self._pushes.append(push)
        await workflow.wait_condition(lambda: push.done)

    # ---- sending -------------------------------------------------------------------

    async def _send(
        self,
        dev: MdmWorkflow,
        record: StepRecord,
        items: list[_Item],
        deadline: datetime | None,
        *,
        alone: bool = False,
    ) -> str | None:
        """Queue ``items`` for this device and wait until the group's send is over.

        Returns why the MDM server refused them for good (None when it did not).

        Devices whose items are the same (same commands, same UUIDs or replacing the
        same UUIDs) in the same workflow task form one group and one send.
        """
        parts: list[Any] = [record.name]
        for item in items:
            command_key = item.command.model_dump_json()
            parts.append((item.uuid, item.replaces, item.uuid or command_key))
            if _per_device(item.command):
                alone = True
        if alone:
            parts.append(dev.input.enrollment_id)
        send = _Send(dev, record, items, key=tuple(parts))
        self._sends.append(send)

        def ready() -> bool:
            return send.done or _send_moot(dev)

        if deadline is None:
            await workflow.wait_condition(lambda: ready() or _stopping(dev))
            if _stopping(dev):
                raise RunStopped()
        else:
            await self._wait(dev, ready, deadline)
        return send.failed

    async def _send_group(self, group: list[_Send]) -> None:
        first = group[0]
        # the group's UUIDs: made once, shared by every device of the group
        uuids = [item.uuid or self._new_uuid() for item in first.items]
        for s in group:
            for item, uuid in zip(s.items, uuids, strict=True):
                if item.uuid is not None:
                    continue
                progress = s.record.commands[item.index]
                if item.replaces is None:
                    progress.command_uuid = uuid
                else:
                    progress.reissued_as.append(uuid)
                s.dev._awaiting[uuid] = item.index
        queued = [
            QueuedCommand(command_uuid=uuid, command=item.command)
            for item, uuid in zip(first.items, uuids, strict=True)
        ]
        unsure = {
            s.dev.input.enrollment_id: [u for u in uuids if s.dev._unconfirmed.get(u) == "unsure"]
            for s in group
        }
        await self._slot()
        try:
            handle = workflow.start_activity(
                "mdm.send_fleet",
                FleetSendInput(
                    enrollment_ids=[s.dev.input.enrollment_id for s in group],
                    commands=queued,
                    unsure={eid: u for eid, u in unsure.items() if u},
                ),
                start_to_close_timeout=FLEET_SEND_TIMEOUT,
                heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                retry_policy=BOUNDED_SEND_RETRY,
                result_type=FleetSendResult,
                summary=f"send {first.record.name} to {len(group)} device(s)",
            )
            await workflow.wait_condition(
                lambda: handle.done() or all(_send_moot(s.dev) for s in group)
            )
            if not handle.done():
                handle.cancel()  # every device's step is over: the send is moot
                for s in group:
                    s.done = True
                return
            try:
                result = await handle
            except ActivityError as exc:
                self._send_lost(group, uuids, exc)
                return
        finally:
            self._pending -= 1
        for s in group:
            self._apply(s, uuids, result)
            s.done = True

    def _send_lost(self, group: list[_Send], uuids: list[str], exc: ActivityError) -> None:
        cause = exc.cause
        for s in group:
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                s.failed = cause.message
            else:
                # lost with its last attempt: whatever it queued is unknown
                s.record.send_error = f"send failed: {cause or exc}"
                for uuid in uuids:
                    s.dev._unconfirmed[uuid] = "unsure"
            s.done = True

    @staticmethod
    def _apply(s: _Send, uuids: list[str], result: FleetSendResult) -> None:
        problem = result.problems.get(s.dev.input.enrollment_id)
        record = s.record
        if problem is None:
            for uuid in uuids:
                s.dev._unconfirmed.pop(uuid, None)
            record.send_error = None
            record.pushes += 1
            record.push_error = result.push_error
            return
        if problem.failed is not None:
            s.failed = problem.failed
            return
        for uuid in uuids:
            if uuid in problem.unsent:
                s.dev._unconfirmed[uuid] = "unsent"
            else:
                s.dev._unconfirmed.pop(uuid, None)
        record.send_error = problem.error
        if problem.uncertain:
            record.send_error = (
                f"{problem.error}; not posted again, so the device runs it at most once: "
                + ", ".join(problem.uncertain)
            )
        if len(problem.unsent) < len(uuids):
            record.pushes += 1
            record.push_error = result.push_error

    async def _push_all(self, pushes: list[_Push]) -> None:
        await self._slot()
        error: str | None
        try:
            result = await workflow.execute_activity(
                "mdm.push",
                PushInput(enrollment_ids=[p.dev.input.enrollment_id for p in pushes]),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=5),
                result_type=PushResult,
                summary=f"re-push {len(pushes)} device(s)",
            )
            error = result.push_error
        except ActivityError as exc:
            # not fatal: the commands are queued, the devices will ask
            error = str(exc.cause or exc)
        finally:
            self._pending -= 1
        for p in pushes:
            if error is None:
                p.record.pushes += 1
            p.record.push_error = error
            p.done = True

    # ---- other activities ----------------------------------------------------------

    async def _slot(self) -> None:
        await workflow.wait_condition(lambda: self._pending < MAX_PENDING_ACTIVITIES)
        self._pending += 1

    async def call(
        self,
        name: str,
        arg: Any,
        *,
        result_type: type[T],
        summary: str,
        shared: bool,
        timeout: timedelta,
    ) -> T:
        key = (name, arg.model_dump_json() if isinstance(arg, BaseModel) else repr(arg))
        if shared and key in self._shared:
            result: T = await self._shared[key]
            return result

        async def run() -> T:
            await self._slot()
            try:
                value: T = await workflow.execute_activity(
                    name,
                    arg,
                    start_to_close_timeout=timeout,
                    result_type=result_type,
                    summary=summary,
                )
                return value
            finally:
                self._pending -= 1
                if shared:
                    self._shared.pop(key, None)

        task = asyncio.create_task(run())
        if shared:
            self._shared[key] = task
        result = await task
        return result

    async def store(self, kind: str, item: InventoryUpdate | DeviceInfoLogEntry) -> None:
        batch = self._batches.setdefault(kind, _Batch())
        batch.items.append(item)
        await workflow.wait_condition(lambda: batch.done)
        if batch.error is not None:
            raise batch.error

    async def _store_batch(self, kind: str, batch: _Batch) -> None:
        try:
            for start in range(0, len(batch.items), STORE_BATCH):
                await workflow.execute_local_activity(
                    STORE_ACTIVITIES[kind],
                    batch.items[start : start + STORE_BATCH],
                    start_to_close_timeout=STORE_TIMEOUT,
                    summary=f"store {len(batch.items)} {kind} record(s)",
                )
        except ActivityError as exc:
            batch.error = exc
        finally:
            batch.done = True

    async def _release(self, enrollment_ids: list[str]) -> None:
        outcomes = [
            DeviceOutcome(
                enrollment_id=eid,
                workflow_name=self.input.workflow_name,
                instance_id=self.input.instance_id,
                status=state.status,
                message=state.message or "",
                failure_type=state.failure_type,
            )
            for eid in enrollment_ids
            for state in [self.devices[eid]._state]
        ]
        await workflow.execute_local_activity(
            "holds.release",
            ReleaseHolds(
                workflow_id=workflow.info().workflow_id,
                enrollment_ids=enrollment_ids,
                outcomes=outcomes,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            summary=f"release {len(enrollment_ids)} device(s)",
        )
