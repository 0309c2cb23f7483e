"""What the relay tells runs: device reports and enrollment resets.

A fleet run takes reports in batches (``command_reports``); a run started one per
device before fleet runs takes them one at a time. Both take resets. A run that is not
running (Temporal answers NOT_FOUND) raises :class:`RunGone`: the report or reset came
late, which is no error.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from protocol.results import CommandReport
from workflows.engine import MdmWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.models import EnrollmentReset


class RunGone(Exception):
    """The run is not running (Temporal answered NOT_FOUND): what it was sent is late."""


async def _gone_if_not_found(workflow_id: str, call: Awaitable[None]) -> None:
    try:
        await call
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RunGone(workflow_id) from exc
        raise


async def command_reports(
    client: Client,
    workflow_id: str,
    reports: list[CommandReport],
    *,
    rpc_timeout: timedelta | None = None,
) -> None:
    """Reports for devices of the fleet run ``workflow_id``, in one signal."""
    handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
    await _gone_if_not_found(
        workflow_id,
        handle.signal(FleetRunWorkflow.command_reports, reports, rpc_timeout=rpc_timeout),
    )


async def command_report(
    client: Client,
    workflow_id: str,
    report: CommandReport,
    *,
    rpc_timeout: timedelta | None = None,
) -> None:
    """One report for a one-device run started before fleet runs."""
    handle = client.get_workflow_handle(workflow_id)
    await _gone_if_not_found(
        workflow_id,
        handle.signal(MdmWorkflow.on_command_report, report, rpc_timeout=rpc_timeout),
    )


async def enrollment_reset(
    client: Client, workflow_id: str, reset: EnrollmentReset, *, fleet: bool
) -> None:
    """Tell a run its enrollment re-enrolled or checked out (NanoMDM cleared the queue)."""
    handle = client.get_workflow_handle(workflow_id)
    if fleet:
        call = handle.signal(FleetRunWorkflow.enrollment_reset, reset)
    else:
        call = handle.signal(MdmWorkflow.on_enrollment_reset, reset)
    await _gone_if_not_found(workflow_id, call)
