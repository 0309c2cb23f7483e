"""The send activity: one request per command, one push per step, safe to retry."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.testing import ActivityEnvironment

from activities.mdm import MdmActivities
from activities.mdm_server import EnqueueOutcome
from activities.models import QueuedCommand, SendStepInput
from protocol.commands import device_information, security_info


class ScriptedServer:
    """Answers like NanoMDM: a UUID seen before is a duplicate (already queued)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.known: set[str] = set()

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        self.calls.append(("enqueue", command_uuid, push))
        if command_uuid in self.known:
            return EnqueueOutcome(already_queued=list(ids))
        self.known.add(command_uuid)
        return EnqueueOutcome(queued=list(ids))

    async def push(self, ids: Sequence[str]) -> str | None:
        self.calls.append(("push", ids[0], True))
        return None

    async def aclose(self) -> None:
        return None


STEP = SendStepInput(
    enrollment_id="E1",
    commands=[
        QueuedCommand(command_uuid="u1", command=device_information()),
        QueuedCommand(command_uuid="u2", command=security_info()),
    ],
)


async def test_last_command_carries_the_only_push() -> None:
    server = ScriptedServer()
    result = await ActivityEnvironment().run(MdmActivities(server).send_step, STEP)
    assert server.calls == [("enqueue", "u1", False), ("enqueue", "u2", True)]
    assert result.queued == ["u1", "u2"] and result.already_queued == []


async def test_a_retry_queues_nothing_twice_and_still_pushes() -> None:
    server = ScriptedServer()
    acts = MdmActivities(server)
    await ActivityEnvironment().run(acts.send_step, STEP)
    server.calls.clear()
    retry = await ActivityEnvironment().run(acts.send_step, STEP)
    assert retry.already_queued == ["u1", "u2"] and retry.queued == []
    assert server.calls[-1] == ("push", "E1", True)
    assert [c for c in server.calls if c[0] == "push"] == [("push", "E1", True)]
