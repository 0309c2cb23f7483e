"""The fleet send: every command once per enrollment, one CommandUUID for the whole chunk.

Against the simulator, NanoMDM's and MicroMDM's faithful modes, over real HTTP. NanoMDM
takes a command for many IDs in one request and stores a CommandUUID only once, so a
command's IDs all go into one request; MicroMDM takes one ID per request and queues
every copy, so a retry must never post again what it accepted. ``Faults`` sits between
the client and the simulator and loses or refuses chosen command requests, as a dropped
connection or an overloaded server would.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import mdm as mdm_activities
from activities.mdm import FLEET_DEVICE_CONCURRENCY, FleetProgress, MdmActivities
from activities.mdm_server import (
    ENQUEUE_CHUNK,
    MdmServerClient,
    MicroMdmClient,
    NanoMdmClient,
    TransientMdmError,
)
from activities.models import (
    SEND_MAX_ATTEMPTS,
    FleetSendInput,
    FleetSendResult,
    QueuedCommand,
    SendStepInput,
    SendStepResult,
)
from bench.servers import RestartableServer
from protocol.commands import (
    Command,
    device_information,
    device_lock,
    install_stored_profile,
    profile_list,
    remove_profile,
    security_info,
)
from simulator.app import create_app
from simulator.fleet import Fleet, FleetConfig, micromdm_config
from simulator.micromdm import DroppedConnection

KEY = "fleet-key"
U1, U2, U3 = "mf.t.i.0.a1", "mf.t.i.0.a2", "mf.t.i.0.a3"


def fleet_input(ids: list[str], *commands: tuple[str, Command], **kw: Any) -> FleetSendInput:
    chosen = commands or ((U1, device_information()), (U2, remove_profile("com.example.wifi")))
    return FleetSendInput(
        enrollment_ids=ids,
        commands=[QueuedCommand(command_uuid=u, command=c) for u, c in chosen],
        **kw,
    )


class Faults:
    """ASGI wrapper counting command requests; loses or refuses the ones chosen.

    A lost answer reaches the simulator (the command is queued) and then the connection
    is dropped; a refused request never reaches it (503, as from an overloaded proxy).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts = 0
        self.lose: set[int] = set()
        self.refuse_from: int | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(("/v1/commands/", "/v1/enqueue/")):
            self.posts += 1
            if self.refuse_from is not None and self.posts >= self.refuse_from:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [(b"content-type", b"text/plain")],
                    }
                )
                await send({"type": "http.response.body", "body": b"Service Unavailable\n"})
                return
            if self.posts in self.lose:

                async def swallow(_: Any) -> None:
                    return None

                await self.app(scope, receive, swallow)
                await DroppedConnection("answer lost")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def heal(self) -> None:
        self.lose.clear()
        self.refuse_from = None


@dataclasses.dataclass
class Sim:
    fleet: Fleet
    faults: Faults
    client: MdmServerClient
    url: str
    requests: list[tuple[str, str, str]]  # method, path, query

    def paths(self, prefix: str) -> list[str]:
        return [p for _, p, _ in self.requests if p.startswith(prefix)]


async def _sim(config: FleetConfig, kind: str) -> AsyncIterator[Sim]:
    fleet = Fleet(config)
    await fleet.start()
    faults = Faults(create_app(fleet))
    async with RestartableServer(faults) as server:
        client: NanoMdmClient | MicroMdmClient
        if kind == "nanomdm":
            client = NanoMdmClient(server.url, KEY)
        else:
            client = MicroMdmClient(server.url, KEY)
        requests: list[tuple[str, str, str]] = []

        async def record(request: httpx.Request) -> None:
            requests.append((request.method, request.url.path, request.url.query.decode()))

        client._http.event_hooks["request"].append(record)
        yield Sim(fleet, faults, client, server.url, requests)
        await client.aclose()
    await fleet.stop()


@pytest.fixture
async def nano() -> AsyncIterator[Sim]:
    async for sim in _sim(FleetConfig(api_key=KEY, connect_latency=0.01), "nanomdm"):
        yield sim


@pytest.fixture
async def micro() -> AsyncIterator[Sim]:
    async for sim in _sim(micromdm_config(api_key=KEY, connect_latency=0.01), "micromdm"):
        yield sim


