"""The eight MDM workflows, each as one device's story in a fleet run (time-skipping
server, activity doubles): happy path, device Error, suspend then retry, operator skip,
rollback of profile and command-plan changes, verification of installed profiles."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.models import CmdPlanResult, QueuedCommand
from tests.test_step_engine import Harness
from tests.workflow_harness import RecordingEscrow, StoredProfiles, outcome, report
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.certprof import CertProfWorkflow
from workflows.cmdplan import CmdPlanWorkflow
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.fvenable import FileVaultEnableWorkflow
from workflows.fvrotate import FileVaultRotateWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.models import ControlRequest, ControlResult, FleetResult, RunResult, RunState
from workflows.profile import ProfileWorkflow

ACK = "Acknowledged"
DEVINFO = {"QueryResponses": {"SerialNumber": "C02XYZ", "Model": "Mac16,10"}}
SECINFO_OFF = {"SecurityInfo": {"FDE_Enabled": False, "SystemIntegrityProtectionEnabled": True}}
CMS = b"0\x82\x01\x00 CMS envelope"
SECINFO_ON = {
    "SecurityInfo": {
        "FDE_Enabled": True,
        "FDE_PersonalRecoveryKeyCMS": CMS,
        "SystemIntegrityProtectionEnabled": True,
    }
}
WIFI = ("com.example.wifi", "11111111-AAAA-4AAA-8AAA-111111111111")
VPN = ("com.example.vpn", "22222222-BBBB-4BBB-8BBB-222222222222")
FAST_POLL = json.dumps({"poll_seconds": 0.1, "max_polls": 5})
CERTPROF_CONTEXT = json.dumps({"profile": "scep", "filter": {"cn_prefix": "mdmflow"}})


class Stories(Harness):
    """A fleet-run harness with doubles for every activity the stories call."""

    def __init__(self, env: WorkflowEnvironment, queue: str) -> None:
        super().__init__(env, queue, fleet=True)
        self.stored = StoredProfiles()
        self.escrow = RecordingEscrow()
        self.stored.add("wifi", *WIFI)
        self.stored.add("vpn", *VPN)
        self.stored.add("scep", "com.example.scep", "66666666-FFFF-4FFF-8FFF-666666666666")

    async def device(self, workflow: str, **kw: object) -> Device:
        eid, handle = await self.start(workflow, **kw)
        return Device(self, eid, handle)


class Device:
    """One device of a run: answers each step the run sends it, in order."""

    def __init__(self, h: Stories, eid: str, handle: WorkflowHandle[object, RunResult]) -> None:
        self.h = h
        self.eid = eid
        self.handle = handle
        self.steps = 0

    async def next_step(self) -> list[QueuedCommand]:
        """The commands of the next send to this device (waits for it)."""
        sends = [s for s in self.h.mdm.sent if s.enrollment_id == self.eid]
        while len(sends) <= self.steps:
            # generous: a loaded CI machine can take seconds per workflow task
            await self.h.mdm.wait_sent(len(self.h.mdm.sent) + 1, timeout=60)
            sends = [s for s in self.h.mdm.sent if s.enrollment_id == self.eid]
        self.steps += 1
        return sends[self.steps - 1].commands

    async def answer(self, *answers: str | tuple[str, dict[str, Any]]) -> list[QueuedCommand]:
        """Answer the next step's commands in order: a status, or (status, body)."""
        commands = await self.next_step()
        await self.sent()
        reports = []
        for command, answer in zip(commands, answers, strict=True):
            status, body = (answer, {}) if isinstance(answer, str) else answer
            reports.append(
                report(self.eid, command.command_uuid, command.command.request_type, status, **body)
            )
        await self.handle.signal("command_reports", reports)
        return commands

    async def sent(self) -> None:
        """Wait until the run has taken the send's result (its step is pending).

        Answers that overtake the send make the run cancel the send activity, which
        the time-skipping server does not always survive.
        """
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            steps = (await self.state()).steps
            if steps and steps[-1].status == "pending":
                return
            await asyncio.sleep(0.025)
        raise AssertionError("the step never became pending")

    async def state(self) -> RunState:
        state: RunState = await self.handle.query("state", self.eid, result_type=RunState)
        return state

    async def control(self, action: str) -> list[str]:
        result: ControlResult = await self.handle.execute_update(
            "control",
            ControlRequest(action=action, enrollment_ids=[self.eid], actor="alice"),
            result_type=ControlResult,
        )
        return result.accepted

    async def suspended(self) -> RunState:
        for _ in range(200):
            state = await self.state()
            if state.status == "suspended":
                return state
            await asyncio.sleep(0.05)
        raise AssertionError("the device was not suspended")

    async def failed_with(self, failure_type: str) -> FleetResult:
        """The run failed in Temporal with ``failure_type``; returns its result."""
        with pytest.raises(WorkflowFailureError) as info:
            await self.handle.result()
        cause = info.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == failure_type, cause
        return await outcome(self.handle)


