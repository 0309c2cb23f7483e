"""The send activity: one request per command, one push per step, never a UUID posted twice.

These drive the activity's bookkeeping (what it remembers between attempts, what it
reports) against a scripted server, step by step. The same behaviours against the
simulator in MicroMDM mode, which queues every copy it is sent as MicroMDM does, are in
``tests/test_send_fleet.py`` (``test_micromdm_*``, for fleet sends and step sends).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities import mdm as mdm_activities
from activities.mdm import MdmActivities
from activities.mdm_server import (
    EnqueueOutcome,
    PermanentMdmError,
    TransientMdmError,
    UncertainMdmError,
)
from activities.models import SEND_MAX_ATTEMPTS, QueuedCommand, SendStepInput, SendStepResult
from protocol.commands import device_information, remove_profile, security_info


class ScriptedServer:
    """An MDM server whose answers a test scripts per CommandUUID.

    ``deduplicates=True`` answers like NanoMDM (a UUID seen before is "already queued");
    ``False`` like MicroMDM (every post queues another copy, counted in ``copies``).
    """

    def __init__(self, *, deduplicates: bool = True) -> None:
        self.deduplicates = deduplicates
        self.calls: list[tuple[str, str, bool]] = []
        self.copies: dict[str, int] = {}
        self.fail: dict[str, Exception] = {}  # UUID -> raised once, then cleared
        self.push_error: str | None = None
        self.delay = 0.0
        self.unknown = False

    async def check_enrolled(self, ids: Sequence[str]) -> None:
        if self.unknown:
            raise PermanentMdmError(f"MicroMDM does not know device {ids[0]!r}")

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        self.calls.append(("enqueue", command_uuid, push))
        if self.delay:
            await asyncio.sleep(self.delay)
        error = self.fail.pop(command_uuid, None)
        if error is not None and not isinstance(error, UncertainMdmError):
            raise error
        seen = command_uuid in self.copies
        self.copies[command_uuid] = self.copies.get(command_uuid, 0) + 1
        if error is not None:
            raise error  # queued, but the answer is lost
        if seen and self.deduplicates:
            self.copies[command_uuid] -= 1
            return EnqueueOutcome(already_queued=list(ids))
        return EnqueueOutcome(queued=list(ids), push_error=self.push_error if push else None)

    async def push(self, ids: Sequence[str]) -> str | None:
        self.calls.append(("push", ids[0], True))
        return self.push_error

    async def aclose(self) -> None:
        return None


STEP = SendStepInput(
    enrollment_id="E1",
    commands=[
        QueuedCommand(command_uuid="u1", command=device_information()),
        QueuedCommand(command_uuid="u2", command=security_info()),
        QueuedCommand(command_uuid="u3", command=remove_profile("com.example.wifi")),
    ],
)


class Attempts:
    """Runs the activity attempt after attempt as Temporal would, heartbeats carried over."""

    def __init__(self, acts: MdmActivities) -> None:
        self.acts = acts
        self.details: Sequence[Any] = ()
        self.attempt = 0

    async def run(self, inp: SendStepInput = STEP, *, attempt: int | None = None) -> SendStepResult:
        self.attempt = attempt or self.attempt + 1
        env = ActivityEnvironment()
        env.info = dataclasses.replace(
            env.info, attempt=self.attempt, heartbeat_details=self.details
        )

        def beat(*details: Any) -> None:
            self.details = details

        env.on_heartbeat = beat
        return await env.run(self.acts.send_step, inp)


async def test_last_command_carries_the_only_push() -> None:
    server = ScriptedServer()
    result = await Attempts(MdmActivities(server)).run()
    assert server.calls == [
        ("enqueue", "u1", False),
        ("enqueue", "u2", False),
        ("enqueue", "u3", True),
    ]
    assert result.queued == ["u1", "u2", "u3"] and result.already_queued == []


async def test_a_nanomdm_retry_queues_nothing_twice_and_still_pushes() -> None:
    server = ScriptedServer()
    acts = MdmActivities(server)
    await Attempts(acts).run()
    server.calls.clear()
    retry = await Attempts(acts).run()  # a new series: no heartbeat details to go by
    assert retry.already_queued == ["u1", "u2", "u3"] and retry.queued == []
    assert [c for c in server.calls if c[0] == "push"] == [("push", "E1", True)]
    assert server.copies == {"u1": 1, "u2": 1, "u3": 1}


async def test_a_micromdm_retry_posts_only_what_was_not_accepted() -> None:
    server = ScriptedServer(deduplicates=False)
    server.fail["u3"] = TransientMdmError("MicroMDM error 503")
    attempts = Attempts(MdmActivities(server))
    with pytest.raises(TransientMdmError):
        await attempts.run()
    result = await attempts.run()
    assert server.copies == {"u1": 1, "u2": 1, "u3": 1}  # each queued exactly once
    assert result.already_queued == ["u1", "u2"] and result.queued == ["u3"]
    assert [c[1] for c in server.calls if c[0] == "enqueue"] == ["u1", "u2", "u3", "u3"]


async def test_a_failed_push_is_a_push_error_not_a_retry() -> None:
    server = ScriptedServer(deduplicates=False)
    server.push_error = "E1: push failed, MicroMDM dropped the request"
    result = await Attempts(MdmActivities(server)).run()
    assert result.queued == ["u1", "u2", "u3"]
    assert result.push_error == server.push_error
    assert server.copies == {"u1": 1, "u2": 1, "u3": 1}


async def test_the_last_attempt_reports_what_it_could_not_send() -> None:
    server = ScriptedServer(deduplicates=False)
    server.fail["u2"] = TransientMdmError("MicroMDM unreachable: ConnectError")
    result = await Attempts(MdmActivities(server)).run(attempt=SEND_MAX_ATTEMPTS)
    assert result.queued == ["u1"]
    assert result.unsent == ["u2", "u3"]
    assert result.send_error is not None and "unreachable" in result.send_error
    assert server.calls[-1] == ("push", "E1", True)  # what was queued is still pushed


async def test_a_lost_answer_on_micromdm_is_never_posted_again() -> None:
    server = ScriptedServer(deduplicates=False)
    server.fail["u3"] = UncertainMdmError("answer lost")
    attempts = Attempts(MdmActivities(server))
    first = await attempts.run()
    assert first.uncertain == ["u3"] and first.queued == ["u1", "u2"]
    again = await attempts.run()  # even a retry of the same activity does not post it
    assert again.uncertain == ["u3"]
    assert server.copies["u3"] == 1


async def test_unsure_commands_are_posted_again_only_when_harmless() -> None:
    inp = STEP.model_copy(update={"unsure": ["u1", "u3"]})
    micromdm = ScriptedServer(deduplicates=False)
    result = await Attempts(MdmActivities(micromdm)).run(inp)
    # read-only DeviceInformation may run twice; RemoveProfile must not
    assert result.queued == ["u1", "u2"] and result.uncertain == ["u3"]
    assert "u3" not in micromdm.copies
    nanomdm = ScriptedServer()
    assert (await Attempts(MdmActivities(nanomdm)).run(inp)).queued == ["u1", "u2", "u3"]


async def test_a_slow_server_sees_heartbeats_so_no_second_attempt_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mdm_activities, "HEARTBEAT_EVERY", 0.02)
    server = ScriptedServer(deduplicates=False)
    server.delay = 0.1
    attempts = Attempts(MdmActivities(server))
    one = STEP.model_copy(update={"commands": STEP.commands[:1]})
    await attempts.run(one)
    assert attempts.details  # heartbeated while the one request was slow


async def test_an_unknown_enrollment_fails_before_anything_is_posted() -> None:
    server = ScriptedServer(deduplicates=False)
    server.unknown = True
    with pytest.raises(Exception, match="does not know device"):
        await Attempts(MdmActivities(server)).run()
    assert server.calls == []


async def test_a_command_that_cannot_be_built_fails_at_once_without_retry() -> None:
    from temporalio.exceptions import ApplicationError

    server = ScriptedServer()
    bad = SendStepInput(
        enrollment_id="E1",
        commands=[QueuedCommand(command_uuid="u9", command=remove_profile("com.example\x01"))],
    )
    with pytest.raises(ApplicationError) as failure:
        await Attempts(MdmActivities(server)).run(bad)
    assert failure.value.non_retryable and failure.value.type == "CommandBuildError"
    assert server.calls == []  # nothing reached the MDM server
