"""Whether a start may go ahead, and for which devices: the checks before anything runs.

In order, each a clear refusal a person can act on:
1. the workflow exists and the IDs are well-formed (400);
2. no emergency stop holds it (409);
3. the policy has an enabled entry, the caller's role may start it, and the start names
   no more than its ``max_targets`` (403; default-deny: no entry, no start);
4. the context is what the workflow declares (400, naming the field);
5. enrollments the relay never saw are refused one by one where the policy says so;
6. the rate limits (the workflow's and the global token bucket, shared by every API
   process through the store) have a token per device (429 with when the next is due).

A dry run (:func:`plan`) answers the same questions without taking tokens or holds.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mdmflow.policy import Policy, PolicyHolder, check_start
from mdmflow.services import Services
from mdmflow.temporal_calls.starts import StartError, already_running, validate_ids
from store.governance import EmergencyStops
from store.ratelimits import Bucket, Verdict
from workflows.contexts import ContextError, validate_context
from workflows.planning import PlanError, plan_steps
from workflows.registry import BY_NAME

GLOBAL_BUCKET = "global"


class Refused(Exception):
    """The whole start is refused; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class Admission:
    """What a start may start: the devices, and why the others may not."""

    workflow: str
    candidates: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    context: Any = None
    approval: bool = False
    buckets: list[Bucket] = field(default_factory=list)


def buckets(policy: Policy, workflow: str) -> list[Bucket]:
    """The token buckets a start of ``workflow`` takes from, global first."""
    out = []
    if policy.global_rate is not None:
        r = policy.global_rate
        out.append(Bucket(GLOBAL_BUCKET, r.capacity, r.per_seconds))
    wp = policy.for_workflow(workflow)
    if wp is not None and wp.rate is not None:
        out.append(Bucket(f"workflow:{workflow}", wp.rate.capacity, wp.rate.per_seconds))
    return out


def rate_refusal(verdict: Verdict) -> Refused:
    if math.isinf(verdict.retry_after):
        return Refused(
            429, f"rate limit {verdict.bucket}: a start this large can never fit its bucket"
        )
    wait = max(verdict.retry_after, 0.0)
    return Refused(
        429,
        f"rate limit {verdict.bucket}: not enough tokens; the next are due in {math.ceil(wait)} s",
        retry_after=wait,
    )


def _checked_ids(workflow: str, ids: list[str]) -> list[str]:
    """Check 1: a workflow this version runs and well-formed IDs (each once); else 400."""
    if workflow not in BY_NAME:
        raise Refused(400, f"unknown workflow {workflow!r}; known: {', '.join(sorted(BY_NAME))}")
    try:
        return validate_ids(ids)
    except StartError as exc:
        raise Refused(400, str(exc)) from exc


def _checked_context(workflow: str, context: str | None) -> Any:
    """Check 4: the context as the workflow declares it; else 400 naming the field."""
    try:
        return validate_context(workflow, context)
    except ContextError as exc:
        raise Refused(400, str(exc)) from exc


UNKNOWN = "unknown enrollment: never seen checking in (refuse_unknown)"


