"""Operator controls from outside a run: choose the runs, apply the action, say what happened.

Runs are chosen by workflow ID (one run, all of its devices or those named) or by a
filter: instance ID, workflow name and/or enrollment IDs. Running fleet runs of an
instance or workflow come from Temporal's visibility store; the runs driving named
enrollments come from the store's holds (no visibility lag).

Every action but a whole-run cancel is the fleet run's ``control`` Update, whose
validator refuses what does not apply (nothing enters history then). Cancelling every
device of a run is Temporal's own cancellation, so the run ends *Cancelled* in Temporal
and in the Web UI; the reason travels with the request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from mdmflow.temporal_calls.runs import run_summary
from mdmflow.temporal_calls.visibility import running_fleet_runs
from store.holds import HoldStore
from workflows.fleet import CONTROL_MAX_IDS, FleetRunWorkflow
from workflows.models import ControlAction, ControlRequest

log = logging.getLogger("mdmflow.controls")

# Runs one control call acts on at most, and how many at once.
MAX_RUNS = 1000
CONCURRENCY = 16


class ControlError(ValueError):
    """The request chooses nothing (no filter, or no run matches)."""


@dataclass
class RunControl:
    workflow_id: str
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "accepted": self.accepted,
            "refused": self.refused,
        }
        if self.error:
            out["error"] = self.error
        return out


async def select_runs(
    client: Client,
    holds: HoldStore,
    *,
    workflow_id: str | None,
    instance_id: str | None,
    workflow: str | None,
    ids: list[str],
) -> dict[str, list[str] | None]:
    """Workflow ID -> the devices to act on in it (None: all of them)."""
    if len(ids) > CONTROL_MAX_IDS:
        raise ControlError(f"at most {CONTROL_MAX_IDS} enrollment IDs per call")
    if workflow_id:
        return {workflow_id: ids or None}
    if ids:
        chosen: dict[str, list[str] | None] = {}
        for eid in ids:
            for hold in await holds.for_enrollment(eid, user_channels=False):
                if (instance_id and hold.instance_id != instance_id) or (
                    workflow and hold.workflow_name != workflow
                ):
                    continue
                devices = chosen.setdefault(hold.workflow_id, [])
                assert devices is not None
                devices.append(eid)
        return chosen
    if not (instance_id or workflow):
        raise ControlError("choose runs: workflow_id, or instance_id, workflow or id")
    found = await running_fleet_runs(client, instance_id, workflow, MAX_RUNS)
    return dict.fromkeys(found)


async def apply(
    client: Client,
    runs: dict[str, list[str] | None],
    action: ControlAction,
    reason: str,
    actor: str,
) -> list[RunControl]:
    """Apply ``action`` to each run's devices; one result per run."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(workflow_id: str, devices: list[str] | None) -> RunControl:
        async with gate:
            return await _control(client, workflow_id, devices, action, reason, actor)

    results = list(await asyncio.gather(*(one(w, d) for w, d in runs.items())))
    accepted = sum(len(r.accepted) for r in results)
    log.info(
        "%s by %s over %d run(s): %d device(s) accepted, %d run(s) refused",
        action,
        actor,
        len(results),
        accepted,
        sum(1 for r in results if not r.accepted),
    )
    return results


async def _control(
    client: Client,
    workflow_id: str,
    devices: list[str] | None,
    action: ControlAction,
    reason: str,
    actor: str,
) -> RunControl:
    result = RunControl(workflow_id)
    handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
    try:
        if action == "cancel" and await _whole_run(client, workflow_id, devices):
            await handle.cancel(reason=f"by {actor}" + (f": {reason}" if reason else ""))
            result.accepted = devices or ["*"]
            return result
        outcome = await handle.execute_update(
            FleetRunWorkflow.control,
            ControlRequest(action=action, enrollment_ids=devices, reason=reason, actor=actor),
        )
    except WorkflowUpdateFailedError as exc:
        result.error = _words(exc.cause)
        return result
    except RPCError as exc:
        result.error = _rpc_words(exc, workflow_id)
        return result
    result.accepted, result.refused = outcome.accepted, outcome.refused
    return result


async def _whole_run(client: Client, workflow_id: str, devices: list[str] | None) -> bool:
    """Whether a cancel names every device of the run (then the run itself is cancelled)."""
    if devices is None:
        return True
    summary = await run_summary(client, workflow_id)
    return summary.devices <= len(set(devices))


def _words(cause: BaseException | None) -> str:
    """A refusal in the validator's words (not the SDK's wrapping)."""
    text = str(cause) if cause is not None else "refused"
    return text.removeprefix("ApplicationError: ").strip()


def _rpc_words(exc: RPCError, workflow_id: str) -> str:
    message = exc.message.lower()
    if exc.status == RPCStatusCode.NOT_FOUND or "already completed" in message:
        return f"run {workflow_id!r} is not running (it ended, or never existed)"
    return f"Temporal refused: {exc.message}"
