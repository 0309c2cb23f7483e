"""Workflow contexts, checked strictly before a start, and dry-run plans of what a
workflow sends: NanoCMD's context forms accepted, everything else refused with the field
named; plans for every workflow, and runs on the time-skipping server that send exactly
what their plan said."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.profiles import ProfileActivities
from escrow.fvprofile import TEMPLATE_PROFILE_NAME, default_template
from store.cmdplans import CmdPlan, CmdPlanStore
from store.db import open_engine
from store.events import EnrollmentRegister
from store.profiles import ProfileStore
from tests.profile_support import profile
from tests.test_workflow_stories import ACK, DEVINFO, SECINFO_OFF, Stories
from tests.test_workflow_stories import profile_list as listed_profiles
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.certprof import CertProfContext
from workflows.contexts import ContextError, NoContext, parser_of, validate_context
from workflows.fvenable import PollContext
from workflows.lock import LockContext
from workflows.models import RunState
from workflows.planning import (
    DESTRUCTIVE_REQUEST_TYPES,
    PlanError,
    PlannedCommand,
    PlannedStep,
    PlanSources,
    plan_steps,
)
from workflows.profile import ProfileListContext, parse_context
from workflows.registry import WORKFLOWS

INVENTORY = "io.micromdm.wf.inventory.v1"
DEVINFOLOG = "io.micromdm.wf.devinfolog.v1"
LOCK = "io.micromdm.wf.lock.v1"
PROFILE = "io.micromdm.wf.profile.v1"
CMDPLAN = "io.micromdm.wf.cmdplan.v1"
CERTPROF = "io.micromdm.wf.certprof.v1"
FVENABLE = "io.micromdm.wf.fvenable.v1"
FVROTATE = "io.micromdm.wf.fvrotate.v1"
EIGHT = (INVENTORY, DEVINFOLOG, LOCK, PROFILE, CMDPLAN, CERTPROF, FVENABLE, FVROTATE)

WIFI = ("com.example.wifi", "11111111-AAAA-4AAA-8AAA-111111111111")
VPN = ("com.example.vpn", "22222222-BBBB-4BBB-8BBB-222222222222")
SCEP = ("com.example.scep", "66666666-FFFF-4FFF-8FFF-666666666666")
APP = "https://apps.example.com/tool/manifest.plist"
CERTPROF_NANOCMD = json.dumps(
    {
        "profile": "scep",
        "filter": {"cn_prefix": "mdmflow", "allow_non_identity": False},
        "criteria": {"always_replace": False, "until_expiry_sec": 2592000},
        "text_replacements": {"%ChallengePassword%": "s3cret-challenge"},
        "no_managed_only": False,
    }
)


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump()


# ---- accepted contexts --------------------------------------------------------------

ACCEPTED: list[tuple[str, str | None, dict[str, Any]]] = [
    (INVENTORY, None, {}),
    (INVENTORY, "", {}),
    (DEVINFOLOG, None, {}),
    (FVROTATE, None, {}),
    (LOCK, None, {"message": None, "phone_number": None}),
    (LOCK, "Call IT", {"message": "Call IT", "phone_number": None}),
    (LOCK, "{}", {"message": None, "phone_number": None}),
    (
        LOCK,
        ' {"message": "Call IT", "phone_number": "+1 555 0100"}',
        {"message": "Call IT", "phone_number": "+1 555 0100"},
    ),
    # NanoCMD's comma list, with its "-name" removals
    (PROFILE, "wifi", {"install": ["wifi"], "remove": []}),
    (PROFILE, "wifi,-vpn", {"install": ["wifi"], "remove": ["vpn"]}),
    (PROFILE, "wifi, vpn , - old", {"install": ["wifi", "vpn"], "remove": ["old"]}),
    (PROFILE, "--dash", {"install": [], "remove": ["-dash"]}),
    # NanoCMD's plan name, looked up as given
    (CMDPLAN, "base", {"name": "base"}),
    (CMDPLAN, "${plan:base}", {"name": "${plan:base}"}),
    # NanoCMD's certprof JSON, every key as NanoCMD writes it, and the minimum
    (
        CERTPROF,
        CERTPROF_NANOCMD,
        {
            "profile": "scep",
            "filter": {"cn_prefix": "mdmflow", "allow_non_identity": False},
            "criteria": {"always_replace": False, "until_expiry_sec": 2592000},
            "text_replacements": {"%ChallengePassword%": "s3cret-challenge"},
            "no_managed_only": False,
        },
    ),
    (
        CERTPROF,
        '{"profile": "scep", "filter": {}}',
        {
            "profile": "scep",
            "filter": {"cn_prefix": "", "allow_non_identity": False},
            "criteria": None,
            "text_replacements": {},
            "no_managed_only": False,
        },
    ),
    (FVENABLE, None, {"poll_seconds": 120, "max_polls": 180}),
    (FVENABLE, '{"poll_seconds": 30}', {"poll_seconds": 30.0, "max_polls": 180}),
    (FVENABLE, '{"poll_seconds": 0.5, "max_polls": 4}', {"poll_seconds": 0.5, "max_polls": 4}),
]


@pytest.mark.parametrize(("workflow", "raw", "expected"), ACCEPTED)
def test_valid_contexts_are_accepted(
    workflow: str, raw: str | None, expected: dict[str, Any]
) -> None:
    assert dump(validate_context(workflow, raw)) == expected


@pytest.mark.parametrize(("workflow", "raw", "_expected"), ACCEPTED)
def test_an_accepted_context_means_the_same_to_the_run(
    workflow: str, raw: str | None, _expected: dict[str, Any]
) -> None:
    """The run is started with the raw text and parses it leniently: for every context
    the strict check accepts, the run's own parse reads the same values."""
    checked = validate_context(workflow, raw)
    if workflow == LOCK:
        assert LockContext.parse(raw) == checked
    elif workflow == PROFILE:
        assert isinstance(checked, ProfileListContext)
        assert parse_context(raw) == (checked.install, checked.remove)
    elif workflow == CMDPLAN:
        assert dump(checked) == {"name": raw}
    elif workflow == CERTPROF:
        assert CertProfContext.model_validate(json.loads(raw or "")) == checked
    elif workflow == FVENABLE:
        assert PollContext.parse(raw) == checked
    else:
        assert isinstance(checked, NoContext)


