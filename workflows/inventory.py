"""``io.micromdm.wf.inventory.v1``: refresh the inventory of one enrollment.

Commands that reach the device, in one step "inventory":
  1. DeviceInformation (serial, model, names, OS, MAC, Apple silicon, battery, ...)
  2. SecurityInfo (SIP, FileVault)
On success the answers are written to the inventory store (``GET /v1/inventory``).

On error: after a device Error the other answer is still stored and the run fails with
the error (typed DeviceError); if the device does not answer within the step timeout
the run ends ``timed_out``. A re-enrollment mid-step re-sends the unanswered commands;
a CheckOut ends the run. An operator's skip (suspend on failure) stores what was
acknowledged and completes, saying the step was skipped.
Rolls back: nothing (the commands only read).
Verified: nothing beyond the answers themselves; what is stored is what the device said.
SecurityInfo answers to *other* workflows' commands (e.g. FileVault polls) update the
FileVault and SIP values too (AllCommandResponse).
"""

from __future__ import annotations

from typing import Any, ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.models import InventoryUpdate
    from protocol.commands import device_information, security_info
    from protocol.results import (
        CommandReport,
        DeviceInformationResponse,
        SecurityInfoResponse,
        typed,
    )
    from workflows.contexts import NoContext
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput
    from workflows.storing import store_inventory

# DeviceInformation query -> inventory key (NanoCMD's inventory keys).
DEVICE_KEYS = {
    "serial_number": "serial_number",
    "model": "model",
    "model_name": "model_name",
    "device_name": "device_name",
    "build_version": "build_version",
    "os_version": "os_version",
    "ethernet_mac": "ethernet_mac",
    "is_supervised": "supervised",
    "is_apple_silicon": "apple_silicon",
    "has_battery": "has_battery",
    "supports_lom_device": "supports_lom",
    "is_multi_user": "is_multiuser",
}


def device_values(report: CommandReport) -> dict[str, Any]:
    qr = typed(report, DeviceInformationResponse).query_responses
    values = {key: getattr(qr, attr) for attr, key in DEVICE_KEYS.items()}
    return {k: v for k, v in values.items() if v is not None}


def security_values(report: CommandReport) -> dict[str, Any]:
    si = typed(report, SecurityInfoResponse).security_info
    values = {"sip_enabled": si.sip_enabled, "fde_enabled": si.fde_enabled}
    return {k: v for k, v in values.items() if v is not None}


@workflow.defn(name="io.micromdm.wf.inventory.v1")
class InventoryWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.inventory.v1"
    CODE = "inv"
    CONTEXT: ClassVar[type[BaseModel]] = NoContext  # NanoCMD: none
    ON_ENROLLMENT_RESET = "restart"
    ALL_COMMAND_RESPONSE_TYPES = frozenset({"SecurityInfo"})

    @staticmethod
    async def on_command_response(report: CommandReport, revision: int) -> None:
        if report.status != "Acknowledged":
            return
        values = security_values(report)
        if values:
            await store_inventory(
                revision,
                InventoryUpdate(
                    enrollment_id=report.enrollment_id, values=values, source="SecurityInfo"
                ),
                summary="store SecurityInfo values",
            )

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        step = await self.step("inventory", [device_information(), security_info()])
        if (end := self.interrupted(step)) is not None:
            return end

        values: dict[str, Any] = {}
        source = []
        devinfo, secinfo = step.results  # answers come back in command order
        if devinfo is not None and devinfo.status == "Acknowledged":
            values.update(device_values(devinfo))
            source.append("DeviceInformation")
        if secinfo is not None and secinfo.status == "Acknowledged":
            values.update(security_values(secinfo))
            source.append("SecurityInfo")
        if values:
            await self.store_inventory(
                InventoryUpdate(
                    enrollment_id=inp.enrollment_id, values=values, source="+".join(source)
                ),
            )
        if step.errors:
            return self.finish("failed", step.describe())
        if step.skipped:
            return self.finish(
                "completed",
                f"step 'inventory' skipped by an operator; inventory updated "
                f"({len(values)} values from {'+'.join(source) or 'no answer'})",
            )
        return self.finish("completed", f"inventory updated ({len(values)} values)")
