"""Dry runs: the steps and commands a workflow would send for a context, before it starts.

A plan names each step as the workflow names it and each command by the RequestType the
workflow sends, built with the same :mod:`protocol.commands` builders. Where what is sent
depends on the device's answers (a profile only installed when missing, polls until
FileVault is on) the command's ``detail`` says so. A detail names things (profile,
identifier, plan, manifest URL, message): never a secret (PIN, key, challenge, password,
text replacements), which workflows only fill in at send time anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from escrow.fvprofile import TEMPLATE_PROFILE_NAME
from protocol import commands
from store.cmdplans import CmdPlan
from store.profiles import ProfileInfo
from workflows.certprof import CertProfContext, CertProfWorkflow
from workflows.cmdplan import CmdPlanWorkflow, PlanName
from workflows.contexts import validate_context
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.erase import EraseContext, EraseWorkflow
from workflows.fvenable import FileVaultEnableWorkflow, PollContext
from workflows.fvrotate import FileVaultRotateWorkflow

# a step with one of these can lose data or lock someone out (the engine's own list)
from workflows.governed import DESTRUCTIVE_REQUEST_TYPES as DESTRUCTIVE_REQUEST_TYPES
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockContext, LockWorkflow
from workflows.profile import ProfileListContext, ProfileWorkflow


class PlanError(ValueError):
    """The run would end before sending anything (e.g. no such command plan)."""


@dataclass
class PlannedCommand:
    request_type: str
    detail: str = ""


@dataclass
class PlannedStep:
    name: str
    commands: list[PlannedCommand]
    destructive: bool


class ProfileNames(Protocol):
    """Read access to stored profiles (:class:`store.profiles.ProfileStore`)."""

    async def info(self, names: list[str] | None = None) -> dict[str, ProfileInfo]: ...


class CmdPlans(Protocol):
    """Read access to stored command plans (:class:`store.cmdplans.CmdPlanStore`)."""

    async def get(self, name: str) -> CmdPlan | None: ...


class PlanSources(Protocol):
    """What plans read, and only read (``mdmflow.services.Services`` is one)."""

    @property
    def profiles(self) -> ProfileNames: ...

    @property
    def cmdplans(self) -> CmdPlans: ...


def step(name: str, *planned: PlannedCommand) -> PlannedStep:
    destructive = any(c.request_type in DESTRUCTIVE_REQUEST_TYPES for c in planned)
    return PlannedStep(name=name, commands=list(planned), destructive=destructive)


def planned(command: commands.Command, detail: str = "") -> PlannedCommand:
    return PlannedCommand(request_type=command.request_type, detail=detail)


def _described(name: str, info: ProfileInfo | None) -> str:
    return f"{name!r} ({info.identifier})" if info is not None else repr(name)


# ---- one planner per workflow ------------------------------------------------------


async def _inventory(_ctx: BaseModel, _src: PlanSources) -> list[PlannedStep]:
    return [
        step(
            "inventory",
            planned(commands.device_information(), "inventory queries"),
            planned(commands.security_info(), "SIP and FileVault"),
        )
    ]


async def _devinfolog(_ctx: BaseModel, _src: PlanSources) -> list[PlannedStep]:
    return [step("devinfo", planned(commands.device_information(), "inventory queries"))]


async def _lock(ctx: BaseModel, _src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, LockContext)
    parts = ["a new 6-digit PIN, made and escrowed at send time"]
    if ctx.message:
        parts.append(f"message {ctx.message!r}")
    if ctx.phone_number:
        parts.append(f"phone number {ctx.phone_number!r}")
    return [step("lock", planned(commands.device_lock(), "; ".join(parts)))]


async def _erase(ctx: BaseModel, src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, EraseContext)
    parts = ["a new 6-digit PIN (Intel Macs), made and escrowed at send time"]
    if ctx.obliteration_behavior:
        parts.append(f"ObliterationBehavior {ctx.obliteration_behavior}")
    if ctx.preserve_data_plan is not None:
        parts.append(f"PreserveDataPlan {ctx.preserve_data_plan}")
    if ctx.disallow_proximity_setup is not None:
        parts.append(f"DisallowProximitySetup {ctx.disallow_proximity_setup}")
    names = ctx.profile_names()
    if ctx.return_to_service is not None and ctx.return_to_service.enabled:
        parts.append("Return to Service" + (f" with {', '.join(names)}" if names else ""))
    if names:
        missing = sorted(set(names) - set(await src.profiles.info(names)))
        if missing:
            raise PlanError(f"no stored profile named {', '.join(missing)}")
    return [step("erase", planned(ctx.command(), "; ".join(parts)))]


async def _profile(ctx: BaseModel, src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, ProfileListContext)
    stored = await src.profiles.info(ctx.install + ctx.remove)
    unknown = [n for n in ctx.install + ctx.remove if n not in stored]
    listing = "managed profiles"
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        listing += f"; not stored, so never sent (the run fails): {names}"
    steps = [step("list", planned(commands.profile_list(managed_only=True), listing))]
    changes = [
        planned(
            commands.install_stored_profile(n),
            f"{_described(n, stored[n])}, only if missing or with another PayloadUUID",
        )
        for n in ctx.install
        if n in stored
    ] + [
        planned(
            commands.remove_profile(stored[n].identifier),
            f"{_described(n, stored[n])}, only if installed",
        )
        for n in ctx.remove
        if n in stored
    ]
    if changes:
        steps.append(step("apply", *changes))
        steps.append(
            step(
                "verify",
                planned(
                    commands.profile_list(managed_only=True),
                    "managed profiles; only if the device acknowledged a change",
                ),
            )
        )
    return steps


async def _cmdplan(ctx: BaseModel, src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, PlanName)
    plan = await src.cmdplans.get(ctx.name)
    if plan is None:
        raise PlanError(f"no command plan named {ctx.name!r}: the run fails, sending nothing")
    per_device = [n for n in plan.profile_names if "$" in n]
    fixed = [n for n in plan.profile_names if "$" not in n]
    stored = await src.profiles.info(fixed) if fixed else {}
    if unknown := [n for n in fixed if n not in stored]:
        raise PlanError(
            f"plan {ctx.name!r} names unknown profile(s): {', '.join(unknown)}: "
            "the run fails, sending nothing"
        )
    sent = [
        planned(
            commands.install_stored_profile(n),
            f"{n!r}, name filled from the device's URL parameters"
            if n in per_device
            else _described(n, stored[n]),
        )
        for n in plan.profile_names
    ]
    sent += [planned(commands.install_application(u), u) for u in plan.manifest_urls]
    if plan.device_configured:
        sent.append(
            planned(
                commands.device_configured(),
                "only if the device is waiting in Setup Assistant (AwaitingConfiguration)",
            )
        )
    if not sent:
        return []  # the run completes: the plan has nothing to send
    steps = [step("plan", *sent)]
    if plan.profile_names:
        steps.append(
            step(
                "verify",
                planned(
                    commands.profile_list(managed_only=True),
                    "managed profiles; only if the device acknowledged a profile",
                ),
            )
        )
    return steps


async def _certprof(ctx: BaseModel, src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, CertProfContext)
    managed = not ctx.no_managed_only
    criteria = ctx.criteria
    when = f"only if no certificate matches (CN prefix {ctx.filter.cn_prefix!r})"
    if criteria is not None and criteria.always_replace:
        when = "always (a matching certificate is replaced)"
    elif criteria is not None and criteria.until_expiry_sec > 0:
        when += f" or the match expires within {criteria.until_expiry_sec} s"
    install = f"{ctx.profile!r}, {when}"
    if ctx.text_replacements:
        install += f"; {len(ctx.text_replacements)} text replacement(s) made at send time"
    if ctx.profile not in await src.profiles.info([ctx.profile]):
        install += "; not stored, so its send would fail"
    return [
        step(
            "list",
            planned(
                commands.certificate_list(managed_only=managed),
                "managed certificates" if managed else "all certificates",
            ),
        ),
        step("install", planned(commands.install_stored_profile(ctx.profile), install)),
    ]


async def _fvenable(ctx: BaseModel, src: PlanSources) -> list[PlannedStep]:
    assert isinstance(ctx, PollContext)
    template = (
        f"stored template {TEMPLATE_PROFILE_NAME!r}"
        if await src.profiles.info([TEMPLATE_PROFILE_NAME])
        else "built-in template"
    )
    return [
        step(
            "install",
            planned(
                commands.install_escrow_profile(),
                f"FileVault escrow profile ({template}) with our escrow certificate",
            ),
        ),
        step(
            "poll",
            planned(
                commands.security_info(),
                f"every {ctx.poll_seconds:g} s, up to {ctx.max_polls} times, until "
                "FileVault is on and the recovery key is escrowed",
            ),
        ),
    ]


async def _fvrotate(_ctx: BaseModel, _src: PlanSources) -> list[PlannedStep]:
    return [
        step(
            "rotate",
            planned(
                commands.rotate_filevault_key(),
                "personal recovery key; only if one is escrowed for the device (it "
                "unlocks with it, filled in at send time)",
            ),
        )
    ]


Planner = Callable[[BaseModel, PlanSources], Awaitable[list[PlannedStep]]]
PLANNERS: dict[str, Planner] = {
    InventoryWorkflow.NAME: _inventory,
    DevInfoLogWorkflow.NAME: _devinfolog,
    LockWorkflow.NAME: _lock,
    ProfileWorkflow.NAME: _profile,
    CmdPlanWorkflow.NAME: _cmdplan,
    CertProfWorkflow.NAME: _certprof,
    FileVaultEnableWorkflow.NAME: _fvenable,
    FileVaultRotateWorkflow.NAME: _fvrotate,
    EraseWorkflow.NAME: _erase,
}


async def plan_steps(
    workflow_name: str, context: BaseModel | None, sources: PlanSources
) -> list[PlannedStep]:
    """What ``workflow_name`` would send for ``context`` (from :func:`validate_context`;
    None: started without one). Raises PlanError when the run would send nothing and
    fail, ContextError when None is no valid context for the workflow."""
    planner = PLANNERS.get(workflow_name)
    if planner is None:
        raise PlanError(f"no dry run is described for {workflow_name!r}")
    if context is None:
        context = validate_context(workflow_name, None)
    return await planner(context, sources)