# ---- refused contexts ---------------------------------------------------------------

REFUSED: list[tuple[str, str | None, str, str]] = [
    # the broken JSON a device once showed on its lock screen
    (LOCK, '{"message":"oops', "context", "not valid JSON"),
    (LOCK, '["Call IT"]', "context", "must be a JSON object, not an array"),
    (LOCK, '"Call IT"', "context", "not an object"),
    (LOCK, "42", "context", "not an object"),
    (LOCK, "   ", "context", "blank"),
    (LOCK, '{"message": "Call IT", "pin": "123456"}', "pin", "unknown field"),
    (LOCK, '{"message": 5}', "message", "valid string"),
    (LOCK, '{"message": "a", "message": "b"}', "message", "given twice"),
    (INVENTORY, "anything", "context", "takes no context"),
    (DEVINFOLOG, "{}", "context", "takes no context"),
    (FVROTATE, '{"key": "x"}', "context", "takes no context"),
    (PROFILE, None, "context", "required"),
    (PROFILE, "wifi,,vpn", "profile 2", "empty profile name"),
    (PROFILE, "wifi,", "profile 2", "empty profile name"),
    (PROFILE, "wifi,-", "profile 2", "empty profile name"),
    (PROFILE, "wifi,-wifi", "wifi", "named twice"),
    (CMDPLAN, None, "context", "required"),
    (CMDPLAN, "  ", "context", "required"),
    (CERTPROF, None, "context", "required: a JSON object with profile, filter"),
    (CERTPROF, '{"profile": "scep"', "context", "not valid JSON"),
    (CERTPROF, '[{"profile": "scep"}]', "context", "must be a JSON object"),
    (CERTPROF, '{"profile": "scep"}', "filter", "field required"),
    (CERTPROF, '{"profile": "", "filter": {}}', "profile", "at least 1 character"),
    (CERTPROF, '{"profile": "scep", "filter": {"cn_prefx": "a"}}', "filter.cn_prefx", "unknown"),
    (CERTPROF, '{"profile": "scep", "filter": {}, "Profile": "x"}', "Profile", "unknown"),
    (
        CERTPROF,
        '{"profile": "scep", "filter": {}, "criteria": {"until_expiry_sec": "300"}}',
        "criteria.until_expiry_sec",
        "valid integer",
    ),
    (
        CERTPROF,
        '{"profile": "scep", "filter": {"allow_non_identity": 1}}',
        "filter.allow_non_identity",
        "valid boolean",
    ),
    (FVENABLE, '{"poll_seconds": 0}', "poll_seconds", "greater than 0"),
    (FVENABLE, '{"poll_seconds": "60"}', "poll_seconds", "valid number"),
    (FVENABLE, '{"max_polls": 2.5}', "max_polls", "valid integer"),
    (FVENABLE, '{"poll_seconds": 1e999}', "context", "too large"),
    (FVENABLE, '{"poll_seconds": NaN}', "context", "NaN"),
    (FVENABLE, '{"polls": 3}', "polls", "unknown field"),
    (FVENABLE, "180", "context", "must be a JSON object, not a number"),
]


