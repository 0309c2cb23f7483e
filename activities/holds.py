"""Activities on run holds: a fleet run lets go of its enrollments as they finish."""

from __future__ import annotations

import logging

from temporalio import activity

from activities.models import ReleaseHolds
from store.holds import HoldStore

log = logging.getLogger("mdmflow.holds")


class HoldActivities:
    def __init__(self, holds: HoldStore) -> None:
        self._holds = holds

    @activity.defn(name="holds.release")
    async def release(self, inp: ReleaseHolds) -> int:
        """Release the run's holds (recording how those devices ended, when given);
        repeatable, so a retried attempt is harmless."""
        if inp.outcomes:
            released = await self._holds.finish(inp.workflow_id, inp.outcomes)
        else:
            released = await self._holds.release(inp.workflow_id, inp.enrollment_ids)
        log.info(
            "holds of %r released: %d%s",
            inp.workflow_id,
            released,
            "" if inp.enrollment_ids is None else f" of {len(inp.enrollment_ids)} asked",
        )
        return released
