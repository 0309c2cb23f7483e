"""CMS (PKCS #7) SignedData as configuration profiles are signed: content and checking.

``cryptography`` builds SignedData but cannot verify it, so checking is done here with
its primitives: the signer's certificate must be inside the blob, the signed attributes'
message digest must match the content, and the signature must verify with that
certificate's key. The certificate chain is not checked: whether the signer is trusted
is the device's decision; what matters here is that the bytes are intact.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from protocol import der
from protocol.der import DerError, Element

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.4": hashes.SHA224,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# rsaEncryption and sha*WithRSAEncryption (PKCS #1 v1.5)
_RSA_SIGS = {"1.2.840.113549.1.1." + n for n in ("1", "5", "11", "12", "13", "14")}
# id-ecPublicKey and ecdsa-with-SHA*
_EC_SIGS = {"1.2.840.10045.2.1", "1.2.840.10045.4.1"} | {
    "1.2.840.10045.4.3." + n for n in ("1", "2", "3", "4")
}
_PSS = "1.2.840.113549.1.1.10"
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 #]+)-----(.*?)-----END \1-----", re.S)
_PEM_LABELS = {b"PKCS7", b"CMS", b"PKCS #7 SIGNED DATA"}


class CmsError(ValueError):
    """Not CMS SignedData, or SignedData whose signature does not hold."""


@dataclass(frozen=True, slots=True)
class SignedData:
    content: bytes
    content_type: str
    certificates: list[Element]
    signer_infos: list[Element]


def is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def pem_to_der(data: bytes) -> bytes:
    """The DER inside a ``-----BEGIN PKCS7-----`` (or ``CMS``) block."""
    match = _PEM.search(data)
    if match is None:
        raise CmsError("PEM data without a matching BEGIN/END block")
    if match.group(1) not in _PEM_LABELS:
        raise CmsError(f"PEM block {match.group(1).decode()!r} is not PKCS7/CMS")
    try:
        return base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except binascii.Error as exc:
        raise CmsError(f"PEM block is not valid base64: {exc}") from exc


def parse(blob: bytes) -> SignedData:
    """Take SignedData apart without checking anything cryptographic."""
    try:
        return _parse(blob)
    except DerError as exc:
        raise CmsError(f"malformed CMS data: {exc}") from exc


def signed_content(blob: bytes) -> bytes:
    """The encapsulated content, signature unchecked (for a reader that trusts the sender)."""
    return parse(blob).content


def verify(blob: bytes) -> tuple[bytes, list[x509.Certificate]]:
    """The content and its signers' certificates, once every signature has verified."""
    signed = parse(blob)
    if not signed.signer_infos:
        raise CmsError("SignedData has no signer")
    try:
        signers = [_verify_signer(si, signed) for si in signed.signer_infos]
    except DerError as exc:
        raise CmsError(f"malformed CMS signer: {exc}") from exc
    return signed.content, signers


def _parse(blob: bytes) -> SignedData:
    info = der.read_all(blob).expect(der.SEQUENCE, "ContentInfo")
    parts = info.children()
    if len(parts) != 2 or parts[0].tag != der.OID or parts[0].oid() != OID_SIGNED_DATA:
        raise CmsError("not CMS SignedData")
    explicit = parts[1].expect(0xA0, "ContentInfo content").children()
    if len(explicit) != 1:
        raise CmsError("malformed ContentInfo")
    fields = explicit[0].expect(der.SEQUENCE, "SignedData").children()
    if len(fields) < 4:
        raise CmsError("malformed SignedData")
    encap = fields[2].expect(der.SEQUENCE, "EncapsulatedContentInfo").children()
    if len(encap) < 2:
        raise CmsError("SignedData has no content (a detached signature)")
    inner = encap[1].expect(0xA0, "eContent").children()
    if len(inner) != 1:
        raise CmsError("malformed eContent")
    signer_set = fields[-1].expect(der.SET, "SignerInfos")
    certs = [c for f in fields[3:-1] if f.tag == 0xA0 for c in f.children()]
    return SignedData(
        content=inner[0].octets(),
        content_type=encap[0].oid(),
        certificates=[c for c in certs if c.tag == der.SEQUENCE],
        signer_infos=signer_set.children(),
    )