async def _known_only(svc: Services, ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """Check 5: the IDs the relay has seen check in, and the others with why not."""
    known = await svc.register.known(ids)
    refused = {eid: UNKNOWN for eid in ids if eid not in known}
    return [i for i in ids if i in known], refused


async def admit(
    svc: Services, role: str, workflow: str, ids: list[str], context: str | None
) -> Admission:
    """Checks 1 to 5 (everything but the rate limit); raises :class:`Refused`."""
    unique = _checked_ids(workflow, ids)
    stop = await svc.stops.blocking(workflow)
    if stop is not None:
        raise Refused(409, f"{stop.sentence()}: new starts are refused until it is released")
    policy = svc.policy.current()
    refusal = check_start(policy, workflow, role, len(unique))
    if refusal is not None:
        raise Refused(refusal.status, refusal.message)
    parsed = _checked_context(workflow, context)
    wp = policy.for_workflow(workflow)
    assert wp is not None
    admission = Admission(
        workflow, unique, context=parsed, approval=wp.approval, buckets=buckets(policy, workflow)
    )
    if wp.refuse_unknown:
        admission.candidates, admission.refused = await _known_only(svc, unique)
    return admission


SystemGate = Callable[[str, int], Awaitable[str | None]]


def system_gate(policy: PolicyHolder, stops: EmergencyStops) -> SystemGate:
    """The check for starts by mdmflow itself (event subscriptions, schedules): the
    emergency stop and the policy (entry, enabled, max_targets), whoever set them up.
    Returns why a start of ``workflow`` for ``targets`` devices is refused, or None."""

    async def check(workflow: str, targets: int) -> str | None:
        if workflow not in BY_NAME:  # the start itself says so, naming the workflow
            return None
        stop = await stops.blocking(workflow)
        if stop is not None:
            return f"{stop.sentence()}: new starts are refused"
        refusal = check_start(policy.current(), workflow, None, targets)
        return refusal.message if refusal is not None else None

    return check


async def take_tokens(svc: Services, admission: Admission) -> None:
    """Check 6: one token per device from every bucket, or :class:`Refused` (429)."""
    if not admission.candidates or not admission.buckets:
        return
    verdict = await svc.rates.take(admission.buckets, len(admission.candidates))
    if not verdict.allowed:
        raise rate_refusal(verdict)


async def give_back(svc: Services, admission: Admission, unused: int) -> None:
    """Tokens of devices that did not start after all (already running elsewhere)."""
    if unused > 0 and admission.buckets:
        await svc.rates.refund(admission.buckets, unused)


# Devices a dry run lists by name; beyond that it counts them.
PLAN_LIST_MAX = 1000


async def plan(
    svc: Services, role: str, workflow: str, ids: list[str], context: str | None
) -> dict[str, Any]:
    """What a start would do, changing nothing: which devices would start, which would
    be refused and why, the commands each step would send, and whether approval is
    needed. Bad input (IDs, context, workflow) raises :class:`Refused` as a start would;
    a start the policy, the stop or the rate limit would refuse is answered, not raised."""
    unique = _checked_ids(workflow, ids)
    parsed = _checked_context(workflow, context)
    policy = svc.policy.current()
    wp = policy.for_workflow(workflow)
    out: dict[str, Any] = {
        "workflow": workflow,
        "targets": len(unique),
        "policy": wp.as_dict() if wp else None,
        "approval_required": bool(wp and wp.approval),
        "emergency_stop": None,
        "rate_limit": None,
    }
    try:
        out["steps"] = [asdict(s) for s in await plan_steps(workflow, parsed, svc)]
        out["plan_error"] = None
    except PlanError as exc:
        out["steps"], out["plan_error"] = [], str(exc)
    whole: str | None = None
    stop = await svc.stops.blocking(workflow)
    if stop is not None:
        out["emergency_stop"] = stop.sentence()
        whole = f"{stop.sentence()}: new starts are refused"
    refusal = check_start(policy, workflow, role, len(unique))
    if whole is None and refusal is not None:
        whole = refusal.message
    refused: dict[str, str] = {}
    candidates = unique
    if whole is None and wp is not None:
        if wp.refuse_unknown:
            candidates, refused = await _known_only(svc, unique)
        if BY_NAME[workflow].EXCLUSIVE:
            for eid, hold in (await svc.holds.held(workflow, candidates)).items():
                refused[eid] = already_running(workflow, hold)
            candidates = [i for i in candidates if i not in refused]
        limits = buckets(policy, workflow)
        if candidates and limits:
            verdict = await svc.rates.peek(limits, len(candidates))
            out["rate_limit"] = {
                "allowed": verdict.allowed,
                "bucket": verdict.bucket,
                "retry_after": None if math.isinf(verdict.retry_after) else verdict.retry_after,
                "available": verdict.available,
            }
            if not verdict.allowed:
                whole = rate_refusal(verdict).message
    if whole is not None:
        refused = {eid: whole for eid in unique}
        candidates = []
    out["would_start"] = len(candidates)
    out["would_refuse"] = len(refused)
    out["start"] = candidates[:PLAN_LIST_MAX]
    out["refused"] = dict(list(refused.items())[:PLAN_LIST_MAX])
    out["refused_for"] = whole
    return out
