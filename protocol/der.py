"""A small ASN.1 BER/DER reader: just enough to walk CMS SignedData.

Single-byte tags, definite and indefinite lengths (macOS ``security cms`` writes signed
profiles in indefinite-length BER), constructed OCTET STRINGs. Every element keeps its
offsets into the original bytes, because a CMS signature covers bytes exactly as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
CONSTRUCTED = 0x20

# Deeper nesting than this is not a real CMS structure, only a way to exhaust the stack.
MAX_DEPTH = 64


class DerError(ValueError):
    """Bytes that are not the ASN.1 structure expected."""


@dataclass(frozen=True, slots=True)
class Element:
    buf: bytes
    tag: int
    start: int  # the tag byte
    body: int  # first content byte
    body_end: int  # end of the content (an indefinite length's end-of-contents follows)
    end: int  # first byte after the element
    depth: int = 0

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def raw(self) -> bytes:
        """The whole element (tag, length, content) as it appears in the input."""
        return self.buf[self.start : self.end]

    def content(self) -> bytes:
        return self.buf[self.body : self.body_end]

    def children(self) -> list[Element]:
        if not self.constructed:
            raise DerError(f"element with tag 0x{self.tag:02x} is not constructed")
        out = []
        pos = self.body
        while pos < self.body_end:
            child = read(self.buf, pos, self.body_end, self.depth + 1)
            out.append(child)
            pos = child.end
        return out

    def nth(self, index: int, what: str) -> Element:
        """Child ``index``, or a DerError naming ``what`` was missing."""
        kids = self.children()
        if index >= len(kids):
            raise DerError(f"{what} is missing")
        return kids[index]

    def expect(self, tag: int, what: str) -> Element:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self

    def octets(self) -> bytes:
        """An OCTET STRING's value, joining the segments of a constructed (BER) one."""
        if self.tag == OCTET_STRING:
            return self.content()
        if self.tag == OCTET_STRING | CONSTRUCTED:
            return b"".join(c.octets() for c in self.children())
        raise DerError(f"expected an OCTET STRING, found tag 0x{self.tag:02x}")

    def integer(self) -> int:
        data = self.expect(INTEGER, "INTEGER").content()
        if not data:
            raise DerError("empty INTEGER")
        return int.from_bytes(data, "big", signed=True)

    def oid(self) -> str:
        """An OBJECT IDENTIFIER in dotted form."""
        data = self.expect(OID, "OBJECT IDENTIFIER").content()
        if not data or data[-1] & 0x80:
            raise DerError("malformed OBJECT IDENTIFIER")
        arcs: list[int] = []
        value = 0
        for byte in data:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def read(buf: bytes, pos: int = 0, limit: int | None = None, depth: int = 0) -> Element:
    """The element starting at ``pos``; it must end by ``limit`` (default: end of buf)."""
    limit = len(buf) if limit is None else limit
    if depth > MAX_DEPTH:
        raise DerError("ASN.1 nested too deeply")
    if pos + 2 > limit:
        raise DerError("truncated ASN.1 data")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte ASN.1 tags are not supported")
    body = pos + 2
    if first == 0x80:  # indefinite length: children up to an end-of-contents marker
        if not tag & CONSTRUCTED:
            raise DerError("indefinite length on a primitive element")
        cur = body
        while True:
            if cur + 2 > limit:
                raise DerError("truncated ASN.1 data (no end-of-contents)")
            if buf[cur] == 0 and buf[cur + 1] == 0:
                return Element(buf, tag, pos, body, cur, cur + 2, depth)
            cur = read(buf, cur, limit, depth + 1).end
    if first & 0x80:
        n = first & 0x7F
        if n > 4 or body + n > limit:
            raise DerError("bad ASN.1 length")
        length = int.from_bytes(buf[body : body + n], "big")
        body += n
    else:
        length = first
    end = body + length
    if end > limit:
        raise DerError("truncated ASN.1 data")
    return Element(buf, tag, pos, body, end, end, depth)


def read_all(buf: bytes) -> Element:
    """The single element that ``buf`` must consist of (trailing bytes are refused)."""
    elem = read(buf)
    if elem.end != len(buf):
        raise DerError(f"{len(buf) - elem.end} unexpected bytes after the ASN.1 data")
    return elem
