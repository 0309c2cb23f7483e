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

from protocol import cms

_KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


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


# ---- signed profiles --------------------------------------------------------------


def signed_content(der: bytes) -> bytes:
    """The encapsulated content of a CMS SignedData blob (a signed .mobileconfig).

    The signature is not verified: a device would, but the simulator only needs the
    profile inside.
    """
    try:
        return cms.signed_content(der)
    except cms.CmsError as exc:
        raise CryptoError(str(exc)) from exc


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

    def restore(self, entries: tuple[CertEntry, ...]) -> None:
        """Use certificates saved by an earlier run (their keys are never made again)."""
        self._entries = entries

    def _make(self) -> tuple[CertEntry, ...]:
        rng = random.Random(f"{self._seed}:certs")
        # Issued a little while ago (by seed, whole days): a real device's identity is
        # valid for months yet, so certprof's expiry rule has something to compare.
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - dt.timedelta(days=30 + self._seed % 60)
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