class Attempts:
    """Runs the activity attempt after attempt as Temporal would.

    Heartbeat details go through JSON between attempts, as through the data converter.
    ``run`` is the fleet send (``mdm.send_fleet``), ``run_step`` a one-device run's
    (``mdm.send_step``).
    """

    def __init__(self, client: MdmServerClient) -> None:
        self.acts = MdmActivities(client)
        self.details: Sequence[Any] = ()
        self.attempt = 0

    def _env(self, attempt: int | None) -> ActivityEnvironment:
        self.attempt = attempt or self.attempt + 1
        env = ActivityEnvironment()
        env.info = dataclasses.replace(
            env.info, attempt=self.attempt, heartbeat_details=self.details
        )

        def beat(*details: Any) -> None:
            self.details = json.loads(json.dumps(list(details)))

        env.on_heartbeat = beat
        return env

    async def run(self, inp: FleetSendInput, *, attempt: int | None = None) -> FleetSendResult:
        return await self._env(attempt).run(self.acts.send_fleet, inp)

    async def run_step(
        self, inp: SendStepInput, *, attempt: int | None = None
    ) -> SendStepResult:
        return await self._env(attempt).run(self.acts.send_step, inp)


def answered(fleet: Fleet, device: str) -> int:
    return int(fleet.device_state(device)["counters"]["answered"])


# ---- NanoMDM ----------------------------------------------------------------------------


async def test_nanomdm_one_request_per_command_and_the_last_pushes_the_chunk(nano: Sim) -> None:
    devices = await nano.fleet.enroll(50)
    result = await Attempts(nano.client).run(fleet_input(devices))
    assert result.problems == {} and result.push_error is None and result.pushed == 50
    enqueues = [(m, q) for m, p, q in nano.requests if p.startswith("/v1/enqueue/")]
    assert enqueues == [("PUT", "nopush=1"), ("PUT", "")]  # one push request for the chunk
    assert nano.paths("/v1/push/") == []
    assert nano.fleet.stats["pushes"] == 50
    assert nano.fleet.command_copies(U1) == nano.fleet.command_copies(U2) == 50
    await nano.fleet.wait_idle(10)
    assert nano.fleet.command_answers(U1) == nano.fleet.command_answers(U2) == 50
    assert {answered(nano.fleet, d) for d in devices} == {2}  # each device ran each once


async def test_nanomdm_a_thousand_devices_share_each_command_uuid(nano: Sim) -> None:
    """More IDs than one push chunk: still one enqueue per command, none left out.

    NanoMDM refuses a CommandUUID it already stores, so a second request for the next
    IDs would be refused as a duplicate (and NanoCMD's chunking sent later chunks empty).
    """
    devices = await nano.fleet.enroll(1000)
    attempts = Attempts(nano.client)
    inp = fleet_input(
        devices, (U1, device_information()), (U2, security_info()), (U3, profile_list())
    )
    result = await attempts.run(inp)
    assert result.problems == {} and result.pushed == 1000
    assert len(nano.paths("/v1/enqueue/")) == 3
    for uuid in (U1, U2, U3):
        assert nano.fleet.command_copies(uuid) == 1000
    assert nano.fleet.stats["pushes"] == 1000
    assert len(json.dumps(attempts.details)) < 1000  # per UUID "0-999", not 1,000 IDs
    # the retry of a finished send posts nothing and pushes the chunk again
    nano.requests.clear()
    again = await attempts.run(inp)
    assert again.problems == {} and nano.paths("/v1/enqueue/") == []
    assert len(nano.paths("/v1/push/")) == 1000 // ENQUEUE_CHUNK


async def test_nanomdm_an_unknown_enrollment_fails_alone(nano: Sim) -> None:
    devices = await nano.fleet.enroll(50)
    ids = [*devices[:20], "NOT-ENROLLED-1", *devices[20:]]
    result = await Attempts(nano.client).run(fleet_input(ids))
    assert list(result.problems) == ["NOT-ENROLLED-1"]
    problem = result.problems["NOT-ENROLLED-1"]
    assert problem.failed is not None and "does not know" in problem.failed
    assert problem.unsent == [] and problem.uncertain == []
    assert nano.fleet.command_copies(U1) == nano.fleet.command_copies(U2) == 50
    assert result.pushed == 50
    await nano.fleet.wait_idle(10)
    assert {answered(nano.fleet, d) for d in devices} == {2}