def _verify_signer(si: Element, signed: SignedData) -> x509.Certificate:
    f = si.expect(der.SEQUENCE, "SignerInfo").children()
    attrs = next((e for e in f[3:4] if e.tag == 0xA0), None)
    rest = f[4:] if attrs is not None else f[3:]
    if len(f) < 5 or len(rest) < 2:
        raise CmsError("malformed SignerInfo")
    hash_alg = _hash(f[2])
    cert = _signer_certificate(f[1], signed.certificates)
    if attrs is None:
        data = signed.content
    else:
        _check_attributes(attrs, signed, hash_alg)
        # The signature covers the attributes re-tagged as a SET OF (RFC 5652 5.4).
        data = bytes([der.SET]) + attrs.raw()[1:]
    sig_oid = rest[0].nth(0, "signatureAlgorithm").oid()
    _check_signature(cert, sig_oid, hash_alg, rest[1].octets(), data)
    return cert


def _hash(alg: Element) -> hashes.HashAlgorithm:
    oid = alg.expect(der.SEQUENCE, "digestAlgorithm").nth(0, "digest algorithm").oid()
    if oid not in _HASHES:
        raise CmsError(f"unsupported digest algorithm {oid}")
    return _HASHES[oid]()


def _digest(data: bytes, alg: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(alg)
    h.update(data)
    return h.finalize()


def _check_attributes(attrs: Element, signed: SignedData, alg: hashes.HashAlgorithm) -> None:
    found: dict[str, list[Element]] = {}
    for attr in attrs.children():
        pair = attr.expect(der.SEQUENCE, "Attribute").children()
        if len(pair) != 2:
            raise CmsError("malformed signed attribute")
        oid = pair[0].oid()
        if oid in found:
            raise CmsError(f"signed attribute {oid} appears twice")
        found[oid] = pair[1].expect(der.SET, "attribute values").children()
    digest = found.get(OID_MESSAGE_DIGEST, [])
    ctype = found.get(OID_CONTENT_TYPE, [])
    if len(digest) != 1 or len(ctype) != 1:
        raise CmsError("signed attributes lack a single message digest and content type")
    if ctype[0].oid() != signed.content_type:
        raise CmsError("signed content type does not match the content")
    if digest[0].octets() != _digest(signed.content, alg):
        raise CmsError("content does not match the signed message digest (altered after signing)")


def _signer_certificate(sid: Element, certs: list[Element]) -> x509.Certificate:
    for cert in certs:
        if _matches(sid, cert):
            try:
                return x509.load_der_x509_certificate(cert.raw())
            except ValueError as exc:
                raise CmsError(f"the signer's certificate cannot be read: {exc}") from exc
    raise CmsError("the signer's certificate is not included in the signed data")


def _matches(sid: Element, cert: Element) -> bool:
    """Does ``cert`` fit the SignerIdentifier (issuer and serial, or key identifier)?"""
    tbs = cert.nth(0, "tbsCertificate").children()
    tbs = tbs[1:] if tbs and tbs[0].tag == 0xA0 else tbs  # skip [0] version
    if len(tbs) < 3:
        return False
    if sid.tag == der.SEQUENCE:
        issuer, serial = sid.nth(0, "issuer"), sid.nth(1, "serial number")
        return tbs[2].raw() == issuer.raw() and tbs[0].integer() == serial.integer()
    if sid.tag == 0x80:
        try:
            loaded = x509.load_der_x509_certificate(cert.raw())
            ski = loaded.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except (ValueError, x509.ExtensionNotFound):
            return False
        return ski.value.digest == sid.content()
    raise CmsError(f"unknown SignerIdentifier tag 0x{sid.tag:02x}")


def _check_signature(
    cert: x509.Certificate, sig_oid: str, alg: hashes.HashAlgorithm, sig: bytes, data: bytes
) -> None:
    if sig_oid == _PSS:
        raise CmsError("RSASSA-PSS signatures are not supported")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CmsError(f"the signer's public key cannot be used: {exc}") from exc
    rsa_key = isinstance(key, rsa.RSAPublicKey) and sig_oid in _RSA_SIGS
    ec_key = isinstance(key, ec.EllipticCurvePublicKey) and sig_oid in _EC_SIGS
    if not (rsa_key or ec_key):
        kind = type(key).__name__.removeprefix("_")
        raise CmsError(f"unsupported signature algorithm {sig_oid} for a {kind}")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(alg))
    except (InvalidSignature, ValueError) as exc:
        raise CmsError("the signature does not verify with the signer's certificate") from exc
