"""``io.mdmflow.erase.v1``: the EraseDevice command, its context, the run on the
time-skipping server (PIN escrowed, never in history) and against the simulator."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import plistlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.fills import CommandFiller
from activities.mdm import MdmActivities
from activities.mdm_server import EnqueueOutcome
from activities.profiles import ProfileActivities
from escrow.sealing import Sealer
from escrow.store import EscrowStore
from mdmflow.codec import EncryptionCodec
from mdmflow.policy import ENV_POLICY_FILE
from mdmflow.roles import ROLES
from protocol import routing
from protocol.commands import OBLITERATION_BEHAVIORS, erase_device
from simulator import answers as sim_answers
from simulator import state as persist
from simulator.cli import build_parser
from simulator.fleet import DeviceBehaviour, Fleet, FleetConfig
from store.cmdplans import CmdPlanStore
from store.db import open_engine
from store.events import EnrollmentRegister
from store.profiles import ProfileStore
from tests.conftest import TEST_CONVERTER
from tests.e2e_stack import E2E, SIM_KEY, ended
from tests.workflow_harness import enrollment, report
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.erase import EraseContext, EraseWorkflow
from workflows.models import ENGINE_REVISION, RunResult, RunState, WorkflowInput
from workflows.registry import BY_CODE, BY_NAME

ERASE = EraseWorkflow.NAME
INVENTORY = "io.micromdm.wf.inventory.v1"
FVENABLE = "io.micromdm.wf.fvenable.v1"


def mobileconfig(identifier: str, payload_type: str = "com.apple.wifi.managed") -> bytes:
    payload_uuid = str(uuid.uuid4()).upper()
    return plistlib.dumps(
        {
            "PayloadContent": [
                {
                    "PayloadIdentifier": f"{identifier}.payload",
                    "PayloadType": payload_type,
                    "PayloadUUID": payload_uuid[::-1],
                    "PayloadVersion": 1,
                    "SSID_STR": "shop-floor",
                }
            ],
            "PayloadDisplayName": identifier,
            "PayloadIdentifier": identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": payload_uuid,
            "PayloadVersion": 1,
        }
    )


def rendered(command_fields: dict[str, Any], filled: dict[str, Any] | None = None) -> Any:
    command = erase_device(**command_fields)
    return plistlib.loads(command.to_plist("CMD-1", filled or {"0": "123456"}))


# ---- the command --------------------------------------------------------------------


def test_the_default_erase_sends_only_the_pin() -> None:
    doc = rendered({})
    assert doc == {
        "CommandUUID": "CMD-1",
        "Command": {"RequestType": "EraseDevice", "PIN": "123456"},
    }
    command = erase_device()
    assert [f.kind for f in command.fills] == ["new_pin"] and command.fields == {}
    assert command.per_device  # one PIN per device: never one plist for a fleet
    with pytest.raises(ValueError, match="new_pin not filled"):
        command.to_plist("CMD-1")


@pytest.mark.parametrize("behaviour", OBLITERATION_BEHAVIORS)
def test_obliteration_behavior_is_sent_as_apple_spells_it(behaviour: Any) -> None:
    assert rendered({"obliteration_behavior": behaviour})["Command"]["ObliterationBehavior"] == (
        behaviour
    )


def test_the_builder_and_the_simulator_agree_on_apples_obliteration_values() -> None:
    apple = {"Default", "DoNotObliterate", "ObliterateWithWarning", "Always"}
    assert set(OBLITERATION_BEHAVIORS) == apple == sim_answers.OBLITERATION_BEHAVIORS
    with pytest.raises(ValueError, match="ObliterationBehavior must be one of"):
        erase_device(obliteration_behavior="Sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False])
def test_ios_flags_are_plist_booleans(value: bool) -> None:
    cmd = rendered({"preserve_data_plan": value, "disallow_proximity_setup": value})["Command"]
    assert cmd["PreserveDataPlan"] is value and cmd["DisallowProximitySetup"] is value


def test_return_to_service_carries_the_stored_profiles_as_data() -> None:
    command = erase_device(
        return_to_service=True, rts_mdm_profile="mdm-enroll", rts_wifi_profile="wifi"
    )
    assert command.fields == {"ReturnToService": {"Enabled": True}}  # no blob in history
    assert [(f.kind, f.name, f.path) for f in command.fills] == [
        ("new_pin", None, ["PIN"]),
        ("profile", "mdm-enroll", ["ReturnToService", "MDMProfileData"]),
        ("profile", "wifi", ["ReturnToService", "WiFiProfileData"]),
    ]
    doc = plistlib.loads(command.to_plist("CMD-1", {"0": "654321", "1": b"MDM", "2": b"WIFI"}))
    assert doc["Command"] == {
        "RequestType": "EraseDevice",
        "PIN": "654321",
        "ReturnToService": {"Enabled": True, "MDMProfileData": b"MDM", "WiFiProfileData": b"WIFI"},
    }
    only_wifi = rendered(
        {"return_to_service": True, "rts_wifi_profile": "w"}, {"0": "1", "1": b"W"}
    )
    assert only_wifi["Command"]["ReturnToService"] == {"Enabled": True, "WiFiProfileData": b"W"}
    assert rendered({"return_to_service": True})["Command"]["ReturnToService"] == {"Enabled": True}
    with pytest.raises(ValueError, match="need return_to_service"):
        erase_device(rts_wifi_profile="wifi")


def test_the_workflow_is_registered_under_its_name_and_a_unique_code() -> None:
    assert BY_NAME[ERASE] is EraseWorkflow and BY_CODE[EraseWorkflow.CODE] is EraseWorkflow
    assert len(EraseWorkflow.CODE) == 3 and EraseWorkflow.ON_ENROLLMENT_RESET == "fail"


# ---- the context --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (None, {"PIN": "123456"}),
        ("", {"PIN": "123456"}),
        ("{}", {"PIN": "123456"}),
        ('{"obliteration_behavior": null}', {"PIN": "123456"}),
        (
            '{"obliteration_behavior": "DoNotObliterate", "preserve_data_plan": true,'
            ' "disallow_proximity_setup": false}',
            {
                "PIN": "123456",
                "ObliterationBehavior": "DoNotObliterate",
                "PreserveDataPlan": True,
                "DisallowProximitySetup": False,
            },
        ),
        ('{"return_to_service": {"enabled": false}}', {"PIN": "123456"}),
        (
            '{"return_to_service": {"enabled": true, "wifi_profile_name": "wifi"}}',
            {"PIN": "123456", "ReturnToService": {"Enabled": True, "WiFiProfileData": b"W"}},
        ),
    ],
)
def test_good_contexts_become_the_command(raw: str | None, fields: dict[str, Any]) -> None:
    ctx = EraseContext.parse(raw)
    command = ctx.command()
    filled = {"0": "123456", **({"1": b"W"} if len(command.fills) > 1 else {})}
    doc = plistlib.loads(command.to_plist("CMD-1", filled))
    assert doc["Command"] == {"RequestType": "EraseDevice", **fields}
    assert ctx.profile_names() == (["wifi"] if "wifi" in (raw or "") else [])


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("lock it", "not valid JSON"),
        ('{"preserve_data_plan": true', "not valid JSON"),
        ('"Always"', "must be a JSON object, not str"),
        ("[1, 2]", "must be a JSON object, not list"),
        ("null", "must be a JSON object, not NoneType"),
        ('{"obliteration_behavior": "Sometimes"}', "obliteration_behavior: Input should be"),
        ('{"obliteration_behavior": "always"}', "obliteration_behavior: Input should be"),
        ('{"preserve_data_plan": "yes"}', "preserve_data_plan: Input should be a valid boolean"),
        ('{"disallow_proximity_setup": 1}', "disallow_proximity_setup: Input should be a valid"),
        ('{"ObliterationBehavior": "Always"}', "ObliterationBehavior: Extra inputs"),
        ('{"message": "bye"}', "message: Extra inputs are not permitted"),
        ('{"return_to_service": true}', "return_to_service: Input should be"),
        ('{"return_to_service": {}}', "return_to_service.enabled: Field required"),
        ('{"return_to_service": {"enabled": "true"}}', "return_to_service.enabled: Input should"),
        (
            '{"return_to_service": {"enabled": true, "wifi_profile_name": 7}}',
            "return_to_service.wifi_profile_name: Input should be a valid string",
        ),
        (
            '{"return_to_service": {"enabled": true, "mdm_profile_name": " "}}',
            "return_to_service: a profile name must not be empty",
        ),
        (
            '{"return_to_service": {"enabled": false, "mdm_profile_name": "m"}}',
            "return_to_service: profiles are only sent when enabled is true",
        ),
        (
            '{"return_to_service": {"enabled": true, "bootstrap": "x"}}',
            "return_to_service.bootstrap: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_contexts_name_the_field_and_the_problem(raw: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        EraseContext.parse(raw)
    assert names in str(info.value)


# ---- the simulated device ---------------------------------------------------------------


async def answer_all(fleet: Fleet, *ids: str) -> None:
    fleet.push(list(ids))
    await asyncio.sleep(0.05)
    await fleet.wait_idle()


async def test_the_simulator_wipes_remembers_and_re_enrolls_an_erased_device() -> None:
    fleet = Fleet(FleetConfig(connect_latency=0.0))
    await fleet.start()
    try:
        (dev,) = await fleet.enroll(1, "mac")
        user = await fleet.enroll_user_channel(dev)
        profile = {"RequestType": "InstallProfile", "Payload": mobileconfig("com.example.a")}
        assert fleet.enqueue([dev, user], "P1", "InstallProfile", profile) is None
        await answer_all(fleet, dev, user)
        assert fleet.device_state(user)["profiles"] == ["com.example.a"]

        erase = {"RequestType": "EraseDevice", "PIN": "042042", "PreserveDataPlan": False}
        assert fleet.enqueue([user], "E-USER", "EraseDevice", erase) is None
        await answer_all(fleet, user)  # the user channel has no EraseDevice
        assert fleet.device_state(dev)["erased"] is False
        assert fleet.device_state(user)["counters"]["errors"] == 1
        bad = {"RequestType": "EraseDevice", "ObliterationBehavior": "Sometimes"}
        assert fleet.enqueue([dev], "E-BAD", "EraseDevice", bad) is None
        await answer_all(fleet, dev)
        assert (
            fleet.device_state(dev)["erased"] is False and fleet.device_state(dev)["erase"] is None
        )
        assert fleet.stats["command_format_errors"] == 1

        assert fleet.enqueue([dev], "E-1", "EraseDevice", erase) is None
        assert fleet.enqueue([dev], "AFTER", "ProfileList", {"RequestType": "ProfileList"}) is None
        await answer_all(fleet, dev)
        state = fleet.device_state(dev)
        assert state["erased"] is True and state["queue"] == []  # NanoMDM's queue is cleared
        assert state["profiles"] == [] and fleet.device_state(user)["profiles"] == []
        assert state["erase"] == {
            "pin_sha256": hashlib.sha256(b"042042").hexdigest(),
            "obliteration_behavior": None,
            "preserve_data_plan": False,
            "disallow_proximity_setup": None,
            "return_to_service": None,
        }
        with pytest.raises(ValueError, match="re-enroll it first"):
            await fleet.enroll_user_channel(dev)
        with pytest.raises(ValueError, match="no MDM profile to remove"):
            await fleet.checkout(dev)

        saved = json.loads(persist.dumps(fleet.snapshot()))
        restored = Fleet(FleetConfig(connect_latency=0.0))
        restored.restore(saved)
        assert restored.device_state(dev)["erase"] == state["erase"]
        assert restored.device_state(dev)["erased"] is True
        del saved["devices"][0]["erase"]  # a file saved before the erase record was kept
        assert Fleet().restore(saved) == 1

        await fleet.reenroll(dev)
        back = fleet.device_state(dev)
        assert back["erased"] is False and back["erase"] == state["erase"]
        assert fleet.device_state(user)["enrolled"] is False  # its user was erased too
        answered = back["counters"]["answered"]
        assert fleet.enqueue([dev], "P2", "ProfileList", {"RequestType": "ProfileList"}) is None
        await answer_all(fleet, dev)
        assert fleet.device_state(dev)["counters"]["answered"] == answered + 1
    finally:
        await fleet.stop()


# ---- the run on the time-skipping server ----------------------------------------------


@dataclass
class AnsweringDevice:
    """An MDM server whose one device answers every command it is sent.

    Stands in for NanoMDM under the real send activity, so the real filler generates
    and escrows the PIN; the device keeps each plist it was sent.
    """

    client: Any
    status: str = "Acknowledged"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    deduplicates: bool = True
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def check_enrolled(self, ids: Sequence[str]) -> None:
        return None

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        doc = plistlib.loads(body)
        self.bodies.append(doc)
        workflow_id = activity.info().workflow_id
        assert workflow_id is not None
        task = asyncio.create_task(self._answer(workflow_id, ids[0], command_uuid, doc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return EnqueueOutcome(queued=list(ids))

    async def _answer(self, workflow_id: str, eid: str, command_uuid: str, doc: Any) -> None:
        await asyncio.sleep(0.05)  # after the send's result
        handle = self.client.get_workflow_handle(workflow_id)
        request_type = doc["Command"]["RequestType"]
        await handle.signal("command_report", report(eid, command_uuid, request_type, self.status))

    async def push(self, ids: Sequence[str]) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass
class Rig:
    env: WorkflowEnvironment
    queue: str
    device: AnsweringDevice
    escrow: EscrowStore
    profiles: ProfileStore

    async def start(self, context: str | None) -> tuple[str, WorkflowHandle[Any, RunResult]]:
        eid = enrollment()
        inp = WorkflowInput(
            enrollment_id=eid,
            instance_id=str(uuid.uuid4()),
            revision=ENGINE_REVISION,
            context=context,
        )
        handle: WorkflowHandle[Any, RunResult] = await self.env.client.start_workflow(
            ERASE,
            inp,
            id=routing.workflow_id(ERASE, eid),
            task_queue=self.queue,
            result_type=RunResult,
        )
        return eid, handle


@asynccontextmanager
async def rig_on(env: WorkflowEnvironment, db: Path) -> AsyncIterator[Rig]:
    """A worker with the real send activity, filler, escrow and profile store (SQLite)."""
    engine = await open_engine(f"sqlite:///{db}")
    profiles = ProfileStore(engine)
    escrow = EscrowStore(engine, Sealer(bytes(range(32))))
    device = AnsweringDevice(env.client)
    mdm = MdmActivities(device, CommandFiller(escrow, profiles))
    stored = ProfileActivities(profiles, CmdPlanStore(engine), EnrollmentRegister(engine))
    queue = f"erase-{uuid.uuid4()}"
    try:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=list(ALL_WORKFLOWS),
            activities=[mdm.send_step, mdm.push, stored.info],
            workflow_runner=SandboxedWorkflowRunner(
                restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
            ),
        ):
            yield Rig(env, queue, device, escrow, profiles)
    finally:
        await engine.dispose()


@pytest.fixture
async def rig(time_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Rig]:
    # the device answers in real time (50 ms after the send): time must not skip ahead
    # to the step's timeout meanwhile, as it could on a busy machine
    with time_env.auto_time_skipping_disabled():
        async with rig_on(time_env, tmp_path / "mdmflow.db") as r:
            yield r


def _payload_texts(node: Any, codec: EncryptionCodec) -> list[str]:
    """Every payload in a history's JSON, decrypted and decoded."""
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
            payload = Payload(
                metadata={k: base64.b64decode(v) for k, v in node["metadata"].items()},
                data=base64.b64decode(node["data"]),
            )
            out.append(codec.open(payload).data.decode("utf-8", "replace"))
        for value in node.values():
            out.extend(_payload_texts(value, codec))
    elif isinstance(node, list):
        for value in node:
            out.extend(_payload_texts(value, codec))
    return out