async def test_nanomdm_a_retry_skips_what_was_accepted(nano: Sim) -> None:
    devices = await nano.fleet.enroll(50)
    nano.faults.refuse_from = 2
    attempts = Attempts(nano.client)
    with pytest.raises(TransientMdmError, match="503"):
        await attempts.run(fleet_input(devices))
    nano.faults.heal()
    nano.requests.clear()
    result = await attempts.run(fleet_input(devices))
    assert result.problems == {} and result.pushed == 50
    assert [q for _, p, q in nano.requests if p.startswith("/v1/enqueue/")] == [""]
    assert nano.fleet.command_copies(U1) == nano.fleet.command_copies(U2) == 50


async def test_nanomdm_the_last_attempt_returns_what_it_could_not_send(nano: Sim) -> None:
    devices = await nano.fleet.enroll(50)
    nano.faults.refuse_from = 2
    result = await Attempts(nano.client).run(fleet_input(devices), attempt=SEND_MAX_ATTEMPTS)
    assert set(result.problems) == set(devices)
    for problem in result.problems.values():
        assert problem.unsent == [U2] and problem.failed is None
        assert problem.error is not None and "503" in problem.error
    assert nano.fleet.command_copies(U1) == 50 and nano.fleet.command_copies(U2) == 0
    # the server stopped answering: the step's re-push sends and pushes the rest
    assert result.pushed == 0 and nano.paths("/v1/push/") == []


async def test_ids_that_cannot_share_one_request_fail_before_anything_is_sent(
    nano: Sim,
) -> None:
    ids = [f"{n:036d}:{'U' * 36}" for n in range(1000)]  # user channels: 1,000 x 77 chars
    with pytest.raises(ApplicationError, match="fewer enrollments per CommandUUID") as failure:
        await Attempts(nano.client).run(fleet_input(ids))
    assert failure.value.non_retryable and nano.requests == []


async def test_whole_request_errors_fail_the_activity_without_retry(nano: Sim) -> None:
    devices = await nano.fleet.enroll(3)
    wrong_key = NanoMdmClient(nano.url, "wrong")
    with pytest.raises(ApplicationError, match="401") as failure:
        await Attempts(wrong_key).run(fleet_input(devices))
    assert failure.value.non_retryable and failure.value.type == "MdmPermanentError"
    await wrong_key.aclose()
    bad = fleet_input(devices, (U1, remove_profile("com.example\x01")))
    with pytest.raises(ApplicationError) as failure:
        await Attempts(nano.client).run(bad)
    assert failure.value.non_retryable and failure.value.type == "CommandBuildError"
    with pytest.raises(ApplicationError, match="distinct") as failure:
        await Attempts(nano.client).run(fleet_input([devices[0], devices[0]]))
    assert failure.value.non_retryable
    assert nano.requests == [] and nano.fleet.command_copies(U1) == 0


async def test_a_command_filled_per_device_goes_to_one_enrollment_only(nano: Sim) -> None:
    lock = device_lock()
    assert lock.per_device and not install_stored_profile("wifi").per_device
    assert not device_information().per_device
    devices = await nano.fleet.enroll(2)
    with pytest.raises(ApplicationError, match="per device") as failure:
        await Attempts(nano.client).run(fleet_input(devices, (U1, lock)))
    assert failure.value.non_retryable and nano.requests == []
    # for one enrollment the one rendering is that device's (the PIN needs the escrow)
    with pytest.raises(ApplicationError, match="cannot fill secrets") as failure:
        await Attempts(nano.client).run(fleet_input(devices[:1], (U1, lock)))
    assert failure.value.type == "FillError"


# ---- MicroMDM ---------------------------------------------------------------------------