@pytest.mark.parametrize(("workflow", "raw", "field", "problem"), REFUSED)
def test_invalid_contexts_are_refused_naming_the_field(
    workflow: str, raw: str | None, field: str, problem: str
) -> None:
    with pytest.raises(ContextError) as info:
        validate_context(workflow, raw)
    assert info.value.field == field
    assert problem in info.value.problem
    if field != "context":
        assert repr(field) in str(info.value)


def test_an_unknown_workflow_is_refused() -> None:
    with pytest.raises(ContextError) as info:
        validate_context("io.example.nope.v1", None)
    assert info.value.field == "workflow" and "io.example.nope.v1" in str(info.value)


def test_the_eight_declare_their_context_and_every_workflow_has_a_reading() -> None:
    for workflow in WORKFLOWS:
        if workflow.NAME in EIGHT:
            assert isinstance(getattr(workflow, "CONTEXT", None), type), workflow.NAME
        try:
            parser_of(workflow)(None)
        except ContextError as exc:
            assert exc.problem.startswith("required"), (workflow.NAME, exc)


class ProbeContext(BaseModel):
    """A module's one model with a strict ``parse``: read when CONTEXT is not declared."""

    level: int

    @classmethod
    def parse(cls, raw: str | None) -> ProbeContext:
        if not raw or not raw.isdigit():
            raise ValueError(f"level: {raw!r} is not a number")
        return cls(level=int(raw))


class ProbeWorkflow:
    """A workflow class not (yet) declaring CONTEXT."""

    NAME: ClassVar[str] = "io.example.probe.v1"


def test_without_context_the_one_parse_model_of_the_module_is_used() -> None:
    read = parser_of(ProbeWorkflow)
    assert read("3") == ProbeContext(level=3)
    with pytest.raises(ContextError) as info:
        read("three")
    assert "level: 'three' is not a number" in str(info.value)


def test_without_context_or_parse_model_a_context_is_refused() -> None:
    bare = type("Bare", (), {"__module__": "json"})  # a module with no models
    assert parser_of(bare)(None) == NoContext()
    with pytest.raises(ContextError, match="takes no context"):
        parser_of(bare)("anything")


# ---- plans ---------------------------------------------------------------------------


@dataclass
class Stores:
    """The real stores plans read (the API's services hold the same two)."""

    profiles: ProfileStore
    cmdplans: CmdPlanStore
    engine: AsyncEngine


