"""Every workflow class a worker runs: the MDM workflows and the helpers behind them."""

from __future__ import annotations

from workflows.command_response import CommandResponseWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.registry import WORKFLOWS
from workflows.scheduled_start import ScheduledStartWorkflow

# Fleet runs are what a start starts (each drives a chunk of devices through one of the
# MDM workflows above, which stay registered for runs started before fleet runs).
# Helpers are started by the relay and by schedules, never by name through the API.
INTERNAL_WORKFLOWS: tuple[type, ...] = (
    FleetRunWorkflow,
    CommandResponseWorkflow,
    ScheduledStartWorkflow,
)
ALL_WORKFLOWS: tuple[type, ...] = (*WORKFLOWS, *INTERNAL_WORKFLOWS)
