"""XML property lists to and from JSON-safe values.

Temporal payloads and our API are JSON; Apple speaks plist. Plist ``<data>`` travels in
JSON as ``{"$data": "<base64>"}`` and ``<date>`` as ``{"$date": "<ISO 8601>"}`` so the
round trip is lossless and a value never changes type on the way.
"""

from __future__ import annotations

import base64
import plistlib
from datetime import UTC, datetime
from typing import Any

DATA_KEY = "$data"
DATE_KEY = "$date"


class PlistError(ValueError):
    """Raised for input that is not a well-formed plist dictionary."""


def loads(raw: bytes) -> dict[str, Any]:
    """Parse a plist whose root is a dictionary (every MDM message is one)."""
    if not raw:
        raise PlistError("empty plist")
    try:
        value = plistlib.loads(raw)
    except Exception as exc:  # plistlib raises several unrelated types
        raise PlistError(f"not a valid plist: {exc}") from exc
    if not isinstance(value, dict):
        raise PlistError(f"plist root must be a dictionary, got {type(value).__name__}")
    return value


def dumps(value: dict[str, Any]) -> bytes:
    """Render a dictionary as an XML plist (starts with ``<?xml`` as NanoMDM requires)."""
    return plistlib.dumps(value, fmt=plistlib.FMT_XML, sort_keys=True)


def to_json(value: Any) -> Any:
    """Native plist values -> JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {DATA_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return {DATE_KEY: value.isoformat()}
    return value


def from_json(value: Any) -> Any:
    """JSON-safe values -> native plist values (inverse of :func:`to_json`)."""
    if isinstance(value, dict):
        if len(value) == 1 and DATA_KEY in value:
            return base64.b64decode(value[DATA_KEY])
        if len(value) == 1 and DATE_KEY in value:
            return datetime.fromisoformat(value[DATE_KEY])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def data(raw: bytes) -> dict[str, str]:
    """Mark bytes as plist ``<data>`` inside a JSON-safe command payload."""
    return {DATA_KEY: base64.b64encode(raw).decode("ascii")}
