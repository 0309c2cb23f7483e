"""Every workflow mdmflow runs, by NanoCMD name and by CommandUUID code."""

from __future__ import annotations

from workflows.certprof import CertProfWorkflow
from workflows.cmdplan import CmdPlanWorkflow
from workflows.devinfolog import DevInfoLogWorkflow
from workflows.engine import MdmWorkflow
from workflows.erase import EraseWorkflow
from workflows.fvenable import FileVaultEnableWorkflow
from workflows.fvrotate import FileVaultRotateWorkflow
from workflows.inventory import InventoryWorkflow
from workflows.lock import LockWorkflow
from workflows.profile import ProfileWorkflow

WORKFLOWS: tuple[type[MdmWorkflow], ...] = (
    InventoryWorkflow,
    DevInfoLogWorkflow,
    LockWorkflow,
    ProfileWorkflow,
    CmdPlanWorkflow,
    CertProfWorkflow,
    FileVaultEnableWorkflow,
    FileVaultRotateWorkflow,
    EraseWorkflow,
)

BY_NAME: dict[str, type[MdmWorkflow]] = {w.NAME: w for w in WORKFLOWS}
BY_CODE: dict[str, type[MdmWorkflow]] = {w.CODE: w for w in WORKFLOWS}

assert len(BY_CODE) == len(WORKFLOWS), "workflow codes must be unique"


def command_response_subscribers(request_type: str, status: str) -> list[type[MdmWorkflow]]:
    """Workflows that want answers of ``request_type`` sent by any workflow."""
    return [
        w
        for w in WORKFLOWS
        if request_type in w.ALL_COMMAND_RESPONSE_TYPES
        and (status != "NotNow" or w.ALL_COMMAND_RESPONSE_NOTNOW)
    ]
