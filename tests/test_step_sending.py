"""How a step sends (engine revision 3): never waits on a send it no longer needs, and
sends again, under the same CommandUUIDs, what the MDM server never confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.models import SEND_MAX_ATTEMPTS, SendStepInput, SendStepResult
from tests.conftest import start_time_skipping
from tests.test_step_engine import DEVINFO, SECINFO, Harness, harness_on, state
from tests.workflow_harness import RecordingMdm, report
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.lock import LockWorkflow
from workflows.models import EnrollmentReset

# Some tests run on a time-skipping server of their own (``blocking_env``).
pytestmark = pytest.mark.workflow


class ScriptedSends(RecordingMdm):
    """A send double: each call takes the next scripted behaviour.

    ``"block"`` never returns (until cancelled), ``"fail"`` raises a retryable error on
    every attempt, ``"unsent:N"`` queues all but the last N commands; otherwise all are
    queued.
    """

    def __init__(self) -> None:
        super().__init__()
        self.script: list[str] = []
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()  # ends a blocked send (keeps time skipping free)
        self.attempts = 0
        # Sends from this index on are answered by "the device" (Acknowledged), so a test
        # can wait on the run's result and let the time-skipping server skip time.
        self.answer_from: int | None = None
        self.client: Client | None = None
        self._answering: set[asyncio.Task[None]] = set()

    @activity.defn(name="mdm.send_step")
    async def send_step(self, inp: SendStepInput) -> SendStepResult:
        self.attempts += 1
        behaviour = self.script[0] if self.script else "ok"
        if behaviour == "fail" and activity.info().attempt < SEND_MAX_ATTEMPTS:
            raise ApplicationError("MicroMDM unreachable")
        if self.script:
            self.script.pop(0)
        self.sent.append(inp)
        self.sent_event.set()
        uuids = [c.command_uuid for c in inp.commands]
        if behaviour == "block":
            try:
                while not self.release.is_set():
                    await asyncio.sleep(0.05)
                    activity.heartbeat()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if behaviour == "fail":
            raise ApplicationError("MicroMDM unreachable")
        if behaviour.startswith("unsent:"):
            n = int(behaviour.split(":")[1])
            return SendStepResult(
                queued=uuids[:-n], unsent=uuids[-n:], send_error="MicroMDM unreachable"
            )
        if self.answer_from is not None and len(self.sent) > self.answer_from:
            task = asyncio.create_task(self._answer(activity.info().workflow_id, inp))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
        return SendStepResult(queued=uuids)

    async def _answer(self, workflow_id: str, inp: SendStepInput) -> None:
        assert self.client is not None
        await asyncio.sleep(0.05)  # after the send's result
        handle = self.client.get_workflow_handle(workflow_id)
        for c in inp.commands:
            kind = c.command.request_type
            body = ANSWERS.get(kind, {})
            await handle.signal(
                "command_report", report(inp.enrollment_id, c.command_uuid, kind, **body)
            )


ANSWERS: dict[str, dict[str, object]] = {"DeviceInformation": DEVINFO, "SecurityInfo": SECINFO}


def scripted(env: WorkflowEnvironment) -> ScriptedSends:
    mdm = ScriptedSends()
    mdm.client = env.client
    return mdm


@pytest.fixture
async def sends(time_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    async with harness_on(time_env, scripted(time_env)) as h:
        yield h


@pytest.fixture(scope="module")
async def blocking_env() -> AsyncIterator[WorkflowEnvironment]:
    """A server of their own for sends that are cut off: the time-skipping server stops
    skipping time for good once an activity of a closed run is cancelled."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest.fixture
