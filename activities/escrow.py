"""Decrypt what devices escrow and seal it at rest; the workflow only gets a receipt."""

from __future__ import annotations

import logging
import re

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models import EscrowCms, EscrowQuery, EscrowReceipt
from escrow.store import EscrowError, EscrowStore
from protocol import plist

log = logging.getLogger("mdmflow.escrow")

# Apple's personal recovery keys: six groups of four characters.
PRK_FORMAT = re.compile(r"^[A-Z0-9]{4}(-[A-Z0-9]{4}){5}$")


class EscrowActivities:
    def __init__(self, escrow: EscrowStore) -> None:
        self._escrow = escrow

    @activity.defn(name="escrow.has_secret")
    async def has_secret(self, inp: EscrowQuery) -> bool:
        """A pre-condition check: only whether one is escrowed, never what it is."""
        return await self._escrow.current(inp.enrollment_id, inp.kind) is not None

    @activity.defn(name="escrow.store_cms")
    async def store_cms(self, inp: EscrowCms) -> EscrowReceipt:
        raw = plist.from_json(inp.cms)
        if not isinstance(raw, bytes):
            raise ApplicationError("escrowed value is not CMS data", non_retryable=True)
        try:
            secret = (await self._escrow.decrypt_cms(raw)).decode("utf-8").strip()
        except (EscrowError, UnicodeDecodeError) as exc:
            raise ApplicationError(str(exc), type="EscrowError", non_retryable=True) from exc
        if inp.kind == "prk" and not PRK_FORMAT.match(secret):
            raise ApplicationError(
                "decrypted value is not a FileVault recovery key", non_retryable=True
            )
        secret_id = await self._escrow.put(inp.enrollment_id, inp.kind, secret, inp.source)
        log.info("escrowed %s for %s (secret %d)", inp.kind, inp.enrollment_id, secret_id)
        return EscrowReceipt(secret_id=secret_id)
