"""AES-256-GCM sealing of secrets at rest with one master key.

The master key comes from ``MDMFLOW_SECRETS_KEY`` (32 bytes, base64) or is generated
once into ``var/secrets.key`` (mode 0600). Losing it loses every escrowed secret, so
back it up with the database; keep it out of the database's backups' reach.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mdmflow.secret_file import read_or_create

NONCE = 12


class SealError(ValueError):
    pass


def load_master_key(var_dir: Path) -> bytes:
    explicit = os.environ.get("MDMFLOW_SECRETS_KEY")
    if explicit:
        key = base64.b64decode(explicit)
        if len(key) != 32:
            raise SealError("MDMFLOW_SECRETS_KEY must be 32 bytes, base64-encoded")
        return key
    made = read_or_create(
        var_dir / "secrets.key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
    )
    return base64.b64decode(made)


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt, binding the ciphertext to ``context`` (e.g. enrollment and kind)."""
        nonce = secrets.token_bytes(NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], context.encode())
        except Exception as exc:
            raise SealError("secret cannot be opened: wrong master key or tampered") from exc
