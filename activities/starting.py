"""Activity behind scheduled starts: resolve the enrollments, start the workflow."""

from __future__ import annotations

import logging

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.models import StartRequest, StartSummary
from mdmflow.admission import SystemGate
from mdmflow.temporal_calls.starts import start_workflow
from store.events import EnrollmentRegister
from store.holds import HoldStore

log = logging.getLogger("mdmflow.schedules")


class StartActivities:
    def __init__(
        self,
        client: Client,
        task_queue: str,
        register: EnrollmentRegister,
        holds: HoldStore,
        gate: SystemGate | None = None,
    ) -> None:
        self._client = client
        # the emergency stop and the policy, asked before each start (None: not asked)
        self._gate = gate
        self._task_queue = task_queue
        self._register = register
        self._holds = holds

    @activity.defn(name="starter.start_workflows")
    async def start_workflows(self, request: StartRequest) -> StartSummary:
        ids = request.ids if request.ids is not None else await self._register.enrolled()
        if not ids:
            log.info("scheduled %s: no enrollments", request.workflow)
            return StartSummary(instance_id="", started=0, refused=0)
        activity.heartbeat(len(ids))
        if self._gate is not None and (why := await self._gate(request.workflow, len(ids))):
            log.warning("scheduled %s not started: %s", request.workflow, why)
            raise ApplicationError(why, type="PolicyRefused", non_retryable=True)
        result = await start_workflow(
            self._client,
            self._task_queue,
            request.workflow,
            ids,
            request.context,
            holds=self._holds,
        )
        return StartSummary(
            instance_id=result.instance_id,
            started=len(result.started),
            refused=len(result.refused),
        )
