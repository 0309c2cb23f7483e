"""Every workflow mdmflow runs, by NanoCMD name and by CommandUUID code."""

from __future__ import annotations

from workflows.command_response import SUBSCRIBERS, CommandResponseWorkflow
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.engine import MdmWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.scheduled_start import ScheduledStartWorkflow

WORKFLOWS: tuple[type[MdmWorkflow], ...] = (InventoryWorkflow, DevInfoLogWorkflow)

BY_NAME: dict[str, type[MdmWorkflow]] = {w.NAME: w for w in WORKFLOWS}
BY_CODE: dict[str, type[MdmWorkflow]] = {w.CODE: w for w in WORKFLOWS}

assert len(BY_CODE) == len(WORKFLOWS), "workflow codes must be unique"

# Helper workflows that are not started by name through the API.
INTERNAL_WORKFLOWS: tuple[type, ...] = (CommandResponseWorkflow, ScheduledStartWorkflow)
ALL_WORKFLOWS: tuple[type, ...] = (*WORKFLOWS, *INTERNAL_WORKFLOWS)


def command_response_subscribers(request_type: str, status: str) -> list[type[MdmWorkflow]]:
    """Workflows that want answers of ``request_type`` sent by any workflow."""
    return [
        w
        for w in WORKFLOWS
        if request_type in w.ALL_COMMAND_RESPONSE_TYPES
        and (status != "NotNow" or w.ALL_COMMAND_RESPONSE_NOTNOW)
    ]


SUBSCRIBERS.update({w.NAME: w for w in WORKFLOWS if w.ALL_COMMAND_RESPONSE_TYPES})
