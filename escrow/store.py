"""The escrow: our keypair for devices to encrypt to, and the secrets they send.

- One escrow keypair, generated once and persisted (its private key sealed with the
  master key), so a restart never loses the ability to read escrowed keys.
- Secrets are sealed at rest; a new one supersedes the previous of the same kind,
  which is kept (rotation keeps history).
- :meth:`EscrowStore.retrieve` is the only way out for people, and every call is
  recorded in ``secret_access``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from escrow.sealing import Sealer
from store.db import EscrowKeyRow, SecretAccessRow, SecretRow, iso_utc

KINDS = ("prk", "pin")


class EscrowError(ValueError):
    pass


@dataclass(frozen=True)
class EscrowKey:
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _new_keypair() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmflow escrow")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * 20))
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


class EscrowStore:
    def __init__(self, engine: AsyncEngine, sealer: Sealer) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._sealer = sealer
        self._key: EscrowKey | None = None

    async def key(self) -> EscrowKey:
        """The escrow keypair, created on first use and the same ever after.

        Two processes creating it at once both insert row 1; the loser's insert fails
        and it reads the winner's, so every process encrypts to one certificate.
        """
        if self._key is not None:
            return self._key
        row = await self._load_key_row()
        if row is None:
            try:
                row = await self._create_key_row()
            except IntegrityError:
                row = await self._load_key_row()
                if row is None:
                    raise
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        private_key = serialization.load_der_private_key(
            self._sealer.open(row.private_key_sealed, "escrow-key"), password=None
        )
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise EscrowError("escrow key is not RSA")
        self._key = EscrowKey(cert, private_key)
        return self._key

    async def _load_key_row(self) -> EscrowKeyRow | None:
        async with self._sessions() as session:
            return await session.get(EscrowKeyRow, 1)

    async def _create_key_row(self) -> EscrowKeyRow:
        private, cert = _new_keypair()
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        row = EscrowKeyRow(
            id=1,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_sealed=self._sealer.seal(der, "escrow-key"),
            created=datetime.now(UTC),
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return row

    async def decrypt_cms(self, cms_der: bytes) -> bytes:
        """Open a CMS EnvelopedData a device encrypted to our escrow certificate."""
        key = await self.key()
        try:
            return pkcs7.pkcs7_decrypt_der(cms_der, key.certificate, key.private_key, [])
        except Exception as exc:
            raise EscrowError(f"cannot decrypt the device's CMS: {exc}") from exc

    @staticmethod
    def _context(enrollment_id: str, kind: str) -> str:
        return f"{kind}:{enrollment_id}"

    async def put(self, enrollment_id: str, kind: str, secret: str, source: str) -> int:
        """Escrow a secret; idempotent per ``source`` (an activity retry stores nothing new)."""
        if kind not in KINDS:
            raise EscrowError(f"unknown secret kind {kind!r}")
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            existing = await session.scalar(
                select(SecretRow).where(
                    SecretRow.enrollment_id == enrollment_id,
                    SecretRow.kind == kind,
                    SecretRow.source == source,
                )
            )
            if existing is not None:
                return existing.id
            await session.execute(
                update(SecretRow)
                .where(
                    SecretRow.enrollment_id == enrollment_id,
                    SecretRow.kind == kind,
                    SecretRow.superseded.is_(None),
                )
                .values(superseded=now)
            )
            row = SecretRow(
                enrollment_id=enrollment_id,
                kind=kind,
                sealed=self._sealer.seal(secret.encode(), self._context(enrollment_id, kind)),
                source=source,
                created=now,
            )
            session.add(row)
            await session.flush()
            return row.id

    async def by_source(self, enrollment_id: str, kind: str, source: str) -> str | None:
        """The secret escrowed by ``source`` (so a retried command reuses its PIN)."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(SecretRow).where(
                    SecretRow.enrollment_id == enrollment_id,
                    SecretRow.kind == kind,
                    SecretRow.source == source,
                )
            )
        return self._open(row) if row is not None else None

    def _open(self, row: SecretRow) -> str:
        return self._sealer.open(row.sealed, self._context(row.enrollment_id, row.kind)).decode()

    async def current(self, enrollment_id: str, kind: str) -> str | None:
        """For activities that build a command from the secret (never for people)."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(SecretRow)
                .where(
                    SecretRow.enrollment_id == enrollment_id,
                    SecretRow.kind == kind,
                    SecretRow.superseded.is_(None),
                )
                .order_by(SecretRow.id.desc())
            )
        return self._open(row) if row is not None else None

    async def retrieve(
        self, enrollment_id: str, kind: str, who: str, reason: str, *, previous: bool = False
    ) -> list[dict[str, Any]]:
        """Secrets for a person: the current one (or all with ``previous``), audited."""
        async with self._sessions() as session, session.begin():
            query = select(SecretRow).where(
                SecretRow.enrollment_id == enrollment_id, SecretRow.kind == kind
            )
            if not previous:
                query = query.where(SecretRow.superseded.is_(None))
            rows = list(await session.scalars(query.order_by(SecretRow.id.desc())))
            now = datetime.now(UTC)
            for row in rows:
                session.add(
                    SecretAccessRow(
                        secret_id=row.id,
                        enrollment_id=enrollment_id,
                        kind=kind,
                        who=who,
                        reason=reason,
                        at=now,
                    )
                )
        return [
            {
                "secret": self._open(r),
                "created": iso_utc(r.created),
                "superseded": iso_utc(r.superseded),
                "source": r.source,
            }
            for r in rows
        ]

    async def access_log(self, enrollment_id: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SecretAccessRow)
                .where(SecretAccessRow.enrollment_id == enrollment_id)
                .order_by(SecretAccessRow.id)
            )
            return [
                {"kind": r.kind, "who": r.who, "reason": r.reason, "at": iso_utc(r.at)}
                for r in rows
            ]

    async def summary(self, enrollment_id: str) -> dict[str, Any]:
        """What is escrowed, without the secrets (for the inventory and operators)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SecretRow).where(SecretRow.enrollment_id == enrollment_id)
            )
            out: dict[str, Any] = {}
            for r in rows:
                entry = out.setdefault(r.kind, {"escrowed": 0, "current_since": None})
                entry["escrowed"] += 1
                if r.superseded is None:
                    entry["current_since"] = iso_utc(r.created)
            return out
