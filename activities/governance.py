"""Activities a run asks before it goes on: the emergency stop, the policy, approvals.

They are short reads and writes on the worker's own store and policy file, run as local
activities. The emergency stop is read fail-safe: a store that cannot be read halts.
"""

from __future__ import annotations

import logging

from temporalio import activity

from mdmflow.policy import PolicyHolder, check_start
from store.governance import GLOBAL, Approvals, EmergencyStops
from workflows.models import EmergencyStopNotice, GateInput, GateResult

log = logging.getLogger("mdmflow.governance")


class GovernanceActivities:
    def __init__(self, stops: EmergencyStops, approvals: Approvals, policy: PolicyHolder) -> None:
        self._stops = stops
        self._approvals = approvals
        self._policy = policy

    @activity.defn(name="governance.emergency_stop")
    async def emergency_stop(self, workflow_name: str) -> EmergencyStopNotice | None:
        """The stop that halts ``workflow_name`` now (None: none); unreadable = engaged."""
        stop = await self._stops.blocking(workflow_name)
        if stop is None:
            return None
        return EmergencyStopNotice(
            engaged=True,
            scope=stop.scope if stop.scope in (GLOBAL, workflow_name) else GLOBAL,
            reason=stop.reason,
            by=stop.engaged_by,
        )

    @activity.defn(name="governance.gate")
    async def gate(self, inp: GateInput) -> GateResult:
        """The policy's word, now, on the run's next destructive step."""
        stop = await self._stops.blocking(inp.workflow_name)
        if stop is not None:
            return GateResult(allowed=False, stopped=stop.sentence(), reason=stop.sentence())
        policy = self._policy.current()
        # no role: a start by mdmflow itself (event, schedule); the rest still applies
        role = inp.started_role or None
        refusal = check_start(policy, inp.workflow_name, role, max(inp.target_count, 1))
        if refusal is not None:
            log.warning(
                "%s run %s: step %r refused: %s",
                inp.workflow_name,
                inp.instance_id,
                inp.step,
                refusal.message,
            )
            return GateResult(allowed=False, reason=refusal.message)
        wp = policy.for_workflow(inp.workflow_name)
        assert wp is not None
        return GateResult(
            allowed=True,
            approval_required=wp.approval,
            approval_timeout_seconds=wp.approval_timeout_seconds,
        )

    @activity.defn(name="governance.request_approval")
    async def request_approval(self, inp: GateInput) -> None:
        """List the start under ``GET /v1/approvals`` (repeatable)."""
        await self._approvals.request(
            inp.instance_id, inp.workflow_name, inp.started_by, inp.target_count
        )
        log.info(
            "%s run %s by %s waits for approval before step %r",
            inp.workflow_name,
            inp.instance_id,
            inp.started_by,
            inp.step,
        )

    @activity.defn(name="governance.approval_decided")
    async def approval_decided(self, instance_id: str, status: str, by: str, reason: str) -> None:
        """Record the decision the run acted on (or its expiry); repeatable."""
        await self._approvals.decide(instance_id, status, by, reason)
