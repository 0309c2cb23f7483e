"""Payload encryption: what workflows carry is stored in Temporal as AES-256-GCM ciphertext.

Temporal keeps every workflow input, result, signal and activity argument in its history;
device identities and MDM answers do not belong there in clear. The codec encrypts each
payload with the current key of a key ring and names the key in the payload's metadata,
so keys can rotate: new payloads use the first key, old histories still decrypt with any
key the ring knows. Payloads that are not encrypted (histories recorded before
encryption) pass through decoding unchanged.

Keys come from ``MDMFLOW_PAYLOAD_KEYS`` (``id:base64key,...``, first is current) or from
``$MDMFLOW_VAR_DIR/payload.key`` (same format), generated on first start.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from mdmflow.secret_file import read_or_create

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_FILE = "payload.key"
ENV_KEYS = "MDMFLOW_PAYLOAD_KEYS"
NONCE_BYTES = 12
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PayloadKeyError(ValueError):
    """A payload key ring that cannot be used, or a payload no known key opens."""


@dataclass(frozen=True)
class KeyRing:
    """Named 256-bit keys; the first encrypts, any of them decrypts."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise PayloadKeyError("the payload key ring is empty")
        seen: set[str] = set()
        for key_id, key in self.keys:
            if not _KEY_ID_RE.match(key_id):
                raise PayloadKeyError(f"payload key ID {key_id!r}: use letters, digits, . _ -")
            if len(key) != 32:
                raise PayloadKeyError(f"payload key {key_id!r} must be 32 bytes (AES-256)")
            if key_id in seen:
                raise PayloadKeyError(f"payload key ID {key_id!r} appears twice")
            seen.add(key_id)

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def get(self, key_id: str) -> bytes | None:
        return dict(self.keys).get(key_id)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``id:base64key,id:base64key``, current first (commas or newlines between)."""
        keys: list[tuple[str, bytes]] = []
        for item in re.split(r"[,\s]+", text.strip()):
            if not item:
                continue
            key_id, sep, encoded = item.partition(":")
            if not sep:
                raise PayloadKeyError(f"payload key {item[:8]}...: expected id:base64key")
            try:
                key = base64.b64decode(encoded, validate=True)
            except ValueError as exc:
                raise PayloadKeyError(f"payload key {key_id!r} is not valid base64") from exc
            keys.append((key_id, key))
        return cls(tuple(keys))

    def format(self) -> str:
        return ",".join(f"{i}:{base64.b64encode(k).decode()}" for i, k in self.keys)

    @classmethod
    def generate(cls, key_id: str | None = None) -> KeyRing:
        return cls(((key_id or new_key_id(), AESGCM.generate_key(bit_length=256)),))


def new_key_id() -> str:
    """Sortable by creation time, unique between installs: ``k20250101-1a2b3c``."""
    return time.strftime("k%Y%m%d-", time.gmtime()) + secrets.token_hex(3)


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM per payload; the key ID is also the associated data, so it cannot be
    swapped without the payload failing authentication."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key_id = self.ring.current_id
        aes = AESGCM(self.ring.keys[0][1])
        out = []
        for p in payloads:
            nonce = secrets.token_bytes(NONCE_BYTES)
            sealed = aes.encrypt(nonce, p.SerializeToString(), key_id.encode())
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: key_id.encode()},
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(p) for p in payloads]

    def open(self, p: Payload) -> Payload:
        if p.metadata.get("encoding") != ENCODING:
            return p  # recorded before encryption, or never encrypted: as it is
        key_id = p.metadata.get(KEY_ID, b"").decode(errors="replace")
        key = self.ring.get(key_id)
        if key is None:
            raise PayloadKeyError(
                f"payload encrypted with unknown key {key_id!r}: add it to the ring"
            )
        try:
            plain = AESGCM(key).decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag as exc:
            raise PayloadKeyError(f"payload under key {key_id!r} failed authentication") from exc
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded


def var_dir() -> Path:
    """``MDMFLOW_VAR_DIR`` as :func:`mdmflow.config.load` reads it."""
    return Path(os.environ.get("MDMFLOW_VAR_DIR") or "var").resolve()


def load_key_ring(directory: Path | None = None) -> KeyRing:
    """``MDMFLOW_PAYLOAD_KEYS``, else ``payload.key`` in the var dir (created once, 0600)."""
    explicit = os.environ.get(ENV_KEYS, "").strip()
    if explicit:
        return KeyRing.parse(explicit)
    path = (directory or var_dir()) / KEY_FILE
    return KeyRing.parse(read_or_create(path, lambda: KeyRing.generate().format()))


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The project's converter (pydantic) with ``codec`` applied to every payload."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


_converters: dict[tuple[str, Path], DataConverter] = {}


def default_converter() -> DataConverter:
    """The encrypting converter for this process's key ring (one per key source)."""
    source = (os.environ.get(ENV_KEYS, "").strip(), var_dir())
    if source not in _converters:
        _converters[source] = data_converter(EncryptionCodec(load_key_ring(source[1])))
    return _converters[source]
