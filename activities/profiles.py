"""Activities that read the profile and command-plan stores and judge certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models import (
    CertDecision,
    CertEvaluation,
    CmdPlanRequest,
    CmdPlanResult,
    ProfileInfoRequest,
    ProfileInfoResult,
    ProfileSummary,
)
from protocol import plist
from store.cmdplans import CmdPlanStore
from store.events import EnrollmentRegister
from store.profiles import ProfileStore


class ProfileActivities:
    def __init__(
        self, profiles: ProfileStore, cmdplans: CmdPlanStore, register: EnrollmentRegister
    ) -> None:
        self._profiles = profiles
        self._cmdplans = cmdplans
        self._register = register

    @activity.defn(name="profiles.info")
    async def info(self, req: ProfileInfoRequest) -> ProfileInfoResult:
        found = await self._profiles.info(req.names)
        return ProfileInfoResult(
            profiles={
                name: ProfileSummary(identifier=i.identifier, uuid=i.uuid)
                for name, i in found.items()
            }
        )

    @activity.defn(name="cmdplans.load")
    async def load_cmdplan(self, req: CmdPlanRequest) -> CmdPlanResult:
        plan = await self._cmdplans.get(req.name)
        if plan is None:
            return CmdPlanResult(found=False)
        expanded = plan.expanded(req.url_params)
        return CmdPlanResult(
            found=True,
            profile_names=expanded.profile_names,
            manifest_urls=expanded.manifest_urls,
            device_configured=expanded.device_configured,
            awaiting_configuration=await self._register.awaiting_configuration(req.enrollment_id),
        )

    @activity.defn(name="enrollments.configured")
    async def configured(self, enrollment_id: str) -> None:
        await self._register.configured(enrollment_id)

    @activity.defn(name="certprof.evaluate")
    async def evaluate(self, req: CertEvaluation) -> CertDecision:
        """NanoCMD's certprof rule: filter to at most one cert, then replace or keep it."""
        matching = [
            c
            for c in req.certificates
            if (req.allow_non_identity or c.is_identity)
            and (not req.cn_prefix or c.common_name.startswith(req.cn_prefix))
        ]
        if len(matching) > 1:
            raise ApplicationError(
                f"{len(matching)} certificates match the filter (of {len(req.certificates)}); "
                "make the filter narrower",
                non_retryable=True,
            )
        if not matching:
            return CertDecision(replace=True, reason="no matching certificate")
        if req.always_replace:
            return CertDecision(replace=True, reason="always replace")
        if req.until_expiry_sec > 0:
            der = plist.from_json(matching[0].data)
            try:
                cert = x509.load_der_x509_certificate(der)
            except (ValueError, TypeError) as exc:
                return CertDecision(replace=True, reason=f"unreadable certificate: {exc}")
            left = cert.not_valid_after_utc - datetime.now(UTC)
            if left < timedelta(seconds=req.until_expiry_sec):
                return CertDecision(
                    replace=True,
                    reason=f"expires {cert.not_valid_after_utc.isoformat()}, within "
                    f"{req.until_expiry_sec} s",
                )
        return CertDecision(replace=False, reason="certificate is fine")
