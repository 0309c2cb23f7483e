"""Workflow inputs, step outcomes and the operator-visible run state.

:class:`RunState` is the one model that the ``state`` query, the API's run details and
the search attributes are all derived from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, PositiveFloat

from protocol.results import CommandReport

# The engine revision new runs are started under. A change to what a workflow records
# in history (its commands) is gated on ``WorkflowInput.revision``, so a run started by
# an earlier version keeps replaying the code path it was started on, at no cost in
# history (``workflow.patched`` would add a marker and a search-attribute upsert to
# every run). Revisions: 1 = v0.1 (store writes as activities); 2 = store writes as
# local activities; 3 = idempotent, bounded sends that a finished step stops waiting for
# (``workflows.engine.IDEMPOTENT_SEND_REVISION``); 4 = fleet runs: one run drives a chunk
# of enrollments (``workflows.fleet``), a start no longer starts one run per device;
# 5 = governance: the emergency stop halts runs at step boundaries, and a destructive
# step is preceded by a policy check and, where the policy says so, an approval
# (``workflows.governed``).
ENGINE_REVISION = 5
FLEET_REVISION = 4
GOVERNANCE_REVISION = 5


class RevisionTooNew(RuntimeError):
    """A run started under a newer engine revision reached an older worker.

    Raised from workflow code it fails the workflow *task*, not the run: the task is
    retried until an upgraded worker takes it, so an old worker never records history
    that the new code could not replay. (Workers from before revisions existed cannot
    check this: upgrade every worker before the API and relay when leaving v0.1.)
    """


def check_revision(revision: int) -> None:
    if revision > ENGINE_REVISION:
        raise RevisionTooNew(
            f"this run was started under engine revision {revision}; this worker runs "
            f"revision {ENGINE_REVISION}: upgrade the worker"
        )


OnFailure = Literal["fail", "suspend"]
# Automatic retries of a failed step a start may ask for.
MAX_RETRIES = 10


class WorkflowInput(BaseModel):
    enrollment_id: str
    instance_id: str
    context: str | None = None
    url_params: dict[str, str] = Field(default_factory=dict)
    # Workflow-level default step timeout; a step's own timeout wins, the engine's 72 h loses.
    step_timeout_seconds: float | None = None
    # Re-push intervals in seconds (the last one repeats) instead of the workflow's
    # REPUSH_SCHEDULE; lets tests and chaos runs see re-push and re-issue in seconds.
    repush_after_seconds: list[PositiveFloat] | None = None
    # Set by the starter to ENGINE_REVISION; inputs recorded before revisions existed
    # decode as 1.
    revision: int = 1
    # Fleet runs: what a failed step does ("suspend": wait for retry, skip or abort);
    # None: the workflow's default (``MdmWorkflow.ON_FAILURE``).
    on_failure: OnFailure | None = None
    # Fleet runs: automatic retries of a failed step (under new CommandUUIDs) before it
    # fails or suspends, after retry_backoff_seconds, doubling each time.
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry_backoff_seconds: PositiveFloat = 60.0
    # Undo what the run did when it fails, is aborted or cancelled (profile, cmdplan).
    rollback: bool = False


class CommandProgress(BaseModel):
    """One command of a step as an operator sees it."""

    command_uuid: str
    request_type: str
    # Extra UUIDs under which a read-only command was re-issued after a long silence.
    reissued_as: list[str] = Field(default_factory=list)
    not_now_count: int = 0
    last_status: str | None = None
    error: str | None = None
    answered: bool = False


StepStatus = Literal[
    "waiting",
    "sending",
    "pending",
    "completed",
    "timed_out",
    "reset",
    "suspended",
    "skipped",
    "cancelled",
]


class StepRecord(BaseModel):
    name: str
    status: StepStatus = "sending"
    started_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    commands: list[CommandProgress] = Field(default_factory=list)
    pushes: int = 0
    push_error: str | None = None
    # What the MDM server could not take (unreachable, or an answer lost in transit);
    # unconfirmed commands are sent again, under the same UUIDs, at the next re-push.
    send_error: str | None = None


class EnrollmentReset(BaseModel):
    """The MDM server dropped this enrollment's queue: re-enrolled or checked out."""

    enrollment_id: str
    reason: Literal["re-enrolled", "checked out"]


class StepOutcome(BaseModel):
    """What a step returns: final answers in command order, and how it ended."""

    name: str
    results: list[CommandReport | None]
    timed_out: bool = False
    # Set when the enrollment was reset while the step waited (see MdmWorkflow).
    reset: str | None = None
    # Why some commands never reached the MDM server, when that is why they are missing.
    send_error: str | None = None
    # An operator skipped the step after it failed: failed commands read as unanswered.
    skipped: bool = False

    @property
    def incomplete(self) -> bool:
        """Not every command got a final answer (timed out or enrollment reset)."""
        return self.timed_out or self.reset is not None

    @property
    def acknowledged(self) -> bool:
        return not self.timed_out and all(
            r is not None and r.status == "Acknowledged" for r in self.results
        )

    @property
    def errors(self) -> list[CommandReport]:
        return [r for r in self.results if r is not None and r.status != "Acknowledged"]

    def describe(self) -> str:
        if self.reset is not None:
            return f"step {self.name!r} ended: the enrollment was {self.reset}"
        if self.timed_out:
            missing = sum(1 for r in self.results if r is None)
            text = f"step {self.name!r} timed out with {missing} command(s) unanswered"
            if self.send_error:
                text += f"; the MDM server never took some of them ({self.send_error})"
            return text
        if self.errors:
            return f"step {self.name!r}: {error_chain(self.errors)}"
        return f"step {self.name!r} acknowledged"