async def test_micromdm_one_post_per_device_and_command_and_one_push_per_device(
    micro: Sim,
) -> None:
    devices = await micro.fleet.enroll(50)
    result = await Attempts(micro.client).run(fleet_input(devices))
    assert result.problems == {} and result.push_error is None and result.pushed == 50
    assert len(micro.paths("/v1/devices")) == 1  # one device list for the chunk
    assert len(micro.paths("/v1/commands/")) == 100
    assert sorted(micro.paths("/v1/push/")) == sorted(f"/v1/push/{d}" for d in devices)
    assert micro.fleet.command_copies(U1) == micro.fleet.command_copies(U2) == 50
    await micro.fleet.wait_idle(10)
    assert {answered(micro.fleet, d) for d in devices} == {2}


async def test_micromdm_unknown_and_checked_out_devices_fail_alone(micro: Sim) -> None:
    devices = await micro.fleet.enroll(50)
    gone = devices[7]
    await micro.fleet.checkout(gone)
    ids = [*devices, "MADE-UP-UDID"]
    result = await Attempts(micro.client).run(fleet_input(ids))
    assert set(result.problems) == {gone, "MADE-UP-UDID"}
    assert "checked out" in (result.problems[gone].failed or "")
    assert "does not know device" in (result.problems["MADE-UP-UDID"].failed or "")
    assert micro.fleet.command_copies(U1) == micro.fleet.command_copies(U2) == 49
    assert result.pushed == 49
    assert len(micro.paths("/v1/devices")) == 1


async def test_micromdm_a_retry_after_a_dropped_connection_posts_nothing_twice(
    micro: Sim,
) -> None:
    devices = await micro.fleet.enroll(50)
    micro.faults.lose = {30}  # queued, but the answer never arrives
    micro.faults.refuse_from = 60  # then the server is overloaded
    attempts = Attempts(micro.client)
    with pytest.raises(TransientMdmError, match="503"):
        await attempts.run(fleet_input(devices))
    micro.faults.heal()
    result = await attempts.run(fleet_input(devices))
    # every (command, device) pair queued exactly once, the lost one included
    assert micro.fleet.command_copies(U1) == micro.fleet.command_copies(U2) == 50
    assert len(result.problems) == 1
    (problem,) = result.problems.values()
    assert len(problem.uncertain) == 1 and problem.unsent == [] and problem.failed is None
    assert problem.error is not None and "may be queued" in problem.error
    await micro.fleet.wait_idle(10)
    assert {answered(micro.fleet, d) for d in devices} == {2}


async def test_micromdm_the_last_attempt_returns_what_it_could_not_send(micro: Sim) -> None:
    devices = await micro.fleet.enroll(50)
    micro.faults.refuse_from = 21
    result = await Attempts(micro.client).run(fleet_input(devices), attempt=SEND_MAX_ATTEMPTS)
    accepted = micro.fleet.command_copies(U1) + micro.fleet.command_copies(U2)
    assert accepted == 20
    assert sum(len(p.unsent) for p in result.problems.values()) == 100 - accepted
    assert all(p.error and "503" in p.error for p in result.problems.values())
    assert all(p.failed is None and p.uncertain == [] for p in result.problems.values())
    # once refused, only the posts already on their way were made: it stopped posting
    assert micro.faults.posts <= accepted + FLEET_DEVICE_CONCURRENCY


async def test_micromdm_unsure_commands_are_posted_again_only_when_harmless(
    micro: Sim,
) -> None:
    devices = await micro.fleet.enroll(5)
    inp = fleet_input(devices, unsure={devices[0]: [U1, U2]})
    result = await Attempts(micro.client).run(inp)
    # read-only DeviceInformation may run twice; RemoveProfile must not
    assert list(result.problems) == [devices[0]]
    assert result.problems[devices[0]].uncertain == [U2]
    assert micro.fleet.command_copies(U1) == 5 and micro.fleet.command_copies(U2) == 4


async def test_micromdm_push_failures_come_back_as_one_summary(micro: Sim) -> None:
    devices = await micro.fleet.enroll(20)
    micro.fleet.set_faults(push_fault="invalid_token")
    result = await Attempts(micro.client).run(fleet_input(devices))
    assert result.problems == {} and result.pushed == 0
    assert result.push_error is not None
    assert result.push_error.startswith("20 of 20 push(es) failed: invalid push token (20, e.g.")
    assert micro.fleet.command_copies(U1) == 20