async def stores_at(url: str) -> Stores:
    """Stores on a fresh database with three profiles and the command plan "base"."""
    engine = await open_engine(url)
    stores = Stores(ProfileStore(engine), CmdPlanStore(engine), engine)
    for name, (identifier, payload_uuid) in (("wifi", WIFI), ("vpn", VPN), ("scep", SCEP)):
        await stores.profiles.put(name, profile(identifier, payload_uuid))
    await stores.cmdplans.put(
        "base",
        CmdPlan(profile_names=["wifi"], manifest_urls=[APP], device_configured=True),
    )
    return stores


@pytest.fixture
async def sources(db_url: str) -> AsyncIterator[Stores]:
    stores = await stores_at(db_url)
    yield stores
    await stores.engine.dispose()


def shape(plan: list[PlannedStep]) -> list[tuple[str, list[str], bool]]:
    return [(s.name, [c.request_type for c in s.commands], s.destructive) for s in plan]


async def plan(workflow: str, raw: str | None, sources: PlanSources) -> list[PlannedStep]:
    return await plan_steps(workflow, validate_context(workflow, raw), sources)


async def test_plans_of_the_read_only_workflows(sources: Stores) -> None:
    assert shape(await plan(INVENTORY, None, sources)) == [
        ("inventory", ["DeviceInformation", "SecurityInfo"], False)
    ]
    assert shape(await plan(DEVINFOLOG, None, sources)) == [
        ("devinfo", ["DeviceInformation"], False)
    ]
    # no context at all is the same as the validated empty one
    assert await plan_steps(INVENTORY, None, sources) == await plan(INVENTORY, "", sources)


async def test_lock_plan_is_destructive_and_shows_no_pin(sources: Stores) -> None:
    context = json.dumps({"message": "Call IT", "phone_number": "+1 555 0100"})
    steps = await plan(LOCK, context, sources)
    assert shape(steps) == [("lock", ["DeviceLock"], True)]
    detail = steps[0].commands[0].detail
    assert "'Call IT'" in detail and "'+1 555 0100'" in detail and "escrowed" in detail


async def test_profile_plan_installs_removes_verifies(sources: Stores) -> None:
    steps = await plan(PROFILE, "wifi,-vpn", sources)
    assert shape(steps) == [
        ("list", ["ProfileList"], False),
        ("apply", ["InstallProfile", "RemoveProfile"], True),
        ("verify", ["ProfileList"], False),
    ]
    install, remove = steps[1].commands
    assert install.detail.startswith(f"'wifi' ({WIFI[0]})") and "only if missing" in install.detail
    assert remove == PlannedCommand("RemoveProfile", f"'vpn' ({VPN[0]}), only if installed")
    # only installs: nothing destructive
    assert [s.destructive for s in await plan(PROFILE, "wifi,vpn", sources)] == [False] * 3


async def test_profile_plan_names_unknown_profiles_and_sends_only_the_list(
    sources: Stores,
) -> None:
    steps = await plan(PROFILE, "ghost,-phantom", sources)
    assert shape(steps) == [("list", ["ProfileList"], False)]
    assert "'ghost', 'phantom'" in steps[0].commands[0].detail
    assert "the run fails" in steps[0].commands[0].detail


async def test_cmdplan_plan_in_the_plan_order(sources: Stores) -> None:
    steps = await plan(CMDPLAN, "base", sources)
    assert shape(steps) == [
        ("plan", ["InstallProfile", "InstallApplication", "DeviceConfigured"], False),
        ("verify", ["ProfileList"], False),
    ]
    profile_cmd, app, configured = steps[0].commands
    assert profile_cmd.detail == f"'wifi' ({WIFI[0]})"
    assert app.detail == APP
    assert "only if" in configured.detail and "Setup Assistant" in configured.detail


async def test_cmdplan_plans_that_would_send_nothing(sources: Stores) -> None:
    with pytest.raises(PlanError, match="no command plan named 'nope'"):
        await plan(CMDPLAN, "nope", sources)
    await sources.cmdplans.put("broken", CmdPlan(profile_names=["wifi", "ghost"]))
    with pytest.raises(PlanError, match=r"unknown profile.*ghost"):
        await plan(CMDPLAN, "broken", sources)
    await sources.cmdplans.put("empty", CmdPlan())
    assert await plan(CMDPLAN, "empty", sources) == []
    await sources.cmdplans.put("per-device", CmdPlan(profile_names=["${site:wifi}"]))
    (step, _verify) = await plan(CMDPLAN, "per-device", sources)
    assert "URL parameters" in step.commands[0].detail