async def history_text(handle: WorkflowHandle[Any, Any]) -> str:
    """The run's history as JSON plus every payload in it, decrypted."""
    codec = TEST_CONVERTER.payload_codec
    assert isinstance(codec, EncryptionCodec)
    raw = (await handle.fetch_history()).to_json()
    return raw + "\n".join(_payload_texts(json.loads(raw), codec))


def assert_pin_absent(text: str, pin: str) -> None:
    # a 6-digit PIN is searched as a value, not inside timestamps or IDs
    for form in (f'"{pin}"', f">{pin}<", f"'{pin}'", f" {pin} ", f"={pin}"):
        assert form not in text, "the PIN is in the workflow history"
    assert '"PIN":' not in text and "<key>PIN</key>" not in text


async def test_an_acknowledged_erase_completes_with_the_pin_escrowed_not_in_history(
    rig: Rig,
) -> None:
    wifi = mobileconfig("com.example.rts.wifi")
    await rig.profiles.put("shop-wifi", wifi)
    context = json.dumps(
        {
            "obliteration_behavior": "ObliterateWithWarning",
            "preserve_data_plan": True,
            "return_to_service": {"enabled": True, "wifi_profile_name": "shop-wifi"},
        }
    )
    eid, handle = await rig.start(context)
    result = await handle.result()
    assert result.status == "completed", result.message
    assert "PIN escrowed" in result.message

    (sent,) = rig.device.bodies
    command = sent["Command"]
    pin = await rig.escrow.current(eid, "pin")
    assert pin is not None and len(pin) == 6 and pin.isdigit()
    assert command["PIN"] == pin  # the device got the escrowed PIN
    assert await rig.escrow.by_source(eid, "pin", sent["CommandUUID"]) == pin
    assert command["ObliterationBehavior"] == "ObliterateWithWarning"
    assert command["PreserveDataPlan"] is True
    assert command["ReturnToService"] == {"Enabled": True, "WiFiProfileData": wifi}

    state = await handle.query("state", result_type=RunState)
    assert [c.last_status for c in state.steps[0].commands] == ["Acknowledged"]
    text = await history_text(handle)
    assert "EraseDevice" in text and "shop-wifi" in text  # the intent is there, decrypted
    assert base64.b64encode(wifi).decode() not in text  # the profile is not
    assert_pin_absent(text, pin)


