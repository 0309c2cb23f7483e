"""``io.micromdm.wf.certprof.v1``: install a certificate profile when the device's
certificate is missing or about to expire.

Context (NanoCMD's JSON): ``{"profile": "name", "filter": {"cn_prefix": "...",
"allow_non_identity": false}, "criteria": {"always_replace": false,
"until_expiry_sec": 2592000}, "text_replacements": {"old": "new"},
"no_managed_only": false}``.
Commands that reach the device:
  1. step "list": CertificateList (managed only unless ``no_managed_only``).
  2. step "install": InstallProfile of the stored profile with the text replacements —
     only when no certificate matches the filter or the match meets the criteria
     (the ``certprof.evaluate`` activity decides).

On error: a bad context fails before anything is sent; more than one matching
certificate fails the run (the filter is ambiguous); a device Error fails it (typed
DeviceError), a timeout ends it ``timed_out``, a re-enrollment or CheckOut fails it.
An operator's skip (suspend on failure): a skipped "list" reads as a device with no
certificates (so the profile is installed); a skipped "install" completes the run
saying the profile was not installed.
Rolls back: nothing (a certificate profile replaced is not restored).
Verified: the device's acknowledgement of InstallProfile.
"""

from __future__ import annotations

import json
from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, Field, ValidationError

    from activities.models import CertDecision, CertEvaluation, CertificateFacts
    from protocol.commands import certificate_list, install_stored_profile
    from protocol.results import CertificateListResponse, typed
    from workflows.engine import MdmWorkflow
    from workflows.models import RunResult, WorkflowInput


class CertFilter(BaseModel):
    cn_prefix: str = ""
    allow_non_identity: bool = False


class CertCriteria(BaseModel):
    always_replace: bool = False
    until_expiry_sec: int = 0


class CertProfContext(BaseModel):
    profile: str = Field(min_length=1)
    filter: CertFilter
    criteria: CertCriteria | None = None
    text_replacements: dict[str, str] = Field(default_factory=dict)
    no_managed_only: bool = False


@workflow.defn(name="io.micromdm.wf.certprof.v1")
class CertProfWorkflow(MdmWorkflow):
    NAME = "io.micromdm.wf.certprof.v1"
    CODE = "crt"
    CONTEXT: ClassVar[type[BaseModel]] = CertProfContext  # strict JSON (workflows.contexts)

    @workflow.run
    async def run(self, inp: WorkflowInput) -> RunResult:
        self.begin(inp)
        try:
            ctx = CertProfContext.model_validate(json.loads(inp.context or ""))
        except (ValueError, ValidationError) as exc:
            return self.finish("failed", f"bad context (needs profile and filter): {exc}")

        listed = await self.step("list", [certificate_list(managed_only=not ctx.no_managed_only)])
        if (end := self.ended(listed)) is not None:
            return end
        answer = listed.results[0]
        # a skipped list has no answer: the device reads as having no certificates
        certs = [] if answer is None else typed(answer, CertificateListResponse).certificate_list
        criteria = ctx.criteria or CertCriteria()
        decision = await self.activity(
            "certprof.evaluate",
            CertEvaluation(
                certificates=[
                    CertificateFacts(
                        common_name=c.common_name, data=c.data, is_identity=c.is_identity
                    )
                    for c in certs
                ],
                cn_prefix=ctx.filter.cn_prefix,
                allow_non_identity=ctx.filter.allow_non_identity,
                # NanoCMD: no criteria means an existing certificate is never replaced
                always_replace=criteria.always_replace,
                until_expiry_sec=criteria.until_expiry_sec,
            ),
            result_type=CertDecision,
            summary="check certificate",
        )
        if not decision.replace:
            return self.finish("completed", f"not installing: {decision.reason}")

        step = await self.step(
            "install", [install_stored_profile(ctx.profile, ctx.text_replacements)]
        )
        if (end := self.ended(step)) is not None:
            return end
        if step.skipped:
            return self.finish(
                "completed",
                f"step 'install' skipped by an operator: profile {ctx.profile!r} not "
                f"installed ({decision.reason})",
            )
        return self.finish("completed", f"profile {ctx.profile!r} installed: {decision.reason}")
