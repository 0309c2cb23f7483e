"""``X-Hmac-Signature``: base64(HMAC-SHA256(key, raw body)), as NanoMDM signs webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def verify(key: str, body: bytes, signature: str | None) -> bool:
    if not signature:
        return False
    # bytes, not str: compare_digest refuses non-ASCII text, and a header is anybody's
    given = signature.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sign(key, body).encode(), given)
