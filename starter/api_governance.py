"""Governance endpoints: users, the audit log, the emergency stop, approvals, the policy.

Users, the stop and the policy are the admin's; approvals are the approver's (never
for their own start); everyone may read the audit log, the stop and the policy.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from mdmflow.roles import ROLES
from mdmflow.temporal_calls import governance
from starter.audit_trail import audited, note
from starter.deps import ERRORS, CallerDep, ServicesDep, require
from store.governance import GLOBAL
from store.users import UserExists
from workflows.models import ApprovalDecision, EmergencyStopNotice
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.api")

router = APIRouter(responses=ERRORS)
READ = [Depends(require("read"))]
ADMIN = [Depends(require("admin"))]
APPROVE = [Depends(require("approve"))]


# ---- users ---------------------------------------------------------------------------


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(description=f"one of {', '.join(ROLES)}")


@router.get("/v1/users", tags=["users"], dependencies=ADMIN, summary="Users and their roles")
async def list_users(svc: ServicesDep) -> list[dict[str, str]]:
    return await svc.users.list()


@router.post(
    "/v1/users",
    tags=["users"],
    dependencies=ADMIN,
    status_code=201,
    summary="Add a user; the answer holds its key, shown this once",
)
async def add_user(
    request: Request, who: CallerDep, svc: ServicesDep, body: NewUser
) -> dict[str, str]:
    try:
        async with audited(request, "user.add", params={"name": body.name, "role": body.role}) as c:
            key = await svc.users.add(body.name, body.role, created_by=who.user, conn=c)
    except UserExists as exc:
        raise HTTPException(409, f"user {body.name!r} exists") from exc
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    log.info("user %s (%s) added by %s", body.name, body.role, who.user)
    return {"name": body.name, "role": body.role, "key": key}


@router.delete("/v1/users/{name}", tags=["users"], dependencies=ADMIN, status_code=204)
async def remove_user(request: Request, svc: ServicesDep, name: str) -> Response:
    try:
        async with audited(request, "user.remove", params={"name": name}) as c:
            if not await svc.users.remove(name, conn=c):
                raise HTTPException(404, f"no user {name!r}")
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return Response(status_code=204)


# ---- audit ---------------------------------------------------------------------------


@router.get("/v1/audit", tags=["audit"], dependencies=READ, summary="The audit log, newest first")
async def audit_log(
    response: Response,
    svc: ServicesDep,
    user: str | None = None,
    action: str | None = None,
    id: Annotated[str | None, Query(description="entries naming this enrollment")] = None,
    since: Annotated[datetime | None, Query(description="from (ISO 8601, inclusive)")] = None,
    until: Annotated[datetime | None, Query(description="until (ISO 8601, exclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[
        int | None, Query(description="X-Next-Page-Token of the previous page")
    ] = None,
) -> list[dict[str, Any]]:
    """Each entry: time, user, role, action, targets (the first 100; ``target_count``
    counts them all), params (secrets redacted), source, outcome, and its chain hash."""
    entries, next_seq = await svc.audit.list(
        user=user,
        action=action,
        enrollment=id,
        since=since,
        until=until,
        before_seq=page_token,
        limit=limit,
    )
    if next_seq is not None:
        response.headers["X-Next-Page-Token"] = str(next_seq)
    return entries


@router.get(
    "/v1/audit/verify", tags=["audit"], dependencies=READ, summary="Check the audit hash chain"
)
async def audit_verify(svc: ServicesDep) -> dict[str, Any]:
    result = await svc.audit.verify()
    return {
        "ok": result.ok,
        "checked": result.checked,
        "first_bad_seq": result.first_bad_seq,
        "problem": result.problem,
    }


# ---- emergency stop --------------------------------------------------------------------


class StopBody(BaseModel):
    workflow: str | None = Field(default=None, description="one workflow; none: everything")
    reason: str = Field(default="", max_length=500)


def _scope(workflow: str | None) -> str:
    if workflow is None or workflow == GLOBAL:
        return GLOBAL
    if workflow not in BY_NAME:
        raise HTTPException(400, f"unknown workflow {workflow!r}")
    return workflow


@router.get("/v1/estop", tags=["emergency stop"], dependencies=READ, summary="Engaged stops")
async def estop_state(svc: ServicesDep) -> dict[str, Any]:
    stops = await svc.stops.engaged()
    return {"engaged": bool(stops), "stops": [s.as_dict() for s in stops]}


@router.post(
    "/v1/estop",
    tags=["emergency stop"],
    dependencies=ADMIN,
    summary="Engage the emergency stop (everything, or one workflow)",
)
async def estop_engage(
    request: Request,
    who: CallerDep,
    svc: ServicesDep,
    body: Annotated[StopBody | None, Body()] = None,
) -> dict[str, Any]:
    """New starts are refused at once; every running run it applies to halts at its next
    step boundary and shows "halted by emergency stop" until the stop is released."""
    body = body or StopBody()
    scope = _scope(body.workflow)
    async with audited(
        request, "estop.engage", params={"scope": scope, "reason": body.reason}
    ) as c:
        stop = await svc.stops.engage(scope, who.user, body.reason, conn=c)
    log.warning("EMERGENCY STOP engaged on %s by %s: %s", scope, who.user, body.reason or "-")
    notice = EmergencyStopNotice(engaged=True, scope=scope, reason=body.reason, by=who.user)
    sent = await governance.tell_runs(svc.client, notice)
    return {
        "stop": stop.as_dict(),
        "runs_signalled": sent.signalled,
        "runs_not_reached": len(sent.failed),
    }


@router.delete(
    "/v1/estop",
    tags=["emergency stop"],
    dependencies=ADMIN,
    summary="Release the emergency stop; halted runs go on where they were",
)
async def estop_release(
    request: Request,
    who: CallerDep,
    svc: ServicesDep,
    workflow: Annotated[
        str | None, Query(description="the workflow's stop; none: the global one")
    ] = None,
) -> dict[str, Any]:
    scope = _scope(workflow)
    async with audited(request, "estop.release", params={"scope": scope}) as c:
        released = await svc.stops.release(scope, conn=c)
    if not released:
        raise HTTPException(404, f"no emergency stop engaged on {scope}")
    log.warning("emergency stop on %s released by %s", scope, who.user)
    notice = EmergencyStopNotice(engaged=False, scope=scope, by=who.user)
    sent = await governance.tell_runs(svc.client, notice)
    return {"released": scope, "runs_signalled": sent.signalled}


# ---- approvals -----------------------------------------------------------------------


class DecisionBody(BaseModel):
    reason: str = Field(default="", max_length=500)


@router.get(
    "/v1/approvals", tags=["approvals"], dependencies=READ, summary="Starts waiting for approval"
)
async def approvals(
    svc: ServicesDep,
    status: Annotated[
        str | None, Query(description="pending (default), approved, rejected, expired, or all")
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await svc.approvals.list(None if status == "all" else status, limit)


@router.post(
    "/v1/approvals/{approval_id}/{decision}",
    tags=["approvals"],
    dependencies=APPROVE,
    summary="Approve or reject a start waiting before its destructive step",
)
async def decide(
    request: Request,
    who: CallerDep,
    svc: ServicesDep,
    approval_id: Annotated[str, Path(description="the start's instance ID")],
    decision: Annotated[str, Path(description="approve or reject")],
    body: Annotated[DecisionBody | None, Body()] = None,
) -> dict[str, Any]:
    """The approver must not be the user who started the run (403). Rejection ends the
    waiting devices ``NotApproved`` with nothing sent."""
    if decision not in ("approve", "reject"):
        raise HTTPException(404, "decision must be approve or reject")
    reason = body.reason if body else ""
    note(request, f"approval.{decision}", params={"approval": approval_id, "reason": reason})
    row = await svc.approvals.get(approval_id)
    if row is None:
        raise HTTPException(404, f"no approval {approval_id!r}")
    if row["started_by"] == who.user:
        raise HTTPException(403, f"{who.user} started this run: approval needs someone else")
    if row["status"] != "pending":
        raise HTTPException(409, f"approval {approval_id!r} is already {row['status']}")
    sent = await governance.deliver_decision(
        svc.client,
        approval_id,
        ApprovalDecision(approve=decision == "approve", user=who.user, reason=reason),
    )
    if not sent.delivered:
        why = "; ".join(sorted(set(sent.refused.values()))) or "no run of it is waiting"
        raise HTTPException(409, f"approval {approval_id!r}: {why}")
    return {"approval": approval_id, "decision": decision, "runs": sent.delivered}


# ---- policy --------------------------------------------------------------------------


@router.get("/v1/policy", tags=["policy"], dependencies=READ, summary="The policy in force")
async def policy(svc: ServicesDep) -> dict[str, Any]:
    """The policy as this process holds it; ``last_error`` is set when an edit of the
    file was refused (the last good policy stays in force)."""
    holder = svc.policy
    doc = holder.current().as_dict()
    doc["last_error"] = holder.last_error
    return doc