@asynccontextmanager
async def stories_on(env: WorkflowEnvironment) -> AsyncIterator[Stories]:
    h = Stories(env, f"tq-{uuid.uuid4()}")
    async with Worker(
        env.client,
        task_queue=h.queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[
            *h.mdm.activities(),
            *h.inventory.activities(),
            h.holds.release,
            *h.stored.activities(),
            h.escrow.store_cms,
            h.escrow.has_secret,
            *h.governance.activities(),
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):
        yield h


@pytest.fixture
async def h(time_env: WorkflowEnvironment) -> AsyncIterator[Stories]:
    async with stories_on(time_env) as h:
        yield h


def types(commands: list[QueuedCommand]) -> list[str]:
    return [c.command.request_type for c in commands]


def profile_list(*profiles: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    items = [{"PayloadIdentifier": i, "PayloadUUID": u} for i, u in profiles]
    return ACK, {"ProfileList": items}


# ---- inventory, devinfolog ----------------------------------------------------------


async def test_inventory_stores_both_answers(h: Stories) -> None:
    dev = await h.device(InventoryWorkflow.NAME)
    sent = await dev.answer((ACK, DEVINFO), (ACK, SECINFO_OFF))
    assert types(sent) == ["DeviceInformation", "SecurityInfo"]
    result = await outcome(dev.handle)
    assert result.status == "completed" and result.message == "inventory updated (4 values)"
    assert h.inventory.updates[0].source == "DeviceInformation+SecurityInfo"


async def test_inventory_device_error_fails_and_keeps_the_other_answer(h: Stories) -> None:
    dev = await h.device(InventoryWorkflow.NAME)
    await dev.answer("Error", (ACK, SECINFO_OFF))
    result = await dev.failed_with("DeviceError")
    assert result.status == "failed" and "MCMDMErrorDomain 12021" in result.message
    assert h.inventory.updates[0].source == "SecurityInfo"


async def test_inventory_skipped_step_stores_what_came_and_completes(h: Stories) -> None:
    dev = await h.device(InventoryWorkflow.NAME, on_failure="suspend")
    await dev.answer("Error", (ACK, SECINFO_OFF))
    await dev.suspended()
    assert await dev.control("skip") == [dev.eid]
    result = await outcome(dev.handle)
    assert result.status == "completed" and "skipped by an operator" in result.message
    assert h.inventory.updates[0].values == {"fde_enabled": False, "sip_enabled": True}


async def test_devinfolog_logs_the_answer(h: Stories) -> None:
    dev = await h.device(DevInfoLogWorkflow.NAME)
    await dev.answer((ACK, DEVINFO))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert h.inventory.logged[0].query_responses["SerialNumber"] == "C02XYZ"


async def test_devinfolog_device_error_and_skip(h: Stories) -> None:
    dev = await h.device(DevInfoLogWorkflow.NAME)
    await dev.answer("Error")
    assert "MCMDMErrorDomain" in (await dev.failed_with("DeviceError")).message
    skipped = await h.device(DevInfoLogWorkflow.NAME, on_failure="suspend")
    await skipped.answer("Error")
    await skipped.suspended()
    await skipped.control("skip")
    result = await outcome(skipped.handle)
    assert result.status == "completed" and "nothing logged" in result.message
    assert h.inventory.logged == []


# ---- lock ----------------------------------------------------------------------------


async def test_lock_happy_path_and_device_error(h: Stories) -> None:
    dev = await h.device(LockWorkflow.NAME, context="Call IT")
    (lock,) = await dev.answer(ACK)
    assert lock.command.fields == {"Message": "Call IT"}
    assert [f.kind for f in lock.command.fills] == ["new_pin"]  # filled at send time
    assert (await outcome(dev.handle)).message == "device locked; PIN escrowed"
    failing = await h.device(LockWorkflow.NAME)
    await failing.answer("Error")
    assert "MCMDMErrorDomain 12021" in (await failing.failed_with("DeviceError")).message


async def test_lock_suspended_then_retried_sends_a_new_lock(h: Stories) -> None:
    dev = await h.device(LockWorkflow.NAME, on_failure="suspend")
    (first,) = await dev.answer("Error")
    suspended = await dev.suspended()
    assert "suspended at step 'lock'" in (suspended.message or "")
    assert await dev.control("retry") == [dev.eid]
    (again,) = await dev.answer(ACK)
    assert again.command.request_type == "DeviceLock"
    assert again.command_uuid != first.command_uuid
    result = await outcome(dev.handle)
    assert result.status == "completed" and result.message == "device locked; PIN escrowed"


async def test_lock_skipped_completes_without_claiming_a_lock(h: Stories) -> None:
    dev = await h.device(LockWorkflow.NAME, on_failure="suspend")
    await dev.answer("Error")
    await dev.suspended()
    await dev.control("skip")
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert "skipped" in result.message and "PIN" not in result.message
    assert "not known to be locked" in result.message
    assert (await dev.state()).steps[0].status == "skipped"


# ---- profile -------------------------------------------------------------------------


async def test_profile_installs_removes_and_verifies(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,ghost,-vpn")
    listed = await dev.answer(profile_list(VPN))
    assert [c.command.fields for c in listed] == [{"ManagedOnly": True}]
    applied = await dev.answer(ACK, ACK)
    assert types(applied) == ["InstallProfile", "RemoveProfile"]
    assert applied[0].command.label == "wifi"
    assert applied[1].command.fields == {"Identifier": VPN[0]}
    verify = await dev.answer(profile_list(WIFI))
    assert types(verify) == ["ProfileList"]
    # "ghost" is not stored: the run reports it and fails, after verifying the rest
    result = await dev.failed_with("WorkflowFailed")
    assert result.message == (
        "wifi: installed, verified, ghost: unknown profile, vpn: removed, verified"
    )
    assert [s.name for s in (await dev.state()).steps] == ["list", "apply", "verify"]


async def test_profile_already_installed_sends_nothing_more(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi")
    await dev.answer(profile_list(WIFI))
    result = await outcome(dev.handle)
    assert result.status == "completed" and result.message == "wifi: already installed"
    assert dev.steps == 1 and len(h.mdm.sent) == 1


async def test_profile_verification_failure_fails_the_run(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,vpn")
    await dev.answer(profile_list())
    await dev.answer(ACK, ACK)
    await dev.answer(profile_list((WIFI[0], "OTHER-UUID")))
    result = await dev.failed_with("WorkflowFailed")
    assert "wifi: installed, verification failed: PayloadUUID OTHER-UUID" in result.message
    assert "vpn: installed, verification failed: not on the device" in result.message


async def test_profile_device_error_fails_with_device_error(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi")
    await dev.answer(profile_list())
    await dev.answer("Error")
    result = await dev.failed_with("DeviceError")
    assert result.message == "wifi: error: MCMDMErrorDomain 12021: no"
    assert dev.steps == 2  # nothing to verify, no rollback asked


async def test_profile_suspended_then_retried_resends_only_the_refused(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,vpn", on_failure="suspend")
    await dev.answer(profile_list())
    applied = await dev.answer(ACK, "Error")
    suspended = await dev.suspended()
    assert "suspended at step 'apply'" in (suspended.message or "")
    await dev.control("retry")
    (again,) = await dev.answer(ACK)
    assert again.command.label == "vpn" and again.command_uuid != applied[1].command_uuid
    await dev.answer(profile_list(WIFI, VPN))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == "wifi: installed, verified, vpn: installed, verified"


async def test_profile_skipped_list_reads_as_no_profiles(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,-vpn", on_failure="suspend")
    await dev.answer("Error")
    await dev.suspended()
    await dev.control("skip")
    applied = await dev.answer(ACK)
    assert types(applied) == ["InstallProfile"]  # vpn reads as not installed
    await dev.answer(profile_list(WIFI))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == (
        "wifi: installed, verified, vpn: not installed (list skipped: read as no managed profiles)"
    )


async def test_profile_skipped_apply_and_verify_do_not_fail(h: Stories) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,vpn", on_failure="suspend")
    await dev.answer(profile_list())
    await dev.answer(ACK, "Error")
    await dev.suspended()
    await dev.control("skip")
    await dev.answer("Error")  # the verify step
    await dev.suspended()
    await dev.control("skip")
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == "wifi: installed, not verified (step skipped), vpn: skipped"


async def test_profile_rollback_removes_the_first_when_the_second_is_refused(
    h: Stories,
) -> None:
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,vpn", rollback=True)
    await dev.answer(profile_list())
    await dev.answer(ACK, "Error")
    (undo,) = await dev.answer(ACK)
    assert undo.command.request_type == "RemoveProfile"
    assert undo.command.fields == {"Identifier": WIFI[0]}
    result = await dev.failed_with("DeviceError")
    assert "vpn: error" in result.message and "undo failed" not in result.message
    state = await dev.state()
    assert [(s.name, s.status) for s in state.steps] == [
        ("list", "completed"),
        ("apply", "completed"),
        ("undo install wifi", "completed"),
    ]


async def test_profile_rollback_runs_newest_first_and_reports_a_failed_undo(
    h: Stories,
) -> None:
    h.stored.add("dock", "com.example.dock", "44444444-DDDD-4DDD-8DDD-444444444444")
    dev = await h.device(ProfileWorkflow.NAME, context="wifi,dock,-vpn", rollback=True)
    await dev.answer(profile_list(VPN))
    applied = await dev.answer(ACK, "Error", ACK)
    assert types(applied) == ["InstallProfile", "InstallProfile", "RemoveProfile"]
    (reinstall,) = await dev.answer("Error")  # undo of the removal, first
    assert reinstall.command.request_type == "InstallProfile"
    assert reinstall.command.label == "vpn"
    (remove,) = await dev.answer(ACK)
    assert remove.command.fields == {"Identifier": WIFI[0]}
    result = await dev.failed_with("DeviceError")
    assert "undo failed: step 'undo remove vpn'" in result.message
    steps = [s.name for s in (await dev.state()).steps]
    assert steps == ["list", "apply", "undo remove vpn", "undo install wifi"]


# ---- cmdplan -------------------------------------------------------------------------


def setup_plan(h: Stories, **kw: Any) -> None:
    h.stored.plans["setup"] = CmdPlanResult(
        found=True,
        profile_names=["wifi"],
        manifest_urls=["https://apps.example.com/munki.plist"],
        **kw,
    )


async def test_cmdplan_runs_in_order_configures_and_verifies(h: Stories) -> None:
    setup_plan(h, device_configured=True, awaiting_configuration=True)
    dev = await h.device(CmdPlanWorkflow.NAME, context="setup")
    plan = await dev.answer(ACK, ACK, ACK)
    assert types(plan) == ["InstallProfile", "InstallApplication", "DeviceConfigured"]
    await dev.answer(profile_list(WIFI))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == "plan 'setup': 3 command(s) done; wifi: verified"
    assert h.stored.configured == [dev.eid]


async def test_cmdplan_unknown_plan_or_profile_fails_before_sending(h: Stories) -> None:
    dev = await h.device(CmdPlanWorkflow.NAME, context="nope")
    assert "no command plan" in (await dev.failed_with("BadInput")).message
    h.stored.plans["odd"] = CmdPlanResult(found=True, profile_names=["ghost"])
    odd = await h.device(CmdPlanWorkflow.NAME, context="odd")
    assert "unknown profile(s): ghost" in (await odd.failed_with("BadInput")).message
    assert h.mdm.sent == []


async def test_cmdplan_device_error_rolls_back_the_installed_profile(h: Stories) -> None:
    setup_plan(h)
    dev = await h.device(CmdPlanWorkflow.NAME, context="setup", rollback=True)
    await dev.answer(ACK, "Error")
    (undo,) = await dev.answer(ACK)
    assert undo.command.request_type == "RemoveProfile"
    assert undo.command.fields == {"Identifier": WIFI[0]}
    result = await dev.failed_with("DeviceError")
    assert "InstallApplication: MCMDMErrorDomain 12021" in result.message
    assert [s.name for s in (await dev.state()).steps] == ["plan", "undo install wifi"]


async def test_cmdplan_skipped_step_goes_on_with_what_was_acknowledged(h: Stories) -> None:
    setup_plan(h, device_configured=True, awaiting_configuration=True)
    dev = await h.device(CmdPlanWorkflow.NAME, context="setup", on_failure="suspend")
    await dev.answer(ACK, ACK, "Error")
    await dev.suspended()
    await dev.control("skip")
    await dev.answer(profile_list(WIFI))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == "plan 'setup': 2 command(s) done, 1 skipped; wifi: verified"
    assert h.stored.configured == []  # DeviceConfigured was not acknowledged


# ---- certprof ------------------------------------------------------------------------


async def test_certprof_installs_when_no_certificate_matches(h: Stories) -> None:
    dev = await h.device(CertProfWorkflow.NAME, context=CERTPROF_CONTEXT)
    listed = await dev.answer((ACK, {"CertificateList": []}))
    assert listed[0].command.fields == {"ManagedOnly": True}
    (install,) = await dev.answer(ACK)
    assert install.command.label == "scep"
    result = await outcome(dev.handle)
    assert result.message == "profile 'scep' installed: no matching certificate"


async def test_certprof_device_error(h: Stories) -> None:
    dev = await h.device(CertProfWorkflow.NAME, context=CERTPROF_CONTEXT)
    await dev.answer("Error")
    assert "CertificateList: MCMDMErrorDomain" in (await dev.failed_with("DeviceError")).message


async def test_certprof_skipped_list_reads_as_no_certificates(h: Stories) -> None:
    dev = await h.device(CertProfWorkflow.NAME, context=CERTPROF_CONTEXT, on_failure="suspend")
    await dev.answer("Error")
    await dev.suspended()
    await dev.control("skip")
    await dev.answer("Error")  # the install, refused and skipped too
    await dev.suspended()
    await dev.control("skip")
    result = await outcome(dev.handle)
    assert result.status == "completed" and "not installed" in result.message
    assert h.stored.evaluations[0].certificates == []


# ---- FileVault -----------------------------------------------------------------------


async def test_fvenable_polls_until_on_and_escrows_the_cms(h: Stories) -> None:
    dev = await h.device(FileVaultEnableWorkflow.NAME, context=FAST_POLL)
    (install,) = await dev.answer(ACK)
    assert install.command.label == "FileVault escrow profile"
    await dev.answer((ACK, SECINFO_OFF))
    (poll,) = await dev.answer((ACK, SECINFO_ON))
    result = await outcome(dev.handle)
    assert result.status == "completed"
    assert result.message == "FileVault on; recovery key escrowed (#7)"
    (stored,) = h.escrow.stored
    assert stored.source == poll.command_uuid and stored.enrollment_id == dev.eid
    assert [s.name for s in (await dev.state()).steps] == ["install", "poll", "poll"]


async def test_fvenable_refused_profile_fails(h: Stories) -> None:
    dev = await h.device(FileVaultEnableWorkflow.NAME, context=FAST_POLL)
    await dev.answer("Error")
    assert "InstallProfile" in (await dev.failed_with("DeviceError")).message
    assert h.escrow.stored == []


async def test_fvenable_skipped_poll_keeps_polling(h: Stories) -> None:
    dev = await h.device(FileVaultEnableWorkflow.NAME, context=FAST_POLL, on_failure="suspend")
    await dev.answer(ACK)
    await dev.answer("Error")
    await dev.suspended()
    await dev.control("skip")
    await dev.answer((ACK, SECINFO_ON))
    result = await outcome(dev.handle)
    assert result.status == "completed" and "escrowed (#7)" in result.message
    assert [s.status for s in (await dev.state()).steps] == ["completed", "skipped", "completed"]


async def test_fvrotate_escrows_the_new_key(h: Stories) -> None:
    dev = await h.device(FileVaultRotateWorkflow.NAME)
    (rotate,) = await dev.answer((ACK, {"RotateResult": {"EncryptedNewRecoveryKey": CMS}}))
    assert [f.kind for f in rotate.command.fills] == ["current_prk", "escrow_certificate"]
    result = await outcome(dev.handle)
    assert result.message == "recovery key rotated; new key escrowed (#7)"


async def test_fvrotate_device_error_and_skip(h: Stories) -> None:
    dev = await h.device(FileVaultRotateWorkflow.NAME)
    await dev.answer("Error")
    assert "RotateFileVaultKey" in (await dev.failed_with("DeviceError")).message
    skipped = await h.device(FileVaultRotateWorkflow.NAME, on_failure="suspend")
    await skipped.answer("Error")
    await skipped.suspended()
    await skipped.control("skip")
    result = await outcome(skipped.handle)
    assert result.status == "completed" and "not rotated" in result.message
    assert "escrowed (#" not in result.message
    assert h.escrow.stored == []


async def test_fvrotate_without_an_escrowed_key_fails_before_sending(h: Stories) -> None:
    """The pre-condition: no escrowed key, nothing reaches the device."""
    h.escrow.has_keys = False
    dev = await h.device(FileVaultRotateWorkflow.NAME)
    result = await outcome(dev.handle)
    assert result.status == "failed" and "run io.micromdm.wf.fvenable.v1 first" in result.message
    assert (await dev.state()).failure_type == "BadInput"
    assert h.escrow.asked == [dev.eid]
    assert [s for s in h.mdm.sent if s.enrollment_id == dev.eid] == []
