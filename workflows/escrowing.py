"""Hand a device's CMS-encrypted recovery key to the escrow activity (workflow side).

The workflow passes ciphertext and gets back only a receipt number; decryption and
sealing happen in the activity, so the key itself never enters history.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.models import EscrowCms, EscrowReceipt
    from workflows.engine import MdmWorkflow


async def escrow_recovery_key(run: MdmWorkflow, cms: dict[str, Any], source: str) -> int:
    receipt = await run.activity(
        "escrow.store_cms",
        EscrowCms(enrollment_id=run.input.enrollment_id, cms=cms, source=source),
        result_type=EscrowReceipt,
        summary="decrypt and escrow the recovery key",
    )
    return receipt.secret_id
