"""Who may post to ``/webhook``: an HMAC signature, HTTP Basic credentials or a path token.

NanoMDM signs each webhook (``X-Hmac-Signature``). MicroMDM cannot sign, but its Go HTTP
client sends the credentials of its webhook URL (``http://user:secret@host/webhook``)
as an ``Authorization: Basic`` header, and any sender can be given a URL whose last
segment is a secret (``/webhook/<token>``). A webhook must pass one of the configured
methods. With none configured every webhook is refused (anyone who reaches ``/webhook``
could otherwise forge an Authenticate that ends a running lock), unless insecure mode is
set explicitly (``MDMFLOW_WEBHOOK_INSECURE=1``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from relay.hmac_check import verify


@dataclass(frozen=True)
class WebhookAuth:
    hmac_key: str | None = None
    # (user, password) the MDM server sends from the credentials in its webhook URL
    basic: tuple[str, str] | None = None
    # the secret last segment of ``/webhook/<token>``
    path_token: str | None = None
    # accept webhooks without authentication when no method is configured
    insecure: bool = False

    @classmethod
    def from_settings(
        cls,
        hmac_key: str | None,
        basic: str | None,
        path_token: str | None,
        insecure: bool = False,
    ) -> WebhookAuth:
        """From ``MDMFLOW_WEBHOOK_HMAC_KEY``, ``_BASIC_AUTH`` (user:secret), ``_PATH_TOKEN``."""
        pair = None
        if basic:
            user, sep, password = basic.partition(":")
            if not sep or not user or not password:
                raise ValueError("MDMFLOW_WEBHOOK_BASIC_AUTH must be user:secret")
            pair = (user, password)
        return cls(
            hmac_key=hmac_key or None, basic=pair, path_token=path_token or None, insecure=insecure
        )

    @property
    def required(self) -> bool:
        return bool(self.hmac_key or self.basic or self.path_token)

    def methods(self) -> str:
        """The configured methods, for log lines and refusals."""
        names = [
            name
            for name, on in (
                ("X-Hmac-Signature", self.hmac_key),
                ("HTTP Basic", self.basic),
                ("path token", self.path_token),
            )
            if on
        ]
        return " or ".join(names) or "MDMFLOW_WEBHOOK_HMAC_KEY, _BASIC_AUTH or _PATH_TOKEN"

    def accepts(
        self, body: bytes, signature: str | None, authorization: str | None, token: str | None
    ) -> bool:
        """True when the request passes one configured method (or insecure mode is on)."""
        if not self.required:
            return self.insecure
        if self.hmac_key and verify(self.hmac_key, body, signature):
            return True
        if self.basic and _basic_matches(authorization, self.basic):
            return True
        return bool(
            self.path_token
            and token is not None
            and hmac.compare_digest(token.encode(), self.path_token.encode())
        )


def _basic_matches(header: str | None, expected: tuple[str, str]) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    want = f"{expected[0]}:{expected[1]}".encode()
    return hmac.compare_digest(decoded, want)