def error_chain(errors: list[CommandReport]) -> str:
    """The device's errors in one line: each command's RequestType and error chain."""
    return "; ".join(f"{r.request_type or r.command_uuid}: {r.error_summary}" for r in errors)


RunStatus = Literal[
    "running",
    "paused",
    "suspended",
    "halted",  # by the emergency stop, at a step boundary; resumes when it is released
    "awaiting_approval",  # before a destructive step, for a second person's approval
    "completed",
    "failed",
    "cancelled",
    "timed_out",
]
# What a failed run's ApplicationError is typed as (the Web UI and the API show it).
FailureType = Literal[
    "DeviceError",
    "StepTimedOut",
    "ReEnrolled",
    "CheckedOut",
    "EnqueueFailed",
    "Aborted",
    "BadInput",
    "PolicyRefused",
    "NotApproved",
    "WorkflowFailed",
]


class RunState(BaseModel):
    workflow_name: str = ""
    enrollment_id: str = ""
    instance_id: str = ""
    status: RunStatus = "running"
    current_step: str | None = None
    message: str | None = None
    # Set when the run failed: the kind of failure, as the Temporal failure's type.
    failure_type: FailureType | None = None
    # A pause asked for while a step is in flight ("pause requested by alice: ...").
    control: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    ignored_reports: int = 0
    rejected_reports: int = 0
    last_report_status: str | None = None


class RunResult(BaseModel):
    """A workflow's return value: final status and a sentence a person understands."""

    status: RunStatus
    message: str
    enrollment_id: str
    instance_id: str


class FleetInput(BaseModel):
    """A fleet run: one workflow for a chunk of enrollments, each living its own story."""

    workflow_name: str
    instance_id: str
    chunk: int = 0
    enrollment_ids: list[str]
    context: str | None = None
    # Only for enrollments that have some (NanoCMD's per-ID URL parameters).
    url_params: dict[str, dict[str, str]] = Field(default_factory=dict)
    step_timeout_seconds: float | None = None
    repush_after_seconds: list[PositiveFloat] | None = None
    revision: int = FLEET_REVISION
    on_failure: OnFailure | None = None
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry_backoff_seconds: PositiveFloat = 60.0
    rollback: bool = False
    # Who started the run (governance, revision 5): the policy is checked again for
    # this role before a destructive step, and an approver must be someone else.
    started_by: str = ""
    started_role: str = ""
    # Devices of the whole start (all chunks), as the policy's max_targets counts them.
    target_count: int = 0

    def device_input(self, enrollment_id: str) -> WorkflowInput:
        return WorkflowInput(
            enrollment_id=enrollment_id,
            instance_id=self.instance_id,
            context=self.context,
            url_params=self.url_params.get(enrollment_id, {}),
            step_timeout_seconds=self.step_timeout_seconds,
            repush_after_seconds=self.repush_after_seconds,
            revision=self.revision,
            on_failure=self.on_failure,
            retries=self.retries,
            retry_backoff_seconds=self.retry_backoff_seconds,
            rollback=self.rollback,
        )


class FleetResult(RunResult):
    """A fleet run's return value; for a chunk of one it reads as that device's RunResult.

    ``status`` is the device's for a chunk of one; for more, ``completed`` when every
    device completed, otherwise ``failed`` (``by_status`` says how many of each).
    """

    chunk: int = 0
    devices: int = 1
    by_status: dict[str, int] = Field(default_factory=dict)


class FleetSummary(BaseModel):
    """Where a fleet run stands: devices per status and per current step."""

    workflow_name: str
    instance_id: str
    chunk: int
    devices: int
    by_status: dict[str, int]
    by_step: dict[str, int]
    ignored_reports: int = 0
    rejected_reports: int = 0
    # the emergency stop's sentence while it halts this run (engine revision 5), and
    # since when this run shows it
    halted: str | None = None
    halted_since: datetime | None = None
    awaiting_approval: bool = False


ControlAction = Literal["cancel", "pause", "resume", "retry", "skip", "abort"]


class ControlRequest(BaseModel):
    """An operator's action on devices of a run (all of them when none is named)."""

    action: ControlAction
    enrollment_ids: list[str] | None = None
    reason: str = ""
    actor: str = "operator"


class ControlResult(BaseModel):
    """Devices the action applied to, and why it did not apply to the others."""

    accepted: list[str] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)


class DeviceStatesPage(BaseModel):
    """A page of a fleet run's per-device states, in enrollment order."""

    states: list[RunState]
    next_after: str | None = None


class EmergencyStopNotice(BaseModel):
    """The emergency stop engaged or released, as the API broadcasts it to runs."""

    engaged: bool
    scope: str = "*"  # "*" or one workflow name
    reason: str = ""
    by: str = ""


class ApprovalDecision(BaseModel):
    """A second person's decision on a run that waits before its destructive step."""

    approve: bool
    user: str
    reason: str = ""


class GateInput(BaseModel):
    """What the pre-destructive check needs to know about the run."""

    workflow_name: str
    instance_id: str
    started_by: str
    started_role: str
    target_count: int
    step: str


class GateResult(BaseModel):
    """The policy's word right before a destructive step."""

    allowed: bool
    reason: str = ""
    approval_required: bool = False
    approval_timeout_seconds: float = 86400.0
    # the emergency stop blocking this workflow (a sentence), if any
    stopped: str | None = None