async def test_a_device_error_fails_the_run(rig: Rig) -> None:
    rig.device.status = "Error"
    _, handle = await rig.start(None)
    result = await handle.result()
    assert result.status == "failed" and "12021" in result.message
    assert len(rig.device.bodies) == 1


async def test_bad_context_or_unknown_profile_fails_before_anything_is_sent(rig: Rig) -> None:
    _, handle = await rig.start('{"obliteration_behavior": "Never"}')
    result = await handle.result()
    assert result.status == "failed"
    assert result.message.startswith("bad context: obliteration_behavior:")
    rts = {"return_to_service": {"enabled": True, "mdm_profile_name": "missing"}}
    _, handle = await rig.start(json.dumps(rts))
    result = await handle.result()
    assert result.status == "failed"
    assert result.message == "bad context: return_to_service: no stored profile named 'missing'"
    assert rig.device.bodies == []


# ---- end to end against the simulator --------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _erase_allowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A policy that lets these tests erase without a second person's approval.

    Erase is off in the shipped policy; set before the module's stack loads its policy.
    """
    roles = ", ".join(f'"{r}"' for r in ROLES)
    entries = "".join(
        f'[workflow."{name}"]\nenabled = true\nroles = [{roles}]\nmax_targets = 10\n\n'
        for name in (INVENTORY, FVENABLE, ERASE)
    )
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(entries)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_POLICY_FILE, str(path))
        yield


async def run_with_handle(
    e2e: E2E, workflow: str, eid: str, context: str | None = None
) -> tuple[dict[str, Any], WorkflowHandle[Any, Any]]:
    """Start a run through the API, as a person does; its result and its handle."""
    params: dict[str, str] = {"id": eid} | ({"context": context} if context is not None else {})
    resp = await e2e.api.post(f"/v1/workflow/{workflow}/start", params=params)
    assert resp.status_code == 200, resp.text
    e2e.note_started(workflow, resp.json(), [eid])
    handle = e2e.client.get_workflow_handle(await e2e.run_of(workflow, eid))
    return await ended(handle), handle


async def run(e2e: E2E, workflow: str, eid: str, context: str | None = None) -> dict[str, Any]:
    return (await run_with_handle(e2e, workflow, eid, context))[0]


async def escrowed_pin(e2e: E2E, eid: str) -> str:
    """The PIN as a person retrieves it (the audited read behind ``GET .../pin``)."""
    found = await e2e.services.escrow.retrieve(eid, "pin", "bob", "erased")
    assert found, f"no PIN escrowed for {eid}"
    pin: str = found[0]["secret"]
    return pin


async def sim_cli(*argv: str) -> int:
    args = build_parser().parse_args(["sim", *argv])
    code: int = await asyncio.to_thread(args.func, args)
    return code


async def test_an_erased_mac_is_wiped_goes_silent_and_comes_back_when_re_enrolled(
    e2e: E2E,
) -> None:
    (eid,) = await e2e.enroll(1)
    fv = await run(e2e, FVENABLE, eid, json.dumps({"poll_seconds": 0.3, "max_polls": 40}))
    assert fv["status"] == "completed", fv
    before = e2e.fleet.device_state(eid)
    assert before["filevault"]["enabled"] and before["profiles"]

    result, handle = await run_with_handle(e2e, ERASE, eid, '{"obliteration_behavior": "Always"}')
    assert result["status"] == "completed", result
    pin = await escrowed_pin(e2e, eid)
    erased = e2e.fleet.device_state(eid)
    assert erased["erased"] is True and erased["enrolled"] is True  # no CheckOut
    assert erased["erase"]["pin_sha256"] == hashlib.sha256(pin.encode()).hexdigest()
    assert erased["erase"]["obliteration_behavior"] == "Always"
    assert erased["profiles"] == [] and erased["installed_apps"] == []
    assert erased["filevault"] == {
        "enabled": False,
        "pending": False,
        "escrow_certificate": False,
        "recovery_key_sha256": None,
    }
    assert e2e.fleet.recovery_key(eid) is None
    assert_pin_absent(await history_text(handle), pin)
    access = await e2e.services.escrow.access_log(eid)
    assert access[-1]["who"] == "bob" and access[-1]["reason"] == "erased"

    # silent: NanoMDM still queues and pushes, the device never connects
    connects = erased["counters"]["connects"]
    queued = e2e.fleet.enqueue([eid], "AFTER-ERASE", "ProfileList", {"RequestType": "ProfileList"})
    assert queued is None
    e2e.fleet.push([eid])
    await asyncio.sleep(0.3)
    await e2e.fleet.wait_idle()
    silent = e2e.fleet.device_state(eid)
    assert silent["counters"]["connects"] == connects
    assert [q["command_uuid"] for q in silent["queue"]] == ["AFTER-ERASE"]
    with pytest.raises(ValueError, match="no MDM profile"):
        await e2e.fleet.checkout(eid)

    assert await sim_cli("reenroll", eid, "--url", e2e.sim_url, "--api-key", SIM_KEY) == 0
    await e2e.fleet.wait_idle()
    back = e2e.fleet.device_state(eid)
    assert back["erased"] is False and back["queue"] == [] and back["profiles"] == []
    inventory = await run(e2e, INVENTORY, eid)
    assert inventory["status"] == "completed", inventory
    assert e2e.fleet.device_state(eid)["counters"]["connects"] > connects
    assert e2e.fleet.device_state(eid)["erase"] is not None  # the PIN is still the one


async def test_an_iphone_erase_returns_to_service_with_the_stored_wifi_profile(
    e2e: E2E,
) -> None:
    (eid,) = await e2e.fleet.enroll(1, "iphone")
    await e2e.fleet.wait_idle()
    wifi = mobileconfig("com.example.rts.wifi")
    resp = await e2e.api.put("/v1/profile/rts-wifi", content=wifi)
    assert resp.status_code == 204, resp.text
    context = {
        "preserve_data_plan": True,
        "disallow_proximity_setup": True,
        "return_to_service": {"enabled": True, "wifi_profile_name": "rts-wifi"},
    }
    result = await run(e2e, ERASE, eid, json.dumps(context))
    assert result["status"] == "completed", result
    pin = await escrowed_pin(e2e, eid)
    record = e2e.fleet.device_state(eid)["erase"]
    assert record == {
        "pin_sha256": hashlib.sha256(pin.encode()).hexdigest(),
        "obliteration_behavior": None,
        "preserve_data_plan": True,
        "disallow_proximity_setup": True,
        "return_to_service": {
            "enabled": True,
            "mdm_profile_sha256": None,
            "wifi_profile_sha256": hashlib.sha256(wifi).hexdigest(),
        },
    }


async def test_a_refused_erase_fails_and_leaves_the_device_as_it_was(e2e: E2E) -> None:
    (eid,) = await e2e.enroll(1)
    e2e.fleet.set_behaviour(
        eid, DeviceBehaviour(errors={"EraseDevice": (12084, "MCMDMErrorDomain", "preflight")})
    )
    result = await run(e2e, ERASE, eid, '{"obliteration_behavior": "DoNotObliterate"}')
    assert result["status"] == "failed" and "12084" in result["message"]
    state = e2e.fleet.device_state(eid)
    assert state["erased"] is False and state["erase"] is None
