"""Configuration profiles for tests: plain, signed (as Apple tools sign them) and damaged."""

from __future__ import annotations

import datetime as dt
import functools
import plistlib
import uuid
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from protocol import der

SignerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def profile(
    identifier: str = "com.example.profile",
    payload_uuid: str | None = None,
    fmt: plistlib.PlistFormat = plistlib.FMT_XML,
    **top: Any,
) -> bytes:
    doc: dict[str, Any] = {
        "PayloadContent": [
            {
                "PayloadType": "com.apple.dock",
                "PayloadIdentifier": f"{identifier}.dock",
                "PayloadUUID": str(uuid.uuid4()).upper(),
                "PayloadVersion": 1,
            }
        ],
        "PayloadDisplayName": f"Test {identifier}",
        "PayloadIdentifier": identifier,
        "PayloadType": "Configuration",
        "PayloadUUID": payload_uuid or str(uuid.uuid4()).upper(),
        "PayloadVersion": 1,
    }
    for key, value in top.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return plistlib.dumps(doc, fmt=fmt)


def _identity(key: SignerKey, name: str) -> tuple[SignerKey, x509.Certificate]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


@functools.cache
def rsa_identity() -> tuple[SignerKey, x509.Certificate]:
    return _identity(rsa.generate_private_key(65537, 2048), "mdmflow test RSA signer")


@functools.cache
def ec_identity() -> tuple[SignerKey, x509.Certificate]:
    return _identity(ec.generate_private_key(ec.SECP384R1()), "mdmflow test EC signer")


def sign(
    data: bytes,
    identity: tuple[SignerKey, x509.Certificate] | None = None,
    *,
    hash_alg: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | hashes.SHA224 | None = None,
    options: Sequence[pkcs7.PKCS7Options] = (),
    encoding: serialization.Encoding = serialization.Encoding.DER,
    certificate: x509.Certificate | None = None,
) -> bytes:
    """SignedData over ``data`` with the content embedded (as Apple profiles are)."""
    key, cert = identity or rsa_identity()
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(certificate or cert, key, hash_alg or hashes.SHA256())
        .sign(encoding, [pkcs7.PKCS7Options.Binary, *options])
    )


# ---- indefinite-length BER, as macOS `security cms -S` writes signed profiles ----------


def _indefinite(tag: int, parts: list[bytes]) -> bytes:
    return bytes([tag, 0x80]) + b"".join(parts) + b"\x00\x00"


def _primitive_octets(data: bytes) -> bytes:
    n = len(data)
    length = bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x04" + length + data


def to_ber(signed_der: bytes, chunk: int = 100) -> bytes:
    """Re-encode the SignedData envelope with indefinite lengths and a chunked content.

    Certificates and SignerInfos are copied as they are (their bytes are signed).
    """
    info = der.read_all(signed_der)
    oid, explicit = info.children()
    sd = explicit.children()[0]
    fields = sd.children()
    e_type, e_explicit = fields[2].children()
    content = e_explicit.children()[0].octets()
    segments = [_primitive_octets(content[i : i + chunk]) for i in range(0, len(content), chunk)]
    encap = _indefinite(0x30, [e_type.raw(), _indefinite(0xA0, [_indefinite(0x24, segments)])])
    body = [fields[0].raw(), fields[1].raw(), encap, *(f.raw() for f in fields[3:])]
    return _indefinite(0x30, [oid.raw(), _indefinite(0xA0, [_indefinite(0x30, body)])])
