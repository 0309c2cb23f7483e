"""``mdmflow.scheduled_start.v1``: what a Temporal Schedule runs.

Starts one MDM workflow for a list of enrollments, or for every enrolled device the
relay has seen, through the same start path as the API (exclusivity included).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.models import StartRequest, StartSummary


@workflow.defn(name="mdmflow.scheduled_start.v1")
class ScheduledStartWorkflow:
    @workflow.run
    async def run(self, request: StartRequest) -> StartSummary:
        summary: StartSummary = await workflow.execute_activity(
            "starter.start_workflows",
            request,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_attempts=5),
            result_type=StartSummary,
            summary=f"start {request.workflow}",
        )
        return summary