async def test_micromdm_a_wrong_api_key_fails_the_activity(micro: Sim) -> None:
    devices = await micro.fleet.enroll(3)
    wrong_key = MicroMdmClient(micro.url, "wrong")
    with pytest.raises(ApplicationError, match="401") as failure:
        await Attempts(wrong_key).run(fleet_input(devices))
    assert failure.value.non_retryable and failure.value.type == "MdmPermanentError"
    await wrong_key.aclose()
    assert micro.fleet.command_copies(U1) == 0


async def test_progress_is_heartbeated_while_a_long_send_runs(
    micro: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mdm_activities, "HEARTBEAT_EVERY", 0.005)
    devices = await micro.fleet.enroll(100)
    seen: list[dict[str, Any]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: seen.append(json.loads(json.dumps(details[0])))
    await env.run(MdmActivities(micro.client).send_fleet, fleet_input(devices))
    queued = [len(FleetProgress.restore(100, [d]).queued.get(U1, ())) for d in seen]
    assert any(0 < n < 100 for n in queued)  # a retry mid-send would know what is queued


async def test_micromdm_a_retried_step_send_posts_nothing_twice(micro: Sim) -> None:
    """On the simulator in MicroMDM mode, which queues (and runs) every copy it is sent:
    the first post is accepted, the second's answer is lost, the third refused; the retry
    reads back what was accepted and posts only the refused one."""
    (device,) = await micro.fleet.enroll(1)
    step = SendStepInput(
        enrollment_id=device,
        commands=[
            QueuedCommand(command_uuid=U1, command=device_information()),
            QueuedCommand(command_uuid=U2, command=remove_profile("com.example.wifi")),
            QueuedCommand(command_uuid=U3, command=device_information()),
        ],
    )
    micro.faults.lose = {2}
    micro.faults.refuse_from = 3
    attempts = Attempts(micro.client)
    with pytest.raises(TransientMdmError, match="503"):
        await attempts.run_step(step)
    micro.faults.heal()
    result = await attempts.run_step(step)
    assert [micro.fleet.command_copies(u) for u in (U1, U2, U3)] == [1, 1, 1]
    assert U3 in result.queued and U1 not in result.queued and U2 not in result.queued
    await micro.fleet.wait_idle(10)
    assert answered(micro.fleet, device) == 3  # each command ran once on the device


def _step(device: str, **kw: Any) -> SendStepInput:
    return SendStepInput(
        enrollment_id=device,
        commands=[
            QueuedCommand(command_uuid=U1, command=device_information()),
            QueuedCommand(command_uuid=U2, command=remove_profile("com.example.wifi")),
            QueuedCommand(command_uuid=U3, command=device_information()),
        ],
        **kw,
    )


async def test_micromdm_a_step_sends_last_attempt_reports_what_it_could_not_send(
    micro: Sim,
) -> None:
    (device,) = await micro.fleet.enroll(1)
    micro.faults.refuse_from = 2
    result = await Attempts(micro.client).run_step(_step(device), attempt=SEND_MAX_ATTEMPTS)
    assert result.queued == [U1] and result.unsent == [U2, U3]
    assert result.send_error is not None and "503" in result.send_error
    assert [micro.fleet.command_copies(u) for u in (U1, U2, U3)] == [1, 0, 0]


async def test_micromdm_a_step_posts_unsure_commands_again_only_when_harmless(
    micro: Sim,
) -> None:
    (device,) = await micro.fleet.enroll(1)
    result = await Attempts(micro.client).run_step(_step(device, unsure=[U1, U2]))
    # read-only DeviceInformation may run twice; RemoveProfile must not
    assert result.queued == [U1, U3] and result.uncertain == [U2]
    assert micro.fleet.command_copies(U2) == 0


async def test_micromdm_a_step_for_an_unknown_device_posts_nothing(micro: Sim) -> None:
    with pytest.raises(Exception, match="does not know device"):
        await Attempts(micro.client).run_step(_step("00000000-0000-4000-8000-0000000000AA"))
    assert micro.faults.posts == 0
