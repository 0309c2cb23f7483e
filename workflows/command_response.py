"""``mdmflow.command_response.v1``: hand one report to a workflow that subscribed to its
RequestType (NanoCMD's AllCommandResponse), durably and with retries.

Started by the relay with a workflow ID derived from the CommandUUID, so a duplicated
webhook is delivered once.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from protocol.results import CommandReport
    from workflows.models import check_revision
    from workflows.registry import BY_NAME


class CommandResponseInput(BaseModel):
    subscriber: str
    report: CommandReport
    revision: int = 1  # see workflows.models.ENGINE_REVISION


@workflow.defn(name="mdmflow.command_response.v1")
class CommandResponseWorkflow:
    @workflow.run
    async def run(self, inp: CommandResponseInput) -> str:
        check_revision(inp.revision)
        subscriber = BY_NAME.get(inp.subscriber)
        if subscriber is None or not subscriber.ALL_COMMAND_RESPONSE_TYPES:
            return f"no subscriber {inp.subscriber!r}"
        await subscriber.on_command_response(inp.report, inp.revision)
        return f"{inp.report.request_type} {inp.report.status} handled by {inp.subscriber}"
