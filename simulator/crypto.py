"""Certificates, CMS envelopes and recovery keys for simulated devices.

Key generation is the expensive part, so the fleet's certificates are made once, on
first use, and shared by every device.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


class CryptoError(ValueError):
    """Input that is not a usable certificate or CMS structure."""


def recovery_key(rng: random.Random) -> str:
    """A FileVault personal recovery key in Apple's ``XXXX-XXXX-...`` (6 groups) form."""
    chars = "".join(rng.choice(_KEY_ALPHABET) for _ in range(24))
    return "-".join(chars[i : i + 4] for i in range(0, 24, 4))


def load_certificate(raw: bytes) -> x509.Certificate:
    """Load a DER or PEM certificate as found in a pkcs1 payload or command field."""
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise CryptoError(f"not a certificate: {exc}") from exc


def envelope(data: bytes, cert_der: bytes) -> bytes:
    """CMS EnvelopedData (DER) of ``data`` to ``cert_der``, as macOS escrows keys."""
    cert = load_certificate(cert_der)
    try:
        return (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(data)
            .add_recipient(cert)
            .encrypt(serialization.Encoding.DER, [])
        )
    except (TypeError, ValueError) as exc:  # e.g. a non-RSA recipient
        raise CryptoError(f"cannot encrypt to certificate: {exc}") from exc


# ---- minimal DER reader: enough to take the content out of a signed profile -----------


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the element at ``pos``."""
    if pos + 2 > len(buf):
        raise CryptoError("truncated DER")
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length == 0x80:
        raise CryptoError("indefinite-length encoding is not supported")
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(buf):
            raise CryptoError("bad DER length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(buf):
        raise CryptoError("truncated DER")
    return tag, pos, end


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = _tlv(buf, pos)
        out.append((tag, cs, ce))
        pos = ce
    return out


def _octets(buf: bytes, tag: int, start: int, end: int) -> bytes:
    if tag == 0x04:
        return buf[start:end]
    if tag == 0x24:  # constructed OCTET STRING: concatenate the segments
        return b"".join(_octets(buf, t, s, e) for t, s, e in _children(buf, start, end))
    raise CryptoError("eContent is not an OCTET STRING")


def signed_content(der: bytes) -> bytes:
    """The encapsulated content of a CMS SignedData blob (a signed .mobileconfig).

    The signature is not verified: a device would, but the simulator only needs the
    profile inside.
    """
    tag, s, e = _tlv(der, 0)
    if tag != 0x30:
        raise CryptoError("not a CMS ContentInfo")
    parts = _children(der, s, e)
    if len(parts) < 2 or parts[0][0] != 0x06 or der[parts[0][1] : parts[0][2]] != _OID_SIGNED_DATA:
        raise CryptoError("not CMS SignedData")
    _, xs, _ = parts[1]  # [0] EXPLICIT
    sd_tag, sds, sde = _tlv(der, xs)
    if sd_tag != 0x30:
        raise CryptoError("bad SignedData")
    fields = _children(der, sds, sde)
    if len(fields) < 3:
        raise CryptoError("bad SignedData")
    _, ecs, ece = fields[2]  # encapContentInfo
    eci = _children(der, ecs, ece)
    if len(eci) < 2:
        raise CryptoError("SignedData has no content (detached signature)")
    _, cs, _ = eci[1]  # [0] EXPLICIT eContent
    inner_tag, is_, ie = _tlv(der, cs)
    return _octets(der, inner_tag, is_, ie)


# ---- the fleet's certificates for CertificateList -------------------------------------


@dataclass(frozen=True, slots=True)
class CertEntry:
    common_name: str
    der: bytes
    is_identity: bool


class FleetCertificates:
    """A small CA and an identity certificate signed by it, created on first use."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._entries: tuple[CertEntry, ...] | None = None

    def entries(self) -> tuple[CertEntry, ...]:
        if self._entries is None:
            self._entries = self._make()
        return self._entries

    def _make(self) -> tuple[CertEntry, ...]:
        rng = random.Random(f"{self._seed}:certs")
        start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=self._seed % 365)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mdmflow simulator"),
                x509.NameAttribute(NameOID.COMMON_NAME, "mdmflow simulator CA"),
            ]
        )
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(rng.getrandbits(63) + 1)
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        id_key = ec.generate_private_key(ec.SECP256R1())
        id_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmflow simulator identity")])
        ident = (
            x509.CertificateBuilder()
            .subject_name(id_name)
            .issuer_name(ca_name)
            .public_key(id_key.public_key())
            .serial_number(rng.getrandbits(63) + 1)
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=397))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            CertEntry("mdmflow simulator CA", ca.public_bytes(serialization.Encoding.DER), False),
            CertEntry(
                "mdmflow simulator identity", ident.public_bytes(serialization.Encoding.DER), True
            ),
        )