async def test_certprof_plan_never_shows_the_replacements(sources: Stores) -> None:
    steps = await plan(CERTPROF, CERTPROF_NANOCMD, sources)
    assert shape(steps) == [
        ("list", ["CertificateList"], False),
        ("install", ["InstallProfile"], False),
    ]
    install = steps[1].commands[0].detail
    assert "'scep'" in install and "2592000 s" in install and "1 text replacement" in install
    text = json.dumps([c.detail for s in steps for c in s.commands])
    assert "s3cret-challenge" not in text and "ChallengePassword" not in text
    missing = await plan(CERTPROF, '{"profile": "nope", "filter": {}}', sources)
    assert "not stored" in missing[1].commands[0].detail


async def test_filevault_plans(sources: Stores) -> None:
    steps = await plan(FVENABLE, '{"poll_seconds": 30, "max_polls": 4}', sources)
    assert shape(steps) == [
        ("install", ["InstallProfile"], False),
        ("poll", ["SecurityInfo"], False),
    ]
    assert "built-in template" in steps[0].commands[0].detail
    assert "every 30 s, up to 4 times" in steps[1].commands[0].detail
    await sources.profiles.put(TEMPLATE_PROFILE_NAME, default_template().encode())
    steps = await plan(FVENABLE, None, sources)
    assert f"stored template '{TEMPLATE_PROFILE_NAME}'" in steps[0].commands[0].detail
    assert "every 120 s, up to 180 times" in steps[1].commands[0].detail
    assert shape(await plan(FVROTATE, None, sources)) == [("rotate", ["RotateFileVaultKey"], True)]


async def test_every_plan_is_destructive_exactly_where_a_destructive_command_is(
    sources: Stores,
) -> None:
    contexts = {
        INVENTORY: None,
        DEVINFOLOG: None,
        LOCK: None,
        PROFILE: "wifi,-vpn",
        CMDPLAN: "base",
        CERTPROF: CERTPROF_NANOCMD,
        FVENABLE: None,
        FVROTATE: None,
    }
    seen: set[str] = set()
    for workflow, raw in contexts.items():
        for step in await plan(workflow, raw, sources):
            types = {c.request_type for c in step.commands}
            seen |= types
            assert step.destructive == bool(types & DESTRUCTIVE_REQUEST_TYPES), step
            assert step.commands, step
    assert {"DeviceLock", "RemoveProfile", "RotateFileVaultKey"} <= seen


async def test_a_workflow_without_a_plan_is_refused(sources: Stores) -> None:
    with pytest.raises(PlanError, match=r"io\.example\.nope\.v1"):
        await plan_steps("io.example.nope.v1", NoContext(), sources)


# ---- a plan is what the run sends ------------------------------------------------------


