"""Custom search attributes: find runs by enrollment, workflow, instance and step.

They must be registered on the Temporal server before use (the embedded stack passes
them to the dev server; tests register them on the time-skipping server).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

ENROLLMENT_ID = SearchAttributeKey.for_keyword("MdmEnrollmentId")
WORKFLOW_NAME = SearchAttributeKey.for_keyword("MdmWorkflowName")
INSTANCE_ID = SearchAttributeKey.for_keyword("MdmInstanceId")
CURRENT_STEP = SearchAttributeKey.for_keyword("MdmStep")

ALL = (ENROLLMENT_ID, WORKFLOW_NAME, INSTANCE_ID, CURRENT_STEP)