async def blocked(blocking_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    async with harness_on(blocking_env, scripted(blocking_env)) as h:
        script(h).script = ["block"]
        yield h
        script(h).release.set()


def script(h: Harness) -> ScriptedSends:
    assert isinstance(h.mdm, ScriptedSends)
    return h.mdm


async def test_a_step_answered_while_its_send_still_runs_completes(blocked: Harness) -> None:
    eid, handle = await blocked.start()
    (sent,) = await blocked.mdm.wait_sent()
    devinfo, secinfo = (c.command_uuid for c in sent.commands)
    await handle.signal("command_report", report(eid, devinfo, "DeviceInformation", **DEVINFO))
    await handle.signal("command_report", report(eid, secinfo, "SecurityInfo", **SECINFO))
    result = await handle.result()
    assert result.status == "completed"
    await asyncio.wait_for(script(blocked).cancelled.wait(), 10)  # the moot send is stopped


async def test_a_check_out_ends_a_step_that_is_still_sending(blocked: Harness) -> None:
    eid, handle = await blocked.start()
    await blocked.mdm.wait_sent()
    await handle.signal(
        "enrollment_reset", EnrollmentReset(enrollment_id=eid, reason="checked out")
    )
    result = await handle.result()
    assert result.status != "completed"
    assert "checked out" in result.message


async def test_a_re_enrollment_ends_a_failing_step_that_is_still_sending(blocked: Harness) -> None:
    eid, handle = await blocked.start(LockWorkflow.NAME)  # ON_ENROLLMENT_RESET = "fail"
    await blocked.mdm.wait_sent()
    await handle.signal(
        "enrollment_reset", EnrollmentReset(enrollment_id=eid, reason="re-enrolled")
    )
    result = await handle.result()
    assert "re-enrolled" in result.message


async def test_commands_never_sent_go_again_under_the_same_uuid_at_the_re_push(
    sends: Harness,
) -> None:
    script(sends).script = ["unsent:1"]
    script(sends).answer_from = 1  # the device answers what the re-push sends
    eid, handle = await sends.start(repush_after_seconds=[30.0])
    (first,) = await sends.mdm.wait_sent()
    devinfo, secinfo = (c.command_uuid for c in first.commands)
    mid = (await state(handle)).steps[0]
    for _ in range(200):  # the send's result reaches the run just after the send
        if mid.status != "sending":
            break
        await asyncio.sleep(0.02)
        mid = (await state(handle)).steps[0]
    assert mid.send_error == "MicroMDM unreachable"
    await handle.signal("command_report", report(eid, devinfo, "DeviceInformation", **DEVINFO))
    assert (await handle.result()).status == "completed"
    second = sends.mdm.sent[1]
    assert [c.command_uuid for c in second.commands] == [secinfo]  # the same UUID
    assert second.unsure == []  # it certainly never reached the server
    final = (await state(handle)).steps[0]
    assert final.send_error is None


async def test_a_send_lost_with_its_last_attempt_is_retried_as_unsure(sends: Harness) -> None:
    script(sends).script = ["fail"]
    script(sends).answer_from = 1
    _eid, handle = await sends.start(repush_after_seconds=[30.0])
    assert (await handle.result()).status == "completed"
    first, second = sends.mdm.sent[:2]
    # the first send failed on every attempt; the re-push sends both again, under the
    # same UUIDs, marked unsure so a server that queues every copy posts only read-only
    # commands
    assert [c.command_uuid for c in second.commands] == [c.command_uuid for c in first.commands]
    assert second.unsure == [c.command_uuid for c in second.commands]
    assert script(sends).attempts > SEND_MAX_ATTEMPTS  # every attempt of the first send


async def test_a_step_never_sent_says_so_when_it_times_out(sends: Harness) -> None:
    script(sends).script = ["unsent:2"] * 10
    _eid, handle = await sends.start(DevInfoLogWorkflow.NAME, step_timeout_seconds=45)
    result = await handle.result()
    assert result.status == "timed_out"
    assert "never took" in result.message and "MicroMDM unreachable" in result.message


async def test_re_sends_after_re_enrollment_are_bounded(sends: Harness) -> None:
    eid, handle = await sends.start()  # inventory re-sends after a re-enrollment
    await sends.mdm.wait_sent()
    for n in range(6):
        await handle.signal(
            "enrollment_reset", EnrollmentReset(enrollment_id=eid, reason="re-enrolled")
        )
        if n < 5:
            await sends.mdm.wait_sent(n + 2)
    result = await handle.result()
    assert result.status != "completed" and "re-enrolled" in result.message
    assert len(sends.mdm.sent) == 6  # the first send and five re-sends, no more