@asynccontextmanager
async def runs_on(env: WorkflowEnvironment, tmp: Path) -> AsyncIterator[tuple[Stories, Stores]]:
    """A worker whose profile and command-plan activities read the real stores the plans
    read; the MDM server, inventory and escrow are the stories' recorders."""
    stores = await stores_at(f"sqlite:///{tmp / 'plans.db'}")
    register = EnrollmentRegister(stores.engine)
    real = ProfileActivities(stores.profiles, stores.cmdplans, register)
    h = Stories(env, f"tq-{uuid.uuid4()}")
    async with Worker(
        env.client,
        task_queue=h.queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[
            *h.mdm.activities(),
            *h.inventory.activities(),
            h.holds.release,
            *h.governance.activities(),
            real.info,
            real.load_cmdplan,
            real.configured,
            real.evaluate,
            h.escrow.store_cms,
            h.escrow.has_secret,
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):
        yield h, stores
    await stores.engine.dispose()


def assert_sent_as_planned(steps: list[PlannedStep], state: RunState) -> None:
    """The run's steps are the plan's, in order, each with the plan's RequestTypes; what
    the plan has and the run did not send is only what the plan called conditional."""
    sent = {s.name: [c.request_type for c in s.commands] for s in state.steps}
    assert [s.name for s in steps if s.name in sent] == [s.name for s in state.steps]
    for planned_step in steps:
        left = list(planned_step.commands)
        for request_type in sent.get(planned_step.name, []):
            while left and left[0].request_type != request_type:
                assert "only if" in left.pop(0).detail, planned_step
            assert left, f"{request_type} sent in {planned_step.name!r} but not planned"
            left.pop(0)
        assert all("only if" in c.detail for c in left), planned_step


async def finished(dev: Any) -> RunState:
    await dev.handle.result()
    state: RunState = await dev.state()
    return state


async def test_inventory_and_lock_runs_send_their_plans(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with runs_on(time_env, tmp_path) as (h, stores):
        dev = await h.device(INVENTORY)
        await dev.answer((ACK, DEVINFO), (ACK, SECINFO_OFF))
        state = await finished(dev)
        expected = await plan(INVENTORY, None, stores)
        assert shape(expected) == [
            (s.name, [c.request_type for c in s.commands], False) for s in state.steps
        ]
        assert_sent_as_planned(expected, state)

        context = '{"message": "Call IT"}'
        dev = await h.device(LOCK, context=context)
        (lock,) = await dev.answer(ACK)
        assert lock.command.fields == {"Message": "Call IT"}
        assert_sent_as_planned(await plan(LOCK, context, stores), await finished(dev))


async def test_profile_runs_send_their_plan_or_its_unconditional_part(
    time_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with runs_on(time_env, tmp_path) as (h, stores):
        expected = await plan(PROFILE, "wifi,-vpn", stores)
        # a device that needs every change: the whole plan is sent
        dev = await h.device(PROFILE, context="wifi,-vpn")
        await dev.answer(listed_profiles(VPN))
        await dev.answer(ACK, ACK)
        await dev.answer(listed_profiles(WIFI))
        state = await finished(dev)
        assert [(s.name, [c.request_type for c in s.commands]) for s in state.steps] == [
            (s.name, [c.request_type for c in s.commands]) for s in expected
        ]
        assert_sent_as_planned(expected, state)
        # a device already as asked: only the list, the rest was planned as conditional
        dev = await h.device(PROFILE, context="wifi,-vpn")
        await dev.answer(listed_profiles(WIFI))
        state = await finished(dev)
        assert [s.name for s in state.steps] == ["list"]
        assert_sent_as_planned(expected, state)


async def test_cmdplan_run_sends_its_plan(time_env: WorkflowEnvironment, tmp_path: Path) -> None:
    async with runs_on(time_env, tmp_path) as (h, stores):
        dev = await h.device(CMDPLAN, context="base")
        sent = await dev.answer(ACK, ACK)  # not in Setup Assistant: no DeviceConfigured
        assert [c.command.request_type for c in sent] == ["InstallProfile", "InstallApplication"]
        await dev.answer(listed_profiles(WIFI))
        assert_sent_as_planned(await plan(CMDPLAN, "base", stores), await finished(dev))


async def test_a_drifted_plan_is_caught(time_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """The comparison fails when a plan and a run differ (so it can catch drift)."""
    async with runs_on(time_env, tmp_path) as (h, _stores):
        dev = await h.device(INVENTORY)
        await dev.answer((ACK, DEVINFO), (ACK, SECINFO_OFF))
        state = await finished(dev)
    drifted = [PlannedStep("inventory", [PlannedCommand("DeviceInformation")], destructive=False)]
    with pytest.raises(AssertionError):
        assert_sent_as_planned(drifted, state)
    renamed = [
        PlannedStep(
            "refresh",
            [PlannedCommand("DeviceInformation"), PlannedCommand("SecurityInfo")],
            destructive=False,
        )
    ]
    with pytest.raises(AssertionError):
        assert_sent_as_planned(renamed, state)
